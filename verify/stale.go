package verify

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/vm"
)

// workDirPrefix names a run's work dir: bake-verify-PID-RANDOM in $TMPDIR,
// so a later run can tell one left by a killed run from a live run's.
const workDirPrefix = "bake-verify-"

// keptMarker marks a work dir kept on purpose (--keep): never stale.
const keptMarker = ".bake-verify-kept"

// ownedByUs: root may remove any user's leftovers; a user only their own.
func ownedByUs(p string) bool {
	euid := os.Geteuid()
	if euid == 0 {
		return true
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == euid
}

func newWorkDir() (string, error) {
	return os.MkdirTemp("", fmt.Sprintf("%s%d-", workDirPrefix, os.Getpid()))
}

// removeStale removes what runs killed with SIGKILL left behind (their
// QEMU and dnsmasq died with them): network namespaces with their tap
// devices, the Links' dirs, and work dirs, each only when the PID in its
// name is gone. A dir with a mount below it, or kept with --keep, stays.
func (r *runner) removeStale(ctx context.Context) {
	var removed []string
	if os.Geteuid() == 0 {
		rm, err := vm.RemoveStaleLinks(ctx, "verify-")
		removed = append(removed, rm...)
		if err != nil {
			r.logf("warning: %v", err)
		}
	}
	rm, err := removeStaleWorkDirs(os.TempDir(), vm.PIDAlive, mounts.RemoveAllSafe)
	removed = append(removed, rm...)
	if err != nil {
		r.logf("warning: %v", err)
	}
	for _, x := range removed {
		r.logf("removed %s, left by a bake verify that was killed", x)
	}
}

func removeStaleWorkDirs(tmp string, alive func(int) bool, remove func(string) error) ([]string, error) {
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return nil, nil
	}
	var removed []string
	var firstErr error
	for _, e := range ents {
		pid, ok := vm.LeadingPID(e.Name(), workDirPrefix)
		if !ok || !e.IsDir() || pid == os.Getpid() || alive(pid) {
			continue
		}
		p := filepath.Join(tmp, e.Name())
		if !ownedByUs(p) {
			continue // another user's (not root): theirs to clean
		}
		if _, err := os.Lstat(filepath.Join(p, keptMarker)); err == nil {
			continue
		}
		if err := remove(p); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("stale work dir: %w", err)
			}
			continue
		}
		removed = append(removed, p)
	}
	return removed, firstErr
}
