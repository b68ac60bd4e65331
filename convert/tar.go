package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/bakeimg/bake/internal/imgfile"
)

// Archives bake writes are deterministic: every time is SOURCE_DATE_EPOCH,
// owner and group 0 (root), mode 0644, members in a fixed order, no PAX
// records (nothing host-specific: no atime, no user names of the build
// host).

const tarBlock = 512

// tarHeader is a regular member's header. USTAR when the size fits its
// 11 octal digits (8 GiB - 1), else GNU, which stores larger sizes in
// base-256 as GNU tar does (PAX would add a PaxHeaders member some OVA
// readers choke on).
func tarHeader(name string, size, epoch int64) *tar.Header {
	h := &tar.Header{
		Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644,
		ModTime: time.Unix(epoch, 0), Uname: "root", Gname: "root",
		Format: tar.FormatUSTAR,
	}
	if size >= 1<<33 {
		h.Format = tar.FormatGNU
	}
	return h
}

// region is a [Off, Off+Len) range of a file holding data.
type region struct{ Off, Len int64 }

// dataRegions lists where the file f of size bytes holds data, from
// SEEK_DATA/SEEK_HOLE, 512-byte aligned, with holes shorter than minHole
// merged into the data around them (their zeros are written, and compress
// to nothing) so that the map stays short: at most size/minHole + 1
// regions. When the filesystem cannot say, the whole file is data.
func dataRegions(ctx context.Context, f *os.File, size, minHole int64) ([]region, error) {
	ext, err := imgfile.DataExtents(ctx, f, size)
	if err != nil {
		return nil, err
	}
	var out []region
	for _, e := range ext {
		start := e[0] / tarBlock * tarBlock
		end := min(roundUp(e[1], tarBlock), size)
		if n := len(out); n > 0 && start-(out[n-1].Off+out[n-1].Len) < minHole {
			out[n-1].Len = end - out[n-1].Off
		} else {
			out = append(out, region{start, end - start})
		}
	}
	return out, nil
}

// tarNumeric writes n into a numeric header field: octal with a NUL when
// it fits, else GNU's base-256 (0x80, then big-endian).
func tarNumeric(field []byte, n int64) {
	digits := len(field) - 1
	if n >= 0 && n < 1<<(3*digits) {
		s := fmt.Sprintf("%0*o", digits, n)
		copy(field, s)
		field[digits] = 0
		return
	}
	for i := range field {
		field[i] = 0
	}
	for i := len(field) - 1; i > 0; i-- {
		field[i] = byte(n)
		n >>= 8
	}
	field[0] = 0x80
}

// tarChecksum fills a header's checksum field.
func tarChecksum(b []byte) {
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b[:tarBlock] {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// writeGNUSparse writes an old-GNU sparse member (what GNU tar
// --format=oldgnu -S writes, type 'S'): a header whose sparse map lists the
// data regions (4 in the header, 21 in each extension block), the data of
// those regions one after another, padding to 512 bytes. realSize is the
// file's size as extracted (it may extend past the source: GCE's whole GiB);
// a map that ends before realSize ends with the entry (realSize, 0), as GNU
// tar's does. regs must be sorted, disjoint and inside src's size.
func writeGNUSparse(ctx context.Context, w io.Writer, name string, epoch, realSize int64, regs []region, src io.ReaderAt) error {
	if len(name) >= 100 {
		return fmt.Errorf("tar: name %q too long", name)
	}
	entries := append([]region(nil), regs...)
	var stored int64
	var prevEnd int64
	for _, r := range regs {
		if r.Off < prevEnd || r.Len <= 0 || r.Off+r.Len > realSize {
			return fmt.Errorf("tar: bad sparse region %+v", r)
		}
		prevEnd = r.Off + r.Len
		stored += r.Len
	}
	if len(entries) == 0 || prevEnd < realSize {
		entries = append(entries, region{realSize, 0})
	}
	h := make([]byte, tarBlock)
	copy(h[0:100], name)
	tarNumeric(h[100:108], 0o644)
	tarNumeric(h[108:116], 0)
	tarNumeric(h[116:124], 0)
	tarNumeric(h[124:136], stored)
	tarNumeric(h[136:148], epoch)
	h[156] = 'S'
	copy(h[257:265], "ustar  \x00") // old GNU magic and version
	copy(h[265:297], "root")
	copy(h[297:329], "root")
	put := func(b []byte, i int, e region) {
		tarNumeric(b[i*24:i*24+12], e.Off)
		tarNumeric(b[i*24+12:i*24+24], e.Len)
	}
	n := min(len(entries), 4)
	for i := 0; i < n; i++ {
		put(h[386:482], i, entries[i])
	}
	rest := entries[n:]
	if len(rest) > 0 {
		h[482] = 1
	}
	tarNumeric(h[483:495], realSize)
	tarChecksum(h)
	if _, err := w.Write(h); err != nil {
		return err
	}
	for len(rest) > 0 {
		ext := make([]byte, tarBlock)
		n := min(len(rest), 21)
		for i := 0; i < n; i++ {
			put(ext, i, rest[i])
		}
		rest = rest[n:]
		if len(rest) > 0 {
			ext[504] = 1
		}
		if _, err := w.Write(ext); err != nil {
			return err
		}
	}
	for _, r := range regs {
		if _, err := io.Copy(w, ctxReader{ctx, io.NewSectionReader(src, r.Off, r.Len)}); err != nil {
			return err
		}
	}
	if pad := roundUp(stored, tarBlock) - stored; pad > 0 {
		if _, err := w.Write(make([]byte, pad)); err != nil {
			return err
		}
	}
	return nil
}

// tarEnd is the two zero blocks that end an archive.
func tarEnd(w io.Writer) error {
	_, err := w.Write(make([]byte, 2*tarBlock))
	return err
}

// extractSparse copies n bytes from r to a new file at path, leaving
// all-zero 64 KiB blocks as holes: an 8 GiB disk with 1 GiB of data takes
// 1 GiB to check.
func extractSparse(ctx context.Context, r io.Reader, n int64, path string) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	buf := make([]byte, 64<<10)
	var off int64
	for off < n {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := min(int64(len(buf)), n-off)
		got, err := io.ReadFull(r, buf[:want])
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("member ends at %d of %d bytes", off+int64(got), n)
			}
			return err
		}
		if !allZero(buf[:got]) {
			if _, err := f.WriteAt(buf[:got], off); err != nil {
				return err
			}
		}
		off += int64(got)
	}
	return f.Truncate(n)
}

var zeros [64 << 10]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
