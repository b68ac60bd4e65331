//go:build vm

package vmtest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/vm"
)

var (
	bootImgOnce sync.Once
	bootImgDir  string
	bootImgErr  string
	bootImgTemp string // made by bootImage, built or not
)

// bootImage bakes testdata/boot once per run and returns the output dir.
func bootImage(t *testing.T) string {
	t.Helper()
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64")
	bootImgOnce.Do(func() {
		dir, err := sweep.MkdirTemp("", bootDirPrefix)
		if err != nil {
			bootImgErr = err.Error()
			return
		}
		bootImgTemp = dir // TestMain removes it after the last test
		beforeM, beforeL := mounts(t), loopDevices(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		t0 := time.Now()
		out, code := runBake(t, ctx, "build", filepath.Join(repoRoot(), "test/vm/testdata/boot/recipe.yaml"), "-o", dir)
		t.Logf("bake build (%s):\n%s", since(t0), out)
		if code != 0 {
			bootImgErr = "bake build failed with status " + strconv.Itoa(code) + ":\n" + out
			return
		}
		// Only what is below dir (the build's work directory is there) is
		// this build's: other tests may bake at the same time.
		for _, m := range newMounts(beforeM, mounts(t)) {
			if strings.HasPrefix(m, dir+"/") {
				bootImgErr = "mount left after the build: " + m
				return
			}
		}
		if after := loopDevices(t); after != beforeL {
			for _, l := range strings.Split(after, "\n") {
				if strings.Contains(l, dir+"/") {
					bootImgErr = "loop device left after the build: " + l
					return
				}
			}
		}
		bootImgDir = dir
	})
	if bootImgErr != "" {
		t.Fatal(bootImgErr)
	}
	return bootImgDir
}

var reportRE = regexp.MustCompile(`BAKE-REPORT-DONE`)

type report struct {
	ifaces    map[string]string
	rootBytes int64
	firmware  string
	failed    string
}

func parseReport(serial string) report {
	r := report{ifaces: map[string]string{}}
	for _, line := range strings.Split(serial, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(line, "\r"))
		switch {
		case strings.HasPrefix(line, "BAKE-NET "):
			var ifc, ip string
			for _, f := range strings.Fields(line)[1:] {
				k, v, _ := strings.Cut(f, "=")
				if k == "iface" {
					ifc = v
				} else if k == "ipv4" {
					ip = v
				}
			}
			r.ifaces[ifc] = ip
		case strings.HasPrefix(line, "BAKE-ROOT bytes="):
			r.rootBytes, _ = strconv.ParseInt(strings.TrimPrefix(line, "BAKE-ROOT bytes="), 10, 64)
		case strings.HasPrefix(line, "BAKE-FIRMWARE "):
			r.firmware = strings.TrimPrefix(line, "BAKE-FIRMWARE ")
		case strings.HasPrefix(line, "BAKE-FAILED-UNITS"):
			r.failed = strings.TrimSpace(strings.TrimPrefix(line, "BAKE-FAILED-UNITS"))
		}
	}
	return r
}

// boot starts the image and waits for the report and a login prompt.
func boot(t *testing.T, cfg vm.Config) report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	t0 := time.Now()
	v, err := vm.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	t.Cleanup(func() { stopVM(t, v.Config.Firmware, v) })
	if err := v.WaitSerial(ctx, "login:", 8*time.Minute); err != nil {
		t.Fatalf("no login prompt on the serial console (%s firmware): %v", cfg.Firmware, err)
	}
	t.Logf("%s: login prompt after %s", cfg.Firmware, since(t0))
	if _, err := v.WaitSerialRegexp(ctx, reportRE, 3*time.Minute); err != nil {
		t.Fatalf("no test report on the serial console: %v", err)
	}
	serial, _ := v.Serial()
	r := parseReport(string(serial))
	t.Logf("%s: report after %s: %+v", cfg.Firmware, since(t0), r)
	stopVM(t, v.Config.Firmware, v)
	return r
}

func firstLease(r report) (string, string) {
	for ifc, ip := range r.ifaces {
		if ip != "" {
			return ifc, ip
		}
	}
	return "", ""
}

// TestBootBIOSVirtioAnySlot: SeaBIOS, a virtio NIC in a non-default PCI slot
// (so its name is not the usual one), DHCP lease through user networking;
// the disk is the fixed VHD `bake convert --format vhd` writes (what Azure
// and Hyper-V import), booted as QEMU's vpc format.
func TestBootBIOSVirtioAnySlot(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	dir := bootImage(t)
	conv := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, code := runBake(t, ctx, "convert", filepath.Join(dir, "boottest.qcow2"), "--format", "vhd", "-o", conv); code != 0 {
		t.Fatalf("bake convert --format vhd: exit %d\n%s", code, out)
	}
	r := boot(t, vm.Config{
		Firmware:   vm.BIOS,
		Disk:       filepath.Join(conv, "boottest.vhd"),
		DiskFormat: "vpc",
		Snapshot:   true,
		NICModel:   "virtio-net-pci",
		NICPCIAddr: "0x9",
		Net:        vm.NetConfig{Mode: vm.NetUser},
		MemoryMiB:  1024,
	})
	if r.firmware != "bios" {
		t.Errorf("firmware = %q, want bios", r.firmware)
	}
	ifc, ip := firstLease(r)
	if !strings.HasPrefix(ip, "10.0.2.") {
		t.Errorf("no DHCP lease on the virtio NIC: %v", r.ifaces)
	}
	t.Logf("virtio NIC %s got %s", ifc, ip)
	if r.failed != "" {
		t.Errorf("failed units: %s", r.failed)
	}
}

// TestBootUEFIE1000Grown: OVMF, an e1000 NIC, and a disk enlarged by 2 GiB
// with `qemu-img resize`: the root filesystem must fill it at first boot.
func TestBootUEFIE1000Grown(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	dir := bootImage(t)
	grown := filepath.Join(t.TempDir(), "grown.qcow2")
	// A copy, not an overlay: vm (like bake verify) refuses a qcow2 that
	// names a backing file, which a hostile image could point anywhere.
	if out, err := exec.Command("cp", "--sparse=always", filepath.Join(dir, "boottest.qcow2"), grown).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := exec.Command("qemu-img", "resize", grown, "+2G").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var man struct {
		Outputs []struct {
			Format      string `json:"format"`
			VirtualSize int64  `json:"virtual_size"`
		} `json:"outputs"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "boottest.manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &man); err != nil {
		t.Fatal(err)
	}
	var orig int64
	for _, o := range man.Outputs {
		if o.Format == "qcow2" {
			orig = o.VirtualSize
		}
	}
	r := boot(t, vm.Config{
		Firmware:  vm.UEFI,
		Disk:      grown,
		NICModel:  "e1000",
		Net:       vm.NetConfig{Mode: vm.NetUser},
		MemoryMiB: 1024,
	})
	if r.firmware != "uefi" {
		t.Errorf("firmware = %q, want uefi", r.firmware)
	}
	if _, ip := firstLease(r); !strings.HasPrefix(ip, "10.0.2.") {
		t.Errorf("no DHCP lease on the e1000 NIC: %v", r.ifaces)
	}
	// The root fs must be bigger than the whole original disk.
	if orig == 0 || r.rootBytes <= orig {
		t.Errorf("root filesystem is %d bytes; the original disk was %d and the grown one 2 GiB more: growroot did not run", r.rootBytes, orig)
	}
	if r.failed != "" {
		t.Errorf("failed units: %s", r.failed)
	}
}
