package oci

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// entry is one member of a layer tar. Layers are described as a list of
// entries and written by writeTar, which is the only place that decides
// what a header looks like: that is what makes two builds byte-identical.
type entry struct {
	// Name is the path inside the image, relative and clean
	// ("usr/local/bin/node"), never with a trailing slash.
	Name     string
	Type     byte // tar.TypeReg, TypeDir, TypeSymlink, TypeLink, TypeChar, TypeBlock, TypeFifo
	Mode     int64
	UID, GID int
	Linkname string // symlink target, or hard link target (an earlier Name)
	Size     int64
	// Open returns the content of a regular file. Data is used when Open
	// is nil.
	Open func() (io.ReadCloser, error)
	Data []byte
	// Xattrs are kept for security.capability only (file capabilities).
	Xattrs map[string]string
	// Devmajor and Devminor are for device nodes.
	Devmajor, Devminor int64
}

func dirEntry(name string, mode int64, uid, gid int) entry {
	return entry{Name: name, Type: tar.TypeDir, Mode: mode, UID: uid, GID: gid}
}

func fileEntry(name string, mode int64, data []byte) entry {
	return entry{Name: name, Type: tar.TypeReg, Mode: mode, Size: int64(len(data)), Data: data}
}

func symlinkEntry(name, target string) entry {
	return entry{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target}
}

// withParents adds a directory entry for every parent of an entry that has
// none, with the owner and mode that parent has in the layers below (lower;
// nil: 0755 root:root, for a layer that stands alone).
//
// Every layer must carry its parents explicitly: Docker's layer store
// (overlay2) extracts each layer into a directory of its own and makes a
// missing parent 0755 root:root there, and in the merged view the upper
// layer's directory wins. Without the entries, a 1777 home in the Debian
// layer turns into 0755 root under the app layer's home/node/.openclaw,
// and a gateway run as another uid cannot write $HOME.
func withParents(es []entry, lower func(dir string) entry) []entry {
	have := map[string]bool{}
	for _, e := range es {
		have[e.Name] = true
	}
	out := es
	for _, e := range es {
		for d := path.Dir(e.Name); d != "." && d != "/" && !have[d]; d = path.Dir(d) {
			have[d] = true
			pe := dirEntry(d, 0o755, 0, 0)
			if lower != nil {
				pe = lower(d)
				pe.Name, pe.Type = d, tar.TypeDir
			}
			out = append(out, pe)
		}
	}
	return out
}

// writeTar writes entries as a tar stream that depends only on the entries
// and epoch: sorted by name (a parent always sorts before its children), every
// time is epoch, no user or group names, no access or change times, and the
// format only goes beyond USTAR (to PAX) for long names, large files and
// xattrs. A hard link must name an entry that sorts before it; the tree
// walker arranges that.
func writeTar(w io.Writer, entries []entry, epoch int64) error {
	es := slices.Clone(entries)
	slices.SortFunc(es, func(a, b entry) int { return strings.Compare(a.Name, b.Name) })
	mtime := time.Unix(epoch, 0).UTC()
	tw := tar.NewWriter(w)
	seen := make(map[string]bool, len(es))
	for i, e := range es {
		if e.Name == "" || e.Name == "." || strings.HasPrefix(e.Name, "/") || path.Clean(e.Name) != e.Name {
			return fmt.Errorf("tar: bad entry name %q", e.Name)
		}
		if i > 0 && es[i-1].Name == e.Name {
			return fmt.Errorf("tar: duplicate entry %q", e.Name)
		}
		hdr := &tar.Header{
			Typeflag: e.Type,
			Name:     e.Name,
			Linkname: e.Linkname,
			Mode:     e.Mode & 0o7777,
			Uid:      e.UID,
			Gid:      e.GID,
			ModTime:  mtime,
			Devmajor: e.Devmajor,
			Devminor: e.Devminor,
		}
		switch e.Type {
		case tar.TypeDir:
			hdr.Name += "/"
		case tar.TypeReg:
			hdr.Size = e.Size
		case tar.TypeLink:
			if !seen[e.Linkname] {
				return fmt.Errorf("tar: hard link %q to %q, which is not earlier in the layer", e.Name, e.Linkname)
			}
		case tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		default:
			return fmt.Errorf("tar: %q: unsupported type %q", e.Name, e.Type)
		}
		if len(e.Xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar: %s: %w", e.Name, err)
		}
		seen[e.Name] = true
		if e.Type != tar.TypeReg {
			continue
		}
		if err := copyContent(tw, e); err != nil {
			return err
		}
	}
	return tw.Close()
}

