package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"

	"github.com/bakeimg/bake/internal/execx"
)

// PrivateMountsEnv marks a test binary that MainInPrivateMounts has already
// re-executed in a mount namespace of its own.
const PrivateMountsEnv = "BAKE_TEST_PRIVATE_MOUNTS"

// MainInPrivateMounts runs m's tests in a private mount namespace of their
// own and returns their exit status: the TestMain of a package whose tests
// mount file systems (loop devices, chroot mounts) calls
// os.Exit(MainInPrivateMounts(m)).
//
// Why: make test runs packages side by side, and some start programs with
// `ip netns exec` (headscale, test nodes, bake verify in a namespace), which
// makes a new mount namespace as a copy of its caller's: every mount of
// that moment, a loop mount of another package's test included. The host's
// / is private, so the test's unmount does not reach the copy, and the copy
// keeps the file system, and so its autoclear loop device, until that
// program ends: cloudimg.Extract rightly fails when its loop device is still
// attached 60 s after the unmount. A test binary in a mount namespace of
// its own is out of reach of every other package's copies (mounts made in
// it are not in the host's namespace to be copied).
//
// As root the binary re-executes itself (same arguments, the marker set) in
// a new mount namespace with / recursively private (Go does that for
// Unshareflags CLONE_NEWNS), forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT
// (go test's timeout) to it, and dies with it (execx.StartPinned's
// parent-death signal). Not root, or where the kernel refuses a new mount
// namespace, the tests run here, as before: a test that needs to mount
// fails or skips on its own.
func MainInPrivateMounts(m *testing.M) int {
	if os.Getenv(PrivateMountsEnv) == "1" || os.Geteuid() != 0 {
		return m.Run()
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v; running the tests in the host's mount namespace\n", err)
		return m.Run()
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), PrivateMountsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	child, err := execx.StartPinned(cmd)
	if err != nil {
		if errors.Is(err, syscall.EPERM) {
			fmt.Fprintf(os.Stderr, "testenv: no mount namespace of its own (%v); running the tests in the host's\n", err)
			return m.Run()
		}
		fmt.Fprintf(os.Stderr, "testenv: re-executing the tests in a mount namespace of their own: %v\n", err)
		return 1
	}
	code, err := child.WaitForwarding(sigs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
	} else if code > 128 {
		fmt.Fprintf(os.Stderr, "testenv: the tests were killed by signal %d\n", code-128)
	}
	return code
}

// InPrivateMounts reports whether this test binary runs in the mount
// namespace MainInPrivateMounts made.
func InPrivateMounts() bool { return os.Getenv(PrivateMountsEnv) == "1" }
