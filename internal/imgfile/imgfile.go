// Package imgfile opens disk images named by a user or a recipe without
// trusting what the path turns out to be, and reads just enough of a qcow2
// header to refuse images that would make QEMU (or qemu-img) open other
// files of the host.
package imgfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotRegular is returned (wrapped) by OpenRegular for anything that is
// not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens path read-only for an image reader. The open itself
// cannot block (O_NONBLOCK: a FIFO would otherwise wait for a writer
// forever, deaf to SIGTERM); the file is then checked with fstat on that
// very descriptor and refused unless it is a regular file (bake reads no
// block devices, sockets, FIFOs or character devices as images), and only
// then is O_NONBLOCK cleared for ordinary reads.
func OpenRegular(path string) (*os.File, os.FileInfo, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, kind(st.Mode))
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFDIR:
		return "a directory"
	}
	return fmt.Sprintf("file type %#o", mode&unix.S_IFMT)
}

// Formats Sniff tells apart.
const (
	Raw   = "raw"
	Qcow2 = "qcow2"
)

// Qcow2Magic starts every qcow2 file.
const Qcow2Magic = "QFI\xfb"

// Info is what Sniff read.
type Info struct {
	Format string // Raw or Qcow2
	// qcow2 only: a backing file (backing_file_offset != 0; Backing is its
	// name when it could be read) and an external data file (incompatible
	// feature bit 2). Either makes QEMU open another file of the host.
	HasBacking   bool
	Backing      string
	ExternalData bool
}

// Sniff tells qcow2 from raw by the magic, without any format probing of
// the kind qemu-img does (anything not qcow2 is raw to bake), and reads the
// qcow2 header's backing file and external data file fields.
func Sniff(r io.ReaderAt) (Info, error) {
	var h [104]byte
	n, err := r.ReadAt(h[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Info{}, err
	}
	if n < 4 || string(h[:4]) != Qcow2Magic {
		return Info{Format: Raw}, nil
	}
	in := Info{Format: Qcow2}
	if n < 72 {
		return in, errors.New("truncated qcow2: the file is shorter than a qcow2 header")
	}
	off := binary.BigEndian.Uint64(h[8:])
	size := binary.BigEndian.Uint32(h[16:])
	if off != 0 {
		in.HasBacking = true
		if size > 0 && size <= 1023 {
			b := make([]byte, size)
			if _, err := r.ReadAt(b, int64(off&(1<<62-1))); err == nil {
				in.Backing = string(b)
			}
		}
	}
	if binary.BigEndian.Uint32(h[4:]) >= 3 && n >= 80 && binary.BigEndian.Uint64(h[72:])&(1<<2) != 0 {
		in.ExternalData = true
	}
	return in, nil
}

// ErrIndirect is returned (wrapped) by Refuse.
var ErrIndirect = errors.New("qcow2 refers to another file")

// Refuse returns an error for a qcow2 that names another file of the host
// (a backing file or an external data file), nil otherwise.
func (in Info) Refuse() error {
	switch {
	case in.HasBacking:
		return fmt.Errorf("%w: it has a backing file (%q), which bake never opens: bake needs a self-contained image; flatten it with `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`", ErrIndirect, in.Backing)
	case in.ExternalData:
		return fmt.Errorf("%w: it keeps its data in an external data file, which bake never opens: bake needs a self-contained image", ErrIndirect)
	}
	return nil
}
