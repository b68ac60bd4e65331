//go:build vm

package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/execx"
)

// TestLinkChildrenSurviveNetnsSwitches is issue 11's "VM killed at random":
// QEMU and dnsmasq get SIGKILL as their parent-death signal, which Linux
// sends when the *thread* that forked them exits, and every inNetns call
// ends its thread. Here dnsmasq (started by NewLink) and a long-running
// child started exactly as QEMU is (execx.StartPinned) must both be alive
// after hundreds of namespace switches on other goroutines. With the
// earlier lock-start-unlock code the child died in most runs.
func TestLinkChildrenSurviveNetnsSwitches(t *testing.T) {
	needRootAndQEMU(t)
	l, err := NewLink(t.Context(), "pdeath")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	// A real QEMU, started by Start, with an empty disk: SeaBIOS looks
	// for something to boot for as long as it is let run.
	empty := filepath.Join(t.TempDir(), "empty.raw")
	if err := os.WriteFile(empty, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := Start(t.Context(), Config{Accel: AccelTCG, MemoryMiB: 64, Disk: empty, DiskFormat: "raw", Net: NetConfig{Mode: NetNone}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	cmd := exec.Command("sleep", "600")
	child, err := execx.StartPinned(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Stop(0) })

	// Rounds of namespace switches. Goroutines blocked in raw syscalls
	// beside them make the runtime hand their Ps to idle threads, so the
	// idle threads (those that forked among them) keep being put back to
	// work, where a namespace switch can lock one and end it.
	const rounds, workers, calls, blockers = 40, 8, 4, 32
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for b := 0; b < blockers; b++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ts := unix.NsecToTimespec(int64(2 * time.Millisecond))
				unix.Nanosleep(&ts, nil)
			}()
		}
		errs := make(chan error, workers*calls)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < calls; i++ {
					errs <- l.inNetns(func() error { return nil })
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a SIGKILL, if sent, has landed
	select {
	case <-v.Exited():
		t.Fatalf("QEMU died during namespace switches: %v\n%s", v.Wait(), v.QEMULog())
	default:
	}
	select {
	case <-child.Done():
		t.Fatalf("child started like QEMU died during namespace switches: %v", child.Wait())
	default:
	}
	select {
	case <-l.dnsmasqDone:
		t.Fatalf("dnsmasq died during namespace switches")
	default:
	}
	if pid := l.DNSMasqPID(); pid == 0 || !alive(pid) {
		t.Fatalf("dnsmasq (pid %d) is not alive", pid)
	}
}
