package convert

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// testdata/qemu-stream-64M.vmdk-head is the header and embedded descriptor
// (the first 22 sectors) of what qemu-img 7.2 wrote for convert -O vmdk -o
// subformat=streamOptimized,adapter_type=lsilogic of a 64 MiB raw image.
func vmdkHead(t testing.TB) []byte {
	b, err := os.ReadFile("testdata/qemu-stream-64M.vmdk-head")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadVMDKQemu(t *testing.T) {
	b := vmdkHead(t)
	v, err := ReadVMDK(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CheckStream(64<<20, "lsilogic"); err != nil {
		t.Error(err)
	}
	if v.HWVersion != "4" || v.GrainSize != 128 || v.Extents[0].Access != "RW" {
		t.Errorf("%+v", v)
	}
	if err := v.CheckStream(64<<20, "ide"); err == nil || !strings.Contains(err.Error(), "adapterType") {
		t.Errorf("adapter mismatch: %v", err)
	}
	if err := v.CheckStream(32<<20, "lsilogic"); err == nil || !strings.Contains(err.Error(), "capacity") {
		t.Errorf("capacity mismatch: %v", err)
	}
}

func TestReadVMDKRefuses(t *testing.T) {
	good := vmdkHead(t)
	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	le := binary.LittleEndian
	for name, tc := range map[string]struct {
		b    []byte
		size int64
		want string
	}{
		"magic":            {mod(func(b []byte) { b[0] = 'X' }), 0, "magic"},
		"version":          {mod(func(b []byte) { le.PutUint32(b[4:], 9) }), 0, "version"},
		"capacity":         {mod(func(b []byte) { le.PutUint64(b[12:], 0) }), 0, "capacity"},
		"grain":            {mod(func(b []byte) { le.PutUint64(b[20:], 100) }), 0, "grain"},
		"newlines":         {mod(func(b []byte) { b[75] = '\n' }), 0, "newline"},
		"desc past end":    {mod(func(b []byte) { le.PutUint64(b[28:], 1000) }), 0, "descriptor"},
		"desc huge":        {mod(func(b []byte) { le.PutUint64(b[36:], 1<<40) }), 0, "descriptor"},
		"truncated":        {good, 4096, "descriptor"},
		"not a descriptor": {mod(func(b []byte) { copy(b[512:], "hello") }), 0, "DescriptorFile"},
		"bad extent":       {mod(func(b []byte) { i := bytes.Index(b, []byte("RW 131072")); copy(b[i:], "RW -13107") }), 0, "sector count"},
	} {
		size := tc.size
		if size == 0 {
			size = int64(len(tc.b))
		}
		if _, err := ReadVMDK(bytes.NewReader(tc.b), size); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", name, err, tc.want)
		}
	}
	v, err := ReadVMDK(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(v *VMDKInfo){
		"monolithicSparse": func(v *VMDKInfo) { v.CreateType = "monolithicSparse" },
		"uncompressed":     func(v *VMDKInfo) { v.Flags &^= vmdkFlagCompressed },
		"two extents":      func(v *VMDKInfo) { v.Extents = append(v.Extents, v.Extents[0]) },
		"flat":             func(v *VMDKInfo) { v.Extents = []VMDKExtent{{"RW", 131072, "FLAT", "x"}} },
	} {
		c := *v
		mod(&c)
		if err := c.CheckStream(64<<20, "lsilogic"); err == nil {
			t.Errorf("%s: accepted as streamOptimized", name)
		}
	}
}

// FuzzVMDKHeader: header and descriptor parsing never panics and never
// reads outside the bytes it is given.
func FuzzVMDKHeader(f *testing.F) {
	f.Add(vmdkHead(f))
	f.Add(vmdkHead(f)[:600])
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ReadVMDK(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if v.Capacity <= 0 || v.Capacity%sector != 0 || len(v.Extents) > 64 {
			t.Fatalf("accepted %+v", v)
		}
	})
}
