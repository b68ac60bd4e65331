package execx

import (
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// threadKillers runs n goroutines that each lock their OS thread and return
// without unlocking, as every network-namespace switch in bake does: the
// Go runtime then ends each of those threads. Before StartPinned, one of
// them was often the thread that had forked QEMU, and the kernel sent QEMU
// its parent-death SIGKILL (issue 11: 19 of 20 trials of a 40-line repro).
func threadKillers(n int) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // no Unlock: the thread exits with this goroutine
			time.Sleep(time.Millisecond)
		}()
	}
	wg.Wait()
}

// procState is the state letter of pid from /proc (Z for a zombie), "" when
// the process is gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

func TestStartPinnedSurvivesThreadExits(t *testing.T) {
	// Several children and several rounds, so that the runtime has many
	// chances to reuse a forking thread for a locked goroutine.
	const children, rounds = 4, 10
	var kids []*Child
	t.Cleanup(func() {
		// Kill by PID (only our own children) and reap them. A child
		// that already died was reaped by StartPinned's Wait.
		for _, k := range kids {
			k.Cmd.Process.Kill()
		}
		for _, k := range kids {
			select {
			case <-k.Done():
			case <-time.After(10 * time.Second):
			}
		}
	})
	for i := 0; i < children; i++ {
		cmd := exec.Command("sleep", "300")
		k, err := StartPinned(cmd)
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, k)
		// Let the runtime juggle threads between the forks.
		threadKillers(20)
	}
	for r := 0; r < rounds; r++ {
		threadKillers(50)
		runtime.Gosched()
	}
	time.Sleep(200 * time.Millisecond) // a SIGKILL, if sent, has landed
	for i, k := range kids {
		select {
		case <-k.Done():
			t.Fatalf("child %d (pid %d) died while other goroutines' threads exited: %v", i, k.Cmd.Process.Pid, k.Wait())
		default:
		}
		if st := procState(k.Cmd.Process.Pid); st == "" || st == "Z" {
			t.Fatalf("child %d (pid %d) is gone or a zombie (state %q)", i, k.Cmd.Process.Pid, st)
		}
	}
}

func TestStartPinnedParentDeathSignalSet(t *testing.T) {
	cmd := exec.Command("true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	k, err := StartPinned(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Wait(); err != nil {
		t.Fatal(err)
	}
	if !cmd.SysProcAttr.Setpgid || cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Fatalf("SysProcAttr = %+v, want Setpgid kept and Pdeathsig SIGKILL", cmd.SysProcAttr)
	}
}

func TestStartPinnedStartError(t *testing.T) {
	if _, err := StartPinned(exec.Command("/nonexistent/bake-no-such-binary")); err == nil {
		t.Fatal("want an error for a missing binary")
	}
}

// TestChildStop: Stop ends a child that ignores nothing with SIGTERM, one
// that ignores SIGTERM with SIGKILL after the grace, and is a no-op after.
func TestChildStop(t *testing.T) {
	polite, err := StartPinned(exec.Command("sleep", "60"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	polite.Stop(10 * time.Second)
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("sleep took %s to end on SIGTERM", d)
	}
	if ps := polite.Cmd.ProcessState; ps == nil || ps.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("sleep ended by %v, want SIGTERM", ps)
	}
	stubborn, err := StartPinned(exec.Command("sh", "-c", "trap '' TERM; exec sleep 60"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	t0 = time.Now()
	stubborn.Stop(300 * time.Millisecond)
	if d := time.Since(t0); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("a child ignoring SIGTERM ended after %s, want the grace then SIGKILL", d)
	}
	if ps := stubborn.Cmd.ProcessState; ps == nil || ps.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("ended by %v, want SIGKILL", ps)
	}
	stubborn.Stop(time.Second) // again: returns at once
}

// WaitForwarding passes signals on and reports the child's status as a
// shell does: its code, or 128+N when signal N killed it.
func TestChildWaitForwarding(t *testing.T) {
	for _, tc := range []struct {
		script string
		signal os.Signal // sent on the channel once the child runs
		want   int
	}{
		{"exit 3", nil, 3},
		{"exit 0", nil, 0},
		{`trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done`, syscall.SIGTERM, 7},
		{`echo ready; while :; do sleep 0.05; done`, syscall.SIGINT, 128 + int(syscall.SIGINT)},
	} {
		cmd := exec.Command("sh", "-c", tc.script)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		c, err := StartPinned(cmd)
		if err != nil {
			t.Fatal(err)
		}
		sigs := make(chan os.Signal, 1)
		if tc.signal != nil {
			// Once the shell has set its trap and said so.
			buf := make([]byte, 6)
			if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
				t.Fatalf("%q: %q, %v", tc.script, buf, err)
			}
			sigs <- tc.signal
		}
		code, err := c.WaitForwarding(sigs)
		if err != nil || code != tc.want {
			t.Errorf("%q: WaitForwarding = %d, %v; want %d", tc.script, code, err, tc.want)
		}
	}
}
