//go:build vm

package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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

// serialState is the report of one boot of bake verify's upgrade run,
// from the serial log verify kept in its report directory.
func serialState(t *testing.T, dir, boot string) stateReport {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "serial-"+boot+".log"))
	if err != nil {
		t.Fatalf("%s: %v", boot, err)
	}
	if !reportRE.Match(b) {
		t.Fatalf("%s: no report on the serial console:\n%s", boot, lastLines(string(b), 60))
	}
	r := parseStateReport(string(b))
	r.serialTail = lastLines(string(b), 40)
	t.Logf("%s: status %s, marker %s (made %v), image %s, machine ID %s, root %d bytes\n  bind %s\n  table %s\n  log %s",
		boot, r.status, r.marker, r.made, r.image, r.machineID, r.rootBytes, r.bind, r.table, r.log)
	return r
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestStatePartitionUpgrade (issue 15, docs/state.md) runs the user's
// proof, `bake verify NEW --upgrade-from OLD`, on two images with state:
// {partition: ...}: verify makes the instance's disk from OLD, enlarged
// (OLD's 2 GiB, the 256 MiB partition and 256 MiB for root), OLD's first
// boot (verify's seed) makes the state partition at its end before root
// grows, which then stops at it; verify rewrites the disk with NEW by
// bake upgrade's code (the state partition byte for byte) and NEW boots
// from its own root on the same state with no seed (upgrade.identity,
// upgrade.new-image, the instance's checks, upgrade.root-disk-secrets on
// the disk but its state partition); then back to OLD (upgrade.rollback).
// Each boot's serial report (verify keeps the logs) is held to the
// partition's place and size and to each image's root UUIDs.
func TestStatePartitionUpgrade(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "sfdisk", "dnsmasq", "ip")
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

	run := runVerify(t, ctx, newImg, "--upgrade-from", oldImg, "--timeout", "25m")
	requireAllPass(t, run)
	rep := run.report
	for _, id := range []string{"upgrade.old-boot", "upgrade.identity", "upgrade.new-image", "upgrade.root-disk-secrets", "upgrade.rollback",
		"ssh.key-login", "system.running", "ssh.effective-config", "ssh.password-refused", "ssh.root-refused"} {
		if st := rep.status("bios", id); st != "pass" {
			t.Errorf("bios/%s: %q, want pass", id, st)
		}
	}
	// Each rewrite is bake upgrade's, keeping the state partition.
	for _, id := range []string{"upgrade.identity", "upgrade.rollback"} {
		if ev := rep.evidence("bios", id); !strings.Contains(ev, "state partition p2 kept (sha256 ") {
			t.Errorf("bios/%s: no bake upgrade keeping p2 in its evidence:\n%s", id, ev)
		}
	}
	if ev := rep.evidence("bios", "upgrade.old-boot"); !strings.Contains(ev, "state partition /dev/vda2 made and formatted") {
		t.Errorf("bios/upgrade.old-boot: no state partition made in its evidence:\n%s", ev)
	}
	if ev := rep.evidence("bios", "upgrade.root-disk-secrets"); !strings.Contains(ev, `but its state partition p2 "bake-state" (256 MiB at 2303 MiB`) {
		t.Errorf("bios/upgrade.root-disk-secrets: not the disk but its state partition:\n%s", ev)
	}

	// 1. OLD's first boot: the partition is made at the end, root grows
	// up to it, the state is on it.
	r1 := serialState(t, run.dir, "old")
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
	// 2. NEW on the upgraded disk, no seed.
	same(serialState(t, run.dir, "new"), "NEW", "new", newRootUUID, newRootPartUUID)
	// 3. The rollback: OLD again.
	same(serialState(t, run.dir, "rollback"), "the rollback", "old", oldRootUUID, oldRootPartUUID)

	if fileSum(t, oldImg) != oldSum || fileSum(t, newImg) != newSum {
		t.Error("an image file changed")
	}
	assertVerifyCleanedUp(t, run.out)
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
