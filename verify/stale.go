package verify

import (
	"context"
	"os"

	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/vm"
)

// workDirPrefix names a run's work dir: bake-verify-PID-RANDOM in $TMPDIR
// (sweep.MkdirTemp), so a later run can tell one left by a killed run from
// a live run's.
const workDirPrefix = "bake-verify-"

// keptMarker marks a work dir kept on purpose (--keep): never stale.
const keptMarker = ".bake-verify-kept"

func newWorkDir() (string, error) {
	return sweep.MkdirTemp("", workDirPrefix)
}

// removeStale removes what runs killed with SIGKILL left behind (their
// QEMU and dnsmasq died with them): network namespaces with their tap
// devices, the Links' dirs, the VMs' dirs and work dirs, each only when
// the PID in its name is gone (package sweep's policy). A dir with a mount
// below it, or kept with --keep, stays.
func (r *runner) removeStale(ctx context.Context) {
	var removed []string
	if os.Geteuid() == 0 {
		rm, err := vm.RemoveStaleLinks(ctx, "verify-")
		removed = append(removed, rm...)
		if err != nil {
			r.logf("warning: %v", err)
		}
	}
	rm, err := vm.RemoveStaleDirs()
	removed = append(removed, rm...)
	if err != nil {
		r.logf("warning: %v", err)
	}
	rm, err = removeStaleWorkDirs(os.TempDir(), sweep.Alive, nil)
	removed = append(removed, rm...)
	if err != nil {
		r.logf("warning: %v", err)
	}
	for _, x := range removed {
		r.logf("removed %s, left by a bake verify that was killed", x)
	}
}

// removeStaleWorkDirs sweeps verify's work dirs in tmp; alive and remove
// are sweep.Sweep's test hooks (nil: the real ones).
func removeStaleWorkDirs(tmp string, alive func(int) bool, remove func(string) error) ([]string, error) {
	return sweep.Sweep{
		Dir: tmp, Prefix: workDirPrefix, Keep: keptMarker, MaxAge: sweep.DefaultMaxAge,
		Alive: alive, Remove: remove,
	}.Run()
}
