package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/testenv"
)

// seccompExecEnv makes the test binary a seccomp wrapper: it installs an
// allow-everything seccomp filter on itself and executes its arguments, so
// that a fake QEMU (a shell script) runs with a filter of its own, as Start
// demands of a real QEMU started with -sandbox.
const seccompExecEnv = "BAKE_VM_TEST_SECCOMP_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(seccompExecEnv) == "1" {
		os.Unsetenv(seccompExecEnv)
		seccompExec(os.Args[1:])
	}
	// Tests here mount file systems: they run in a mount namespace of their
	// own (testenv.MainInPrivateMounts).
	os.Exit(testenv.MainInPrivateMounts(m))
}

func seccompExec(argv []string) {
	fail := func(what string, err error) {
		os.Stderr.WriteString("seccomp wrapper: " + what + ": " + err.Error() + "\n")
		os.Exit(97)
	}
	if len(argv) == 0 {
		fail("usage", syscall.EINVAL)
	}
	// A seccomp filter is per thread: install it on this one, and execve
	// from it (the new program keeps the filter of the thread that ran
	// execve).
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fail("no_new_privs", err)
	}
	filter := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		fail("seccomp", err)
	}
	fail("exec", syscall.Exec(argv[0], argv, os.Environ()))
}

// seccompWrapper writes dir/fake-qemu: a script that runs inner under a
// seccomp filter (this test binary as the wrapper).
func seccompWrapper(t *testing.T, dir, inner string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "fake-qemu")
	script := "#!/bin/sh\n" + seccompExecEnv + "=1 exec '" + self + "' '" + inner + "' \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// Start's own check: the fake QEMU runs with a filter of its own, and the
// argv it was given carries -sandbox.
func TestStartChecksConfinement(t *testing.T) {
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := confined(v.PID()); err != nil {
		t.Errorf("the fake QEMU Start returned is not confined: %v", err)
	}
	if !strings.Contains(strings.Join(v.Args, " "), " -sandbox "+Sandbox+" ") {
		t.Errorf("argv lacks -sandbox %s: %q", Sandbox, v.Args)
	}
	// This very test process has no filter of its own: not confined.
	if err := confined(os.Getpid()); err == nil {
		t.Error("confined(self) = nil: a process is never more confined than itself")
	}
}

