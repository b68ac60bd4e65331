package execx

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// StartPinned starts cmd with SIGKILL as its parent-death signal and returns
// the running child; its Done channel is closed once the child has exited
// and been reaped.
//
// Linux sends the parent-death signal when the *thread* that forked the
// child exits, not the process. A Go program's threads come and go: a
// goroutine that locks its thread and returns without unlocking (every
// network-namespace switch in bake does, so that no other goroutine ever
// runs in that namespace) takes its thread down with it. If the runtime had
// earlier forked a child from that very thread and handed the thread back
// to its pool, the child dies with it: QEMU "killed" in the middle of a
// verify, for nothing. So the child is forked from a goroutine that locks
// its thread before the fork and keeps it locked, blocked in Wait, for the
// child's whole life; no other goroutine can run on that thread, so none can
// take it down. The thread goes back to the pool only after the child has
// been reaped. One idle OS thread per running child is the price.
//
// cmd.SysProcAttr is kept (or made) and its Pdeathsig set to SIGKILL.
func StartPinned(cmd *exec.Cmd) (*Child, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	c := &Child{Cmd: cmd, done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			// Nothing was forked, and this thread's state was not
			// changed: it may go back to the pool.
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		c.err = cmd.Wait()
		// The child is reaped: its parent-death signal no longer matters.
		runtime.UnlockOSThread()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// Child is a command started by StartPinned.
type Child struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, set before done is closed
}

// Done is closed when the child has exited and been reaped.
func (c *Child) Done() <-chan struct{} { return c.done }

// Wait blocks until the child has exited and returns cmd.Wait's result.
// It may be called any number of times, from any goroutine.
func (c *Child) Wait() error {
	<-c.done
	return c.err
}

// Stop ends the child and waits until it has been reaped: SIGTERM (this PID
// only), then SIGKILL if it is still running after grace (at once when grace
// is 0). Safe to call any number of times, concurrently, and after the child
// has exited. It returns cmd.Wait's result. Every long-running child bake
// or its tests start (QEMU, dnsmasq, servers under test) ends this way.
func (c *Child) Stop(grace time.Duration) error {
	select {
	case <-c.done:
		return c.err
	default:
	}
	if grace > 0 {
		_ = c.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
			return c.err
		case <-time.After(grace):
		}
	}
	_ = c.Cmd.Process.Kill()
	<-c.done
	return c.err
}

// WaitForwarding waits for the child, passing each signal that arrives on
// sigs on to it (a process that stands in front of a child: bake's isolated
// build, a test binary in a mount namespace of its own), and returns its
// exit status as a shell reports it: the child's code, or 128+N when signal
// N killed it. err is set only when the child could not be waited for.
func (c *Child) WaitForwarding(sigs <-chan os.Signal) (int, error) {
	for {
		select {
		case s := <-sigs:
			_ = c.Cmd.Process.Signal(s)
		case <-c.done:
			if c.err == nil {
				return 0, nil
			}
			var ee *exec.ExitError
			if errors.As(c.err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return 128 + int(ws.Signal()), nil
				}
				return ee.ExitCode(), nil
			}
			return 1, c.err
		}
	}
}
