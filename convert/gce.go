package convert

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/bakeimg/bake/internal/imgfile"
)

// GCE image import wants the disk's bytes in a file named disk.raw, whose
// size is a whole number of GiB ("10 GB or 11 GB but not 10.5 GB"), in a
// tar made with GNU tar's --format=oldgnu, gzip-compressed: what
// `tar --format=oldgnu -Sczf NAME.tar.gz disk.raw` writes. bake writes the
// same thing itself, sparse (holes, the GiB padding included, take no
// space and no compression time).

const gceMember = "disk.raw"

// gceMinHole is the shortest hole kept as a hole in the sparse map; shorter
// ones are written as zeros. It grows with the disk so that the map stays
// under 16384 entries (GNU and Go's tar readers cap it near 43000).
func gceMinHole(size int64) int64 { return max(MiB, roundUp(size/16384, MiB)) }

func (j *job) convertGCE() error {
	want := roundUp(j.size, GiB)
	j.res.VirtualSize = want
	if err := j.writeGCE(want); err != nil {
		return err
	}
	return j.proveGCE(want)
}

func (j *job) writeGCE(realSize int64) (err error) {
	src, _, err := imgfile.OpenRegular(j.raw)
	if err != nil {
		return err
	}
	defer src.Close()
	regs, err := dataRegions(j.ctx, src, j.size, gceMinHole(j.size))
	if err != nil {
		return err
	}
	out, err := os.OpenFile(j.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriterSize(out, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.DefaultCompression)
	if err != nil {
		return err
	}
	// The gzip header's time is SOURCE_DATE_EPOCH too; no file name in it.
	zw.ModTime = time.Unix(j.o.SourceDateEpoch, 0)
	if err := writeGNUSparse(j.ctx, zw, gceMember, j.o.SourceDateEpoch, realSize, regs, src); err != nil {
		return err
	}
	if err := tarEnd(zw); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	var data int64
	for _, r := range regs {
		data += r.Len
	}
	fmt.Fprintf(j.o.Log, "gce: %s of %d MiB, %d data regions (%d MiB)\n", gceMember, realSize/MiB, len(regs), data/MiB)
	return out.Sync()
}

// proveGCE reads the archive back as an importer would: gzip (its CRC and
// length checked at the end), one GNU-format member named disk.raw of a
// whole number of GiB, extracted into the temporary directory and compared
// with the raw image by qemu-img.
func (j *job) proveGCE(realSize int64) error {
	f, err := os.Open(j.out)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return fmt.Errorf("gce: %w", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return fmt.Errorf("gce: first member: %w", err)
	}
	switch {
	case h.Name != gceMember:
		return fmt.Errorf("gce: member %q, want %s", h.Name, gceMember)
	case h.Format != tar.FormatGNU:
		return fmt.Errorf("gce: member in %v format, want GNU (--format=oldgnu)", h.Format)
	case h.Size != realSize || h.Size%GiB != 0:
		return fmt.Errorf("gce: %s is %d bytes, want %d (a whole number of GiB)", gceMember, h.Size, realSize)
	case h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != j.o.SourceDateEpoch:
		return fmt.Errorf("gce: owner %d:%d, time %v: want 0:0 at SOURCE_DATE_EPOCH", h.Uid, h.Gid, h.ModTime)
	}
	dir := filepath.Join(j.tmp, "extract")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	disk := filepath.Join(dir, gceMember)
	if err := extractSparse(j.ctx, tr, h.Size, disk); err != nil {
		return fmt.Errorf("gce: extracting %s: %w", gceMember, err)
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("gce: a second member or a damaged end of archive (%v): GCE wants disk.raw alone", err)
	}
	// What follows the end-of-archive blocks is padding at most; reading
	// the gzip stream to its end checks its CRC-32 and length.
	if n, err := io.Copy(io.Discard, io.LimitReader(zr, 1<<20)); err != nil {
		return fmt.Errorf("gce: gzip: %w", err)
	} else if n == 1<<20 {
		return errors.New("gce: more than 1 MiB after the end of the archive")
	}
	j.prove("tar.gz read back: gzip CRC ok, one GNU (oldgnu) member %s of %d GiB, owner 0:0, time SOURCE_DATE_EPOCH", gceMember, h.Size/GiB)
	return j.compare("raw", disk)
}
