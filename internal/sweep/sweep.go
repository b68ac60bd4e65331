// Package sweep removes the work directories of bake processes that are
// gone: killed with SIGKILL (by a user, a CI timeout, the OOM killer) or
// stopped by a power cut before their own cleanup ran. Every kind of work
// dir bake makes (a build's, a verify run's, a VM's, a network link's, the
// .deb cache's snapshots, a container layer's) is named by MkdirTemp after
// its owner, and the next process that makes one of the same kind sweeps
// the stale ones with a Sweep.
//
// The one policy: a dir is stale when nothing shows its owner alive.
//   - A lock (Sweep.Lock: a file in the dir its owner holds an flock on for
//     its whole life, as a build does) that is held: alive.
//   - The owner's PID in its name (MkdirTemp): alive while that PID runs. A
//     PID reused by another process keeps the dir until that process ends
//     too: a sweep waits rather than guess.
//   - No owner in its name (made by an older bake): stale when its lock
//     file is there and free, else once older than Sweep.MaxAge (never when
//     MaxAge is zero).
//
// And whatever the owner: a dir marked kept (Sweep.Keep) stays; a dir of
// another user stays unless the sweeper is root; and a dir with a mount at
// or below it is never removed (mounts.RemoveAllSafe refuses it and the
// sweep reports it), so a sweep can never empty a filesystem mounted into a
// dead build's tree.
package sweep

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bakeimg/bake/internal/mounts"
)

// OwnerPID is the PID a work dir's name records: this process's PID as
// /proc names it. That is os.Getpid() except inside bake build's own PID
// namespace (builder.RunIsolated), where os.Getpid() is 1 or another small
// number that means nothing outside it; /proc there is still the host's,
// and /proc/self names this process by its PID on the host, the number
// every other bake can check with Alive.
func OwnerPID() int {
	if s, err := os.Readlink("/proc/self"); err == nil {
		if pid, err := strconv.Atoi(s); err == nil && pid > 0 {
			return pid
		}
	}
	return os.Getpid()
}

// claimed are the names Claim handed out and not yet released.
var claimed sync.Map

// Claim reserves name (a network namespace, say, named after OwnerPID) for
// the caller until release is called; ok is false when this process holds
// it already. A name with our PID in it that exists on the host is either
// a leftover of an earlier process with our PID, safe to remove, or one
// this process is still using (two tests of one binary asking for the same
// name): Claim tells the two apart, so that neither deletes the other's.
func Claim(name string) (release func(), ok bool) {
	if _, loaded := claimed.LoadOrStore(name, true); loaded {
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { claimed.Delete(name) }) }, true
}

// Alive reports whether process pid (an OwnerPID) runs. Another user's
// process counts; a zombie does not: it has exited, its files are closed
// and its locks released, and only its parent's wait is missing (a build
// killed with SIGKILL whose parent died too waits for PID 1 to reap it, and
// the next build must not keep its work dir for that). It looks in /proc,
// which names processes the way OwnerPID does; without a /proc it asks
// kill(2).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if _, err := os.Stat("/proc/self"); err == nil {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return !errors.Is(err, fs.ErrNotExist)
		}
		// pid (comm) STATE ...: comm may hold spaces and parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
			if st := b[i+2]; st == 'Z' || st == 'X' {
				return false
			}
		}
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// DefaultMaxAge is the age after which a work dir whose name records no
// owner is taken for a dead process's: no bake step runs for hours, and
// such names only come from bake versions that did not record owners.
const DefaultMaxAge = 6 * time.Hour

// Pattern is the start of a work dir's name: prefix, this process's
// OwnerPID and "-". Anything may follow (os.MkdirTemp's random part).
func Pattern(prefix string) string { return fmt.Sprintf("%s%d-", prefix, OwnerPID()) }

// MkdirTemp makes a new directory in parent (os.TempDir() when empty) named
// Pattern(prefix) and a random part, mode 0700, so that a Sweep with the
// same prefix can tell when its owner is gone.
func MkdirTemp(parent, prefix string) (string, error) {
	return os.MkdirTemp(parent, Pattern(prefix))
}

