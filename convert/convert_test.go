package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/execx"
)

func TestFormats(t *testing.T) {
	if got := strings.Join(Names(), " "); got != "raw qcow2 vmdk ova vhd vhdx gce" {
		t.Errorf("Names() = %s", got)
	}
	for _, f := range Formats {
		if g, err := ParseFormat(string(f)); err != nil || g != f {
			t.Errorf("ParseFormat(%s) = %s, %v", f, g, err)
		}
		if q, _ := f.qemu(); q == "" {
			t.Errorf("%s has no qemu-img format", f)
		}
	}
	if _, err := ParseFormat("vdi"); err == nil || !strings.Contains(err.Error(), "raw, qcow2, vmdk, ova, vhd, vhdx, gce") {
		t.Errorf("ParseFormat(vdi): %v", err)
	}
	for f, want := range map[Format]string{GCE: "img.tar.gz", OVA: "img.ova", VHD: "img.vhd", Raw: "img.raw"} {
		if got := f.FileName("img"); got != want {
			t.Errorf("%s: %s, want %s", f, got, want)
		}
	}
}

func cmdLines(cmds []execx.Cmd) []string {
	var out []string
	for _, c := range cmds {
		out = append(out, c.String())
	}
	return out
}

func TestConvertCommands(t *testing.T) {
	for _, tc := range []struct {
		f    Format
		size int64
		want []string
	}{
		{Raw, 8 << 20, []string{"qemu-img convert -f raw -O raw /in.raw /out"}},
		{Qcow2, 8 << 20, []string{"qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd /in.raw /out"}},
		{VMDK, 8 << 20, []string{"qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic /in.raw /out"}},
		{OVA, 8 << 20, []string{"qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic /in.raw /out"}},
		{VHD, 8 << 20, []string{"qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on /in.raw /out"}},
		{VHD, 8<<20 + 512, []string{
			"qemu-img create -f vpc -o subformat=fixed,force_size=on /out 9437184",
			"qemu-img convert -n --target-is-zero -f raw -O vpc /in.raw /out",
		}},
		{VHDX, 8 << 20, []string{"qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M /in.raw /out"}},
		{GCE, 8 << 20, nil}, // bake writes it itself
	} {
		if got := cmdLines(convertCmds(tc.f, "/in.raw", tc.size, "/out")); !slices.Equal(got, tc.want) {
			t.Errorf("%s of %d bytes:\n got %q\nwant %q", tc.f, tc.size, got, tc.want)
		}
	}
	for _, c := range []execx.Cmd{compareCmd("/r", "vpc", "/o"), checkCmd("vhdx", "/o"), infoCmd("vmdk", "/o")} {
		i := slices.Index(c.Args, "-f")
		if i < 0 || c.Args[i+1] == "" {
			t.Errorf("%s: no format named", c)
		}
	}
	if got := compareCmd("/r", "vpc", "/o").String(); got != "qemu-img compare -f raw -F vpc /r /o" {
		t.Errorf("compare: %s", got)
	}
	// A recipe's qcow2 (disk.ConvertQcow2) and bake convert's are made alike.
	rec := &execx.Recorder{}
	disk.ConvertQcow2(context.Background(), rec, "/in.raw", "/out")
	if got := convertCmds(Qcow2, "/in.raw", 8<<20, "/out")[0].String(); got != rec.Cmds[0].String() {
		t.Errorf("bake convert's qcow2 %q, a build's %q", got, rec.Cmds[0])
	}
}

// fakeQemu plays qemu-img: convert writes junk to the output, compare says
// what identical is set to, info reports the format asked for.
type fakeQemu struct {
	execx.Recorder
	identical bool
}

func (q *fakeQemu) Run(ctx context.Context, c execx.Cmd) error {
	q.Recorder.Run(ctx, c)
	if c.Args[0] == "convert" || c.Args[0] == "create" {
		return os.WriteFile(c.Args[len(c.Args)-1], []byte("not an image"), 0o644)
	}
	return nil
}

func (q *fakeQemu) Output(ctx context.Context, c execx.Cmd) ([]byte, error) {
	q.Recorder.Output(ctx, c)
	switch c.Args[0] {
	case "compare":
		if q.identical {
			return []byte("Images are identical.\n"), nil
		}
		return []byte("Content mismatch at offset 0!\n"), &execx.Error{Cmd: c.String(), Err: errors.New("exit status 1")}
	case "info":
		return []byte(`{"virtual-size": 1048576, "format": "` + c.Args[2] + `"}`), nil
	}
	return nil, nil
}

func sparseRaw(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "in.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.WriteAt([]byte("bake"), 0)
	f.WriteAt([]byte("end"), size-3)
	f.Close()
	return p
}

