package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"
)

// fakeQEMU is a stand-in for qemu-system-x86_64: it writes to the serial
// log named on its command line and then sleeps, so Start/WaitSerial/Stop
// can be tested without QEMU or root. fakeConfig runs it under a seccomp
// filter of its own (seccompWrapper), as Start demands of QEMU.
const fakeQEMU = `#!/bin/sh
serial=
for a in "$@"; do
  case "$a" in file,id=serial0,path=*) serial=${a#file,id=serial0,path=} ;; esac
done
[ -n "$FAKE_NOSANDBOX" ] && { echo "qemu-system-x86_64: -sandbox support is not enabled in this QEMU binary" >&2; exit 1; }
[ -n "$FAKE_FAIL" ] && { echo "qemu-system-x86_64: -drive x: Could not open" >&2; exit 1; }
echo "SeaBIOS (fake)" >> "$serial"
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45; do
  echo "boot line $i" >> "$serial"
done
[ -n "$FAKE_IGNORE_TERM" ] && trap '' TERM
sleep 0.5
printf 'Linux version 6.1.0-fake (lease 10.77.0.51)\r\n' >> "$serial"
[ -n "$FAKE_EXIT" ] && exit 3
exec sleep 300
`

func fakeConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	inner := filepath.Join(dir, "fake-qemu-unconfined")
	if err := os.WriteFile(inner, []byte(fakeQEMU), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := seccompWrapper(t, dir, inner)
	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	return Config{QEMU: bin, Disk: disk, DiskFormat: "raw", Accel: AccelTCG, keepUser: true}
}

func gone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }

