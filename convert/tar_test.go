package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// patternReader is a disk whose byte at offset i is byte(i%251+1) inside
// the data regions and zero elsewhere.
type patternReader struct{ regs []region }

func (p patternReader) ReadAt(b []byte, off int64) (int, error) {
	clear(b)
	end := off + int64(len(b))
	for _, r := range p.regs {
		for o := max(off, r.Off); o < min(end, r.Off+r.Len); o++ {
			b[o-off] = byte(o%251 + 1)
		}
	}
	return len(b), nil
}

func sparseArchive(t *testing.T, realSize int64, regs []region) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeGNUSparse(context.Background(), &buf, "disk.raw", 1700000000, realSize, regs, patternReader{regs}); err != nil {
		t.Fatal(err)
	}
	if err := tarEnd(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Go's archive/tar reads bake's old-GNU sparse members back: the header,
// the sparse map (in the header and in extension blocks), the data, the
// holes as zeros.
func TestGNUSparseRoundTrip(t *testing.T) {
	for name, tc := range map[string]struct {
		size int64
		regs []region
	}{
		"no data":            {1 << 20, nil},
		"data to the end":    {64 << 10, []region{{0, 512}, {32 << 10, 32 << 10}}},
		"hole at the end":    {1 << 20, []region{{0, 1024}, {4096, 100}}},
		"four in the header": {1 << 20, []region{{0, 512}, {8192, 512}, {16384, 512}, {32768, 512}}},
		"extension blocks":   {4 << 20, manyRegions(60, 4096)},
		"one full extension": {4 << 20, manyRegions(24, 4096)}, // 24 + the end entry: 4 + 21
	} {
		t.Run(name, func(t *testing.T) {
			ar := sparseArchive(t, tc.size, tc.regs)
			tr := tar.NewReader(bytes.NewReader(ar))
			h, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if h.Name != "disk.raw" || h.Size != tc.size || h.Format != tar.FormatGNU || h.Uid != 0 || h.Gid != 0 ||
				h.ModTime.Unix() != 1700000000 || h.Mode != 0o644 || h.Uname != "root" {
				t.Errorf("header %+v", h)
			}
			got, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, tc.size)
			patternReader{tc.regs}.ReadAt(want, 0)
			if !bytes.Equal(got, want) {
				t.Error("contents differ")
			}
			if _, err := tr.Next(); err != io.EOF {
				t.Errorf("after the member: %v", err)
			}
			// The stored data is the regions only.
			var data int64
			for _, r := range tc.regs {
				data += r.Len
			}
			ext := max(0, (len(tc.regs)+1-4+20)/21)
			if want := int64(512*(1+ext)) + roundUp(data, 512) + 1024; int64(len(ar)) > want {
				t.Errorf("archive %d bytes, want at most %d", len(ar), want)
			}
		})
	}
}

func manyRegions(n int, step int64) []region {
	var out []region
	for i := 0; i < n; i++ {
		out = append(out, region{int64(i) * step * 2, step})
	}
	return out
}

// Sizes past 8 GiB - 1 (an 11-digit octal field) use base-256, as GNU tar
// does; Go's reader takes them.
func TestGNUSparseLarge(t *testing.T) {
	size := int64(100 << 30)
	regs := []region{{0, 4096}, {size - 4096, 4096}}
	ar := sparseArchive(t, size, regs)
	h, err := tar.NewReader(bytes.NewReader(ar)).Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Size != size {
		t.Errorf("size %d", h.Size)
	}
	if ar[483] != 0x80 {
		t.Errorf("realsize field %x: want base-256", ar[483:495])
	}
}

