package firstboot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestStatePartitionScriptSyntax(t *testing.T) {
	needTools(t, "dash")
	f := filepath.Join(t.TempDir(), "state-partition")
	os.WriteFile(f, []byte(statePartitionScript), 0o755)
	if out, err := exec.Command("dash", "-n", f).CombinedOutput(); err != nil {
		t.Errorf("dash -n: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("shellcheck"); err == nil {
		if out, err := exec.Command("shellcheck", "-s", "sh", "-e", "SC1090,SC2034", f).CombinedOutput(); err != nil {
			t.Errorf("shellcheck: %s", out)
		}
	}
}

// bakeLikeDisk is a GPT disk image laid out like bake's (p14 bios, p15
// esp, p1 root to the end) of mib MiB, then grown to grow MiB (a VM disk
// enlarged before first boot: the backup GPT is not at the end).
func bakeLikeDisk(t *testing.T, mib, grow int64) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, mib<<20); err != nil {
		t.Fatal(err)
	}
	table := "label: gpt\n" +
		"1 : start=69632, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n" +
		"14 : start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\n" +
		"15 : start=4096, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
	cmd := exec.Command("sfdisk", "-q", f)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	if err := os.Truncate(f, grow<<20); err != nil {
		t.Fatal(err)
	}
	return f
}

func runStatePartition(t *testing.T, disk string, size int64) (string, error) {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "state-partition")
	os.WriteFile(script, []byte(statePartitionScript), 0o755)
	conf := filepath.Join(dir, "state.conf")
	os.WriteFile(conf, []byte(StateConfig(StateOptions{Label: "bake-state", PartitionSize: size, Paths: []string{"/a"}})), 0o644)
	cmd := exec.Command("dash", script)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "BAKE_STATE_CONF=" + conf, "BAKE_STATE_DISK=" + disk}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func dumpTable(t *testing.T, disk string) string {
	t.Helper()
	out, err := exec.Command("sfdisk", "-d", disk).Output()
	if err != nil {
		t.Fatalf("sfdisk -d: %v", err)
	}
	return string(out)
}

// The partition is made at the end of an enlarged disk, after the last
// partition, in the first free entry (2), and no other entry changes; a
// second run finds it and changes nothing.
func TestStatePartitionMade(t *testing.T) {
	needTools(t, "dash", "sfdisk")
	disk := bakeLikeDisk(t, 100, 400)
	before := dumpTable(t, disk)
	out, err := runStatePartition(t, disk, 100<<20)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	after := dumpTable(t, disk)
	// 400 MiB = 819200 sectors; the last usable one 819166; 204800
	// sectors of 100 MiB, aligned down to 1 MiB: start 612352.
	if !strings.Contains(after, "disk.raw2 : start=      612352, size=      204800, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4") || !strings.Contains(after, `name="bake-state"`) {
		t.Errorf("no state partition at the end:\n%s\n%s", after, out)
	}
	if !strings.Contains(after, "last-lba: 819166") {
		t.Errorf("the backup GPT was not moved to the end:\n%s", after)
	}
	for _, l := range strings.Split(before, "\n") {
		if strings.HasPrefix(l, "disk.raw1") || strings.HasPrefix(l, "disk.raw14") || strings.HasPrefix(l, "disk.raw15") {
			if !strings.Contains(after, l+"\n") {
				t.Errorf("partition changed: %q not in\n%s", l, after)
			}
		}
	}
	out, err = runStatePartition(t, disk, 100<<20)
	if err != nil || !strings.Contains(out, "disk.raw2 (label bake-state)") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if again := dumpTable(t, disk); again != after {
		t.Errorf("the second run changed the table:\n%s", again)
	}
}

// No room after the last partition (a disk not enlarged, or one whose root
// already grew): refused, saying how large the disk must be; nothing
// written.
func TestStatePartitionNoRoom(t *testing.T) {
	needTools(t, "dash", "sfdisk")
	disk := bakeLikeDisk(t, 100, 150)
	before, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	out, err := runStatePartition(t, disk, 100<<20)
	if err == nil || !strings.Contains(out, "NO ROOM for the state partition") || !strings.Contains(out, "at least 201 MiB") || !strings.Contains(out, "do not start") {
		t.Fatalf("not refused: %v\n%s", err, out)
	}
	after, _ := os.ReadFile(disk)
	if string(after) != string(before) {
		t.Error("the disk changed")
	}
}

func TestStatePartitionUnit(t *testing.T) {
	u := StatePartitionUnit()
	for _, want := range []string{"DefaultDependencies=no\n", "Before=bake-growroot.service bake-state.service sysinit.target", "ExecStart=" + StatePartitionScriptPath + "\n", "WantedBy=sysinit.target"} {
		if !strings.Contains(u, want) {
			t.Errorf("no %q in\n%s", want, u)
		}
	}
	o := StateOptions{Label: "bake-state", PartitionSize: 1 << 30, Paths: []string{"/a"}}
	if !strings.Contains(StateUnit(o), "After=local-fs.target systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service bake-state-partition.service\n") {
		t.Errorf("bake-state.service not after the partition:\n%s", StateUnit(o))
	}
	if !strings.Contains(StateConfig(o), "PARTITION_SIZE='1073741824'\n") {
		t.Errorf("conf:\n%s", StateConfig(o))
	}
	var paths []string
	for _, f := range StateFiles(o) {
		paths = append(paths, f.Path)
	}
	for _, f := range StateFiles(o) {
		if strings.HasSuffix(f.Path, "/bake-growroot.service.d/20-bake-state-partition.conf") && !strings.Contains(string(f.Content), "Requires=bake-state-partition.service\nAfter=bake-state-partition.service\n") {
			t.Errorf("growroot's drop-in:\n%s", f.Content)
		}
	}
	if !strings.Contains(strings.Join(paths, " "), "/etc/systemd/system/bake-growroot.service.d/20-bake-state-partition.conf") {
		t.Errorf("no growroot drop-in in %v", paths)
	}
	if !strings.Contains(strings.Join(paths, " "), StatePartitionUnitPath) || strings.Join(StateUnits(o), " ") != "bake-state-partition.service bake-state.service" {
		t.Errorf("files %v units %v", paths, StateUnits(o))
	}
	if strings.Contains(StateConfig(StateOptions{Label: "x"}), "PARTITION") || len(StateUnits(StateOptions{})) != 1 {
		t.Error("a volume's image has partition settings")
	}
}

// With a state partition, no file system with the label is a failure
// (status missing), not a warning: the guarded services do not start.
func TestStateMissingPartition(t *testing.T) {
	needTools(t, "mountpoint")
	dir := t.TempDir()
	mnt := filepath.Join(dir, "vol")
	conf := stateConf(t, StateOptions{Label: "no-such-label-x", PartitionSize: 1 << 30, Paths: []string{"/var/lib/x"}})
	out, err := runState(t, dir, mnt, conf, `main`)
	if err == nil || !strings.Contains(out, "NO STATE PARTITION") || !strings.Contains(out, "do not start") {
		t.Fatalf("not refused: %v\n%s", err, out)
	}
	if got := readFile(t, filepath.Join(dir, "status")); got != "missing\n" {
		t.Errorf("status %q", got)
	}
}
