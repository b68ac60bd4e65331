//go:build vm

package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/vm"
)

// stateReport is what testdata/state-partition's report unit prints.
type stateReport struct {
	made                                 bool
	status, marker, image, machineID     string
	rootUUID                             string
	bind, table, log, failed, serialTail string
	rootBytes                            int64
}

func parseStateReport(serial string) stateReport {
	var r stateReport
	for _, line := range strings.Split(serial, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(line, "\r"))
		k, v, _ := strings.Cut(line, " ")
		v = strings.TrimSpace(v)
		switch k {
		case "BAKE-STATE-MARKER-MADE":
			r.made = true
		case "BAKE-STATE-STATUS":
			r.status = v
		case "BAKE-STATE-MARKER":
			r.marker = v
		case "BAKE-STATE-IMAGE":
			r.image = v
		case "BAKE-MACHINE-ID":
			r.machineID = v
		case "BAKE-ROOT-UUID":
			r.rootUUID = v
		case "BAKE-STATE-BIND":
			r.bind = v
		case "BAKE-STATE-TABLE":
			r.table = v
		case "BAKE-STATE-LOG":
			r.log = v
		case "BAKE-FAILED-UNITS":
			r.failed = v
		case "BAKE-ROOT":
			r.rootBytes, _ = strconv.ParseInt(strings.TrimPrefix(v, "bytes="), 10, 64)
		}
	}
	return r
}

// bootState boots disk (written, no overlay) until the report unit has
// printed its facts and powered the guest off.
func bootState(t *testing.T, disk, what string) stateReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	v, err := vm.Start(ctx, vm.Config{Firmware: vm.BIOS, Disk: disk, DiskFormat: "raw", MemoryMiB: 1024})
	if err != nil {
		t.Fatalf("%s: starting QEMU: %v", what, err)
	}
	defer v.Stop()
	if _, err := v.WaitSerialRegexp(ctx, reportRE, 8*time.Minute); err != nil {
		serial, _ := v.Serial()
		t.Fatalf("%s: no report on the serial console: %v\n%s", what, err, lastLines(string(serial), 60))
	}
	select {
	case <-v.Exited():
	case <-time.After(2 * time.Minute):
		t.Errorf("%s: the guest did not power off within 2 min of its report", what)
	}
	serial, _ := v.Serial()
	r := parseStateReport(string(serial))
	r.serialTail = lastLines(string(serial), 40)
	t.Logf("%s: report and power-off after %s: status %s, marker %s (made %v), image %s, machine ID %s, root %d bytes\n  bind %s\n  table %s\n  log %s",
		what, since(t0), r.status, r.marker, r.made, r.image, r.machineID, r.rootBytes, r.bind, r.table, r.log)
	return r
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// statePartitionSum is the sha256 of disk's partition named bake-state.
func statePartitionSum(t *testing.T, disk string) (string, cloudimg.Partition) {
	t.Helper()
	img, err := cloudimg.Open(context.Background(), disk)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, p := range img.Table.Partitions {
		if p.Name == "bake-state" {
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(img, p.Offset, p.Size)); err != nil {
				t.Fatal(err)
			}
			return hex.EncodeToString(h.Sum(nil)), p
		}
	}
	t.Fatalf("%s has no partition named bake-state", disk)
	return "", cloudimg.Partition{}
}