func TestGNUSparseRefuses(t *testing.T) {
	var buf bytes.Buffer
	for name, regs := range map[string][]region{
		"overlap":      {{0, 1024}, {512, 512}},
		"past end":     {{0, 2 << 20}},
		"empty":        {{0, 0}},
		"out of order": {{4096, 512}, {0, 512}},
	} {
		if err := writeGNUSparse(context.Background(), &buf, "d", 0, 1<<20, regs, patternReader{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := writeGNUSparse(context.Background(), &buf, strings.Repeat("x", 100), 0, 1<<20, nil, patternReader{}); err == nil {
		t.Error("a 100-character name")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := writeGNUSparse(ctx, &buf, "d", 0, 1<<20, []region{{0, 1 << 20}}, patternReader{}); err == nil {
		t.Error("a cancelled context wrote the data")
	}
}

func TestTarNumeric(t *testing.T) {
	f := make([]byte, 12)
	tarNumeric(f, 0o644)
	if string(f) != "00000000644\x00" {
		t.Errorf("%q", f)
	}
	tarNumeric(f, 1<<33)
	if f[0] != 0x80 || f[7] != 2 || f[11] != 0 {
		t.Errorf("%x", f)
	}
	f = make([]byte, 8)
	tarNumeric(f, 1<<21-1)
	if string(f) != "7777777\x00" {
		t.Errorf("%q", f)
	}
}

// dataRegions finds the data of a sparse file, aligned to 512 bytes,
// merging holes shorter than minHole.
func TestDataRegions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(64 << 20)
	f.WriteAt([]byte("a"), 0)
	f.WriteAt([]byte("b"), 20<<20+7)
	f.WriteAt([]byte("c"), 20<<20+300<<10)
	regs, err := dataRegions(context.Background(), f, 64<<20, MiB)
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) == 1 && regs[0] == (region{0, 64 << 20}) {
		testenv.Missing(t, "this filesystem does not report holes (SEEK_DATA)")
	}
	if len(regs) != 2 || regs[0].Off != 0 || regs[1].Off > 20<<20 || regs[1].Off+regs[1].Len < 20<<20+300<<10+1 {
		t.Errorf("regions %+v: want the start and one merged region around 20 MiB", regs)
	}
	for _, r := range regs {
		if r.Off%512 != 0 || r.Len%512 != 0 {
			t.Errorf("region %+v not aligned", r)
		}
	}
	if n := gceMinHole(8 << 30); n != MiB {
		t.Errorf("gceMinHole(8 GiB) = %d", n)
	}
	if n := gceMinHole(1 << 40); (1<<40)/n > 16384 {
		t.Errorf("gceMinHole(1 TiB) = %d allows %d regions", n, (1<<40)/n)
	}
}

// tarHeader is the same for the same member: no host time, user or PAX
// record gets in.
func TestTarDeterministic(t *testing.T) {
	write := func() []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, m := range []struct {
			name string
			data string
		}{{"a.ovf", "<Envelope/>"}, {"a.mf", "SHA256(a.ovf)= 00\n"}} {
			tw.WriteHeader(tarHeader(m.name, int64(len(m.data)), 1700000000))
			io.WriteString(tw, m.data)
		}
		tw.Close()
		return buf.Bytes()
	}
	a, b := write(), write()
	if !bytes.Equal(a, b) {
		t.Fatal("two archives of the same members differ")
	}
	tr := tar.NewReader(bytes.NewReader(a))
	h, _ := tr.Next()
	if h.Format != tar.FormatUSTAR || h.ModTime.Unix() != 1700000000 || h.Uid != 0 || h.Uname != "root" || len(h.PAXRecords) != 0 {
		t.Errorf("%+v", h)
	}
	if tarHeader("big.vmdk", 9<<30, 0).Format != tar.FormatGNU {
		t.Error("a 9 GiB member does not fit USTAR")
	}
}

func TestManifest(t *testing.T) {
	sums := map[string]string{"b.vmdk": strings.Repeat("ab", 32), "a.ovf": strings.Repeat("cd", 32)}
	mf := manifest(sums)
	if want := "SHA256(a.ovf)= " + sums["a.ovf"] + "\nSHA256(b.vmdk)= " + sums["b.vmdk"] + "\n"; string(mf) != want {
		t.Errorf("%q", mf)
	}
	got, err := parseManifest(mf)
	if err != nil || len(got) != 2 || got["b.vmdk"] != sums["b.vmdk"] {
		t.Errorf("%v %v", got, err)
	}
	for name, bad := range map[string]string{
		"sha1":    "SHA1(a.ovf)= " + strings.Repeat("ab", 20),
		"short":   "SHA256(a.ovf)= abcd",
		"path":    "SHA256(../a.ovf)= " + strings.Repeat("ab", 32),
		"twice":   string(mf) + "SHA256(a.ovf)= " + strings.Repeat("ab", 32),
		"garbage": "hello",
	} {
		if _, err := parseManifest([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
