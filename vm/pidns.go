package vm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/mounts"
)

// As root, QEMU never holds root: it is started as DefaultRunAs, with no
// supplementary group, no capability (effective, permitted, inheritable,
// ambient and bounding sets all empty) and no_new_privs, by a small init
// (this very binary, re-executed: see init below) that runs as PID 1 of a
// new PID namespace with SIGKILL as its parent-death signal and waits for
// it. Everything QEMU uses it inherits as descriptors Start opened
// (files.go). QEMU itself then makes no set*uid call, so its seccomp filter
// denies them (Sandbox, elevateprivileges=deny); QEMU 7.2's own -runas
// cannot be used with that, since QEMU installs its filter before it calls
// setuid. A process whose uid changed loses its parent-death signal, and
// the init's change happens in QEMU's process only: the init never changes
// its uid, so it keeps the death signal; when it dies, for whatever
// reason, the kernel kills every process of its namespace, QEMU included. Signals bake sends
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
	// initCredEnv ("UID:GID") is the account the init starts QEMU as,
	// and initFDsEnv how many descriptors after the lifeline it passes
	// on to QEMU (at the same numbers, from firstFD).
	initCredEnv = "BAKE_VM_INIT_CRED"
	initFDsEnv  = "BAKE_VM_INIT_FDS"
	// initNoTHPEnv ("1"): the init turns the host's transparent huge
	// pages off for itself, and so for QEMU (Config.HostTHP).
	initNoTHPEnv = "BAKE_VM_INIT_NOTHP"
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
	cred, nfds, noTHP := os.Getenv(initCredEnv), os.Getenv(initFDsEnv), os.Getenv(initNoTHPEnv) == "1"
	os.Unsetenv(initEnv)
	os.Unsetenv(initCredEnv)
	os.Unsetenv(initFDsEnv)
	os.Unsetenv(initNoTHPEnv)
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
	if cred != "" {
		us, gs, ok := strings.Cut(cred, ":")
		uid, uerr := strconv.Atoi(us)
		gid, gerr := strconv.Atoi(gs)
		n, nerr := strconv.Atoi(nfds)
		if !ok || uerr != nil || gerr != nil || nerr != nil || uid <= 0 || gid <= 0 || n < 0 || n > 1024 {
			return fail("bad %s %q / %s %q", initCredEnv, cred, initFDsEnv, nfds)
		}
		// QEMU never changed its uid, so it is dumpable: a process of the
		// same uid (another VM's QEMU) could ptrace it or open its
		// /proc/PID/mem. PID namespaces already keep them from naming
		// each other's PIDs in system calls; a /proc of this namespace
		// only (in a mount namespace of the init's own, Start's
		// CLONE_NEWNS) keeps them from reaching each other through the
		// host's /proc too.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
			return fail("making the init's mounts private: %v; refusing to start %s", err, argv[0])
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fail("mounting the namespace's /proc: %v; refusing to start %s", err, argv[0])
		}
		detachLoopMounts()
		// The fork below happens on this thread, which gives up what
		// QEMU must not inherit; the Go child then drops the groups,
		// gid and uid before it executes QEMU.
		if err := dropForChild(); err != nil {
			return fail("%v; refusing to start %s", err, argv[0])
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
			Pdeathsig:  syscall.SIGKILL,
		}
		// fd 3 (the lifeline) is closed in QEMU; QEMU's own from firstFD.
		cmd.ExtraFiles = []*os.File{nil}
		for i := 0; i < n; i++ {
			f := os.NewFile(uintptr(firstFD+i), "qemu-fd")
			if f == nil {
				return fail("descriptor %d missing", firstFD+i)
			}
			cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		}
		// Nothing else: a descriptor bake itself inherited without
		// close-on-exec (from whatever started it) stays out of QEMU.
		if err := cloexecFrom(firstFD + n); err != nil {
			return fail("%v; refusing to start %s", err, argv[0])
		}
		// The account cannot enter bake's temp dir (the init's cwd).
		cmd.Dir = "/"
	}
	if noTHP {
		// A flag of the process's memory, kept by fork and execve: QEMU
		// starts with it.
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
			return fail("turning transparent huge pages off: %v; refusing to start %s", err, argv[0])
		}
	}
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
//
// With uid > 0 the init starts argv as uid:gid with no capability and
// no_new_privs, passing on files at descriptors firstFD, firstFD+1, ...
// With noTHP argv starts with the host's transparent huge pages off.
func initCommand(argv []string, uid, gid int, files []*os.File, noTHP bool) (cmd *exec.Cmd, lifeR, lifeW *os.File, err error) {
	lifeR, lifeW, err = os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	// /proc/self/exe, not os.Executable(): the binary may have been
	// replaced on disk (a rebuild) since it started.
	cmd = exec.Command("/proc/self/exe")
	cmd.Args = append([]string{initArg0}, argv...)
	// The init's own variables from Start only, never inherited.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != initEnv && k != initCredEnv && k != initFDsEnv && k != initNoTHPEnv {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, initEnv+"=1")
	if noTHP {
		cmd.Env = append(cmd.Env, initNoTHPEnv+"=1")
	}
	cmd.ExtraFiles = []*os.File{lifeR}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID,
		// Pdeathsig is set by execx.StartPinned.
	}
	if uid > 0 {
		// A mount namespace of its own, for its own /proc (runInit).
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNS
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d:%d", initCredEnv, uid, gid), fmt.Sprintf("%s=%d", initFDsEnv, len(files)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, files...)
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
// and is in no group but its own. bake opens everything QEMU needs (disks,
// overlays, the seed, firmware, logs, sockets, the tap device) as root and
// passes the descriptors (files.go), so the account needs no access to
// anything (but /dev/kvm for KVM, world-writable on Debian), and no other
// service's processes share its uid (nobody is dnsmasq's and NFS's).
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

// dropForChild readies the calling thread (locked to it for good) to fork
// an unprivileged QEMU: its bounding set emptied, its ambient and
// inheritable capabilities cleared and no_new_privs set, all of which a
// child inherits. Its effective capabilities stay: the child needs
// CAP_SETUID and CAP_SETGID to drop its groups, gid and uid, and that
// drop clears its permitted and effective sets.
func dropForChild() error {
	runtime.LockOSThread() // no Unlock: the init's main thread stays so
	last := 63
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = n
		}
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && err != unix.EINVAL {
		return fmt.Errorf("clearing the ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clearing the inheritable capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return nil
}

// cloexecFrom marks every open descriptor from fd on close-on-exec.
func cloexecFrom(fd int) error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n >= fd {
			syscall.CloseOnExec(n)
		}
	}
	return nil
}

