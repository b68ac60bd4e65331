// Package safepath writes into a root tree (an image being built) without
// ever leaving it.
//
// Why: a root tree is full of symlinks that are only meaningful inside it
// (/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf, /lib ->
// usr/lib, or anything an overlay or a package put there). Opening
// TREE/etc/evil/x with plain path resolution follows an absolute symlink
// etc/evil -> /tmp/outside to the build host's /tmp/outside, so a careless
// (or malicious) tree makes bake, running as root, write on the host.
//
// Every path here is resolved by the kernel with openat2(2) and
// RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS relative to a directory fd of the
// tree: the kernel treats the tree as "/" for that lookup (as chroot(2)
// would), so an absolute symlink resolves below the tree, ".." stops at the
// tree's root, and /proc/self/fd-style magic links are refused. The last
// component of a path that is written, removed, chowned or chmodded is never
// followed: operations go through the *at(2) calls on the parent directory's
// fd with AT_SYMLINK_NOFOLLOW / O_NOFOLLOW semantics, so a symlink in the
// tree is replaced or refused, never written through.
//
// Paths given to a Root are paths inside the tree ("/etc/passwd" and
// "etc/passwd" are the same file). They are cleaned lexically first.
package safepath

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// resolveInRoot is how every lookup in the tree resolves: chroot semantics,
// no magic links (/proc/PID/fd/N would jump anywhere).
const resolveInRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// Root is an open tree. It holds a directory fd, so a Root keeps working on
// the same directory even if the tree's path is renamed.
type Root struct {
	path string
	fd   int
}

// Open opens the tree at dir (a host path).
func Open(dir string) (*Root, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: abs, Err: err}
	}
	return &Root{path: abs, fd: fd}, nil
}

// Close releases the tree's fd.
func (r *Root) Close() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Path is the tree's host path as given to Open (made absolute).
func (r *Root) Path() string { return r.path }

// Clean turns a path inside the tree into its canonical form: absolute,
// lexically cleaned, so ".." can never climb above "/".
func Clean(name string) string {
	return path.Clean("/" + filepath.ToSlash(name))
}

// HostPath is the host path of name (for messages and for tools that take
// host paths). Never open it directly to write: that would follow symlinks.
func (r *Root) HostPath(name string) string {
	return filepath.Join(r.path, Clean(name))
}

func (r *Root) err(op, name string, err error) error {
	return &fs.PathError{Op: op, Path: r.HostPath(name), Err: err}
}

// openat2 resolves name inside the tree, following symlinks inside it
// (including in the last component unless flags has O_NOFOLLOW).
func (r *Root) openat2(name string, flags uint64, mode uint32) (int, error) {
	how := unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: uint64(mode), Resolve: resolveInRoot}
	rel := strings.TrimPrefix(Clean(name), "/")
	if rel == "" {
		rel = "."
	}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(r.fd, rel, &how)
		// EAGAIN: a concurrent rename raced the lookup; the kernel asks
		// to retry.
		if err == unix.EAGAIN && i < 16 {
			continue
		}
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// OpenPath opens name as an O_PATH fd of a directory, following symlinks
// inside the tree except in the last component (a mount point must be a real
// directory of the tree). The caller closes the fd.
func (r *Root) OpenPath(name string) (int, error) {
	fd, err := r.openat2(name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, r.err("open", name, err)
	}
	return fd, nil
}

// parent opens the directory that holds name's last component (resolved in
// the tree) and returns its fd and that last component. The root itself
// has no parent.
func (r *Root) parent(name string) (int, string, error) {
	c := Clean(name)
	if c == "/" {
		return -1, "", r.err("open", name, errors.New("operation not allowed on the tree's root"))
	}
	dir, base := path.Split(c)
	fd, err := r.openat2(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, "", r.err("open", dir, err)
	}
	return fd, base, nil
}