func copyContent(w io.Writer, e entry) error {
	var r io.Reader = bytes.NewReader(e.Data)
	if e.Open != nil {
		rc, err := e.Open()
		if err != nil {
			return err
		}
		defer rc.Close()
		r = rc
	}
	n, err := io.Copy(w, io.LimitReader(r, e.Size))
	if err == nil && n != e.Size {
		err = fmt.Errorf("tar: %s: file changed while writing: %d of %d bytes", e.Name, n, e.Size)
	}
	return err
}

// treeOptions say how a directory tree becomes layer entries.
type treeOptions struct {
	// Prefix is where the tree goes in the image ("app"); empty for "/".
	Prefix string
	// Skip is called with the image path (no leading slash) of every
	// entry; true drops it, and a directory's whole subtree with it.
	Skip func(name string, isDir bool) bool
	// KeepDir, for a directory Skip dropped, keeps the directory itself
	// (empty): /proc, /dev, /tmp.
	KeepDir func(name string) bool
	// Normalize, when set, replaces owners by root and modes by 0755 for
	// directories and executables and 0644 for other files: for trees
	// made by npm, whose owners and modes come from the build host's umask
	// and user. Otherwise owners and modes are kept (a Debian tree, where
	// they are the packages' own).
	Normalize bool
}