// detachLoopMounts detaches, in the init's own mount namespace, every
// file system mounted from a loop device. The namespace began as a copy of
// bake's, taken at whatever moment the VM started: a build beside it that
// had a disk image mounted (cloudimg's extraction) would otherwise find
// the copy still holding its loop device, long after its own unmount,
// until this VM ends (the host's / is often private, as in containers, so
// no unmount propagates into the copy: seen as "loop device /dev/loop0
// still attached 60 s after the unmount" in a VM tier run). QEMU never
// needs them: it gets its files as descriptors. Best effort: a mount that
// will not go is left, and said on stderr (QEMU's log).
func detachLoopMounts() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		fmt.Fprintf(os.Stderr, "bake-vm-init: reading the mounts: %v\n", err)
		return
	}
	ms, err := mounts.Parse(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bake-vm-init: reading the mounts: %v\n", err)
		return
	}
	// Deepest first: a mount below another goes before it.
	for i := len(ms) - 1; i >= 0; i-- {
		m := ms[i]
		if !strings.HasPrefix(m.Source, "/dev/loop") {
			continue
		}
		if err := unix.Unmount(m.MountPoint, unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "bake-vm-init: detaching %s (%s) from the VM's mount namespace: %v\n", m.MountPoint, m.Source, err)
		}
	}
}