// ReadFile reads name, following symlinks inside the tree (reading
// /etc/passwd through a symlink is fine; it still cannot leave the tree).
func (r *Root) ReadFile(name string) ([]byte, error) {
	fd, err := r.openat2(name, unix.O_RDONLY, 0)
	if err != nil {
		return nil, r.err("open", name, err)
	}
	f := os.NewFile(uintptr(fd), r.HostPath(name))
	defer f.Close()
	return io.ReadAll(f)
}

// Open opens name read-only, following symlinks inside the tree.
func (r *Root) Open(name string) (*os.File, error) {
	fd, err := r.openat2(name, unix.O_RDONLY, 0)
	if err != nil {
		return nil, r.err("open", name, err)
	}
	return os.NewFile(uintptr(fd), r.HostPath(name)), nil
}

// Lstat describes name itself (a symlink is reported as a symlink).
func (r *Root) Lstat(name string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if Clean(name) == "/" {
		if err := unix.Fstat(r.fd, &st); err != nil {
			return nil, r.err("lstat", name, err)
		}
		return &st, nil
	}
	dfd, base, err := r.parent(name)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, r.err("lstat", name, err)
	}
	return &st, nil
}

// Exists reports whether name exists (a dangling symlink exists).
func (r *Root) Exists(name string) (bool, error) {
	_, err := r.Lstat(name)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Readlink returns the target of the symlink name.
func (r *Root) Readlink(name string) (string, error) {
	dfd, base, err := r.parent(name)
	if err != nil {
		return "", err
	}
	defer unix.Close(dfd)
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dfd, base, buf)
	if err != nil {
		return "", r.err("readlink", name, err)
	}
	return string(buf[:n]), nil
}

// ReadDir lists the directory name (symlinks inside the tree followed).
func (r *Root) ReadDir(name string) ([]fs.DirEntry, error) {
	fd, err := r.openat2(name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, r.err("open", name, err)
	}
	f := os.NewFile(uintptr(fd), r.HostPath(name))
	defer f.Close()
	return f.ReadDir(-1)
}

