package disk

import (
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

func TestWriteESP(t *testing.T) {
	img := filepath.Join(t.TempDir(), "esp.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	part := PartitionInfo{Offset: 2 * mib, Size: 64 * mib}
	if err := f.Truncate(part.Offset + part.Size + mib); err != nil {
		t.Fatal(err)
	}
	efi := make([]byte, 700*1024)
	for i := range efi {
		efi[i] = byte(i * 7)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "12345") // restored afterwards, not clobbered
	err = writeESP(f, part, 0xDEADBEEF, testEpoch, []espFile{
		{path: "/EFI/BOOT/BOOTX64.EFI", data: efi},
		{path: "/EFI/BOOT/grub.cfg", data: []byte("set x=1\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv("SOURCE_DATE_EPOCH"); got != "12345" {
		t.Errorf("SOURCE_DATE_EPOCH = %q after writeESP", got)
	}
	// Nothing outside the partition was written.
	buf := make([]byte, 2*mib)
	f.ReadAt(buf, 0)
	for _, b := range buf {
		if b != 0 {
			t.Fatal("ESP write touched bytes before the partition")
		}
	}
	f.ReadAt(buf[:mib], part.Offset+part.Size)
	for _, b := range buf[:mib] {
		if b != 0 {
			t.Fatal("ESP write touched bytes after the partition")
		}
	}

	for _, sec := range []int64{0, 6} {
		var b [4]byte
		f.ReadAt(b[:], part.Offset+sec*512+0x43)
		if got := binary.LittleEndian.Uint32(b[:]); got != 0xDEADBEEF {
			t.Errorf("volume serial in sector %d = %#x", sec, got)
		}
	}
	var fstype [8]byte
	f.ReadAt(fstype[:], part.Offset+0x52)
	if string(fstype[:]) != "FAT32   " {
		t.Errorf("filesystem type %q", fstype)
	}

	fs, err := fat32.Read(file.New(f, true), part.Size, part.Offset, 512)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(fs.Label()); got != "ESP" {
		t.Errorf("label %q", got)
	}
	r, err := fs.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(efi) {
		t.Errorf("BOOTX64.EFI read back %d bytes, differs from the %d written", len(got), len(efi))
	}
	fi, err := fs.Stat("EFI/BOOT/BOOTX64.EFI") // go-diskfs: Stat/ReadDir take io/fs paths, OpenFile absolute ones
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(time.Unix(testEpoch, 0)) {
		t.Errorf("BOOTX64.EFI time %v, want %v", fi.ModTime(), time.Unix(testEpoch, 0).UTC())
	}

	// fsck.vfat, when the host has it, agrees that this is a clean FAT32.
	if fsck, err := exec.LookPath("fsck.vfat"); err == nil {
		part := filepath.Join(t.TempDir(), "part.raw")
		data := make([]byte, 64*mib)
		f.ReadAt(data, 2*mib)
		os.WriteFile(part, data, 0o644)
		// -n exits 1 when it would repair anything (e.g. go-diskfs's ".."
		// entries or an unset free count, which fixFAT32 corrects).
		if out, err := exec.Command(fsck, "-n", "-v", part).CombinedOutput(); err != nil || !strings.Contains(string(out), "32 bit entries") {
			t.Errorf("fsck.vfat: %v\n%s", err, out)
		}
	}
}

func TestWriteESPReproducible(t *testing.T) {
	write := func() []byte {
		img := filepath.Join(t.TempDir(), "esp.raw")
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		part := PartitionInfo{Offset: 0, Size: 40 * mib}
		f.Truncate(part.Size)
		if err := writeESP(f, part, 1, testEpoch, []espFile{{path: "/EFI/BOOT/BOOTX64.EFI", data: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(img)
		return b
	}
	a := write()
	time.Sleep(2100 * time.Millisecond) // FAT times have 2 s resolution
	if b := write(); string(a) != string(b) {
		t.Error("two ESPs written with the same epoch differ")
	}
}
