//go:build vm

package vmtest

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/vm"
)

// Deeper cloud-image boot tests beside TestBakeFromCloudImage (which bakes
// both fixtures through bake, keeping their boot chain, and boots them both
// ways): the bare fixtures, and a boot chain rebuilt from the tree around a
// new kernel.
//
// Folded (issue 11): TestCloudReassembleBoots' keep-boot-chain variant is
// what TestBakeFromCloudImage does through bake (identifiers kept, both
// firmwares); its rebuild-boot variant (core.img and BOOTX64.EFI made
// anew, a bigger disk, identifiers kept, sgdisk -v) and
// TestCloudNewKernelBoots are one test, TestCloudRebuiltBootNewKernel: the
// rebuilt boot chain boots the new kernel.

// TestCloudFixturesBoot: the fixtures themselves boot to a login prompt
// under SeaBIOS and OVMF (so a failure of a reassembled image is bake's).
func TestCloudFixturesBoot(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	for _, fx := range cloudFixtures(t) {
		for _, fw := range []string{vm.BIOS, vm.UEFI} {
			t.Run(fx.name+"/"+fw, func(t *testing.T) {
				bootToLogin(t, fx.path, "qcow2", fw, fx.name+"-fixture")
			})
		}
	}
}

// TestCloudRebuiltBootNewKernel: a recipe's new kernel flavour
// (linux-image-amd64 next to the base's cloud kernel) installed in a chroot
// of the extracted tree; the boot chain notices, grub.cfg is written for
// the new kernel with the base's own kernel arguments, core.img and
// BOOTX64.EFI are made anew from the tree, onto a disk 1 GiB bigger: the
// identifiers are the base's, sgdisk -v finds no problem, and the image
// boots the new kernel under SeaBIOS and OVMF.
func TestCloudRebuiltBootNewKernel(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
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
			// The two steps that mount run in a mount namespace of their
			// own (private_mounts_test.go); the extraction proves there
			// that it leaves no mount.
			tree := filepath.Join(dir, "tree")
			inPrivateMounts(t, "extract", base, tree)
			before, err := cloudimg.ReadBootChain(tree)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			inPrivateMounts(t, "install-kernel", tree, filepath.Join(cacheDir(), "apt", "bookworm"))
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
			t.Logf("boot chain: kernel changed, loader changed %v; rebuilt either way", loader)
			out := filepath.Join(dir, "out.raw")
			t0 = time.Now()
			res, err := disk.Reassemble(ctx, disk.ReassembleSpec{Base: base, Layout: l, Tree: tree, Output: out,
				Size: l.Size + 1<<30, RebuildBoot: true, SourceDateEpoch: 1700000000, Runner: execx.Host{}, Log: testLogWriter{t}})
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
				bootToLogin(t, out, "raw", fw, fx.name+"-fixture", "Linux version "+nk[0])
			}
		})
	}
}