func dirNames(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Outputs that fail a proof never reach the output path, and nothing is
// left behind: junk from a "qemu-img" that exited 0 is caught by bake's own
// parsers (vmdk, vhd) or by qemu-img compare.
func TestConvertFailedProofLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	raw := sparseRaw(t, dir, 1<<20)
	for _, f := range Formats {
		out := t.TempDir()
		q := &fakeQemu{}
		_, err := Convert(context.Background(), raw, f, Options{Name: "img", Dir: out, Firmware: UEFI, Runner: q})
		if err == nil {
			t.Errorf("%s: junk passed: %v", f, cmdLines(q.Cmds))
			continue
		}
		t.Logf("%s: %v", f, err)
		if names := dirNames(t, out); len(names) != 0 {
			t.Errorf("%s: left %v", f, names)
		}
	}
}

// The GCE archive needs no qemu-img to be made; with compare answered, the
// whole path runs here: deterministic bytes, one sparse disk.raw of a whole
// GiB holding the raw image and zeros.
func TestConvertGCEUnit(t *testing.T) {
	dir := t.TempDir()
	raw := sparseRaw(t, dir, 3<<20)
	var sums []string
	for i := 0; i < 2; i++ {
		out := t.TempDir()
		q := &fakeQemu{identical: true}
		res, err := Convert(context.Background(), raw, GCE, Options{Name: "img", Dir: out, SourceDateEpoch: 1700000000, Runner: q})
		if err != nil {
			t.Fatal(err)
		}
		if got := cmdLines(q.Cmds); len(got) != 1 || !strings.HasPrefix(got[0], "qemu-img compare -f raw -F raw "+raw+" ") {
			t.Errorf("commands %q", got)
		}
		if res.VirtualSize != 1<<30 || res.File != "img.tar.gz" || dirNames(t, out)[0] != "img.tar.gz" || len(dirNames(t, out)) != 1 {
			t.Errorf("%+v, dir %v", res, dirNames(t, out))
		}
		sums = append(sums, res.SHA256)
		f, _ := os.Open(res.Path)
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		if zr.ModTime.Unix() != 1700000000 || zr.Name != "" {
			t.Errorf("gzip header %+v", zr.Header)
		}
		tr := tar.NewReader(zr)
		h, err := tr.Next()
		if err != nil || h.Typeflag != tar.TypeGNUSparse || h.Size != 1<<30 {
			t.Fatalf("%+v %v", h, err)
		}
		head := make([]byte, 4)
		io.ReadFull(tr, head)
		if string(head) != "bake" {
			t.Errorf("disk.raw starts with %q", head)
		}
		f.Close()
	}
	if sums[0] != sums[1] {
		t.Errorf("two archives of one image differ: %v", sums)
	}
}

func TestConvertRefuses(t *testing.T) {
	dir := t.TempDir()
	raw := sparseRaw(t, dir, 1<<20)
	odd := filepath.Join(dir, "odd.raw")
	os.WriteFile(odd, make([]byte, 1000), 0o644)
	out := t.TempDir()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for name, tc := range map[string]struct {
		ctx  context.Context
		raw  string
		f    Format
		o    Options
		want string
	}{
		"format":        {context.Background(), raw, "vdi", Options{Name: "x", Dir: out}, "unknown format"},
		"no name":       {context.Background(), raw, Raw, Options{Dir: out}, "output name"},
		"path name":     {context.Background(), raw, Raw, Options{Name: "a/b", Dir: out}, "output name"},
		"dot name":      {context.Background(), raw, Raw, Options{Name: ".x", Dir: out}, "output name"},
		"ova firmware":  {context.Background(), raw, OVA, Options{Name: "x", Dir: out}, "firmware"},
		"odd size":      {context.Background(), odd, Raw, Options{Name: "x", Dir: out}, "multiple of 512"},
		"missing":       {context.Background(), filepath.Join(dir, "none"), Raw, Options{Name: "x", Dir: out}, "no such file"},
		"directory":     {context.Background(), dir, Raw, Options{Name: "x", Dir: out}, "not a regular file"},
		"input=output":  {context.Background(), raw, Raw, Options{Name: "in", Dir: dir}, "is the input image"},
		"cancelled":     {cancelled, raw, Raw, Options{Name: "x", Dir: out}, "canceled"},
		"no output dir": {context.Background(), raw, Raw, Options{Name: "x", Dir: filepath.Join(dir, "none")}, "no such file"},
	} {
		_, err := Convert(tc.ctx, tc.raw, tc.f, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
	if names := dirNames(t, out); len(names) != 0 {
		t.Errorf("left %v", names)
	}
	if b, _ := os.ReadFile(raw); !bytes.HasPrefix(b, []byte("bake")) {
		t.Error("the input was changed")
	}
}
