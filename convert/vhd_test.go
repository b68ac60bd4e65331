package convert

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/qemu-fixed-64M.vhd-footer is the footer qemu-img 7.2 wrote for
// convert -O vpc -o subformat=fixed,force_size=on of a 64 MiB raw image.
func qemuFooter(t testing.TB) []byte {
	b, err := os.ReadFile("testdata/qemu-fixed-64M.vhd-footer")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseVHDFooterQemu(t *testing.T) {
	f, err := ParseVHDFooter(qemuFooter(t))
	if err != nil {
		t.Fatal(err)
	}
	if f.DiskType != VHDFixed || f.CurrentSize != 64<<20 || f.OriginalSize != 64<<20 || f.CreatorApp != "qem2" ||
		f.CreatorHostOS != "Wi2k" || f.DataOffset != ^uint64(0) || zeroUUID(f.UniqueID) {
		t.Errorf("footer %+v", f)
	}
	// force_size=on: the largest CHS geometry, not one the size was
	// rounded to.
	if f.Cylinders != 65535 || f.Heads != 16 || f.SectorsPerCyl != 255 {
		t.Errorf("geometry %d/%d/%d", f.Cylinders, f.Heads, f.SectorsPerCyl)
	}
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, qemuFooter(t)) {
		t.Error("MarshalBinary does not give back qemu's footer")
	}
}

func TestParseVHDFooterRefuses(t *testing.T) {
	good := qemuFooter(t)
	f, _ := ParseVHDFooter(good)
	remarshal := func(mod func(*VHDFooter)) []byte {
		c := *f
		mod(&c)
		b, err := c.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 1
		return b
	}
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"short":        {good[:511], "511 bytes"},
		"cookie":       {flip(0), "cookie"},
		"checksum":     {flip(50), "checksum"},
		"bad checksum": {flip(66), "checksum"},
		"version":      {remarshal(func(f *VHDFooter) { f.FormatVersion = 0x00020000 }), "format version"},
		"feature":      {remarshal(func(f *VHDFooter) { f.Features = 0 }), "feature bit"},
		"type":         {remarshal(func(f *VHDFooter) { f.DiskType = 5 }), "disk type"},
		"offset":       {remarshal(func(f *VHDFooter) { f.DataOffset = 512 }), "data offset"},
		"odd size":     {remarshal(func(f *VHDFooter) { f.CurrentSize = 1000 }), "multiple of 512"},
	} {
		if _, err := ParseVHDFooter(tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one about %s", name, err, tc.want)
		}
	}
}

func TestVHDCheckFixed(t *testing.T) {
	f, _ := ParseVHDFooter(qemuFooter(t))
	ok := VHDFile{VHDFooter: f, FileSize: 64<<20 + 512}
	if err := ok.CheckFixed(64 << 20); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mod  func(v *VHDFile)
		size int64
		want string
	}{
		"dynamic":     {func(v *VHDFile) { v.DiskType = VHDDynamic }, 64 << 20, "want fixed"},
		"other size":  {func(v *VHDFile) {}, 65 << 20, "current size"},
		"not MiB":     {func(v *VHDFile) { v.CurrentSize, v.OriginalSize, v.FileSize = 64<<20+512, 64<<20+512, 64<<20+1024 }, 64<<20 + 512, "whole number of MiB"},
		"original":    {func(v *VHDFile) { v.OriginalSize = 1 << 20 }, 64 << 20, "original size"},
		"file size":   {func(v *VHDFile) { v.FileSize = 64 << 20 }, 64 << 20, "file is"},
		"zero unique": {func(v *VHDFile) { v.UniqueID = [16]byte{} }, 64 << 20, "unique ID"},
	} {
		c := *f
		v := VHDFile{VHDFooter: &c, FileSize: ok.FileSize}
		tc.mod(&v)
		if err := v.CheckFixed(tc.size); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", name, err, tc.want)
		}
	}
}

func TestReadVHDFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.vhd")
	f, _ := os.Create(p)
	f.Truncate(64 << 20)
	f.WriteAt(qemuFooter(t), 64<<20)
	f.Close()
	v, err := ReadVHDFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CheckFixed(64 << 20); err != nil {
		t.Error(err)
	}
	os.WriteFile(p, []byte("short"), 0o644)
	if _, err := ReadVHDFile(p); err == nil {
		t.Error("a 5-byte file has a footer")
	}
	if _, err := ReadVHDFile(dir); err == nil {
		t.Error("a directory has a footer")
	}
}

// FuzzVHDFooter: the parser never panics, never accepts a footer without
// the cookie or a wrong checksum, and what it accepts marshals back to the
// same 512 bytes.
func FuzzVHDFooter(f *testing.F) {
	f.Add(qemuFooter(f))
	dyn, _ := ParseVHDFooter(qemuFooter(f))
	dyn.DiskType, dyn.DataOffset = VHDDynamic, 512
	b, _ := dyn.MarshalBinary()
	f.Add(b)
	f.Add(make([]byte, 512))
	f.Add([]byte("conectix"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ft, err := ParseVHDFooter(b)
		if err != nil {
			return
		}
		if len(b) != VHDFooterSize || string(b[:8]) != vhdCookie || vhdChecksum(b) != ft.Checksum {
			t.Fatalf("accepted a footer without cookie or checksum: %x", b)
		}
		if ft.DiskType == VHDFixed && ft.DataOffset != ^uint64(0) {
			t.Fatal("accepted a fixed footer with a data offset")
		}
		back, err := ft.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, b) {
			t.Fatalf("round trip changed the footer:\n%x\n%x", b, back)
		}
	})
}
