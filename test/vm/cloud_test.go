//go:build vm

package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/rootfs"
	"github.com/bakeimg/bake/vm"
)

// cloudFixture is one image made by fixtures/make-cloud-images.sh.
type cloudFixture struct {
	name string
	path string
	env  map[string]string
}

var (
	cloudOnce sync.Once
	cloudFx   []cloudFixture
	cloudErr  string
)

// cloudFixtures builds (or finds in the cache) the Debian- and
// Ubuntu-shaped cloud images, once per run.
func cloudFixtures(t *testing.T) []cloudFixture {
	t.Helper()
	requireTools(t, "mmdebstrap", "losetup", "grub-install", "mkfs.vfat", "mcopy", "qemu-img", "qemu-system-x86_64", "sgdisk", "blkid", "debugfs")
	cloudOnce.Do(func() {
		cache := filepath.Join(filepath.Dir(cacheDir()), "cloudimg")
		if d := os.Getenv("BAKE_TEST_CACHE"); d != "" {
			cache = filepath.Join(d, "cloudimg")
		}
		t0 := time.Now()
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "test/vm/fixtures/make-cloud-images.sh"), cache)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			s := stderr.String()
			if len(s) > 4000 {
				s = s[len(s)-4000:]
			}
			cloudErr = fmt.Sprintf("make-cloud-images.sh: %v\n%s", err, s)
			return
		}
		t.Logf("cloud fixtures ready in %s", since(t0))
		for i, p := range strings.Fields(string(out)) {
			env := map[string]string{}
			b, err := os.ReadFile(strings.TrimSuffix(p, ".qcow2") + ".env")
			if err != nil {
				cloudErr = err.Error()
				return
			}
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					env[k] = v
				}
			}
			cloudFx = append(cloudFx, cloudFixture{name: []string{"debian", "ubuntu"}[i], path: p, env: env})
		}
	})
	if cloudErr != "" {
		t.Fatal(cloudErr)
	}
	return cloudFx
}

// bootToLogin boots a disk under the firmware and waits for the login
// prompt on the serial console.
func bootToLogin(t *testing.T, diskPath, format, firmware, hostname string, expect ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	serial := filepath.Join(t.TempDir(), "serial-"+firmware+".log")
	t0 := time.Now()
	v, err := vm.Start(ctx, vm.Config{
		Firmware: firmware, Disk: diskPath, DiskFormat: format, Snapshot: true,
		MemoryMiB: 1024, SerialLog: serial,
	})
	if err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	defer v.Stop()
	if err := v.WaitSerial(ctx, hostname+" login:", 8*time.Minute); err != nil {
		b, _ := os.ReadFile(serial)
		tail := string(b)
		if len(tail) > 3000 {
			tail = tail[len(tail)-3000:]
		}
		t.Fatalf("%s: no %q prompt: %v\n--- serial tail\n%s", firmware, hostname+" login:", err, tail)
	}
	t.Logf("%s %s: login prompt after %s", filepath.Base(diskPath), firmware, since(t0))
	b, _ := v.Serial()
	for _, e := range expect {
		if !strings.Contains(string(b), e) {
			t.Errorf("%s: serial console lacks %q", firmware, e)
		}
	}
	v.Stop()
}

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

// identity is what must survive a reassembly: sgdisk's view of the table
// and blkid's view of each filesystem.
func identity(t *testing.T, raw string, l *cloudimg.Layout, rootGrown bool) map[string]string {
	t.Helper()
	id := map[string]string{}
	out, err := exec.Command("sgdisk", "-p", raw).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk -p: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Disk identifier (GUID):") {
			id["disk"] = line
		}
	}
	for _, p := range l.Table.Partitions {
		out, err := exec.Command("sgdisk", "-i", fmt.Sprint(p.Number), raw).CombinedOutput()
		if err != nil {
			t.Fatalf("sgdisk -i %d: %v\n%s", p.Number, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, k := range []string{"Partition GUID code:", "Partition unique GUID:", "First sector:", "Partition name:", "Attribute flags:"} {
				if strings.HasPrefix(line, k) {
					id[fmt.Sprintf("p%d %s", p.Number, k)] = line
				}
			}
			if strings.HasPrefix(line, "Last sector:") && !(rootGrown && p.Number == l.Root) {
				id[fmt.Sprintf("p%d Last sector:", p.Number)] = line
			}
		}
		if p.FS.Type == "" {
			continue
		}
		out, err = exec.Command("blkid", "-p", "-o", "export", "-O", fmt.Sprint(p.Offset), raw).Output()
		if err != nil {
			t.Fatalf("blkid partition %d: %v", p.Number, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, k := range []string{"UUID=", "LABEL=", "TYPE="} {
				if strings.HasPrefix(line, k) {
					id[fmt.Sprintf("p%d %s", p.Number, k)] = line
				}
			}
		}
	}
	return id
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
				img, err := cloudimg.Open(fx.path)
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

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
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
			img, err := cloudimg.Open(fx.path)
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
