package vm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// QEMU gives root up before the guest runs (-runas), and setuid clears a
// process's parent-death signal: a QEMU that dropped root would outlive a
// bake killed with SIGKILL. So, as root, bake never starts QEMU directly.
// It starts a small init (this very binary, re-executed: see init below) as
// PID 1 of a new PID namespace, with SIGKILL as its parent-death signal; the
// init starts QEMU and waits for it. The init never changes its uid, so it
// keeps the death signal; when it dies, for whatever reason, the kernel
// kills every process of its namespace, QEMU included. Signals bake sends
// it (Stop's SIGTERM) are forwarded to QEMU: PID 1 of a namespace ignores
// every signal it has no handler for, so it installs handlers for them.
//
// A second line of defence, independent of which thread forked the init:
// the init holds the read end of a pipe whose only write end stays in bake
// (VM.lifeline). When bake's process is gone, the read returns EOF and the
// init kills QEMU and exits.

// initArg0 and initEnv mark the re-executed binary as the init: argv[0]
// and the environment both, so that neither alone (a user's variable, a
// binary named so) turns a program into one.
const (
	initArg0 = "bake-vm-init"
	initEnv  = "BAKE_VM_INIT"
	// initLifelineFD is the pipe's read end in the init (ExtraFiles[0]).
	initLifelineFD = 3
	// initExitSetup is the init's exit status when it could not start
	// QEMU at all (its reason is on stderr: QEMU's log).
	initExitSetup = 126
)

// Every binary that links this package (bake, and the test binaries of
// the packages that start VMs) can serve as the init. Package
// initialisation runs before main and before a test binary's TestMain.
func init() {
	if len(os.Args) > 1 && os.Args[0] == initArg0 && os.Getenv(initEnv) == "1" {
		os.Exit(runInit(os.Args[1:]))
	}
}

// runInit is the init's whole life: check it is what Start meant it to be
// (PID 1 of its own namespace, with SIGKILL as its death signal), start
// argv, forward signals to it, and exit with its status (128+N when a
// signal N ended it). It returns when QEMU has exited, or kills QEMU and
// returns when bake is gone.
func runInit(argv []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "bake-vm-init: "+format+"\n", a...)
		return initExitSetup
	}
	// Handlers first: a SIGTERM that arrives before QEMU runs is kept
	// and forwarded once it does.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	os.Unsetenv(initEnv)
	if os.Getpid() != 1 {
		return fail("pid %d: not PID 1 of a new PID namespace; refusing to start %s", os.Getpid(), argv[0])
	}
	// PR_GET_PDEATHSIG stores the signal through its pointer argument.
	var pdeath int32
	if _, _, e := unix.Syscall(unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&pdeath)), 0); e != 0 || pdeath != int32(syscall.SIGKILL) {
		return fail("parent-death signal %d, not SIGKILL (%v); refusing to start %s", pdeath, e, argv[0])
	}
	syscall.CloseOnExec(initLifelineFD)
	lifeline := os.NewFile(initLifelineFD, "lifeline")
	if lifeline == nil {
		return fail("no lifeline descriptor")
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fail("%v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	gone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, lifeline)
		close(gone)
	}()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-gone:
			// bake is gone: so is QEMU. (Returning is enough, since
			// PID 1's exit kills the namespace; the kill says it.)
			_ = cmd.Process.Kill()
			<-done
			return 128 + int(syscall.SIGKILL)
		case err := <-done:
			var ee *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &ee):
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return 128 + int(ws.Signal())
				}
				return ee.ExitCode()
			default:
				fmt.Fprintf(os.Stderr, "bake-vm-init: %v\n", err)
				return initExitSetup
			}
		}
	}
}

// initCommand is the command that runs argv under the init in a new PID
// namespace, and the write end of its lifeline (the caller keeps it open
// as long as QEMU may run, and closes the read end once started).
func initCommand(argv []string) (cmd *exec.Cmd, lifeR, lifeW *os.File, err error) {
	lifeR, lifeW, err = os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	// /proc/self/exe, not os.Executable(): the binary may have been
	// replaced on disk (a rebuild) since it started.
	cmd = exec.Command("/proc/self/exe")
	cmd.Args = append([]string{initArg0}, argv...)
	cmd.Env = append(os.Environ(), initEnv+"=1")
	cmd.ExtraFiles = []*os.File{lifeR}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID,
		// Pdeathsig is set by execx.StartPinned.
	}
	return cmd, lifeR, lifeW, nil
}

// childOf returns the PID (in this namespace) of the one child of the
// process ppid, or an error when it has none or more than one yet. The
// kernel here may lack /proc/PID/task/TID/children: every process's stat
// is read.
func childOf(ppid int) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var kids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if p, err := strconv.Atoi(f[1]); err == nil && p == ppid {
			kids = append(kids, pid)
		}
	}
	switch len(kids) {
	case 1:
		return kids[0], nil
	case 0:
		return 0, fmt.Errorf("the init (pid %d) has not started QEMU yet", ppid)
	default:
		return 0, fmt.Errorf("the init (pid %d) has %d children %v, want QEMU alone", ppid, len(kids), kids)
	}
}

// DefaultRunAs is the account QEMU runs as when bake runs as root: a
// system account of bake's own, created on first use, that owns no file
// and is in no group but its own. QEMU opens everything it needs (disks,
// overlays, the seed, firmware, logs, sockets, the tap device, /dev/kvm)
// as root and only then gives root up (-runas), so the account needs no
// access to anything, and no other service's processes share its uid
// (nobody is dnsmasq's and NFS's).
const DefaultRunAs = "bake-qemu"

var accountMu sync.Mutex

// runAsUID returns the uid and gid of the account name, creating it when it
// is DefaultRunAs and missing (useradd --system). An account with uid or
// gid 0 is refused.
func runAsUID(name string) (uid, gid int, err error) {
	accountMu.Lock()
	defer accountMu.Unlock()
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) || name != DefaultRunAs {
			return -1, -1, fmt.Errorf("vm: QEMU's account %q: %w", name, err)
		}
		out, uerr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
			"--comment", "bake runs QEMU as this user", name).CombinedOutput()
		// Another bake may have created it meanwhile: look again.
		if u, err = user.Lookup(name); err != nil {
			return -1, -1, fmt.Errorf("vm: creating the account QEMU runs as (%s): useradd: %v %s", name, uerr, strings.TrimSpace(string(out)))
		}
	}
	uid, uerr := strconv.Atoi(u.Uid)
	gid, gerr := strconv.Atoi(u.Gid)
	if uerr != nil || gerr != nil || uid == 0 || gid == 0 {
		return -1, -1, fmt.Errorf("vm: QEMU's account %q has uid %s gid %s: want an unprivileged one", name, u.Uid, u.Gid)
	}
	return uid, gid, nil
}
