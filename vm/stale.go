package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/sweep"
)

// TrailingPID is the PID that ends name after prefix: "bake-verify-bios-0-
// 1234" with prefix "bake-verify-" is 1234. A Link's namespace is named
// so (bake-NAME-PID).
func TrailingPID(name, prefix string) (int, bool) {
	if !strings.HasPrefix(name, prefix) {
		return 0, false
	}
	i := strings.LastIndexByte(name, '-')
	if i < len(prefix)-1 || i == len(name)-1 {
		return 0, false
	}
	pid, err := strconv.Atoi(name[i+1:])
	if err != nil || pid <= 0 || strconv.Itoa(pid) != name[i+1:] {
		return 0, false
	}
	return pid, true
}

// RemoveStaleLinks removes what the Links of processes that are gone left
// behind: the namespaces bake-PREFIX...-PID (with their tap devices, and
// any process still inside them, which was started for that Link) and the
// Links' temp dirs (bake-link-PID-*). QEMU and dnsmasq die with their
// owner (Pdeathsig); a SIGKILL of the owner leaves the rest. Nothing whose
// PID is alive is touched, nor a dir with a mount below it. It returns what
// it removed; errors are what it could not.
func RemoveStaleLinks(ctx context.Context, prefix string) ([]string, error) {
	return removeStaleLinks(ctx, staleEnv{
		netnsDir: netnsDir, tmpDir: os.TempDir(), prefix: "bake-" + prefix,
		alive: sweep.Alive, deleteNetns: deleteStaleNetns,
		removeDir: mounts.RemoveAllSafe,
	})
}

// vmDirPrefix and probeDirPrefix name the temp dirs of Start and ProbeKVM
// (sweep.MkdirTemp): a VM's overlay, UEFI vars, logs; the probe's debug
// console file.
const (
	vmDirPrefix    = "bake-vm-"
	probeDirPrefix = "bake-kvm-probe-"
)

// RemoveStaleDirs removes the temp dirs of VMs and KVM probes whose
// process is gone (package sweep's policy). A process killed with SIGKILL
// takes its QEMU with it (Pdeathsig) but never runs Stop, which removes
// them; no root is needed. Start calls it once per process. It returns
// what it removed; errors are what it could not.
func RemoveStaleDirs() ([]string, error) {
	var removed []string
	var errs []error
	for _, prefix := range []string{vmDirPrefix, probeDirPrefix} {
		rm, err := sweep.Sweep{Prefix: prefix, MaxAge: sweep.DefaultMaxAge}.Run()
		removed = append(removed, rm...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

var sweepOnce sync.Once

// sweepStaleDirs runs RemoveStaleDirs once per process, before its first
// VM; what it cannot remove is left for bake verify to report.
func sweepStaleDirs() { sweepOnce.Do(func() { RemoveStaleDirs() }) }

type staleEnv struct {
	netnsDir, tmpDir, prefix string
	alive                    func(int) bool
	deleteNetns              func(ctx context.Context, name string) error
	removeDir                func(string) error
}

func removeStaleLinks(ctx context.Context, e staleEnv) ([]string, error) {
	var removed []string
	var errs []error
	self := sweep.OwnerPID() // the numbering of the names and of sweep.Alive
	stale := func(pid int) bool { return pid != self && !e.alive(pid) }
	if ents, err := os.ReadDir(e.netnsDir); err == nil && e.deleteNetns != nil {
		for _, ent := range ents {
			pid, ok := TrailingPID(ent.Name(), e.prefix)
			if !ok || !stale(pid) {
				continue
			}
			if err := e.deleteNetns(ctx, ent.Name()); err != nil {
				errs = append(errs, fmt.Errorf("stale network namespace %s: %w", ent.Name(), err))
				continue
			}
			removed = append(removed, "network namespace "+ent.Name())
		}
	}
	rm, err := sweep.Sweep{Dir: e.tmpDir, Prefix: linkDirPrefix, MaxAge: sweep.DefaultMaxAge,
		Alive: e.alive, Remove: e.removeDir}.Run()
	removed = append(removed, rm...)
	if err != nil {
		errs = append(errs, fmt.Errorf("link dirs: %w", err))
	}
	return removed, errors.Join(errs...)
}

// deleteStaleNetns ends the processes left in a dead owner's namespace (by
// PID: they were started for its Link) and deletes it with its devices.
func deleteStaleNetns(ctx context.Context, name string) error {
	if os.Geteuid() != 0 {
		return errors.New("deleting a network namespace needs root")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: []string{"netns", "pids", name}}); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := ipCmd(ctx, "netns", "delete", name); err != nil {
		if _, serr := os.Stat(filepath.Join(netnsDir, name)); serr == nil {
			return err
		}
	}
	return nil
}