// A QEMU that accepts -sandbox and runs without a filter (here the fake
// without its wrapper) is stopped, and Start fails, leaving nothing.
func TestStartRefusesUnconfinedQEMU(t *testing.T) {
	old := confineWait
	confineWait = time.Second
	t.Cleanup(func() { confineWait = old })
	c := fakeConfig(t)
	c.QEMU = filepath.Join(filepath.Dir(c.QEMU), "fake-qemu-unconfined")
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-vm-%d-*", os.Getpid()))) // this process's: other runs make theirs
	t0 := time.Now()
	v, err := Start(t.Context(), c)
	if err == nil {
		v.Stop()
		t.Fatal("Start ran a QEMU without a seccomp filter")
	}
	if msg := err.Error(); !strings.Contains(msg, "is not confined after") || !strings.Contains(msg, "Seccomp: 0") ||
		!strings.Contains(msg, "does not run a guest unconfined") {
		t.Errorf("error %q", msg)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("refusal took %s", d)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-vm-%d-*", os.Getpid()))) // this process's: other runs make theirs
	if len(after) > len(before) {
		t.Errorf("temp dir left behind: %v", after)
	}
}

// A QEMU built without seccomp refuses -sandbox and exits: Start says so.
func TestStartReportsQEMUWithoutSeccomp(t *testing.T) {
	t.Setenv("FAKE_NOSANDBOX", "1")
	_, err := Start(t.Context(), fakeConfig(t))
	if err == nil {
		t.Fatal("Start went on with a QEMU that refused -sandbox")
	}
	msg := err.Error()
	for _, want := range []string{"cannot confine itself with -sandbox " + Sandbox, "without seccomp", "-sandbox support is not enabled", "does not run a guest unconfined"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

func TestParseSeccompStatus(t *testing.T) {
	for _, tc := range []struct {
		in            string
		mode, filters int
		err           string
	}{
		{"Name:\tqemu\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\nSpeculation_Store_Bypass:\tx\n", 2, 1, ""},
		{"Seccomp:\t0\nSeccomp_filters:\t0\n", 0, 0, ""},
		{"Seccomp:\t2\n", 2, -1, ""}, // before Linux 5.9
		{"Name:\tx\n", 0, 0, "no Seccomp line"},
		{"Seccomp:\tlots\n", 0, 0, "Seccomp"},
	} {
		m, f, err := parseSeccompStatus(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || m != tc.mode || f != tc.filters {
			t.Errorf("%q: %d %d %v, want %d %d", tc.in, m, f, err, tc.mode, tc.filters)
		}
	}
}

// parseDropped: QEMU as its init started it (every uid and gid the
// account's, no group, no capability in any set, no_new_privs, seccomp
// filter), and the states Start must not accept.
func TestParseDropped(t *testing.T) {
	ok := "Name:\tqemu\nUid:\t65534\t65534\t65534\t65534\nGid:\t65533\t65533\t65533\t65533\nGroups:\t\n" +
		"CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n" +
		"NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"
	if err := parseDropped(ok, 65534, 65533); err != nil {
		t.Errorf("dropped QEMU refused: %v", err)
	}
	for name, c := range map[string]struct{ from, to, want string }{
		"still root":      {"Uid:\t65534\t65534\t65534\t65534", "Uid:\t0\t0\t0\t0", "is not unprivileged"},
		"saved uid root":  {"Uid:\t65534\t65534\t65534\t65534", "Uid:\t65534\t65534\t0\t65534", "not 65534"},
		"gid root":        {"Gid:\t65533\t65533\t65533\t65533", "Gid:\t65533\t0\t65533\t65533", "not 65533"},
		"a group":         {"Groups:\t\n", "Groups:\t0\n", "want none"},
		"no Groups":       {"Groups:\t\n", "", "no Groups line"},
		"a capability":    {"CapEff:\t0000000000000000", "CapEff:\t0000000000000400", "CapEff"},
		"permitted caps":  {"CapPrm:\t0000000000000000", "CapPrm:\t000001ffffffffff", "CapPrm"},
		"inheritable":     {"CapInh:\t0000000000000000", "CapInh:\t0000000000000001", "CapInh"},
		"ambient":         {"CapAmb:\t0000000000000000", "CapAmb:\t0000000000000001", "CapAmb"},
		"bounding set":    {"CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff", "CapBnd"},
		"new privs":       {"NoNewPrivs:\t1", "NoNewPrivs:\t0", "NoNewPrivs"},
		"no NoNewPrivs":   {"NoNewPrivs:\t1\n", "", "no NoNewPrivs line"},
		"no filter":       {"Seccomp:\t2", "Seccomp:\t0", "Seccomp"},
		"strict mode":     {"Seccomp:\t2", "Seccomp:\t1", "Seccomp"},
		"another account": {"Uid:\t65534\t65534\t65534\t65534", "Uid:\t1000\t1000\t1000\t1000", "not 65534"},
	} {
		err := parseDropped(strings.Replace(ok, c.from, c.to, 1), 65534, 65533)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}

// Start's check of QEMU's argv: -sandbox Sandbox once, no -runas.
func TestParseSandboxArgv(t *testing.T) {
	ok := []string{"qemu", "-nodefaults", "-sandbox", Sandbox, "-S"}
	if err := parseSandboxArgv(ok); err != nil {
		t.Errorf("%q: %v", ok, err)
	}
	for _, bad := range [][]string{
		{"qemu"},
		{"qemu", "-sandbox", strings.Replace(Sandbox, "elevateprivileges=deny", "elevateprivileges=allow", 1)},
		{"qemu", "-sandbox", Sandbox, "-sandbox", "off"},
		{"qemu", "-sandbox", Sandbox, "-runas", "nobody"},
		{"qemu", "-sandbox", Sandbox, "--chroot", "/x"},
		{"qemu", "-sandbox"},
	} {
		if err := parseSandboxArgv(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// As root Cmdline starts QEMU paused, never with -runas (its init starts
// it unprivileged), and only with the descriptors Start opened; ExtraArgs
// cannot set -runas, -chroot or -sandbox.
func TestCmdlineRunAs(t *testing.T) {
	c := Config{Disk: "/d.raw", DiskFormat: "raw", Accel: AccelTCG, RunAs: "nobody", QMPSocket: "/run/q.sock"}
	if _, err := Cmdline(c); err == nil || !strings.Contains(err.Error(), "RunAs needs Start") {
		t.Errorf("RunAs without descriptors: %v", err)
	}
	c.fds = newFDPlan(1, 1)
	c.fds.set["/d.raw"] = 1
	c.fds.qmp = 5
	a, err := Cmdline(c)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(a, " "); !strings.Contains(s, " -sandbox "+Sandbox+" -S ") || strings.Contains(s, "runas") {
		t.Errorf("argv %q", a)
	}
	if err := parseSandboxArgv(a); err != nil {
		t.Error(err)
	}
	for _, x := range []string{"-runas", "--runas=root", "-chroot", "-sandbox"} {
		c.ExtraArgs = []string{x}
		if _, err := Cmdline(c); err == nil {
			t.Errorf("ExtraArgs %q accepted", x)
		}
	}
	c.ExtraArgs, c.RunAs = nil, "root;x"
	if _, err := Cmdline(c); err == nil {
		t.Error("RunAs with a shell character accepted")
	}
	// Paused until Start resumes it through QMP: no QMP, no RunAs.
	c.RunAs, c.QMPSocket = "nobody", ""
	if _, err := Cmdline(c); err == nil || !strings.Contains(err.Error(), "needs QMPSocket") {
		t.Errorf("RunAs without a QMP socket: %v", err)
	}
}