// LeadingPID is the PID right after prefix in a name MkdirTemp made:
// "bake-link-1234-98765" with prefix "bake-link-" is 1234. A name without
// the second field (made before owners were recorded) has none.
func LeadingPID(name, prefix string) (int, bool) {
	if !strings.HasPrefix(name, prefix) {
		return 0, false
	}
	f, rest, ok := strings.Cut(name[len(prefix):], "-")
	if !ok || rest == "" {
		return 0, false
	}
	pid, err := strconv.Atoi(f)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != f {
		return 0, false
	}
	return pid, true
}

// Sweep is one kind of work dir: those named Prefix... in Dir.
type Sweep struct {
	Dir    string // where they are; os.TempDir() when empty
	Prefix string // MkdirTemp's prefix
	// MaxAge: a dir whose name records no owner is stale once its
	// modification time is older than this; zero: never.
	MaxAge time.Duration
	// Keep names a file that marks a dir kept on purpose (bake verify
	// --keep): such a dir is never stale.
	Keep string
	// Lock names a file in the dir that its owner holds an flock on for
	// as long as it lives, and that exists only once locked (the owner
	// locks it under another name and renames it): held, the dir is
	// alive whatever else is true; there and free, the dir is stale, even
	// while the owner's PID still shows (a killed process's files, and so
	// its flock, are released before the kernel has finished with it).
	Lock string

	// Alive and Remove are for tests: nil means Alive and
	// mounts.RemoveAllSafe.
	Alive  func(pid int) bool
	Remove func(dir string) error
}

// Run removes the stale dirs and returns their paths. The error joins what
// it could not remove (a mount below a dir, a permission); the rest is
// removed all the same. A dir that another sweep removed meanwhile is
// neither.
func (s Sweep) Run() ([]string, error) {
	dir := s.Dir
	if dir == "" {
		dir = os.TempDir()
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil // nothing there, nothing stale
	}
	remove := s.Remove
	if remove == nil {
		remove = mounts.RemoveAllSafe
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), s.Prefix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if !s.stale(p, e.Name()) {
			continue
		}
		if err := remove(p); err != nil {
			if _, serr := os.Lstat(p); errors.Is(serr, fs.ErrNotExist) {
				continue
			}
			errs = append(errs, fmt.Errorf("stale work dir: %w", err))
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}

// stale applies the package's policy to the dir p named name.
func (s Sweep) stale(p, name string) bool {
	fi, err := os.Lstat(p)
	if err != nil || !fi.IsDir() {
		return false
	}
	if !mayRemove(fi) {
		return false // another user's (we are not root): theirs to clean
	}
	if s.Keep != "" {
		if _, err := os.Lstat(filepath.Join(p, s.Keep)); err == nil {
			return false
		}
	}
	if s.Lock != "" {
		lock := filepath.Join(p, s.Lock)
		if lockHeld(lock) {
			return false
		}
		if _, err := os.Lstat(lock); err == nil {
			return true // locked once, free now: its owner has ended
		}
	}
	if pid, ok := LeadingPID(name, s.Prefix); ok {
		alive := s.Alive
		if alive == nil {
			alive = Alive
		}
		// No lock yet: between making the dir and locking it, its owner
		// is alive with no lock; the PID decides.
		return pid != OwnerPID() && pid != os.Getpid() && !alive(pid)
	}
	return s.MaxAge > 0 && time.Since(fi.ModTime()) > s.MaxAge
}

// mayRemove: root may remove any user's leftovers; a user only their own.
func mayRemove(fi fs.FileInfo) bool {
	euid := os.Geteuid()
	if euid == 0 {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == euid
}

// lockHeld reports whether path is locked: another open file description
// holds an flock on it. A missing file holds nothing; a lock file that
// cannot be opened or tried counts as held (a sweep waits rather than guess).
func lockHeld(path string) bool {
	// Never through a symlink, never blocking on a FIFO put there.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		return true
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}
