// Package mounts reads the mount table (/proc/self/mountinfo) and removes
// directories without ever crossing a mount point.
//
// Why a package of its own: the build's tree stage, the verifier, the VM
// runner, the cloud image reader and the container layer builder all make
// work directories and must never delete through a mount left below one (a
// chroot's /dev bound under a work dir turns "rm -rf workdir" into "empty
// the build host's /dev"). They share this one check instead of importing
// the tree stage for it.
package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/internal/safepath"
	"golang.org/x/sys/unix"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	ID, Parent int
	MountPoint string // unescaped
	FSType     string
	Source     string
}

// Parse parses the proc(5) mountinfo format. Mount points are
// unescaped: the kernel writes space, tab, newline and backslash in a path
// as \040, \011, \012 and \134, so a tree under "/work/my builds" appears
// as "/work/my\040builds".
func Parse(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 {
			return nil, fmt.Errorf("mountinfo: malformed line %q", line)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo: malformed line %q", line)
		}
		m := Mount{ID: id, Parent: parent, MountPoint: unescapeOctal(f[4])}
		if sep+1 < len(f) {
			m.FSType = f[sep+1]
		}
		if sep+2 < len(f) {
			m.Source = unescapeOctal(f[sep+2])
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escaping in mountinfo fields.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// mountinfoPath is read by Under; tests point it at fixtures.
var mountinfoPath = "/proc/self/mountinfo"

// Under returns the mount points at or below dir, deepest last in
// mount order (as the kernel lists them). dir is made absolute and its
// symlinks resolved first, because mountinfo names real paths.
func Under(dir string) ([]string, error) {
	f, err := os.Open(mountinfoPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ms, err := Parse(f)
	if err != nil {
		return nil, err
	}
	return under(ms, Canonical(dir)), nil
}

// Below returns the mount points strictly below dir: a tree that is
// itself a mount point (a tmpfs work dir) is fine for a chroot, what matters
// is what was mounted inside it.
func Below(dir string) ([]string, error) {
	all, err := Under(dir)
	if err != nil {
		return nil, err
	}
	c := Canonical(dir)
	var out []string
	for _, m := range all {
		if m != c {
			out = append(out, m)
		}
	}
	return out, nil
}

func under(ms []Mount, dir string) []string {
	var out []string
	for _, m := range ms {
		if Within(m.MountPoint, dir) {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// Within reports whether p is dir or inside it (both clean, absolute): a
// lexical test, for paths already made Canonical.
func Within(p, dir string) bool {
	if dir == "/" {
		return true
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// Canonical makes dir absolute and resolves symlinks in it as far as it
// exists: the form in which mountinfo names mount points.
func Canonical(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return filepath.Clean(dir)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	// Resolve the longest existing prefix.
	parent, base := filepath.Split(abs)
	if parent == abs || parent == "" {
		return abs
	}
	return filepath.Join(Canonical(filepath.Clean(parent)), base)
}

// ErrMounted is returned when a directory that must be free of mounts is
// not.
var ErrMounted = errors.New("mount points below directory")

// RemoveAllSafe removes dir and everything below it, but refuses (with
// ErrMounted) when /proc/self/mountinfo shows any mount at or below dir, and
// never crosses a mount point even if one appears meanwhile (the removal
// opens every directory with RESOLVE_NO_XDEV).
//
// Why: a chroot's /dev or /proc left mounted below a work dir turns
// "rm -rf workdir" into "empty the build host's /dev". os.RemoveAll would
// happily descend.
func RemoveAllSafe(dir string) error {
	abs := Canonical(dir)
	if abs == "/" {
		return errors.New("RemoveAllSafe: refusing to remove /")
	}
	mounts, err := Under(abs)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("%w %s: %s", ErrMounted, abs, strings.Join(mounts, ", "))
	}
	parent, base := filepath.Split(abs)
	dfd, err := unix.Open(parent, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "open", Path: parent, Err: err}
	}
	defer unix.Close(dfd)
	if err := safepath.RemoveAt(dfd, base); err != nil {
		return fmt.Errorf("removing %s: %w", abs, err)
	}
	return nil
}
