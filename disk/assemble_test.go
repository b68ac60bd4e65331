package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

func TestSpecValidate(t *testing.T) {
	s := Spec{Layout: Layout{}, Size: 3, ESPSize: 16 * mib, KernelCmdline: "a;b"}
	err := s.validate(true)
	if err == nil {
		t.Fatal("empty spec accepted")
	}
	for _, want := range []string{"spec.Tree is empty", "spec.Output is empty", "neither BIOS nor UEFI", "spec.Size", "spec.ESPSize", "layout.DiskGUID", "spec.KernelCmdline"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	inside := testSpec(fakeTree(t)).withDefaults()
	inside.Output = filepath.Join(inside.Tree, "var/tmp/disk.raw")
	if err := inside.validate(true); err == nil || !strings.Contains(err.Error(), "inside spec.Tree") {
		t.Errorf("output inside the tree: err = %v", err)
	}
	good := testSpec(fakeTree(t)).withDefaults()
	if err := good.validate(true); err != nil {
		t.Errorf("good spec refused: %v", err)
	}
}

func TestAutoSize(t *testing.T) {
	got := autoSize(800*mib, 64*mib)
	// root: 800 MiB * 1.25 + 1 GiB = 2024 MiB; + 1 + 1 + 64 + 1 MiB.
	if want := (2024 + 67) * mib; got != want {
		t.Errorf("autoSize = %d MiB, want %d MiB", got/mib, want/mib)
	}
	if autoSize(mib+1, 64*mib)%mib != 0 {
		t.Error("autoSize not rounded to MiB")
	}
	p, err := planDisk(DeriveLayout("x"), autoSize(800*mib, 64*mib), 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	if p.root.Size < 2024*mib-mib {
		t.Errorf("root partition %d MiB, want about 2024 MiB", p.root.Size/mib)
	}
}

func TestTreeSize(t *testing.T) {
	tree := t.TempDir()
	os.WriteFile(filepath.Join(tree, "a"), make([]byte, 5000), 0o644)
	os.Link(filepath.Join(tree, "a"), filepath.Join(tree, "a-link"))
	os.Symlink("a", filepath.Join(tree, "short"))
	os.Mkdir(filepath.Join(tree, "d"), 0o755)
	got, err := treeSize(tree)
	if err != nil {
		t.Fatal(err)
	}
	// 2 dirs, one 2-block file counted once, 5 inodes.
	if want := int64(2*4096 + 8192 + 5*256); got != want {
		t.Errorf("treeSize = %d, want %d", got, want)
	}
}

func TestSetSuperblockWriteTime(t *testing.T) {
	sb, err := os.ReadFile("testdata/ext4-superblock.bin") // from mke2fs 1.47.0, metadata_csum
	if err != nil {
		t.Fatal(err)
	}
	csum := func(b []byte) uint32 { return ^crc32.Checksum(b[:1020], crc32.MakeTable(crc32.Castagnoli)) }
	if got, want := csum(sb), binary.LittleEndian.Uint32(sb[1020:]); got != want {
		t.Fatalf("checksum algorithm gives %#x, mke2fs wrote %#x", got, want)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteAt(sb, 5*mib+1024)
	if err := setSuperblockWriteTime(f, 5*mib, testEpoch); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1024)
	f.ReadAt(got, 5*mib+1024)
	if w := binary.LittleEndian.Uint32(got[0x30:]); w != testEpoch {
		t.Errorf("s_wtime = %d", w)
	}
	if csum(got) != binary.LittleEndian.Uint32(got[1020:]) {
		t.Error("superblock checksum not updated")
	}
	for i := range got {
		if got[i] != sb[i] && !(i >= 0x30 && i < 0x34) && i < 1020 {
			t.Errorf("byte %#x changed", i)
		}
	}
	if err := setSuperblockWriteTime(f, 0, testEpoch); err == nil {
		t.Error("no error without a superblock")
	}
}

func TestClampScript(t *testing.T) {
	mt := func(s int64) time.Time { return time.Unix(s, 500) }
	script, skipped := clampScript([]treeEntry{
		{".", mt(testEpoch + 100)},
		{"etc/old", mt(testEpoch - 100)},
		{`odd/a "quoted" name\x2d`, mt(testEpoch)},
		{"bad\nname", mt(0)},
	}, testEpoch)
	golden(t, "clamp.debugfs.golden", script)
	if len(skipped) != 1 || skipped[0] != "/bad\nname" {
		t.Errorf("skipped = %q", skipped)
	}
}

func TestMkfsArgs(t *testing.T) {
	s := testSpec("/work/tree")
	s.Output = "/work/disk.raw"
	root := PartitionInfo{Offset: 66 * mib, Size: 1000*mib + 512}
	args, env := mkfsArgs(s, root, "/tmp/m.conf")
	got := strings.Join(args, " ")
	want := "-F -q -t ext4 -T default -b 4096 -L root -U " + s.Layout.RootFSUUID +
		" -E hash_seed=" + s.Layout.RootFSUUID + ",offset=69206016,root_owner=0:0 -d /work/tree /work/disk.raw 256000"
	if got != want {
		t.Errorf("mkfs.ext4 %s\nwant       %s", got, want)
	}
	for _, e := range []string{"MKE2FS_CONFIG=/tmp/m.conf", "E2FSPROGS_FAKE_TIME=1700000000"} {
		if !slices.Contains(env, e) {
			t.Errorf("env %v lacks %s", env, e)
		}
	}
	s.SourceDateEpoch = 0
	if _, env := mkfsArgs(s, root, "c"); slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "E2FSPROGS_FAKE_TIME") }) {
		t.Error("E2FSPROGS_FAKE_TIME set without an epoch")
	}
}

