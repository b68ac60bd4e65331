//go:build vm

package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/vm"
)

// TestBakeFromCloudImage bakes each cloud-image fixture with a recipe that
// adds a package, an overlay file with mode and owner, and a user; checks
// that the output keeps the base's identifiers; and boots it under SeaBIOS
// and OVMF, where a unit reports on the serial console that the recipe's
// changes are there and that the base's setuid bits, file capabilities,
// hard links and device nodes survived.
func TestBakeFromCloudImage(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	for _, fx := range cloudFixtures(t) {
		t.Run(fx.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(repoRoot(), "test/vm/testdata/cloud/overlay")
			if out, err := exec.Command("cp", "-a", src, filepath.Join(dir, "overlay")).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			// The Ubuntu-shaped fixture (separate /boot) also gets another
			// kernel flavour: the boot chain must follow it.
			pkgs, newKernel := "[tree]", false
			if fx.name == "ubuntu" {
				pkgs, newKernel = "[tree, linux-image-amd64]", true
			}
			recipe := filepath.Join(dir, "recipe.yaml")
			os.WriteFile(recipe, []byte(fmt.Sprintf(`apiVersion: bake/v1
name: cloudtest
base:
  image:
    path: %s
    sha256: %s
apt:
  packages: %s
users:
  - name: bakeuser
overlays:
  - source: overlay
    modes:
      "usr/local/sbin/*": "0755"
files:
  - path: /etc/bake-cloud-test.conf
    content: "baked into a cloud image\n"
    mode: "0640"
    owner: root:bakeuser
systemd:
  enable: [bake-cloud-report.service]
outputs: [raw]
`, fx.path, fileSum(t, fx.path), pkgs)), 0o644)
			out := filepath.Join(dir, "out")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			t0 := time.Now()
			log, code := runBake(t, ctx, "build", recipe, "-o", out)
			t.Logf("bake build from %s (%s):\n%s", fx.name, since(t0), log)
			if code != 0 {
				t.Fatalf("bake build failed (%d)", code)
			}
			img := filepath.Join(out, "cloudtest.raw")

			// Identifiers: the same disk GUID, partition GUIDs and numbers,
			// filesystem UUIDs and labels as the base.
			baseRaw := filepath.Join(dir, "base.raw")
			bimg, err := cloudimg.Open(ctx, fx.path)
			if err != nil {
				t.Fatal(err)
			}
			if err := cloudimg.ToRaw(ctx, bimg, baseRaw); err != nil {
				t.Fatal(err)
			}
			bimg.Close()
			want, err := cloudimg.Inspect(ctx, baseRaw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cloudimg.Inspect(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			if got.Table.DiskGUID != want.Table.DiskGUID {
				t.Errorf("disk GUID %s, base had %s", got.Table.DiskGUID, want.Table.DiskGUID)
			}
			if len(got.Table.Partitions) != len(want.Table.Partitions) {
				t.Fatalf("%d partitions, base had %d", len(got.Table.Partitions), len(want.Table.Partitions))
			}
			for i, p := range want.Table.Partitions {
				g := got.Table.Partitions[i]
				if g.Number != p.Number || g.GUID != p.GUID || g.Type != p.Type || g.FS.UUID != p.FS.UUID || g.FS.Label != p.FS.Label {
					t.Errorf("partition %d: got #%d %s %s fs %s %q, base #%d %s %s fs %s %q", i,
						g.Number, g.GUID, g.Type, g.FS.UUID, g.FS.Label, p.Number, p.GUID, p.Type, p.FS.UUID, p.FS.Label)
				}
			}
			sg, _ := exec.Command("sgdisk", "-p", img).CombinedOutput()
			t.Logf("sgdisk -p:\n%s", sg)

			for _, fw := range []string{vm.BIOS, vm.UEFI} {
				t.Run(fw, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
					defer cancel()
					disk, format := img, "raw"
					if fx.name == "debian" && fw == vm.UEFI {
						// The Debian image's UEFI boot is from the
						// streamOptimized vmdk inside the OVA that
						// `bake convert --format ova` writes (what
						// VMware imports), not from the raw disk.
						disk, format = ovaDisk(t, ctx, img), "vmdk"
					}
					v, err := vm.Start(ctx, vm.Config{Firmware: fw, Disk: disk, DiskFormat: format, Snapshot: true, MemoryMiB: 1024})
					if err != nil {
						t.Fatal(err)
					}
					defer stopVM(t, fw, v)
					t0 := time.Now()
					if _, err := v.WaitSerialRegexp(ctx, regexp.MustCompile(`BAKE-CLOUD-DONE`), 8*time.Minute); err != nil {
						t.Fatalf("no report on the serial console: %v", err)
					}
					t.Logf("%s: report after %s", fw, since(t0))
					serial, _ := v.Serial()
					checks := 0
					for _, line := range strings.Split(string(serial), "\n") {
						line = strings.TrimSpace(line)
						if !strings.HasPrefix(line, "BAKE-CHECK ") {
							continue
						}
						checks++
						if !strings.HasSuffix(line, " ok") {
							t.Errorf("%s: %s", fw, line)
						}
					}
					if m := regexp.MustCompile(`BAKE-KERNEL (\S+)`).FindSubmatch(serial); m == nil {
						t.Errorf("%s: no kernel reported", fw)
					} else if k := string(m[1]); newKernel == strings.Contains(k, "cloud") {
						t.Errorf("%s: running kernel %s (new kernel installed by the recipe: %v)", fw, k, newKernel)
					}
					if checks != 8 {
						t.Errorf("%s: %d checks reported, want 8", fw, checks)
					}
				})
			}
		})
	}
}

// ovaDisk converts img with `bake convert --format ova` and returns the
// vmdk extracted from the OVA (a tar: the OVF descriptor, the vmdk, the
// manifest).
func ovaDisk(t *testing.T, ctx context.Context, img string) string {
	t.Helper()
	conv := t.TempDir()
	if out, code := runBake(t, ctx, "convert", img, "--format", "ova", "-o", conv); code != 0 {
		t.Fatalf("bake convert --format ova: exit %d\n%s", code, out)
	}
	ovas, _ := filepath.Glob(filepath.Join(conv, "*.ova"))
	if len(ovas) != 1 {
		t.Fatalf("bake convert --format ova wrote %q", ovas)
	}
	x := t.TempDir()
	if out, err := exec.CommandContext(ctx, "tar", "-xf", ovas[0], "-C", x).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf %s: %v %s", ovas[0], err, out)
	}
	vmdks, _ := filepath.Glob(filepath.Join(x, "*.vmdk"))
	if len(vmdks) != 1 {
		t.Fatalf("the OVA holds %q, want one vmdk", vmdks)
	}
	return vmdks[0]
}