// IsDir reports whether name resolves (inside the tree, symlinks followed)
// to a directory.
func (r *Root) IsDir(name string) bool {
	fd, err := r.openat2(name, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// MkdirAll creates name and its missing parents inside the tree. Directories
// it creates get perm (umask ignored) and uid:gid; existing ones are left as
// they are. A dangling symlink in the way is an error, as with mkdir -p.
func (r *Root) MkdirAll(name string, perm fs.FileMode, uid, gid int) error {
	return r.mkdirAll(name, perm, uid, gid)
}

// inherit as uid asks mkdirAll to give each directory it creates the owner
// of the directory it is created in.
const inherit = -2

func (r *Root) mkdirAll(name string, perm fs.FileMode, uid, gid int) error {
	c := Clean(name)
	if c == "/" {
		return nil
	}
	cur := "/"
	for _, comp := range strings.Split(strings.TrimPrefix(c, "/"), "/") {
		next := path.Join(cur, comp)
		fd, err := r.openat2(next, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err == nil {
			unix.Close(fd)
			cur = next
			continue
		}
		if err != unix.ENOENT {
			return r.err("mkdir", next, err)
		}
		pfd, err := r.openat2(cur, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return r.err("mkdir", cur, err)
		}
		u, g := uid, gid
		if uid == inherit {
			var st unix.Stat_t
			if err := unix.Fstat(pfd, &st); err != nil {
				unix.Close(pfd)
				return r.err("stat", cur, err)
			}
			u, g = int(st.Uid), int(st.Gid)
		}
		err = r.mkdirAt(pfd, comp, perm, u, g)
		unix.Close(pfd)
		if err != nil {
			return r.err("mkdir", next, err)
		}
		cur = next
	}
	return nil
}

// Mkdir creates the directory name (its parent must exist). An existing
// directory is not an error and is left unchanged.
func (r *Root) Mkdir(name string, perm fs.FileMode, uid, gid int) error {
	dfd, base, err := r.parent(name)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil
		}
		return r.err("mkdir", name, unix.EEXIST)
	}
	if err := r.mkdirAt(dfd, base, perm, uid, gid); err != nil {
		return r.err("mkdir", name, err)
	}
	return nil
}

func (r *Root) mkdirAt(dfd int, base string, perm fs.FileMode, uid, gid int) error {
	if err := unix.Mkdirat(dfd, base, 0o700); err != nil {
		return err
	}
	fd, err := unix.Openat(dfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// chown before chmod: chown clears setuid/setgid bits.
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return err
	}
	return unix.Fchmod(fd, UnixMode(perm))
}

// UnixMode converts a Go file mode into st_mode permission bits, setuid,
// setgid and sticky included.
func UnixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// FileMode converts st_mode permission bits into a Go file mode.
func FileMode(u uint32) fs.FileMode {
	m := fs.FileMode(u & 0o777)
	if u&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if u&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if u&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// WriteFile writes data to name with mode perm and owner uid:gid, creating
// missing parent directories (0755, owned like the directory they are made
// in). The file is written beside
// its final name and renamed over it, so a symlink at name is replaced, not
// followed, and a reader never sees half a file. A directory at name is an
// error.
func (r *Root) WriteFile(name string, data []byte, perm fs.FileMode, uid, gid int) error {
	return r.WriteFrom(name, bytes.NewReader(data), perm, uid, gid)
}

// WriteFrom is WriteFile with the content read from src.
func (r *Root) WriteFrom(name string, src io.Reader, perm fs.FileMode, uid, gid int) error {
	c := Clean(name)
	if err := r.mkdirAll(path.Dir(c), 0o755, inherit, inherit); err != nil {
		return err
	}
	dfd, base, err := r.parent(c)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return r.err("write", name, unix.EISDIR)
	}
	tmp := ".bake-tmp-" + randHex()
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return r.err("create", path.Join(path.Dir(c), tmp), err)
	}
	f := os.NewFile(uintptr(fd), r.HostPath(path.Join(path.Dir(c), tmp)))
	ok := false
	defer func() {
		if !ok {
			unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return r.err("write", name, err)
	}
	if err := f.Chown(uid, gid); err != nil {
		f.Close()
		return r.err("chown", name, err)
	}
	if err := unix.Fchmod(int(f.Fd()), UnixMode(perm)); err != nil {
		f.Close()
		return r.err("chmod", name, err)
	}
	if err := f.Close(); err != nil {
		return r.err("write", name, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, base); err != nil {
		return r.err("rename", name, err)
	}
	ok = true
	return nil
}

func randHex() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Symlink creates name as a symlink to target (the target text is stored
// as given and never resolved) owned by uid:gid, replacing a file or
// symlink already at name (missing parents as for WriteFile). A directory
// at name is an error.
func (r *Root) Symlink(target, name string, uid, gid int) error {
	c := Clean(name)
	if err := r.mkdirAll(path.Dir(c), 0o755, inherit, inherit); err != nil {
		return err
	}
	dfd, base, err := r.parent(c)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return r.err("symlink", name, unix.EISDIR)
	}
	tmp := ".bake-tmp-" + randHex()
	if err := unix.Symlinkat(target, dfd, tmp); err != nil {
		return r.err("symlink", name, err)
	}
	if err := unix.Fchownat(dfd, tmp, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return r.err("lchown", name, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, base); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return r.err("rename", name, err)
	}
	return nil
}

// Lchown changes the owner of name itself (a symlink's own owner).
func (r *Root) Lchown(name string, uid, gid int) error {
	if Clean(name) == "/" {
		return r.rootErr(unix.Fchownat(r.fd, "", uid, gid, unix.AT_EMPTY_PATH), "lchown", name)
	}
	dfd, base, err := r.parent(name)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Fchownat(dfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return r.err("lchown", name, err)
	}
	return nil
}

func (r *Root) rootErr(err error, op, name string) error {
	if err != nil {
		return r.err(op, name, err)
	}
	return nil
}

// Chmod sets name's permission bits. A symlink at name is refused (chmod
// would follow it), so is anything but a regular file or a directory.
func (r *Root) Chmod(name string, perm fs.FileMode) error {
	dfd, base, err := r.parent(name)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return r.err("chmod", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return r.err("chmod", name, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
		return r.err("chmod", name, errors.New("not a regular file or directory"))
	}
	if err := unix.Fchmod(fd, UnixMode(perm)); err != nil {
		return r.err("chmod", name, err)
	}
	return nil
}

// Truncate empties the regular file name, keeping its owner and mode. A
// symlink at name is refused.
func (r *Root) Truncate(name string) error {
	dfd, base, err := r.parent(name)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return r.err("truncate", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return r.err("truncate", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return r.err("truncate", name, errors.New("not a regular file"))
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		return r.err("truncate", name, err)
	}
	return nil
}

// Rename moves oldname to newname, both inside the tree; neither last
// component is followed.
func (r *Root) Rename(oldname, newname string) error {
	ofd, obase, err := r.parent(oldname)
	if err != nil {
		return err
	}
	defer unix.Close(ofd)
	nfd, nbase, err := r.parent(newname)
	if err != nil {
		return err
	}
	defer unix.Close(nfd)
	if err := unix.Renameat(ofd, obase, nfd, nbase); err != nil {
		return r.err("rename", oldname, err)
	}
	return nil
}

// Remove removes the file, symlink or empty directory name. A missing name
// is not an error.
func (r *Root) Remove(name string) error {
	dfd, base, err := r.parent(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer unix.Close(dfd)
	err = unix.Unlinkat(dfd, base, 0)
	if err == unix.EISDIR || err == unix.EPERM {
		err = unix.Unlinkat(dfd, base, unix.AT_REMOVEDIR)
	}
	if err != nil && err != unix.ENOENT {
		return r.err("remove", name, err)
	}
	return nil
}

// RemoveAll removes name and everything below it. It never follows a
// symlink and never descends into another mount (the kernel refuses with
// EXDEV through RESOLVE_NO_XDEV), so a mount left below name makes it fail
// instead of emptying the mounted filesystem. A missing name is not an
// error.
func (r *Root) RemoveAll(name string) error {
	if Clean(name) == "/" {
		return r.RemoveContents("/")
	}
	dfd, base, err := r.parent(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer unix.Close(dfd)
	if err := RemoveAt(dfd, base); err != nil {
		return r.err("remove", name, err)
	}
	return nil
}

// RemoveContents empties the directory name (following symlinks inside the
// tree to find it) and keeps the directory itself. Like RemoveAll, it never
// crosses a mount point.
func (r *Root) RemoveContents(name string) error {
	fd, err := r.openat2(name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return r.err("open", name, err)
	}
	if err := removeContents(fd); err != nil {
		return r.err("remove", name, err)
	}
	return nil
}

// RemoveAt removes base (a single name in the directory dfd) and everything
// below it, without following symlinks or crossing mount points. A missing
// base is not an error.
func RemoveAt(dfd int, base string) error {
	err := unix.Unlinkat(dfd, base, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	// O_NOFOLLOW + RESOLVE_NO_XDEV: a symlink swapped in is refused, and
	// a directory that is a mount point fails with EXDEV.
	fd, err := unix.Openat2(dfd, base, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		if err == unix.EXDEV {
			return fmt.Errorf("%s is a mount point: refusing to remove across it", base)
		}
		return err
	}
	if err := removeContents(fd); err != nil {
		return fmt.Errorf("%s/%w", base, err)
	}
	if err := unix.Unlinkat(dfd, base, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		if err == unix.EBUSY {
			return fmt.Errorf("%s is a mount point: refusing to remove across it", base)
		}
		return err
	}
	return nil
}

// removeContents empties the directory fd and closes fd.
func removeContents(fd int) error {
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	for {
		ents, err := f.ReadDir(512)
		for _, e := range ents {
			if rerr := RemoveAt(fd, e.Name()); rerr != nil {
				return rerr
			}
		}
		if err == io.EOF || len(ents) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		// Entries were removed while reading: restart from the top so
		// that none is skipped.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
}