// treeEntries walks root and returns the entries of a layer holding it.
// Hard links become TypeLink entries naming the first path of the same
// inode in sorted order; sockets are dropped.
func treeEntries(root string, o treeOptions) ([]entry, error) {
	var es []entry
	type inode struct{ dev, ino uint64 }
	links := map[inode][]int{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := path.Join(o.Prefix, filepath.ToSlash(rel))
		if o.Skip != nil && o.Skip(name, d.IsDir()) {
			if d.IsDir() && o.KeepDir != nil && o.KeepDir(name) {
				if e, err := entryFor(p, name, o); err != nil {
					return err
				} else {
					es = append(es, e)
				}
			}
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type()&fs.ModeSocket != 0 {
			return nil
		}
		e, err := entryFor(p, name, o)
		if err != nil {
			return err
		}
		if e.Type == tar.TypeReg {
			if st, err := os.Lstat(p); err == nil {
				if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink > 1 {
					k := inode{uint64(sys.Dev), sys.Ino}
					links[k] = append(links[k], len(es))
				}
			}
		}
		es = append(es, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The first name of each inode in sorted order carries the data; the
	// others link to it.
	for _, idx := range links {
		if len(idx) < 2 {
			continue
		}
		first := idx[0]
		for _, i := range idx[1:] {
			if es[i].Name < es[first].Name {
				first = i
			}
		}
		for _, i := range idx {
			if i == first {
				continue
			}
			es[i] = entry{Name: es[i].Name, Type: tar.TypeLink, Mode: es[first].Mode,
				UID: es[first].UID, GID: es[first].GID, Linkname: es[first].Name}
		}
	}
	return es, nil
}

func entryFor(p, name string, o treeOptions) (entry, error) {
	st, err := os.Lstat(p)
	if err != nil {
		return entry{}, err
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	e := entry{Name: name, Mode: int64(st.Mode().Perm())}
	if st.Mode()&fs.ModeSetuid != 0 {
		e.Mode |= 0o4000
	}
	if st.Mode()&fs.ModeSetgid != 0 {
		e.Mode |= 0o2000
	}
	if st.Mode()&fs.ModeSticky != 0 {
		e.Mode |= 0o1000
	}
	if sys != nil {
		e.UID, e.GID = int(sys.Uid), int(sys.Gid)
	}
	m := st.Mode()
	switch {
	case m.IsDir():
		e.Type = tar.TypeDir
	case m.IsRegular():
		e.Type = tar.TypeReg
		e.Size = st.Size()
		e.Open = func() (io.ReadCloser, error) { return os.Open(p) }
		if v, err := lgetxattr(p, "security.capability"); err == nil && v != "" {
			e.Xattrs = map[string]string{"security.capability": v}
		}
	case m&fs.ModeSymlink != 0:
		e.Type = tar.TypeSymlink
		if e.Linkname, err = os.Readlink(p); err != nil {
			return entry{}, err
		}
		e.Mode = 0o777
	case m&fs.ModeNamedPipe != 0:
		e.Type = tar.TypeFifo
	case m&fs.ModeDevice != 0 && sys != nil:
		e.Type = tar.TypeBlock
		if m&fs.ModeCharDevice != 0 {
			e.Type = tar.TypeChar
		}
		e.Devmajor, e.Devminor = int64(unix.Major(uint64(sys.Rdev))), int64(unix.Minor(uint64(sys.Rdev)))
	default:
		return entry{}, fmt.Errorf("%s: unsupported file type %v", p, m.Type())
	}
	if o.Normalize {
		e.UID, e.GID = 0, 0
		e.Xattrs = nil
		switch {
		case e.Type == tar.TypeDir:
			e.Mode = 0o755
		case e.Type == tar.TypeReg && e.Mode&0o111 != 0:
			e.Mode = 0o755
		case e.Type == tar.TypeReg:
			e.Mode = 0o644
		}
	}
	return e, nil
}

func lgetxattr(p, attr string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, attr, buf)
	if err != nil {
		if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
			return "", nil
		}
		return "", err
	}
	return string(buf[:n]), nil
}

// gzipLevel is fixed: the compressed bytes, and so the layer digest, depend
// on it. klauspost's gzip is about twice as fast as the standard library's
// at the same ratio; its output for a given version and level is stable,
// and go.sum pins the version.
const gzipLevel = gzip.DefaultCompression

// layerFile is a compressed layer blob on disk with its two digests.
type layerFile struct {
	Path             string
	Digest           string // sha256 of the compressed blob
	DiffID           string // sha256 of the uncompressed tar
	Size             int64  // compressed
	UncompressedSize int64
}

// writeLayerFile writes entries as a gzip-compressed tar at dst (atomically:
// a temporary file renamed into place). The gzip header carries no name, no
// time and OS "unknown", so the blob depends only on the tar.
func writeLayerFile(dst string, entries []entry, epoch int64) (layerFile, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), ".layer-*")
	if err != nil {
		return layerFile{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	compressed := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, compressed)}
	zw, err := gzip.NewWriterLevel(cw, gzipLevel)
	if err != nil {
		return layerFile{}, err
	}
	// klauspost writes uint32(ModTime.Unix()) even for the zero time:
	// the Unix epoch is what makes the field 0.
	zw.Header = gzip.Header{OS: 255, ModTime: time.Unix(0, 0)}
	uncompressed := sha256.New()
	uw := &countWriter{w: io.MultiWriter(zw, uncompressed)}
	if err := writeTar(uw, entries, epoch); err != nil {
		return layerFile{}, err
	}
	if err := zw.Close(); err != nil {
		return layerFile{}, err
	}
	if err := f.Sync(); err != nil {
		return layerFile{}, err
	}
	if err := f.Close(); err != nil {
		return layerFile{}, err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return layerFile{}, err
	}
	return layerFile{Path: dst, Digest: digestOf(compressed), DiffID: digestOf(uncompressed),
		Size: cw.n, UncompressedSize: uw.n}, nil
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
