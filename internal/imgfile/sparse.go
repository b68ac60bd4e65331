package imgfile

import (
	"context"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// DataExtents lists the [start, end) ranges of f (size bytes) that hold
// data, from SEEK_DATA/SEEK_HOLE, adjacent ranges merged; the whole file
// when the filesystem cannot say. Everything outside them is a hole,
// which reads as zeros. It leaves f's offset where it was not defined:
// callers read with ReadAt or seek.
func DataExtents(ctx context.Context, f *os.File, size int64) ([][2]int64, error) {
	fd := int(f.Fd())
	var out [][2]int64
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole remains
		}
		if err != nil {
			return [][2]int64{{0, size}}, nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil || end <= start {
			return [][2]int64{{0, size}}, nil
		}
		end = min(end, size)
		if n := len(out); n > 0 && out[n-1][1] == start {
			out[n-1][1] = end
		} else {
			out = append(out, [2]int64{start, end})
		}
		off = end
	}
	return out, nil
}

// zeros is what a hole reads as, written into a hash without reading it.
var zeros = make([]byte, 1<<20)

// HashSparse writes the first size bytes of f into h as a plain read
// would, but takes the holes' zeros from memory instead of reading them:
// a sparse raw disk of 4 GiB with 1 GiB of data costs 1 GiB of reads, and
// no page cache for the rest (a read of a hole makes the kernel allocate
// and zero a page for every 4 KiB of it). ctx is checked every MiB. An
// error if f is shorter than size.
func HashSparse(ctx context.Context, h hash.Hash, f *os.File, size int64) error {
	// Holes read as zeros only inside the file.
	if st, err := f.Stat(); err != nil {
		return err
	} else if st.Size() < size {
		return fmt.Errorf("%s: %w: %d bytes, want %d", f.Name(), io.ErrUnexpectedEOF, st.Size(), size)
	}
	ext, err := DataExtents(ctx, f, size)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	zeroFill := func(n int64) error {
		for n > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := min(n, int64(len(zeros)))
			h.Write(zeros[:k])
			n -= k
		}
		return nil
	}
	var off int64
	for _, e := range append(ext, [2]int64{size, size}) {
		if err := zeroFill(e[0] - off); err != nil {
			return err
		}
		for off = e[0]; off < e[1]; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := f.ReadAt(buf[:min(int64(len(buf)), e[1]-off)], off)
			h.Write(buf[:n])
			off += int64(n)
			if err == io.EOF && off < e[1] {
				return fmt.Errorf("%s: %w: ends at %d, want %d bytes", f.Name(), io.ErrUnexpectedEOF, off, size)
			}
			if err != nil && err != io.EOF {
				return err
			}
		}
	}
	return nil
}
