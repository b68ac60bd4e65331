package upgrade

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"github.com/bakeimg/bake/internal/testenv"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/firstboot"
)

const (
	typeRoot  = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	typeLinux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

func part(n int, name, typ, guid string, first, sectors uint64) cloudimg.Partition {
	return cloudimg.Partition{Number: n, Name: name, Type: typ, GUID: guid, FirstLBA: first, LastLBA: first + sectors - 1,
		Offset: int64(first) * 512, Size: int64(sectors) * 512}
}

// A bake disk (p14 bios, p15 esp, p1 root) of an instance that made its
// state partition (p2, at the end) and a NEW image.
func tables(rootSectors uint64) (disk, img *cloudimg.Table) {
	disk = &cloudimg.Table{Type: cloudimg.TableGPT, DiskGUID: "d1", Partitions: []cloudimg.Partition{
		part(1, "root", typeRoot, "r-old", 69632, 1000000),
		part(2, "bake-state", typeLinux, "s", 3000000, 1000000),
		part(14, "bios", cloudimg.TypeBIOSBoot, "b-old", 2048, 2048),
		part(15, "esp", cloudimg.TypeESP, "e-old", 4096, 65536),
	}}
	img = &cloudimg.Table{Type: cloudimg.TableGPT, DiskGUID: "n1", Partitions: []cloudimg.Partition{
		part(1, "root", typeRoot, "r-new", 69632, rootSectors),
		part(14, "bios", cloudimg.TypeBIOSBoot, "b-new", 2048, 2048),
		part(15, "esp", cloudimg.TypeESP, "e-new", 4096, 65536),
	}}
	return disk, img
}

func TestPlanRewrite(t *testing.T) {
	disk, img := tables(2000000)
	p, err := PlanRewrite(disk, 4100000*512, img, "bake-state")
	if err != nil {
		t.Fatal(err)
	}
	if p.State.GUID != "s" || len(p.System) != 3 || p.DiskGUID != "n1" || p.CopyEnd != (69632+2000000)*512 || len(p.Dropped) != 3 {
		t.Errorf("plan %+v", p)
	}
	s := p.String()
	for _, want := range []string{"keep   p2  bake-state", "write  p1  root", "from NEW_IMAGE (PARTUUID r-new)", "root grows into it"} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in\n%s", want, s)
		}
	}
	// Exactly up to the state partition fits.
	_, img = tables(3000000 - 69632)
	if _, err := PlanRewrite(disk, 4100000*512, img, "bake-state"); err != nil {
		t.Errorf("a NEW that ends where the state begins: %v", err)
	}
}