// TestStatePartitionUpgrade (issue 15, docs/state.md): a single-disk
// instance of an image with state: {partition: ...}, its disk enlarged by
// 512 MiB, makes the state partition at its end at first boot (before
// root grows, which then stops at it) and keeps its state there; `bake
// upgrade DISK NEW` gives it NEW's system partitions and NEW boots on the
// same state (machine ID, a file written at the first boot, nothing copied
// again); `bake upgrade DISK OLD` rolls back, and OLD boots on it again.
func TestStatePartitionUpgrade(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "sfdisk")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	recipe := filepath.Join(repoRoot(), "test/vm/testdata/state-partition/recipe.yaml")
	dir := t.TempDir()
	// OLD's root UUIDs are the recipe's defaults, NEW's its own.
	const (
		oldRootUUID, oldRootPartUUID = "0ad0b5e1-0000-4000-8000-00000000000a", "0ad0b5e1-0000-4000-8000-00000000000b"
		newRootUUID, newRootPartUUID = "0ad0b5e1-0000-4000-8000-00000000001a", "0ad0b5e1-0000-4000-8000-00000000001b"
	)
	build := func(tag string, sets ...string) string {
		out := filepath.Join(dir, tag)
		t0 := time.Now()
		args := []string{"build", recipe, "-o", out, "--set", "tag=" + tag}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		log, code := runBake(t, ctx, args...)
		if code != 0 {
			t.Fatalf("bake build tag=%s failed (%d):\n%s", tag, code, log)
		}
		t.Logf("bake build tag=%s: %s", tag, since(t0))
		return filepath.Join(out, "statepart.raw")
	}
	oldImg, newImg := build("old"), build("new", "root_uuid="+newRootUUID, "root_partuuid="+newRootPartUUID)
	oldSum, newSum := fileSum(t, oldImg), fileSum(t, newImg)

	disk := filepath.Join(dir, "instance.raw")
	if out, err := exec.Command("cp", "--sparse=always", oldImg, disk).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	const diskSize = 2<<30 + 512<<20
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}

	// 1. OLD's first boot: the partition is made at the end, root grows
	// up to it, the state is on it.
	r1 := bootState(t, disk, "OLD, first boot")
	if r1.status != "ok" || !r1.made || r1.image != "old" || len(r1.machineID) != 32 || r1.failed != "" {
		t.Fatalf("OLD's first boot: %+v", r1)
	}
	// 2.5 GiB = 5242880 sectors; the last usable 5242846; 256 MiB =
	// 524288 sectors, aligned down to 1 MiB: start 4716544.
	if !strings.Contains(r1.table, "/dev/vda2 : start= 4716544, size= 524288, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4") || !strings.Contains(r1.table, `name="bake-state"`) {
		t.Errorf("no state partition at the end of the disk: %s", r1.table)
	}
	if !strings.Contains(r1.bind, "/dev/vda2[/data/var/lib/bake-test]") {
		t.Errorf("/var/lib/bake-test is not bound from the state partition: %q", r1.bind)
	}
	for _, want := range []string{"making partition bake-state on /dev/vda", "formatting /dev/vda2", "/var/lib/bake-test: copied onto the state volume (first use)"} {
		if !strings.Contains(r1.log, want) {
			t.Errorf("OLD's first boot: no %q in the log: %s", want, r1.log)
		}
	}
	// Root grew into the space before the state partition: from the
	// image's 2 GiB disk (root about 1.9 GiB) to about 2.2 GiB, and not
	// over the state partition.
	if r1.rootBytes < 2100<<20 || r1.rootBytes > 4716544*512 {
		t.Errorf("root is %d bytes: it did not grow up to the state partition", r1.rootBytes)
	}
	if r1.rootUUID != oldRootUUID+" root=UUID="+oldRootUUID || !strings.Contains(tableLine(r1.table, "/dev/vda1"), "uuid="+strings.ToUpper(oldRootPartUUID)) {
		t.Errorf("OLD's root: file system %s, entry %s; want %s, %s", r1.rootUUID, tableLine(r1.table, "/dev/vda1"), oldRootUUID, oldRootPartUUID)
	}
	_, st := statePartitionSum(t, disk)

	// 2. bake upgrade DISK NEW, then NEW's boot on the same state.
	upgradeTo := func(img, what string) {
		sum, _ := statePartitionSum(t, disk) // as the last boot left it
		t0 := time.Now()
		out, code := runBake(t, ctx, "upgrade", disk, img)
		if code != 0 {
			t.Fatalf("bake upgrade DISK %s: exit %d\n%s", what, code, out)
		}
		t.Logf("bake upgrade DISK %s: %s\n%s", what, since(t0), out)
		got, p := statePartitionSum(t, disk)
		if got != sum || p.GUID != st.GUID || p.FirstLBA != st.FirstLBA || p.LastLBA != st.LastLBA {
			t.Errorf("upgrade to %s: the state partition changed: %s %+v, was %s %+v", what, got, p, sum, st)
		}
		if !strings.Contains(out, "state partition p2 kept (sha256 "+sum+")") {
			t.Errorf("upgrade to %s: output: %s", what, out)
		}
	}
	same := func(r stateReport, what, image, rootUUID, rootPartUUID string) {
		t.Helper()
		// The image's own root, found by its UUIDs (the kernel's root=UUID=,
		// fstab, the GPT entry bake upgrade wrote).
		if r.rootUUID != rootUUID+" root=UUID="+rootUUID || !strings.Contains(tableLine(r.table, "/dev/vda1"), "uuid="+strings.ToUpper(rootPartUUID)) {
			t.Errorf("%s: root file system %s, entry %s; want %s, %s", what, r.rootUUID, tableLine(r.table, "/dev/vda1"), rootUUID, rootPartUUID)
		}
		if r.status != "ok" || r.made || r.marker != r1.marker || r.machineID != r1.machineID || r.image != image || r.failed != "" {
			t.Errorf("%s: %+v; want status ok, marker %s, machine ID %s, image %s", what, r, r1.marker, r1.machineID, image)
		}
		if strings.Contains(r.log, "first use") || strings.Contains(r.log, "making partition") || strings.Contains(r.log, "formatting") {
			t.Errorf("%s: state copied or a partition made again: %s", what, r.log)
		}
		// The state partition's entry is the same; root (NEW's PARTUUID)
		// starts and ends where OLD's did once grown.
		if tableLine(r.table, "/dev/vda2") != tableLine(r1.table, "/dev/vda2") || placement(tableLine(r.table, "/dev/vda1")) != placement(tableLine(r1.table, "/dev/vda1")) {
			t.Errorf("%s: the table is %s, was %s", what, r.table, r1.table)
		}
		if r.rootBytes < 2100<<20 || r.rootBytes > 4716544*512 {
			t.Errorf("%s: root is %d bytes: not grown to the state partition", what, r.rootBytes)
		}
	}
	upgradeTo(newImg, "NEW")
	r2 := bootState(t, disk, "NEW on the upgraded disk")
	same(r2, "NEW", "new", newRootUUID, newRootPartUUID)

	// 3. Rollback: bake upgrade DISK OLD.
	upgradeTo(oldImg, "OLD (rollback)")
	r3 := bootState(t, disk, "OLD again (rollback)")
	same(r3, "the rollback", "old", oldRootUUID, oldRootPartUUID)

	if fileSum(t, oldImg) != oldSum || fileSum(t, newImg) != newSum {
		t.Error("an image file changed")
	}
}

// tableLine is the sfdisk -d line of node in a report's table.
func tableLine(table, node string) string {
	for _, l := range strings.Split(table, ";") {
		if strings.HasPrefix(strings.TrimSpace(l), node+" : ") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// placement is the start and size of an sfdisk -d line.
func placement(line string) string {
	f := strings.Split(line, ",")
	if len(f) < 2 {
		return ""
	}
	return f[0] + "," + f[1]
}