func TestQuietDebugfs(t *testing.T) {
	var log strings.Builder
	r := quietDebugfs(execx.Host{Log: &log}).(execx.Host)
	io.WriteString(r.Log, "+ debugfs -w -f x\ndebugfs 1.47.0\ndebu")
	io.WriteString(r.Log, "gfs: sif \"/a\" atime @1\nsif: File not found\n")
	if got, want := log.String(), "+ debugfs -w -f x\ndebugfs 1.47.0\nsif: File not found\n"; got != want {
		t.Errorf("log = %q, want %q", got, want)
	}
	if _, ok := quietDebugfs(&execx.Recorder{}).(*execx.Recorder); !ok {
		t.Error("a non-Host runner must be returned unchanged")
	}
}

func TestConvertQcow2Command(t *testing.T) {
	rec := &execx.Recorder{}
	if err := ConvertQcow2(context.Background(), rec, "a.raw", "b.qcow2"); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.Cmds[0].String(), "qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd a.raw b.qcow2"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// fakeRunner records commands and plays grub-mkimage: it writes an image of
// the right kind to the --output path inside the chroot. A command named
// fail fails.
type fakeRunner struct {
	execx.Recorder
	fail      string
	onMkimage func(c execx.Cmd)
}

func (r *fakeRunner) Run(ctx context.Context, c execx.Cmd) error {
	r.Recorder.Run(ctx, c)
	if c.Name == r.fail {
		return errors.New("boom")
	}
	if c.Name == "mkfs.ext4" {
		// Leave a real superblock where mke2fs would put it.
		m := regexp.MustCompile(`offset=(\d+)`).FindStringSubmatch(strings.Join(c.Args, " "))
		off, _ := strconv.ParseInt(m[1], 10, 64)
		sb, err := os.ReadFile("testdata/ext4-superblock.bin")
		if err != nil {
			return err
		}
		f, err := os.OpenFile(c.Args[len(c.Args)-2], os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt(sb, off+1024)
		return err
	}
	if c.Name != "chroot" || len(c.Args) < 2 || c.Args[1] != "/usr/bin/grub-mkimage" {
		return nil
	}
	if r.onMkimage != nil {
		r.onMkimage(c)
	}
	var img []byte
	switch {
	case slices.Contains(c.Args, "i386-pc"):
		img = syntheticCore(146935)
	case slices.Contains(c.Args, "x86_64-efi"):
		img = []byte(strings.Repeat("MZ-efi", 1000))
	default:
		return errors.New("unexpected command " + c.String())
	}
	out := c.Args[slices.Index(c.Args, "--output")+1]
	return os.WriteFile(filepath.Join(c.Args[0], out), img, 0o644)
}

// TestAssembleWithoutTools runs the whole stage with a recording runner:
// mkfs.ext4 and grub-mkimage do not run, everything bake writes itself is
// checked in the image.
func TestAssembleWithoutTools(t *testing.T) {
	tree := fakeTree(t)
	spec := testSpec(tree)
	spec.Size = 512 * mib
	rec := &fakeRunner{}
	spec.Runner = rec
	if err := PrepareTree(spec); err != nil {
		t.Fatal(err)
	}
	res, err := Assemble(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != 512*mib || res.CoreImg != 146935 || res.EFIImage != 6000 || len(res.Partitions) != 3 {
		t.Errorf("result %+v", res)
	}
	var cmds []string
	for _, c := range rec.Cmds {
		cmds = append(cmds, c.Name+" "+strings.Join(c.Args[:min(3, len(c.Args))], " "))
	}
	if len(rec.Cmds) != 4 || rec.Cmds[2].Name != "mkfs.ext4" || rec.Cmds[3].Name != "debugfs" {
		t.Errorf("commands: %q", cmds)
	}

	f, err := os.Open(spec.Output)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, _ := f.Stat(); fi.Size() != 512*mib {
		t.Errorf("image is %d bytes", fi.Size())
	}
	mbr := make([]byte, 512)
	f.ReadAt(mbr, 0)
	boot := syntheticBootImg()
	if string(mbr[:0x5c]) != string(boot[:0x5c]) || binary.LittleEndian.Uint64(mbr[0x5c:]) != 2048 {
		t.Error("MBR does not hold boot.img pointing at LBA 2048")
	}
	if mbr[446+4] != 0xee || mbr[510] != 0x55 || mbr[511] != 0xaa {
		t.Error("protective MBR lost under boot.img")
	}
	core := make([]byte, 512)
	f.ReadAt(core, mib)
	if binary.LittleEndian.Uint64(core[500:]) != 2049 || binary.LittleEndian.Uint16(core[508:]) != 286 {
		t.Error("core.img blocklist not patched for LBA 2048")
	}
	tbl, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl.Partitions) != 3 {
		t.Errorf("%d partitions", len(tbl.Partitions))
	}
	esp := res.Partitions[1]
	fs, err := fat32.Read(file.New(f, true), esp.Size, esp.Offset, 512)
	if err != nil {
		t.Fatal(err)
	}
	r, err := fs.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); len(b) != 6000 {
		t.Errorf("BOOTX64.EFI is %d bytes", len(b))
	}
	r, err = fs.OpenFile("/EFI/BOOT/grub.cfg", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); !strings.Contains(string(b), spec.Layout.RootFSUUID) {
		t.Errorf("ESP grub.cfg = %q", b)
	}
	// mkfs.ext4 gets the root partition's offset and size.
	mk := strings.Join(rec.Cmds[2].Args, " ")
	if want := "offset=" + strconv.FormatInt(res.Partitions[2].Offset, 10); !strings.Contains(mk, want) {
		t.Errorf("mkfs.ext4 %s lacks %s", mk, want)
	}
}

func TestAssembleRemovesOutputOnFailure(t *testing.T) {
	tree := fakeTree(t)
	spec := testSpec(tree)
	spec.Size = 512 * mib
	failMkfs := &fakeRunner{fail: "mkfs.ext4"}
	spec.Runner = failMkfs
	if err := PrepareTree(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := Assemble(context.Background(), spec); err == nil {
		t.Fatal("Assemble succeeded with a failing mkfs")
	}
	if _, err := os.Stat(spec.Output); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("output left behind after failure: %v", err)
	}
}

func TestAssembleRefusesUnpreparedTree(t *testing.T) {
	spec := testSpec(fakeTree(t))
	spec.Runner = &fakeRunner{}
	if _, err := Assemble(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "PrepareTree") {
		t.Errorf("err = %v", err)
	}
}