func TestPlanRewriteRefuses(t *testing.T) {
	for _, c := range []struct {
		name, want string
		edit       func(disk, img *cloudimg.Table) string
	}{
		{"too big", "NEW_IMAGE does not fit: its system partitions end at sector 3000001 (1464.8 MiB), DISK's state partition starts at sector 3000000", func(d, i *cloudimg.Table) string {
			i.Partitions[0] = part(1, "root", typeRoot, "r-new", 69632, 3000000-69632+1)
			return "bake-state"
		}},
		{"no state", `DISK has no partition named "st2"`, func(d, i *cloudimg.Table) string { return "st2" }},
		{"two states", "2 partitions named", func(d, i *cloudimg.Table) string {
			d.Partitions = append(d.Partitions, part(3, "bake-state", typeLinux, "s2", 100, 10))
			return "bake-state"
		}},
		{"after state", "after its state partition", func(d, i *cloudimg.Table) string {
			d.Partitions = append(d.Partitions, part(4, "data", typeLinux, "x", 3500000, 10))
			return "bake-state"
		}},
		{"foreign", "neither a system partition", func(d, i *cloudimg.Table) string {
			d.Partitions = append(d.Partitions, part(5, "swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "x", 2800000, 10))
			return "bake-state"
		}},
		{"instance disk as NEW", "it is an instance's disk", func(d, i *cloudimg.Table) string {
			i.Partitions = append(i.Partitions, part(2, "bake-state", typeLinux, "s", 3000000, 10))
			return "bake-state"
		}},
		{"mbr", "not GPT", func(d, i *cloudimg.Table) string { d.Type = cloudimg.TableDOS; return "bake-state" }},
	} {
		disk, img := tables(2000000)
		label := c.edit(disk, img)
		_, err := PlanRewrite(disk, 4100000*512, img, label)
		var b *BadInput
		if !errors.As(err, &b) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want BadInput %q", c.name, err, c.want)
		}
	}
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedTools(t, tools...)
}

func run(t *testing.T, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// mkImage makes a bake-like raw disk of mib MiB: p14, p15 (FAT), p1 root
// (ext4 of rootMiB from tree) and, with state, p2 bake-state at the end
// (ext4 labelled bake-state from stateTree).
func mkImage(t *testing.T, path string, mib, rootMiB int64, tree, stateTree string) {
	t.Helper()
	os.Remove(path)
	run(t, "", "truncate", "-s", strings.TrimSpace(itoa(mib))+"M", path)
	table := "label: gpt\n1 : start=69632, size=" + itoa(rootMiB*2048) + ", type=" + typeRoot + ", name=root\n" +
		"14 : start=2048, size=2048, type=" + cloudimg.TypeBIOSBoot + ", name=bios\n" +
		"15 : start=4096, size=65536, type=" + cloudimg.TypeESP + ", name=esp\n"
	run(t, table, "sfdisk", "-q", path)
	run(t, "", "mkfs.vfat", "--offset=4096", path, "32768")
	run(t, "", "mkfs.ext4", "-q", "-F", "-d", tree, "-E", "offset="+itoa(69632*512), path, itoa(rootMiB)+"M")
	if stateTree != "" {
		start := (mib - 64) * 2048
		run(t, "2 : start="+itoa(start)+", size="+itoa(32*2048)+", type="+typeLinux+", name=bake-state\n", "sfdisk", "-q", "--append", path)
		run(t, "", "mkfs.ext4", "-q", "-F", "-L", "bake-state", "-d", stateTree, "-E", "offset="+itoa(start*512), path, "32M")
	}
}

func itoa(n int64) string { return formatInt(n) }

func formatInt(n int64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	d := t.TempDir()
	for p, c := range files {
		f := filepath.Join(d, p)
		os.MkdirAll(filepath.Dir(f), 0o755)
		if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func partConf(label string, size int64) string {
	return firstboot.StateConfig(firstboot.StateOptions{Label: label, PartitionSize: size, Paths: []string{"/etc/machine-id"}, ImageName: "x"})
}

func stateHash(t *testing.T, disk string) string {
	t.Helper()
	img, err := cloudimg.Open(context.Background(), disk)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, p := range img.Table.Partitions {
		if p.Name == "bake-state" {
			h := sha256.New()
			io.Copy(h, io.NewSectionReader(img, p.Offset, p.Size))
			return hex.EncodeToString(h.Sum(nil))
		}
	}
	t.Fatal("no state partition")
	return ""
}

func fileHash(t *testing.T, f string) string {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// The whole upgrade on small disk images (no root, no loop device): NEW's
// root and table, DISK's state partition byte for byte; raw and qcow2
// disks; back again (the rollback).
func TestRun(t *testing.T) {
	need(t, "sfdisk", "mkfs.ext4", "mkfs.vfat", "debugfs", "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	old, nw, disk := filepath.Join(dir, "old.raw"), filepath.Join(dir, "new.raw"), filepath.Join(dir, "disk.raw")
	mkImage(t, old, 200, 80, tree(t, map[string]string{"etc/bake/state.conf": partConf("bake-state", 32<<20), "etc/image": "old"}), "")
	mkImage(t, nw, 200, 90, tree(t, map[string]string{"etc/bake/state.conf": partConf("bake-state", 32<<20), "etc/image": "new"}), "")
	mkImage(t, disk, 300, 80, tree(t, map[string]string{"etc/bake/state.conf": partConf("bake-state", 32<<20), "etc/image": "old"}),
		tree(t, map[string]string{"data/etc/machine-id": "0123456789abcdef0123456789abcdef\n"}))
	before := stateHash(t, disk)
	for _, c := range []struct{ disk, img, want string }{{disk, nw, "new"}, {disk, old, "old"}} {
		res, err := Run(ctx, Options{Disk: c.disk, Image: c.img})
		if err != nil {
			t.Fatalf("%s to %s: %v", c.disk, c.img, err)
		}
		if res.StateSHA256 != before || stateHash(t, c.disk) != before {
			t.Errorf("state changed: %s %s", res.StateSHA256, before)
		}
		b, err := cloudimg.ReadRootFile(ctx, c.disk, "/etc/image", 100)
		if err != nil || string(b) != c.want {
			t.Errorf("root's /etc/image %q %v, want %q", b, err, c.want)
		}
		img, _ := cloudimg.Open(ctx, c.img)
		d, _ := cloudimg.Open(ctx, c.disk)
		if d.Size != 300<<20 || d.Table.Partition(1).GUID != img.Table.Partition(1).GUID || d.Table.Partition(15).GUID != img.Table.Partition(15).GUID || d.Table.DiskGUID != img.Table.DiskGUID {
			t.Errorf("not NEW's table: %+v", d.Table)
		}
		img.Close()
		d.Close()
		if m, _ := filepath.Glob(filepath.Join(dir, ".bake-upgrade-*")); len(m) != 0 {
			t.Errorf("left behind: %v", m)
		}
	}
	// qcow2 stays qcow2.
	q := filepath.Join(dir, "disk.qcow2")
	run(t, "", "qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, q)
	if _, err := Run(ctx, Options{Disk: q, Image: nw}); err != nil {
		t.Fatal(err)
	}
	if img, err := cloudimg.Open(ctx, q); err != nil || img.Format != cloudimg.FormatQcow2 {
		t.Fatalf("%v %v", img, err)
	}
	if stateHash(t, q) != before {
		t.Error("qcow2: state changed")
	}
}

// Refused (BadInput), DISK untouched: NEW without a state partition
// section, NEW with a volume, NEW too large, a DISK without a state
// partition, a DISK a process has open.
func TestRunRefuses(t *testing.T) {
	need(t, "sfdisk", "mkfs.ext4", "mkfs.vfat", "debugfs", "sleep")
	ctx := context.Background()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.raw")
	mkImage(t, disk, 300, 80, tree(t, map[string]string{"etc/image": "old"}), tree(t, map[string]string{"x": "y"}))
	plain := filepath.Join(dir, "plain.raw")
	mkImage(t, plain, 300, 80, tree(t, map[string]string{"etc/image": "old"}), "")
	sum := fileHash(t, disk)
	vol := firstboot.StateConfig(firstboot.StateOptions{Label: "bake-state", Paths: []string{"/a"}})
	for _, c := range []struct{ name, disk, conf, want string }{
		{"no state section", disk, "", "built without a state: section"},
		{"volume", disk, vol, "keeps its state on a volume"},
		{"too big", disk, partConf("bake-state", 32<<20), "NEW_IMAGE does not fit"},
		{"other label", disk, partConf("st9", 32<<20), `no partition named "st9"`},
		{"no state partition", plain, partConf("bake-state", 32<<20), "no state partition"},
	} {
		files := map[string]string{"etc/image": "new"}
		if c.conf != "" {
			files["etc/bake/state.conf"] = c.conf
		}
		nw := filepath.Join(dir, "new.raw")
		root := int64(80)
		if c.name == "too big" {
			root = 250
		}
		mkImage(t, nw, 300, root, tree(t, files), "")
		_, err := Run(ctx, Options{Disk: c.disk, Image: nw})
		var b *BadInput
		if !errors.As(err, &b) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want BadInput %q", c.name, err, c.want)
		}
	}
	nw := filepath.Join(dir, "new.raw")
	mkImage(t, nw, 300, 80, tree(t, map[string]string{"etc/bake/state.conf": partConf("bake-state", 32<<20)}), "")
	cmd := exec.Command("sh", "-c", "exec 3<"+disk+"; sleep 60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for i := 0; i < 50 && len(InUse(disk)) == 0; i++ {
		exec.Command("sleep", "0.1").Run()
	}
	_, err := Run(ctx, Options{Disk: disk, Image: nw})
	var b *BadInput
	if !errors.As(err, &b) || !strings.Contains(err.Error(), "is in use (process") || !strings.Contains(err.Error(), "stop the instance first") {
		t.Errorf("in use: %v", err)
	}
	if fileHash(t, disk) != sum {
		t.Error("DISK changed")
	}
	// Interrupted: nothing left, DISK unchanged.
	cmd.Process.Kill()
	cmd.Wait()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Run(cctx, Options{Disk: disk, Image: nw}); err == nil {
		t.Error("a cancelled run succeeded")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".bake-upgrade-*")); len(m) != 0 || fileHash(t, disk) != sum {
		t.Errorf("after a cancelled run: %v, DISK changed: %v", m, fileHash(t, disk) != sum)
	}
}