func TestStartWaitStop(t *testing.T) {
	t0 := time.Now()
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	if err := v.WaitSerial(t.Context(), "Linux version", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	m, err := v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`lease (\d+\.\d+\.\d+\.\d+)`), time.Second)
	if err != nil || m[1] != "10.77.0.51" {
		t.Fatalf("regexp match %q, %v", m, err)
	}
	// From past the match, the same text is not found again.
	_, end, err := v.WaitSerialFrom(t.Context(), 0, regexp.MustCompile(`Linux version`), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.WaitSerialFrom(t.Context(), end, regexp.MustCompile(`Linux version`), 500*time.Millisecond); err == nil {
		t.Error("WaitSerialFrom(end) found the match again")
	}
	// A timeout names what was awaited and carries the last 40 lines.
	err = v.WaitSerial(t.Context(), "never printed", 300*time.Millisecond)
	if err == nil {
		t.Fatal("no error for text never printed")
	}
	msg := err.Error()
	if !strings.Contains(msg, `"never printed"`) || !strings.Contains(msg, "Linux version 6.1.0-fake") ||
		!strings.Contains(msg, "boot line 45") || !strings.Contains(msg, "boot line 7\n") || strings.Contains(msg, "boot line 6\n") ||
		strings.Contains(msg, "\r") {
		t.Errorf("timeout error lacks the last 40 serial lines:\n%s", msg)
	}

	if cpu, line := v.CPUTime(), v.ExitSummary(); cpu != 0 || line != "" {
		t.Errorf("while QEMU runs: CPUTime %s, ExitSummary %q; want 0 and \"\"", cpu, line)
	}
	pid, dir := v.PID(), v.Dir()
	start := time.Now()
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("SIGTERM stop took %s", time.Since(start))
	}
	// The CPU time of the process bake reaped (the fake QEMU, its
	// children it reaped, and as root its init): some, and no more than
	// its vCPUs could burn in the time it ran. (The fake burns a few
	// milliseconds: a shell, the seccomp wrapper's Go start-up.)
	cpu, ran := v.CPUTime(), v.Ran()
	// Not ExitSummary's line: testreport would count the fake as a VM.
	t.Logf("the fake QEMU: CPUTime %s, Ran %s", cpu, ran)
	if cpu <= 0 || cpu >= ran*time.Duration(v.Config.CPUs) {
		t.Errorf("CPUTime %s after running %s with %d vCPUs: want more than 0 and less than the wall time times the vCPUs", cpu, ran, v.Config.CPUs)
	}
	if ran <= 0 || ran > time.Since(t0) {
		t.Errorf("Ran %s, want more than 0 and at most the %s since Start was called", ran, time.Since(t0))
	}
	want := fmt.Sprintf("QEMU (pid %d) exited after %s, %.1f s of CPU (1 vCPU)", pid, ran.Round(time.Second), cpu.Seconds())
	if got := v.ExitSummary(); got != want {
		t.Errorf("ExitSummary %q, want %q", got, want)
	}
	if !gone(pid) {
		t.Errorf("process %d still there after Stop", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s not removed: %v", dir, err)
	}
	if err := v.Stop(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestFormatExitSummary(t *testing.T) {
	for _, c := range []struct {
		pid       int
		wall, cpu time.Duration
		vcpus     int
		want      string
	}{
		{1234, 3*time.Minute + 12400*time.Millisecond, 95340 * time.Millisecond, 1, "QEMU (pid 1234) exited after 3m12s, 95.3 s of CPU (1 vCPU)"},
		{7, 59600 * time.Millisecond, 31 * time.Millisecond, 2, "QEMU (pid 7) exited after 1m0s, 0.0 s of CPU (2 vCPUs)"},
	} {
		if got := FormatExitSummary(c.pid, c.wall, c.cpu, c.vcpus); got != c.want {
			t.Errorf("FormatExitSummary(%d, %s, %s, %d) = %q, want %q", c.pid, c.wall, c.cpu, c.vcpus, got, c.want)
		}
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	t.Setenv("FAKE_IGNORE_TERM", "1")
	old := StopGrace
	StopGrace = 500 * time.Millisecond
	t.Cleanup(func() { StopGrace = old })
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WaitSerial(t.Context(), "Linux version", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := v.PID()
	done := make(chan struct{})
	for range 3 { // concurrent Stops are fine
		go func() { v.Stop(); done <- struct{}{} }()
	}
	for range 3 {
		<-done
	}
	if !gone(pid) {
		t.Errorf("process %d survived Stop", pid)
	}
}

func TestStartReportsImmediateExit(t *testing.T) {
	t.Setenv("FAKE_FAIL", "1")
	c := fakeConfig(t)
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-vm-%d-*", os.Getpid()))) // this process's: other runs make theirs
	_, err := Start(t.Context(), c)
	if err == nil || !strings.Contains(err.Error(), "Could not open") {
		t.Fatalf("err = %v, want QEMU's stderr in it", err)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-vm-%d-*", os.Getpid()))) // this process's: other runs make theirs
	if len(after) > len(before) {
		t.Errorf("temp dir left behind: %v", after)
	}
}

func TestWaitSerialReportsExit(t *testing.T) {
	t.Setenv("FAKE_EXIT", "1")
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	err = v.WaitSerial(t.Context(), "login:", time.Minute)
	if err == nil || !strings.Contains(err.Error(), "qemu exited") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("err = %v", err)
	}
	if err := v.Wait(); err == nil {
		t.Error("Wait: no exit error")
	}
}

func TestContextEndStopsVM(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	v, err := Start(ctx, fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	cancel()
	select {
	case <-v.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("VM still running after its context ended")
	}
}

func TestSnapshotNeverTouchesDisk(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	c := fakeConfig(t)
	c.Snapshot = true
	before, _ := os.ReadFile(c.Disk)
	v, err := Start(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if v.Config.Disk == c.Disk || v.Config.DiskFormat != "qcow2" || !strings.HasPrefix(v.Config.Disk, v.Dir()) {
		t.Errorf("snapshot not resolved to an overlay in the temp dir: %+v", v.Config)
	}
	if !strings.Contains(strings.Join(v.Args, " "), "file="+v.Config.Disk+",format=qcow2") {
		t.Errorf("args don't use the overlay: %q", v.Args)
	}
	after, _ := os.ReadFile(c.Disk)
	if string(before) != string(after) {
		t.Error("disk modified")
	}
}

// TestPdeathsig: a test process that starts a VM and dies without Stop
// takes QEMU with it.
func TestPdeathsig(t *testing.T) {
	if os.Getenv("BAKE_VM_HELPER") == "start-and-exit" {
		c := fakeConfig(t)
		v, err := Start(context.Background(), c)
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(2)
		}
		os.Stdout.WriteString(fmt.Sprintf("PID %d\n", v.PID()))
		os.Exit(0) // no Stop
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPdeathsig$")
	cmd.Env = append(os.Environ(), "BAKE_VM_HELPER=start-and-exit", "TMPDIR="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var pid int
	if _, err := fmt.Sscanf(string(out), "PID %d", &pid); err != nil || pid <= 0 {
		t.Fatalf("helper said %q", out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) && !zombie(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("fake qemu %d outlived its parent", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) S ...
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// TestStartUnderInit: as root, QEMU is the only child of an init that is
// PID 1 of a namespace of its own (pidns.go); Stop's SIGTERM reaches QEMU
// through it (the fake QEMU exits on it, well before StopGrace); a SIGKILL
// of the init alone takes QEMU with it; and closing bake's end of the
// lifeline makes the init end QEMU. Not root: QEMU is bake's own child.
func TestStartUnderInit(t *testing.T) {
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	if os.Geteuid() != 0 {
		if v.PID() != v.cmd.Process.Pid || v.underInit {
			t.Fatalf("not root, yet QEMU %d runs under an init %d", v.PID(), v.cmd.Process.Pid)
		}
		return
	}
	init, qemu := v.cmd.Process.Pid, v.PID()
	if init == qemu || !v.underInit {
		t.Fatalf("as root, QEMU (pid %d) runs without an init of its own (%d)", qemu, init)
	}
	if kid, err := childOf(init); err != nil || kid != qemu {
		t.Fatalf("the init's child: %d, %v; want QEMU %d", kid, err, qemu)
	}
	nspid := func(pid int) []string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, val, _ := strings.Cut(l, ":"); k == "NSpid" {
				return strings.Fields(val)
			}
		}
		t.Fatalf("no NSpid in /proc/%d/status", pid)
		return nil
	}
	// NSpid: the PID in each namespace, bake's first: the init is 1 in
	// its own, QEMU another PID of the same (not 2: the init's threads
	// took some).
	if got := nspid(init); len(got) != 2 || got[1] != "1" {
		t.Errorf("the init's NSpid %v, want [%d 1]", got, init)
	}
	if got := nspid(qemu); len(got) != 2 || got[1] == "1" {
		t.Errorf("QEMU's NSpid %v, want [%d N] with N > 1", got, qemu)
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", init)); !strings.HasPrefix(string(cmdline), initArg0+"\x00") {
		t.Errorf("the init's argv %q", cmdline)
	}

	// SIGKILL of the init alone: the namespace goes, QEMU with it.
	syscall.Kill(init, syscall.SIGKILL)
	select {
	case <-v.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the init did not exit on SIGKILL")
	}
	if !gone(qemu) {
		t.Errorf("QEMU %d outlived its init", qemu)
	}

	// bake's end of the lifeline closed (as when bake's process is gone,
	// by whatever thread): the init ends QEMU.
	v2, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v2.Stop() })
	qemu2 := v2.PID()
	v2.closeLifeline()
	select {
	case <-v2.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the init did not end QEMU when its lifeline closed")
	}
	if !gone(qemu2) {
		t.Errorf("QEMU %d outlived its lifeline", qemu2)
	}
}
