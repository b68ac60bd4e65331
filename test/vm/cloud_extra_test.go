//go:build vm && vmextra

package vmtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/rootfs"
	"github.com/bakeimg/bake/vm"
)

// Deeper cloud-image boot tests, redundant with TestBakeFromCloudImage
// (which reassembles both fixtures through bake and boots them both ways):
// the bare fixtures, and Reassemble called directly. Not part of `make test`
// (CI time); run with `go test -tags 'vm vmextra' ./test/vm/`.

// TestCloudFixturesBoot: the fixtures themselves boot to a login prompt
// under SeaBIOS and OVMF (so a failure of a reassembled image is bake's).
func TestCloudFixturesBoot(t *testing.T) {
	for _, fx := range cloudFixtures(t) {
		for _, fw := range []string{vm.BIOS, vm.UEFI} {
			t.Run(fx.name+"/"+fw, func(t *testing.T) {
				bootToLogin(t, fx.path, "qcow2", fw, fx.name+"-fixture")
			})
		}
	}
}

// TestCloudReassembleBoots: extract each fixture, add a file, reassemble
// around the kept boot chain onto a bigger disk: the identifiers are the
// base's and the image boots under SeaBIOS and OVMF. The rebuild variant
// makes core.img and BOOTX64.EFI anew from the tree (what a GRUB change
// needs) and writes grub.cfg with PrepareCloudBoot.
func TestCloudReassembleBoots(t *testing.T) {
	for _, fx := range cloudFixtures(t) {
		for _, rebuild := range []bool{false, true} {
			name := fx.name + "/keep-boot-chain"
			if rebuild {
				name = fx.name + "/rebuild-boot"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				dir := t.TempDir()
				img, err := cloudimg.Open(ctx, fx.path)
				if err != nil {
					t.Fatal(err)
				}
				base := filepath.Join(dir, "base.raw")
				if err := cloudimg.ToRaw(ctx, img, base); err != nil {
					t.Fatal(err)
				}
				img.Close()
				l, err := cloudimg.Inspect(ctx, base)
				if err != nil {
					t.Fatal(err)
				}
				tree := filepath.Join(dir, "tree")
				before := mounts(t)
				t0 := time.Now()
				if err := cloudimg.Extract(ctx, base, l, tree); err != nil {
					t.Fatal(err)
				}
				t.Logf("extract: %s", since(t0))
				if n := newMounts(before, mounts(t)); len(n) > 0 {
					t.Fatalf("mounts left by Extract: %v", n)
				}
				if err := os.WriteFile(filepath.Join(tree, "etc/bake-reassembled"), []byte("yes\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				if rebuild {
					if err := disk.PrepareCloudBoot(disk.CloudBootSpec{Tree: tree, Layout: l, KernelCmdline: "console=ttyS0,115200"}); err != nil {
						t.Fatal(err)
					}
				}
				out := filepath.Join(dir, "out.raw")
				t0 = time.Now()
				res, err := disk.Reassemble(ctx, disk.ReassembleSpec{
					Base: base, Layout: l, Tree: tree, Output: out, Size: l.Size + 1<<30,
					RebuildBoot: rebuild, SourceDateEpoch: 1700000000, Runner: execx.Host{}, Log: testLogWriter{t},
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("reassemble: %s (%d MiB disk, core.img %d, EFI %d)", since(t0), res.Size>>20, res.CoreImg, res.EFIImage)
				want, got := identity(t, base, l, true), identity(t, out, l, true)
				for k, v := range want {
					if got[k] != v {
						t.Errorf("%s: %q, base had %q", k, got[k], v)
					}
				}
				if len(got) != len(want) || len(want) < 10 {
					t.Errorf("identity: %d keys, base %d", len(got), len(want))
				}
				if v, err := exec.Command("sgdisk", "-v", out).CombinedOutput(); err != nil || !strings.Contains(string(v), "No problems found") {
					t.Errorf("sgdisk -v: %v\n%s", err, v)
				}
				for _, fw := range []string{vm.BIOS, vm.UEFI} {
					bootToLogin(t, out, "raw", fw, fx.name+"-fixture")
				}
			})
		}
	}
}

// TestCloudNewKernelBoots: a recipe that installs another kernel flavour
// (linux-image-amd64 next to the base's cloud kernel) in a chroot of the
// extracted tree: the boot chain notices, grub.cfg is written for the new
// kernel with the base's own kernel arguments, and the reassembled image
// boots that kernel under SeaBIOS and OVMF.
func TestCloudNewKernelBoots(t *testing.T) {
	for _, fx := range cloudFixtures(t) {
		t.Run(fx.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			img, err := cloudimg.Open(ctx, fx.path)
			if err != nil {
				t.Fatal(err)
			}
			base := filepath.Join(dir, "base.raw")
			if err := cloudimg.ToRaw(ctx, img, base); err != nil {
				t.Fatal(err)
			}
			img.Close()
			l, err := cloudimg.Inspect(ctx, base)
			if err != nil {
				t.Fatal(err)
			}
			tree := filepath.Join(dir, "tree")
			if err := cloudimg.Extract(ctx, base, l, tree); err != nil {
				t.Fatal(err)
			}
			before, err := cloudimg.ReadBootChain(tree)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			ch, err := rootfs.Open(ctx, tree, rootfs.WithRunner(execx.Host{}))
			if err != nil {
				t.Fatal(err)
			}
			err = rootfs.DivertBootHooks(ctx, ch)
			if err == nil {
				err = rootfs.InstallPackages(ctx, ch, []string{"linux-image-amd64"}, filepath.Join(cacheDir(), "apt", "bookworm"))
			}
			if cerr := ch.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("installed linux-image-amd64 in %s", since(t0))
			after, err := cloudimg.ReadBootChain(tree)
			if err != nil {
				t.Fatal(err)
			}
			kernel, loader := before.Changes(after)
			nk := before.NewKernels(after)
			if !kernel || len(nk) != 1 {
				t.Fatalf("boot chain: kernel changed %v, new kernels %v", kernel, nk)
			}
			if err := disk.PrepareCloudBoot(disk.CloudBootSpec{Tree: tree, Layout: l, Kernel: nk[0], Log: testLogWriter{t}}); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out.raw")
			if _, err := disk.Reassemble(ctx, disk.ReassembleSpec{Base: base, Layout: l, Tree: tree, Output: out,
				RebuildBoot: loader, Runner: execx.Host{}, Log: testLogWriter{t}}); err != nil {
				t.Fatal(err)
			}
			for _, fw := range []string{vm.BIOS, vm.UEFI} {
				bootToLogin(t, out, "raw", fw, fx.name+"-fixture", "Linux version "+nk[0])
			}
		})
	}
}
