package builder

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/bakeimg/bake/internal/execx"
)

// IsolatedEnv marks a process that already runs in bake's private mount and
// PID namespaces.
const IsolatedEnv = "BAKE_ISOLATED"

// Isolated reports whether this process runs inside bake's namespaces.
func Isolated() bool { return os.Getenv(IsolatedEnv) == "1" }

// RunIsolated re-executes this binary with args in a new private mount
// namespace and a new PID namespace, forwarding SIGINT and SIGTERM, and
// returns the child's exit status.
//
// Why: signal handlers cannot undo mounts when bake is killed with SIGKILL.
// Mounts made in a private mount namespace are invisible to the host and
// vanish with the namespace; the namespace lives as long as a process in it.
// The child is PID 1 of its own PID namespace, so when it dies the kernel
// kills every process in it (a hung apt or dpkg included), and Pdeathsig
// kills the child when this parent dies, even by SIGKILL. Hence: no mount
// outlives bake.
func RunIsolated(args []string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), IsolatedEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID,
		// Go makes the new mount namespace private recursively
		// (MS_REC|MS_PRIVATE on /) when Unshareflags has CLONE_NEWNS, so no
		// mount propagates back to the host.
		Unshareflags: syscall.CLONE_NEWNS,
		// Pdeathsig is set by execx.StartPinned.
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	child, err := execx.StartPinned(cmd)
	if err != nil {
		return 1, fmt.Errorf("entering a private mount namespace: %w", err)
	}
	// A second Ctrl-C is forwarded too; the child decides.
	return child.WaitForwarding(sigs)
}
