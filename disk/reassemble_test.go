package disk

import (
	"bytes"
	"context"
	"fmt"
	"github.com/bakeimg/bake/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedTools(t, tools...)
}

type basePart struct {
	num        int
	typ        string
	first, end uint64
	guid, name string
}

// ubuntuShapedBase writes a small disk shaped like Ubuntu's cloudimg (p1
// root labelled cloudimg-rootfs, p14 BIOS boot, p15 ESP, p16 /boot) with
// recognisable bytes in the MBR boot code, p14 and p15. No root needed.
func ubuntuShapedBase(t *testing.T, dir string, separateBoot bool) (string, []basePart) {
	t.Helper()
	img := filepath.Join(dir, "base.raw")
	size := int64(96 * mib)
	parts := []basePart{
		{1, cloudimg.TypeLinuxData, 131072, 196574, "0b0a7b00-0001-4c2d-8e4f-000000000001", ""},
		{14, cloudimg.TypeBIOSBoot, 2048, 10239, "0b0a7b00-0001-4c2d-8e4f-000000000014", ""},
		{15, cloudimg.TypeESP, 10240, 75775, "0b0a7b00-0001-4c2d-8e4f-000000000015", "UEFI"},
	}
	if separateBoot {
		parts = append(parts, basePart{16, cloudimg.TypeXBOOTLDR, 75776, 131071, "0b0a7b00-0001-4c2d-8e4f-000000000016", ""})
	} else {
		parts[0].typ = cloudimg.TypeRootX8664
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "0b0a7b00-0001-4c2d-8e4f-000000000000"}
	for _, p := range parts {
		tbl.Partitions = append(tbl.Partitions, &gpt.Partition{Index: p.num, Start: p.first, End: p.end, Size: (p.end - p.first + 1) * 512,
			Type: gpt.Type(p.typ), GUID: p.guid, Name: p.name, Attributes: uint64(p.num) << 48})
	}
	if err := tbl.Write(f, size); err != nil {
		t.Fatal(err)
	}
	code := bytes.Repeat([]byte{0xb8}, 440)
	f.WriteAt(code, 0)
	f.WriteAt(bytes.Repeat([]byte("core.img"), 1000), 2048*512)
	f.WriteAt(bytes.Repeat([]byte("ESP!"), 5000), 10240*512)
	f.Close()

	rootTree := filepath.Join(dir, "basetree")
	writeFiles(t, rootTree, map[string]string{
		"etc/os-release":      "ID=ubuntu\nVERSION_ID=\"24.04\"\nPRETTY_NAME=\"Ubuntu 24.04 LTS\"\n",
		"var/lib/dpkg/status": "Package: a\nStatus: install ok installed\n",
		"boot/vmlinuz-1.0":    "k",
	})
	mkfsAt(t, img, 131072*512, (196574-131072+1)*512, "cloudimg-rootfs", "0b0a7b00-0002-4c2d-8e4f-0000000000f1", rootTree)
	if separateBoot {
		bootTree := filepath.Join(dir, "basebootree")
		writeFiles(t, bootTree, map[string]string{"vmlinuz-1.0": "k", "grub/grub.cfg": "x"})
		mkfsAt(t, img, 75776*512, (131071-75776+1)*512, "BOOT", "0b0a7b00-0002-4c2d-8e4f-0000000000f6", bootTree)
	}
	return img, parts
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func mkfsAt(t *testing.T, img string, off, size int64, label, uuid, dir string) {
	t.Helper()
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-t", "ext4", "-E", fmt.Sprintf("offset=%d,hash_seed=%s", off, "5eed0000-0000-4000-8000-"+uuid[24:]),
		"-U", uuid, "-L", label, "-d", dir, img, fmt.Sprintf("%dk", size/1024)).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

func debugfsCat(t *testing.T, img string, off int64, file string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-c", "-R", "cat "+file, fmt.Sprintf("%s?offset=%d", img, off)).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	return string(out)
}

func TestReassembleKeepsIdentity(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	for _, separate := range []bool{true, false} {
		t.Run(fmt.Sprintf("separate-boot=%v", separate), func(t *testing.T) {
			dir := t.TempDir()
			base, _ := ubuntuShapedBase(t, dir, separate)
			ctx := context.Background()
			bl, err := cloudimg.Inspect(ctx, base)
			if err != nil {
				t.Fatal(err)
			}
			wantBoot := 0
			if separate {
				wantBoot = 16
			}
			if bl.Root != 1 || bl.Boot != wantBoot || bl.ESP != 15 || bl.BIOSBoot != 14 {
				t.Fatalf("base layout: root %d boot %d esp %d bios %d", bl.Root, bl.Boot, bl.ESP, bl.BIOSBoot)
			}
			baseBytes, _ := os.ReadFile(base)

			tree := filepath.Join(dir, "tree")
			writeFiles(t, tree, map[string]string{
				"etc/os-release":       "ID=ubuntu\n",
				"etc/added-by-recipe":  "hello",
				"boot/vmlinuz-2.0":     "new kernel",
				"boot/grub/grub.cfg":   "cfg",
				"usr/share/doc/x/file": strings.Repeat("x", 100000),
			})
			out := filepath.Join(dir, "out.raw")
			res, err := Reassemble(ctx, ReassembleSpec{Base: base, Layout: bl, Tree: tree, Output: out, Size: 160 * mib,
				SourceDateEpoch: 1700000000, Runner: execx.Host{}, Log: testLog{t}})
			if err != nil {
				t.Fatal(err)
			}
			if res.Size != 160*mib {
				t.Errorf("size %d", res.Size)
			}
			if after, _ := os.ReadFile(base); !bytes.Equal(after, baseBytes) {
				t.Error("the base image was modified")
			}
			// The tree is as it was: /boot back in place.
			if b, err := os.ReadFile(filepath.Join(tree, "boot/vmlinuz-2.0")); err != nil || string(b) != "new kernel" {
				t.Errorf("tree's /boot not restored: %v", err)
			}
			if m, _ := filepath.Glob(filepath.Join(dir, ".bake-boot-*")); len(m) > 0 {
				t.Errorf("staging left: %v", m)
			}

			nl, err := cloudimg.Inspect(ctx, out)
			if err != nil {
				t.Fatal(err)
			}
			if nl.Table.DiskGUID != bl.Table.DiskGUID {
				t.Errorf("disk GUID %s, want %s", nl.Table.DiskGUID, bl.Table.DiskGUID)
			}
			if len(nl.Table.Partitions) != len(bl.Table.Partitions) {
				t.Fatalf("partitions %d, want %d", len(nl.Table.Partitions), len(bl.Table.Partitions))
			}
			for i, np := range nl.Table.Partitions {
				bp := bl.Table.Partitions[i]
				if np.Number != bp.Number || np.GUID != bp.GUID || np.Type != bp.Type || np.Name != bp.Name || np.Attributes != bp.Attributes || np.FirstLBA != bp.FirstLBA {
					t.Errorf("partition %d: got %+v, want %+v", bp.Number, np, bp)
				}
				if np.FS.UUID != bp.FS.UUID || np.FS.Label != bp.FS.Label || np.FS.HashSeed != bp.FS.HashSeed {
					t.Errorf("partition %d filesystem: got %+v, want %+v", bp.Number, np.FS, bp.FS)
				}
			}
			newSectors := uint64(160 * mib / 512)
			if r := nl.RootPartition(); r.LastLBA != newSectors-34 {
				t.Errorf("root ends at %d, want %d (the last usable LBA)", r.LastLBA, newSectors-34)
			}
			if nl.Table.AlternateLBA != newSectors-1 || nl.Table.LastUsableLBA != newSectors-34 {
				t.Errorf("backup GPT at %d, last usable %d", nl.Table.AlternateLBA, nl.Table.LastUsableLBA)
			}
			outBytes, _ := os.ReadFile(out)
			if !bytes.Equal(outBytes[:446], baseBytes[:446]) {
				t.Error("MBR boot code and disk signature differ")
			}
			for _, n := range []int{14, 15} {
				p := bl.Table.Partition(n)
				if !bytes.Equal(outBytes[p.Offset:p.Offset+p.Size], baseBytes[p.Offset:p.Offset+p.Size]) {
					t.Errorf("partition %d bytes differ", n)
				}
			}
			root := nl.RootPartition()
			if got := debugfsCat(t, out, root.Offset, "/etc/added-by-recipe"); got != "hello" {
				t.Errorf("root fs: added file = %q", got)
			}
			if separate {
				b := nl.BootPartition()
				if got := debugfsCat(t, out, b.Offset, "/vmlinuz-2.0"); got != "new kernel" {
					t.Errorf("/boot fs: kernel = %q", got)
				}
				if got := debugfsCat(t, out, root.Offset, "/boot/vmlinuz-2.0"); got != "" {
					t.Errorf("root fs has /boot content: %q", got)
				}
			} else if got := debugfsCat(t, out, root.Offset, "/boot/vmlinuz-2.0"); got != "new kernel" {
				t.Errorf("root fs: kernel = %q", got)
			}
			if _, err := exec.LookPath("sgdisk"); err == nil {
				v, err := exec.Command("sgdisk", "-v", out).CombinedOutput()
				if err != nil || !strings.Contains(string(v), "No problems found") {
					t.Errorf("sgdisk -v: %v\n%s", err, v)
				}
			}
			if _, err := exec.LookPath("e2fsck"); err == nil {
				// e2fsck has no offset option; check a copy of the partition.
				part := filepath.Join(dir, "root.img")
				os.WriteFile(part, outBytes[root.Offset:root.Offset+root.Size], 0o644)
				if v, err := exec.Command("e2fsck", "-fn", part).CombinedOutput(); err != nil {
					t.Errorf("e2fsck: %v\n%s", err, v)
				}
				os.Remove(part)
			}
		})
	}
}

func TestReassembleRefuses(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	base, _ := ubuntuShapedBase(t, dir, false)
	ctx := context.Background()
	bl, err := cloudimg.Inspect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	writeFiles(t, tree, map[string]string{"etc/os-release": "ID=x\n"})
	out := filepath.Join(dir, "out.raw")
	_, err = Reassemble(ctx, ReassembleSpec{Base: base, Layout: bl, Tree: tree, Output: out, Size: 32 * mib})
	if err == nil || !strings.Contains(err.Error(), "smaller than the base image") {
		t.Errorf("smaller disk: %v", err)
	}
	writeFiles(t, tree, map[string]string{"big": strings.Repeat("y", 80<<20)})
	_, err = Reassemble(ctx, ReassembleSpec{Base: base, Layout: bl, Tree: tree, Output: out, Size: 96 * mib})
	if err == nil || !strings.Contains(err.Error(), "smaller than the tree") {
		t.Errorf("tree too big: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed Reassemble left its output")
	}
	mbr := *bl
	mbr.Table.Type = cloudimg.TableDOS
	if _, err := Reassemble(ctx, ReassembleSpec{Base: base, Layout: &mbr, Tree: tree, Output: out}); err == nil || !strings.Contains(err.Error(), "MBR") {
		t.Errorf("MBR: %v", err)
	}
}

func TestPrepareCloudBoot(t *testing.T) {
	tree := t.TempDir()
	writeFiles(t, tree, map[string]string{
		"boot/vmlinuz-6.1.0-9-cloud-amd64":     "old",
		"boot/vmlinuz-6.1.0-28-cloud-amd64":    "new",
		"boot/initrd.img-6.1.0-28-cloud-amd64": "i",
		"etc/os-release":                       "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
		"boot/grub/grub.cfg":                   "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1.0-9-cloud-amd64 BOOT_IMAGE=/x root=PARTUUID=d5b1a5e0-0001-4f1e-9a3b-000000000001 ro console=tty0 console=ttyS0,115200 $vt_handoff\n}\n",
	})
	l := &cloudimg.Layout{Root: 1, Table: cloudimg.Table{Partitions: []cloudimg.Partition{{Number: 1, FS: cloudimg.Filesystem{UUID: "d5b1a5e0-0002-4f1e-9a3b-0000000000f1"}}}}}
	if err := PrepareCloudBoot(CloudBootSpec{Tree: tree, Layout: l, KernelCmdline: "console=ttyS0,115200 quiet", SourceDateEpoch: 1700000000}); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(tree, "boot/grub/grub.cfg"))
	for _, want := range []string{
		"search --no-floppy --fs-uuid --set=root d5b1a5e0-0002-4f1e-9a3b-0000000000f1",
		"linux /boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=d5b1a5e0-0001-4f1e-9a3b-000000000001 ro console=tty0 console=ttyS0,115200 quiet\n",
		"initrd /boot/initrd.img-6.1.0-28-cloud-amd64",
		"Debian GNU/Linux 12 (bookworm), with Linux 6.1.0-28-cloud-amd64",
	} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("grub.cfg lacks %q:\n%s", want, cfg)
		}
	}
	// An explicit kernel wins over the newest.
	if err := PrepareCloudBoot(CloudBootSpec{Tree: tree, Layout: l, Kernel: "6.1.0-9-cloud-amd64"}); err != nil {
		t.Fatal(err)
	}
	cfg, _ = os.ReadFile(filepath.Join(tree, "boot/grub/grub.cfg"))
	if !strings.Contains(string(cfg), "linux /boot/vmlinuz-6.1.0-9-cloud-amd64 root=PARTUUID=d5b1a5e0-0001-4f1e-9a3b-000000000001 ro") {
		t.Errorf("explicit kernel:\n%s", cfg)
	}
	if err := PrepareCloudBoot(CloudBootSpec{Tree: tree, Layout: l, Kernel: "9.9"}); err == nil {
		t.Error("a missing kernel was accepted")
	}
	// Separate /boot: paths relative to it, searched by its UUID.
	l.Boot = 16
	l.Table.Partitions = append(l.Table.Partitions, cloudimg.Partition{Number: 16, FS: cloudimg.Filesystem{UUID: "0b0a7b00-0002-4c2d-8e4f-0000000000f6"}})
	os.WriteFile(filepath.Join(tree, "boot/grub/grub.cfg"), []byte("linux /vmlinuz-1 root=LABEL=cloudimg-rootfs ro\n"), 0o644)
	if err := PrepareCloudBoot(CloudBootSpec{Tree: tree, Layout: l}); err != nil {
		t.Fatal(err)
	}
	cfg, _ = os.ReadFile(filepath.Join(tree, "boot/grub/grub.cfg"))
	if !strings.Contains(string(cfg), "--set=root 0b0a7b00-0002-4c2d-8e4f-0000000000f6") || !strings.Contains(string(cfg), "linux /vmlinuz-6.1.0-28-cloud-amd64 root=LABEL=cloudimg-rootfs ro\n") {
		t.Errorf("separate /boot grub.cfg:\n%s", cfg)
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// The ESP keeps its FAT type, volume ID, label and other files when the
// rebuilt BOOTX64.EFI replaces the old one (mtools, in place).
func TestReplaceEFIBinary(t *testing.T) {
	needTools(t, "mkfs.vfat", "mcopy", "mmd", "mdir", "mtype")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 200*mib)
	const off = 8192 * 512
	if out, err := exec.Command("mkfs.vfat", "-F", "16", "-n", "UEFI", "-i", "0B0A7B15", "--offset", "8192", img, fmt.Sprint(124*1024)).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat: %v\n%s", err, out)
	}
	env := append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	at := fmt.Sprintf("%s@@%d", img, off)
	old := filepath.Join(dir, "shim")
	os.WriteFile(old, []byte("shim"), 0o644)
	for _, args := range [][]string{{"mmd", "-i", at, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"}, {"mcopy", "-i", at, old, "::/EFI/BOOT/BOOTX64.EFI"}, {"mcopy", "-i", at, old, "::/EFI/debian/shimx64.efi"}} {
		c := exec.Command(args[0], args[1:]...)
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	before, _ := os.ReadFile(img)
	spec := ReassembleSpec{Output: img, SourceDateEpoch: 1700000000, Runner: execx.Host{}, Log: testLog{t}}
	if err := replaceEFIBinary(context.Background(), spec, off, []byte("new grub image")); err != nil {
		t.Fatal(err)
	}
	mtype := func(p string) string {
		c := exec.Command("mtype", "-i", at, p)
		c.Env = env
		out, err := c.Output()
		if err != nil {
			t.Fatalf("mtype %s: %v", p, err)
		}
		return string(out)
	}
	if got := mtype("::/EFI/BOOT/BOOTX64.EFI"); got != "new grub image" {
		t.Errorf("BOOTX64.EFI = %q", got)
	}
	if got := mtype("::/EFI/debian/shimx64.efi"); got != "shim" {
		t.Errorf("other file = %q", got)
	}
	after, _ := os.ReadFile(img)
	// Boot sector (FAT type, volume ID, label) unchanged.
	if !bytes.Equal(after[off:off+62], before[off:off+62]) {
		t.Error("ESP boot sector changed")
	}
	// Once more with the directories already there and a second file name.
	if err := replaceEFIBinary(context.Background(), spec, off, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if got := mtype("::/EFI/BOOT/BOOTX64.EFI"); got != "again" {
		t.Errorf("BOOTX64.EFI = %q", got)
	}
}
