package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/imgfile"
)

// Format is an output format's name, as written in a recipe's outputs and
// after bake convert --format.
type Format string

const (
	Raw   Format = "raw"
	Qcow2 Format = "qcow2"
	VMDK  Format = "vmdk"
	OVA   Format = "ova"
	VHD   Format = "vhd"
	VHDX  Format = "vhdx"
	GCE   Format = "gce"
)

// Formats are every format, in the order bake lists them.
var Formats = []Format{Raw, Qcow2, VMDK, OVA, VHD, VHDX, GCE}

// Names are the formats' names (for recipe validation and usage messages).
func Names() []string {
	out := make([]string, len(Formats))
	for i, f := range Formats {
		out[i] = string(f)
	}
	return out
}

// ParseFormat returns the Format named s.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	return "", fmt.Errorf("unknown format %q: want one of %s", s, strings.Join(Names(), ", "))
}

// FileName is the output file of format f for an image called name.
func (f Format) FileName(name string) string {
	switch f {
	case GCE:
		// GCE imports NAME.tar.gz holding disk.raw.
		return name + ".tar.gz"
	}
	return name + "." + string(f)
}

// QemuFormat is qemu-img's name of the disk format f holds (-f/-F), and
// whether qemu-img check can check it.
func (f Format) qemu() (format string, checkable bool) {
	switch f {
	case Raw, GCE:
		return "raw", false
	case Qcow2:
		return "qcow2", true
	case VMDK, OVA:
		return "vmdk", true
	case VHD:
		return "vpc", false // qemu-img check: "This image format does not support checks"
	case VHDX:
		return "vhdx", true
	}
	return "", false
}

// Firmware is how an image boots, as the targets record it.
type Firmware string

const (
	BIOS Firmware = "bios"
	UEFI Firmware = "uefi"
)

// Limits of what bake makes and reads back; everything it reads is bounded
// by these (and by the sizes the raw image dictates).
const (
	sector = 512
	MiB    = 1 << 20
	GiB    = 1 << 30
	// MaxSize is the largest raw image bake converts: 16 TiB, above every
	// target's limit for a boot disk (VHD 2040 GiB, VHDX 64 TiB).
	MaxSize = 16 << 40
)

// Options say what to make and where.
type Options struct {
	// Name is the outputs' base name (NAME.vmdk, NAME.ova, NAME.tar.gz...);
	// a file name, not a path.
	Name string
	// Dir is where the output appears; the work is done in a temporary
	// directory inside it, so that the final rename is atomic.
	Dir string
	// Firmware is how the image boots (UEFI when it boots both): the OVF
	// records it. Required for OVA.
	Firmware Firmware
	// OS is the guest's os-release ID (debian, ubuntu; empty: some Linux):
	// the OVF's guest type.
	OS string
	// OSName is a description of the guest for the OVF (PRETTY_NAME).
	OSName string
	// CPUs and MemoryMiB are the OVA's virtual hardware (2 and 2048 when 0).
	CPUs, MemoryMiB int
	// SourceDateEpoch is every time written into an archive (OVA, GCE).
	SourceDateEpoch int64
	Runner          execx.Runner // execx.Default when nil
	Log             io.Writer    // progress lines; discarded when nil
}

// Result is one output, proven.
type Result struct {
	Format Format
	File   string // file name in Options.Dir
	Path   string
	SHA256 string
	Bytes  int64
	// VirtualSize is the disk size a VM sees (the raw's size, rounded up to
	// a whole MiB for VHD and a whole GiB for GCE).
	VirtualSize int64
	// Proofs say what was checked, one line each.
	Proofs []string
}

// job is one conversion in progress.
type job struct {
	ctx    context.Context
	o      Options
	run    execx.Runner
	raw    string // absolute path of the raw image
	size   int64  // its size
	tmp    string // temporary directory in Options.Dir
	out    string // the output in tmp
	res    *Result
	format Format
}

func (j *job) prove(format string, a ...any) {
	line := fmt.Sprintf(format, a...)
	j.res.Proofs = append(j.res.Proofs, line)
	fmt.Fprintf(j.o.Log, "%s: %s\n", j.format, line)
}

// Convert makes the output of format f from the raw disk image raw, proves
// it (see the package documentation) and renames it into Options.Dir. On
// any error, and when ctx is cancelled, nothing is left at the output path
// nor in Options.Dir. An existing file at the output path is replaced only
// by a proven one.
func Convert(ctx context.Context, raw string, f Format, o Options) (*Result, error) {
	if _, err := ParseFormat(string(f)); err != nil {
		return nil, err
	}
	if o.Name == "" || strings.ContainsAny(o.Name, "/\x00") || o.Name == "." || o.Name == ".." || strings.HasPrefix(o.Name, ".") {
		return nil, fmt.Errorf("convert: output name %q: want a file name that does not start with a dot", o.Name)
	}
	if o.Runner == nil {
		o.Runner = execx.Default
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 2048
	}
	if f == OVA && o.Firmware != BIOS && o.Firmware != UEFI {
		return nil, fmt.Errorf("convert: ova: firmware %q: want bios or uefi (the OVF records how the image boots)", o.Firmware)
	}
	// Absolute paths only: qemu-img reads "x:y" as protocol x and "json:{}"
	// as a block graph; a path starting with / is always a plain file.
	var err error
	if raw, err = filepath.Abs(raw); err != nil {
		return nil, err
	}
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return nil, err
	}
	rf, fi, err := imgfile.OpenRegular(raw)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	rf.Close()
	size := fi.Size()
	switch {
	case size == 0 || size%sector != 0:
		return nil, fmt.Errorf("convert: %s: size %d is not a positive multiple of %d bytes", raw, size, sector)
	case size > MaxSize:
		return nil, fmt.Errorf("convert: %s: %d bytes is more than bake converts (%d)", raw, size, int64(MaxSize))
	}
	file := f.FileName(o.Name)
	final := filepath.Join(o.Dir, file)
	if ofi, err := os.Stat(final); err == nil && os.SameFile(fi, ofi) {
		return nil, fmt.Errorf("convert: the output %s is the input image", final)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(o.Dir, "."+o.Name+"."+string(f)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	defer os.RemoveAll(tmp)
	j := &job{ctx: ctx, o: o, run: o.Runner, raw: raw, size: size, tmp: tmp, out: filepath.Join(tmp, file), format: f,
		res: &Result{Format: f, File: file, Path: final, VirtualSize: size}}
	var build func() error
	switch f {
	case Raw:
		build = j.convertRaw
	case Qcow2:
		build = j.convertQcow2
	case VMDK:
		build = j.convertVMDK
	case OVA:
		build = j.convertOVA
	case VHD:
		build = j.convertVHD
	case VHDX:
		build = j.convertVHDX
	case GCE:
		build = j.convertGCE
	}
	if err := build(); err != nil {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
		return nil, fmt.Errorf("convert %s to %s: %w", filepath.Base(raw), f, err)
	}
	sum, n, err := hashFile(ctx, j.out)
	if err != nil {
		return nil, fmt.Errorf("convert %s to %s: %w", filepath.Base(raw), f, err)
	}
	j.res.SHA256, j.res.Bytes = sum, n
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.Rename(j.out, final); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	return j.res, nil
}

// hashFile is a file's SHA-256 and size, read under ctx.
func hashFile(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// ctxReader stops a long copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
