package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/imgfile"
	"github.com/bakeimg/bake/internal/sweep"
)

// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
var StopGrace = 5 * time.Second

// serialTailLines is how much serial output an error carries.
const serialTailLines = 40

// Bounds on what is read back from the guest's serial log (and QEMU's own
// log) into memory. The log itself is bounded by Config.SerialLogMax.
const (
	// SerialReadMax is the most Serial returns: the end of the log.
	SerialReadMax = 4 << 20
	// SerialTailMax is the most read for the tail an error carries, and
	// for QEMULog.
	SerialTailMax = 1 << 20
	// serialWindow is what WaitSerial keeps of the log while it scans it
	// incrementally: a match must fit in it (minus one read chunk), so a
	// pattern split across two reads is still found. A match longer than
	// serialWindow-serialChunk bytes (768 KiB) is not.
	serialWindow = 1 << 20
	serialChunk  = 256 << 10
)

// ErrSerialLogMax is wrapped by the error of a VM that Start's watcher
// stopped because the guest (or QEMU) wrote more than Config.SerialLogMax.
var ErrSerialLogMax = errors.New("serial console limit")

// Test hooks: how often the watcher checks the logs' sizes, and how long
// Start waits for QEMU's seccomp filter to be in force.
var (
	logWatchEvery = 200 * time.Millisecond
	confineWait   = 10 * time.Second
)

// VM is a running QEMU process and the temporary files it owns.
type VM struct {
	// Config is the resolved configuration QEMU was started with: the
	// overlay instead of the original disk, the OVMF_VARS copy, the
	// accelerator actually chosen.
	Config Config
	// Args is the argv QEMU was started with (Cmdline(Config)).
	Args []string

	cmd   *exec.Cmd
	child *execx.Child // cmd, started pinned: Stop ends it
	// As root cmd is QEMU's init (pidns.go): qemuPID is QEMU itself,
	// found by waitConfined, and lifeline the write end of the pipe whose
	// EOF tells the init bake is gone.
	underInit bool
	qemuPID   int
	lifeMu    sync.Mutex
	lifeline  *os.File
	// fds: what Start opened for an unprivileged QEMU (files.go).
	fds     *fdPlan
	dir     string // temp dir, removed by Stop
	qemuLog string // QEMU's own stdout+stderr

	done    chan struct{} // closed when QEMU has exited
	waitErr error         // set before done is closed
	// started is when QEMU (or its init) was started; ended and cpu are
	// set before done is closed: when it was reaped and the CPU time its
	// wait reported (CPUTime).
	started time.Time
	ended   time.Time
	cpu     time.Duration

	limitMu  sync.Mutex
	limitErr error // set by the watcher before it stops QEMU

	stopOnce sync.Once
	stopErr  error
	stopCtx  context.CancelFunc
	logMu    sync.Mutex
	keptLog  string // QEMU's log, read by Stop before removing dir
}

// Start launches c. Any temporary file (overlay, OVMF_VARS copy, serial log
// when SerialLog is empty, QEMU's own log) lives in one temp dir that Stop
// removes. QEMU gets SIGKILL if this process dies (Pdeathsig), and is
// stopped when ctx is done. AccelAuto becomes KVM only when ProbeKVM finds
// it really runs guests (else TCG); BAKE_VM_ACCEL=kvm|tcg overrides that. The caller must call Stop (safe from
// t.Cleanup, idempotent) even after the guest powered off.
//
// QEMU runs confined (-sandbox, see Sandbox): Start fails with a clear
// error, and leaves nothing running, when this QEMU cannot confine itself
// or its process shows no seccomp filter of its own within a few seconds.
// A watcher checks the sizes of the serial log and of QEMU's own log for
// the VM's whole life and stops QEMU when one passes Config.SerialLogMax
// (the error then wraps ErrSerialLogMax).
func Start(ctx context.Context, c Config) (_ *VM, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	// The owner's PID in the name: a process killed with SIGKILL takes
	// QEMU with it but never runs Stop, and the next Start (or bake
	// verify) of any process removes the dir (RemoveStaleDirs).
	sweepStaleDirs()
	dir, err := sweep.MkdirTemp("", vmDirPrefix)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()

	// As root, QEMU runs as c.RunAs from its first instruction: it is
	// started so by an init of its own in a new PID namespace, which keeps
	// the death signal a uid change clears (pidns.go), gets every file it
	// uses as a descriptor (files.go), starts paused (-S), and Start lets
	// the guest run (QMP cont) only once it has seen QEMU unprivileged and
	// confined.
	wantUID, wantGID := -1, -1
	if c.RunAs == "" && os.Geteuid() == 0 && !c.keepUser {
		c.RunAs = DefaultRunAs
	}
	if c.RunAs != "" {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("vm: RunAs %q needs root", c.RunAs)
		}
		if wantUID, wantGID, err = runAsUID(c.RunAs); err != nil {
			return nil, err
		}
		if c.QMPSocket == "" {
			c.QMPSocket = filepath.Join(dir, "qmp.sock")
		}
	}

	if c.Accel == AccelAuto {
		if v := os.Getenv("BAKE_VM_ACCEL"); v == AccelKVM || v == AccelTCG {
			c.Accel = v
		} else if probeKVMCached(c.QEMU) == nil && (wantUID == -1 || kvmAccessible(wantUID, wantGID) == nil) {
			c.Accel = AccelKVM
		} else {
			c.Accel = AccelTCG
		}
	}
	if c.Accel == AccelKVM && wantUID != -1 {
		if err := kvmAccessible(wantUID, wantGID); err != nil {
			return nil, err
		}
	}

	if c.Firmware == UEFI {
		src := c.OVMFVars
		if src == "" {
			src = DefaultOVMFVars
		}
		if _, err := os.Stat(c.OVMFCode); err != nil {
			return nil, fmt.Errorf("vm: UEFI code (is ovmf installed?): %w", err)
		}
		dst := filepath.Join(dir, "OVMF_VARS.fd")
		if err := copyFile(src, dst); err != nil {
			return nil, fmt.Errorf("vm: copying UEFI vars: %w", err)
		}
		c.OVMFVars = dst
	}

	if c.Disk != "" {
		if _, err := os.Stat(c.Disk); err != nil {
			return nil, fmt.Errorf("vm: disk: %w", err)
		}
		if c.DiskFormat == "" {
			if c.DiskFormat, err = DiskFormat(ctx, c.Disk); err != nil {
				return nil, err
			}
		} else if err := refuseHeader(c.Disk); err != nil {
			// A format given by the caller skips DiskFormat's look, not
			// its refusals: QEMU, handed descriptors, would follow no
			// backing file a header names and boot what is unallocated
			// as zeros.
			return nil, err
		}
		if c.Snapshot {
			overlay, err := createOverlay(ctx, dir, c.Disk, c.DiskFormat)
			if err != nil {
				return nil, err
			}
			c.backing, c.backingFormat = c.Disk, c.DiskFormat
			c.Disk, c.DiskFormat, c.Snapshot = overlay, "qcow2", false
		}
	}

	if c.SerialLog == "" {
		c.SerialLog = filepath.Join(dir, "serial.log")
	}
	// QEMU appends to an existing file; start from an empty one so
	// WaitSerial only sees this boot.
	if err := os.WriteFile(c.SerialLog, nil, 0o644); err != nil {
		return nil, fmt.Errorf("vm: serial log: %w", err)
	}

	var plan *fdPlan
	if c.RunAs != "" {
		if plan, err = openFiles(c, wantUID, wantGID); err != nil {
			return nil, err
		}
		c.fds = plan
	}
	args, err := Cmdline(c)
	if err != nil {
		plan.closeAll()
		return nil, err
	}
	v := &VM{Config: c, Args: args, fds: plan, dir: dir, qemuLog: filepath.Join(dir, "qemu.log"), done: make(chan struct{})}
	logf, err := os.Create(v.qemuLog)
	if err != nil {
		plan.closeAll()
		return nil, err
	}
	defer logf.Close()
	// The watcher's own descriptors of the logs: QEMU writes the same
	// files, whatever happens to their paths later.
	serialf, _, err := imgfile.OpenRegular(c.SerialLog)
	if err != nil {
		plan.closeAll()
		return nil, fmt.Errorf("vm: serial log: %w", err)
	}
	qlogf, err := os.Open(v.qemuLog)
	if err != nil {
		plan.closeAll()
		serialf.Close()
		return nil, err
	}

	var cmd *exec.Cmd
	var lifeR *os.File
	if os.Geteuid() == 0 {
		v.underInit = true
		var files []*os.File
		if plan != nil {
			files = plan.files
		}
		if cmd, lifeR, v.lifeline, err = initCommand(args, wantUID, wantGID, files, thpDisabled(c)); err != nil {
			plan.closeAll()
			serialf.Close()
			qlogf.Close()
			return nil, err
		}
	} else {
		// Not root: QEMU cannot change its uid, so it keeps the death
		// signal itself.
		cmd = exec.Command(args[0], args[1:]...)
	}
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = dir
	// QEMU dies with this process (Pdeathsig), and only then: see
	// execx.StartPinned for why the forking thread must stay put.
	child, err := execx.StartPinned(cmd)
	if lifeR != nil {
		lifeR.Close() // the init's now; bake keeps the write end only
	}
	// QEMU's now (or never): bake keeps no copy.
	plan.closePassed()
	if err != nil {
		plan.closeAll()
		serialf.Close()
		qlogf.Close()
		v.closeLifeline()
		return nil, fmt.Errorf("vm: starting %s: %w", args[0], err)
	}
	v.cmd, v.child, v.started = cmd, child, time.Now()
	plan.relaySerial()
	go func() {
		v.waitErr = child.Wait()
		v.ended = time.Now()
		// cmd.Wait set ProcessState before child.Wait returned.
		if ps := cmd.ProcessState; ps != nil {
			v.cpu = ps.UserTime() + ps.SystemTime()
		}
		v.closeLifeline()
		v.fds.closeAll()
		close(v.done)
	}()
	go v.watchLogs(serialf, qlogf)

	// Bad arguments make QEMU exit at once: report that from Start.
	select {
	case <-v.done:
		return nil, v.exitedAtStart()
	case <-time.After(300 * time.Millisecond):
	}
	if err := v.waitConfined(ctx, confineWait, wantUID, wantGID); err != nil {
		return nil, err
	}
	if c.RunAs != "" {
		// QEMU is seen unprivileged and confined: now the guest may run.
		if err := QMPCommand(ctx, c.QMPSocket, "cont"); err != nil {
			v.Stop()
			return nil, fmt.Errorf("vm: starting the guest of the paused QEMU: %w", err)
		}
	}

	stopCtx, cancel := context.WithCancel(context.Background())
	v.stopCtx = cancel
	go func() {
		select {
		case <-ctx.Done():
			v.Stop()
		case <-stopCtx.Done():
		}
	}()
	return v, nil
}

// PID of the QEMU process (in bake's PID namespace: as root QEMU is the
// child of an init of its own, see pidns.go).
func (v *VM) PID() int {
	if v.qemuPID != 0 {
		return v.qemuPID
	}
	return v.cmd.Process.Pid
}

// CPUTime is the CPU time (user + system, all threads) QEMU used, once it
// has exited (Exited is closed); 0 before. It is what wait4 reported when
// bake reaped the process it started: QEMU itself when not root; as root
// QEMU's init (pidns.go), whose rusage counts QEMU's too, since the init
// waits for QEMU (the kernel adds a reaped child's times, and those of the
// children it reaped, to its parent's children times, which wait4 reports
// with the parent's own). That includes the init's own CPU time, a Go
// program that only waits: below one clock tick (10 ms) by its
// /proc/PID/stat at the end of an 8 s boot (TestBootBIOSUserNet).
// Unlike wall time it hardly depends on what else runs on the host, so it
// is what a VM test's cost is compared by (BENCHMARKS.md).
func (v *VM) CPUTime() time.Duration {
	select {
	case <-v.done:
		return v.cpu
	default:
		return 0
	}
}

// Ran is how long QEMU ran: from its start to its exit, or until now while
// it runs.
func (v *VM) Ran() time.Duration {
	select {
	case <-v.done:
		return v.ended.Sub(v.started)
	default:
		return time.Since(v.started)
	}
}

// ExitSummary is the line bake verify and the tests log when a VM has
// ended, e.g. "QEMU (pid 1234) exited after 3m12s, 95.3 s of CPU (1 vCPU)":
// internal/testreport sums the "s of CPU" of these lines per test. It is
// "" while QEMU runs.
func (v *VM) ExitSummary() string {
	select {
	case <-v.done:
	default:
		return ""
	}
	return FormatExitSummary(v.PID(), v.Ran(), v.CPUTime(), v.Config.CPUs)
}

// FormatExitSummary is ExitSummary's line for QEMU's pid after it ran for
// wall and used cpu with vcpus vCPUs.
func FormatExitSummary(pid int, wall, cpu time.Duration, vcpus int) string {
	unit := "vCPUs"
	if vcpus == 1 {
		unit = "vCPU"
	}
	return fmt.Sprintf("QEMU (pid %d) exited after %s, %.1f s of CPU (%d %s)", pid, wall.Round(time.Second), cpu.Seconds(), vcpus, unit)
}

// closeLifeline closes bake's end of the init's lifeline (the init then
// kills QEMU and exits): once QEMU has exited or could not start.
func (v *VM) closeLifeline() {
	v.lifeMu.Lock()
	defer v.lifeMu.Unlock()
	if v.lifeline != nil {
		v.lifeline.Close()
		v.lifeline = nil
	}
}

// Dir is the VM's temp dir (removed by Stop).
func (v *VM) Dir() string { return v.dir }

// SerialLog is the path of the serial console log.
func (v *VM) SerialLog() string { return v.Config.SerialLog }

// Serial returns the serial output so far: all of it up to SerialReadMax
// bytes, else its last SerialReadMax bytes from a line start. The guest
// writes it: it is never read whole into memory.
func (v *VM) Serial() ([]byte, error) { return ReadTail(v.Config.SerialLog, SerialReadMax) }

// QEMULog returns QEMU's own stdout/stderr so far (its last SerialTailMax
// bytes at most).
func (v *VM) QEMULog() string {
	v.logMu.Lock()
	defer v.logMu.Unlock()
	if v.keptLog != "" {
		return v.keptLog
	}
	b, _ := ReadTail(v.qemuLog, SerialTailMax)
	return string(b)
}

// Exited is closed when QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.done }

// Wait blocks until QEMU exits (e.g. the guest powered off) and returns its
// exit status, or the watcher's error (wrapping ErrSerialLogMax) when it
// stopped QEMU for writing too much. Stop is still needed to remove the
// temp files.
func (v *VM) Wait() error {
	<-v.done
	if err := v.overLimit(); err != nil {
		return err
	}
	return v.waitErr
}

func (v *VM) overLimit() error {
	v.limitMu.Lock()
	defer v.limitMu.Unlock()
	return v.limitErr
}

// exitedAtStart is Start's error for a QEMU that exited before Start
// returned; it stops the VM (removing the temp dir).
func (v *VM) exitedAtStart() error {
	log := v.QEMULog()
	v.Stop()
	if strings.Contains(log, "sandbox") || strings.Contains(log, "seccomp") {
		return fmt.Errorf("vm: %s cannot confine itself with -sandbox %s (a QEMU built without seccomp, or a kernel without it); bake does not run a guest unconfined:\n%s",
			v.Config.QEMU, Sandbox, indent(lastLines(log, 20)))
	}
	return fmt.Errorf("vm: qemu exited at start (%v): %s\n%s", v.waitErr, strings.Join(v.Args, " "), indent(lastLines(log, 20)))
}

// waitConfined waits until QEMU's process has a seccomp filter of its own
// in force (QEMU installs it before it creates the machine, so before any
// guest code runs) and its argv has -sandbox Sandbox and, when uid is not
// -1, runs as uid:gid with no group, no capability and no_new_privs (as
// its init started it; it is paused until Start's cont). When it is not
// so after wait, or QEMU exits, Start fails and QEMU is stopped: a guest
// never runs unconfined.
func (v *VM) waitConfined(ctx context.Context, wait time.Duration, uid, gid int) error {
	deadline := time.Now().Add(wait)
	for {
		var err error
		if v.underInit && v.qemuPID == 0 {
			if pid, cerr := childOf(v.cmd.Process.Pid); cerr == nil {
				v.qemuPID = pid
			} else {
				err = cerr
			}
		}
		if err == nil {
			err = confined(v.PID())
		}
		if err == nil {
			err = sandboxArgv(v.PID())
		}
		if err == nil && uid != -1 {
			err = dropped(v.PID(), uid, gid)
		}
		if err == nil {
			return nil
		}
		select {
		case <-v.done:
			return v.exitedAtStart()
		default:
		}
		if time.Now().After(deadline) {
			v.Stop()
			return fmt.Errorf("vm: %s (pid %d) is not confined after %s (%v); bake does not run a guest unconfined",
				v.Config.QEMU, v.PID(), wait, err)
		}
		select {
		case <-v.done:
		case <-ctx.Done():
			v.Stop()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// confined checks /proc/PID/status: seccomp filter mode, with more filters
// than this process has (a child inherits its parent's filters: bake run
// under a container runtime's filter must not take those for QEMU's).
func confined(pid int) error {
	mode, n, err := seccompStatus(strconv.Itoa(pid))
	if err != nil {
		return err
	}
	selfMode, self, err := seccompStatus("self")
	if err != nil {
		return err
	}
	switch {
	case mode != 2:
		return fmt.Errorf("Seccomp: %d, not 2 (filter)", mode)
	case n >= 0 && self >= 0 && n <= self:
		return fmt.Errorf("Seccomp_filters: %d, no more than bake's own %d", n, self)
	case (n < 0 || self < 0) && selfMode == 2:
		return errors.New("bake itself runs under a seccomp filter and this kernel has no Seccomp_filters count to tell QEMU's own filter from it")
	}
	return nil
}

// dropped checks /proc/PID/status: every uid is uid and every gid gid, no
// supplementary group, no capability in any set, no_new_privs, seccomp
// filter mode.
func dropped(pid, uid, gid int) error {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return err
	}
	return parseDropped(string(b), uid, gid)
}

func parseDropped(status string, uid, gid int) error {
	const none = "0000000000000000"
	want := map[string]string{"CapEff": none, "CapPrm": none, "CapInh": none, "CapAmb": none, "CapBnd": none, "NoNewPrivs": "1", "Seccomp": "2"}
	seen := map[string]bool{}
	for _, line := range strings.Split(status, "\n") {
		k, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		switch {
		case k == "Uid" || k == "Gid":
			seen[k] = true
			id := uid
			if k == "Gid" {
				id = gid
			}
			if len(f) != 4 {
				return fmt.Errorf("%s: %q", k, val)
			}
			for _, x := range f {
				if x != strconv.Itoa(id) {
					return fmt.Errorf("%s: %s, not %d (QEMU is not unprivileged)", k, strings.Join(f, " "), id)
				}
			}
		case k == "Groups":
			seen[k] = true
			if len(f) != 0 {
				return fmt.Errorf("Groups: %s, want none", strings.Join(f, " "))
			}
		case want[k] != "":
			seen[k] = true
			if len(f) != 1 || f[0] != want[k] {
				return fmt.Errorf("%s: %s, want %s", k, strings.TrimSpace(val), want[k])
			}
		}
	}
	for _, k := range []string{"Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd", "NoNewPrivs", "Seccomp"} {
		if !seen[k] {
			return fmt.Errorf("no %s line in /proc/PID/status", k)
		}
	}
	return nil
}

// sandboxArgv checks /proc/PID/cmdline: QEMU was given "-sandbox" Sandbox
// once, and no -runas (whose setuid the filter would kill) nor -chroot.
func sandboxArgv(pid int) error {
	b, err := ReadTail("/proc/"+strconv.Itoa(pid)+"/cmdline", 1<<20)
	if err != nil {
		return err
	}
	return parseSandboxArgv(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"))
}

func parseSandboxArgv(argv []string) error {
	n := 0
	for i, a := range argv {
		switch strings.TrimPrefix(a, "-") {
		case "-sandbox", "sandbox":
			n++
			if i+1 >= len(argv) || argv[i+1] != Sandbox {
				return fmt.Errorf("QEMU's argv has -sandbox %q, want %s", strings.Join(argv[i+1:min(i+2, len(argv))], ""), Sandbox)
			}
		case "-runas", "runas", "-chroot", "chroot":
			return fmt.Errorf("QEMU's argv has %s", a)
		}
	}
	if n != 1 {
		return fmt.Errorf("QEMU's argv has -sandbox %d times, want once with %s", n, Sandbox)
	}
	return nil
}

// kvmAccessible: /dev/kvm opens read-write for uid:gid (with no
// supplementary group), by its mode bits.
func kvmAccessible(uid, gid int) error {
	var st unix.Stat_t
	if err := unix.Stat("/dev/kvm", &st); err != nil {
		return fmt.Errorf("vm: /dev/kvm: %w", err)
	}
	m := st.Mode
	switch {
	case int(st.Uid) == uid && m&0o600 == 0o600,
		int(st.Uid) != uid && int(st.Gid) == gid && m&0o060 == 0o060,
		int(st.Uid) != uid && int(st.Gid) != gid && m&0o006 == 0o006:
		return nil
	}
	return fmt.Errorf("vm: /dev/kvm (mode %o, uid %d gid %d) is not read-write for QEMU's account (uid %d gid %d, no other group): make it 0666 (Debian's udev default) or run with accel tcg", m&0o777, st.Uid, st.Gid, uid, gid)
}

// seccompStatus reads "Seccomp:" and "Seccomp_filters:" (-1 when the kernel
// has no such line, before Linux 5.9) from /proc/PID/status.
func seccompStatus(pid string) (mode, filters int, err error) {
	b, err := ReadTail("/proc/"+pid+"/status", 64<<10)
	if err != nil {
		return 0, 0, err
	}
	return parseSeccompStatus(string(b))
}

func parseSeccompStatus(s string) (mode, filters int, err error) {
	mode, filters = -1, -1
	for _, l := range strings.Split(s, "\n") {
		k, val, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch k {
		case "Seccomp":
			if mode, err = strconv.Atoi(strings.TrimSpace(val)); err != nil {
				return 0, 0, fmt.Errorf("Seccomp: %q", val)
			}
		case "Seccomp_filters":
			if filters, err = strconv.Atoi(strings.TrimSpace(val)); err != nil {
				return 0, 0, fmt.Errorf("Seccomp_filters: %q", val)
			}
		}
	}
	if mode < 0 {
		return 0, 0, errors.New("no Seccomp line in /proc/PID/status (a kernel without seccomp)")
	}
	return mode, filters, nil
}

// watchLogs stops QEMU when the serial log or QEMU's own log passes
// Config.SerialLogMax, checking their sizes on the descriptors Start
// opened every logWatchEvery until QEMU exits.
func (v *VM) watchLogs(serial, ql *os.File) {
	defer serial.Close()
	defer ql.Close()
	max := v.Config.SerialLogMax
	tick := time.NewTicker(logWatchEvery)
	defer tick.Stop()
	for {
		select {
		case <-v.done:
			return
		case <-tick.C:
		}
		what := ""
		if st, err := serial.Stat(); err == nil && st.Size() > max {
			what = fmt.Sprintf("the guest wrote more than %s to its serial console (%s)", sizeString(max), v.Config.SerialLog)
		} else if st, err := ql.Stat(); err == nil && st.Size() > max {
			what = fmt.Sprintf("QEMU wrote more than %s to its own log (stdout and stderr)", sizeString(max))
		}
		if what == "" {
			continue
		}
		v.limitMu.Lock()
		v.limitErr = fmt.Errorf("vm: %s; QEMU stopped: %w", what, ErrSerialLogMax)
		v.limitMu.Unlock()
		v.terminate()
		return
	}
}

// sizeString is n in MiB when it is a whole number of them.
func sizeString(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// ReadTail returns the last max bytes of the regular file at path (all of
// it when it is shorter): the one way bake reads a log a guest writes. A
// file that was cut starts at its first whole line (when the kept part has
// a line break). It never blocks on a FIFO nor reads a device.
func ReadTail(path string, max int) ([]byte, error) {
	f, _, err := imgfile.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readTail(f, max)
}

func readTail(f *os.File, max int) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size, off := st.Size(), int64(0)
	if size > int64(max) {
		off = size - int64(max)
	}
	var buf []byte
	if size == 0 {
		// /proc files say size 0: read them as a stream, up to max.
		buf, err = io.ReadAll(io.LimitReader(f, int64(max)))
	} else {
		buf = make([]byte, size-off)
		var n int
		n, err = io.ReadFull(io.NewSectionReader(f, off, size-off), buf)
		buf = buf[:n]
		if err == io.ErrUnexpectedEOF {
			err = nil
		}
	}
	if err != nil {
		return nil, err
	}
	if off > 0 {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i+1 < len(buf) {
			buf = buf[i+1:]
		}
	}
	return buf, nil
}

// WaitSerial waits until substr appears on the serial console.
func (v *VM) WaitSerial(ctx context.Context, substr string, timeout time.Duration) error {
	_, _, err := v.waitSerial(ctx, 0, func(b []byte) ([]string, int) {
		if i := bytes.Index(b, []byte(substr)); i >= 0 {
			return []string{substr}, i + len(substr)
		}
		return nil, 0
	}, fmt.Sprintf("%q", substr), timeout)
	return err
}

// WaitSerialRegexp waits until re matches the serial console and returns
// the match and its submatches.
func (v *VM) WaitSerialRegexp(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	m, _, err := v.WaitSerialFrom(ctx, 0, re, timeout)
	return m, err
}

// WaitSerialFrom is WaitSerialRegexp looking only at output from byte
// offset from on (e.g. after a reboot). It also returns the offset just past
// the match, to chain waits.
func (v *VM) WaitSerialFrom(ctx context.Context, from int64, re *regexp.Regexp, timeout time.Duration) ([]string, int64, error) {
	return v.waitSerial(ctx, from, func(b []byte) ([]string, int) {
		loc := re.FindSubmatchIndex(b)
		if loc == nil {
			return nil, 0
		}
		m := make([]string, len(loc)/2)
		for i := range m {
			if loc[2*i] >= 0 {
				m[i] = string(b[loc[2*i]:loc[2*i+1]])
			}
		}
		return m, loc[1]
	}, "/"+re.String()+"/", timeout)
}

// waitSerial scans the serial log from offset from until match returns
// non-nil, QEMU exits, ctx is done or timeout passes. It reads only what is
// new since its last read, in chunks, and keeps a window of at most
// serialWindow bytes of the log (the newest): memory stays bounded however
// much the guest writes, and a match that straddles two reads is still
// found as long as it fits in the window.
func (v *VM) waitSerial(ctx context.Context, from int64, match func([]byte) ([]string, int), what string, timeout time.Duration) ([]string, int64, error) {
	deadline := time.Now().Add(timeout)
	f, _, err := imgfile.OpenRegular(v.Config.SerialLog)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	w := serialScanner{off: from, winStart: from}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		exited := false
		select {
		case <-v.done:
			exited = true
		default:
		}
		// Read whatever is new (after an exit too: the final lines count).
		m, end, err := w.scan(f, match)
		if err != nil {
			return nil, 0, err
		}
		if m != nil {
			return m, end, nil
		}
		var reason string
		switch {
		case exited:
			if lerr := v.overLimit(); lerr != nil {
				reason = fmt.Sprintf("%v (before %s appeared on the serial console)", strings.TrimPrefix(lerr.Error(), "vm: "), what)
				break
			}
			reason = fmt.Sprintf("qemu exited (%v) before %s appeared on the serial console", v.waitErr, what)
			if ql := strings.TrimSpace(v.QEMULog()); ql != "" {
				reason += "\nqemu said:\n" + indent(lastLines(ql, 20))
			}
		case time.Now().After(deadline):
			reason = fmt.Sprintf("timed out after %s waiting for %s on the serial console", timeout, what)
		case ctx.Err() != nil:
			reason = fmt.Sprintf("%v while waiting for %s on the serial console", ctx.Err(), what)
		}
		if reason != "" {
			tail, _ := readTail(f, SerialTailMax)
			msg := fmt.Sprintf("vm: %s\nlast %d lines of serial output (%s):\n%s",
				reason, serialTailLines, v.Config.SerialLog, indent(lastLines(string(tail), serialTailLines)))
			if lerr := v.overLimit(); exited && lerr != nil {
				return nil, 0, &wrapped{msg, lerr}
			}
			return nil, 0, errors.New(msg)
		}
		select {
		case <-tick.C:
		case <-v.done:
		case <-ctx.Done():
		}
	}
}

// wrapped is an error with a message of its own that wraps err.
type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// serialScanner is WaitSerial's bounded view of the growing serial log.
type serialScanner struct {
	off      int64  // the next byte of the file to read
	win      []byte // the newest bytes read, at most serialWindow
	winStart int64  // the file offset of win[0]
	buf      []byte // one read chunk
}

// scan reads from the file what is new since the last call, at most
// serialChunk at a time; after each chunk it drops the oldest bytes beyond
// serialWindow and runs match over the window. It returns the match and
// the file offset just past it, or nil once it has read up to the end.
func (w *serialScanner) scan(f *os.File, match func([]byte) ([]string, int)) ([]string, int64, error) {
	if w.buf == nil {
		w.buf = make([]byte, serialChunk)
	}
	for {
		n, err := f.ReadAt(w.buf, w.off)
		if err != nil && err != io.EOF {
			return nil, 0, err
		}
		if n == 0 {
			return nil, 0, nil
		}
		w.off += int64(n)
		if drop := len(w.win) + n - serialWindow; drop > 0 {
			w.win = append(w.win[:0], w.win[drop:]...)
			w.winStart += int64(drop)
		}
		w.win = append(w.win, w.buf[:n]...)
		if m, end := match(w.win); m != nil {
			return m, w.winStart + int64(end), nil
		}
		if n < len(w.buf) {
			return nil, 0, nil
		}
	}
}

// Stop ends QEMU (SIGTERM, SIGKILL after StopGrace), waits for it and
// removes the temp dir. It is idempotent and safe to call concurrently.
// A user-supplied SerialLog is kept.
func (v *VM) Stop() error {
	v.stopOnce.Do(func() {
		if v.stopCtx != nil {
			v.stopCtx()
		}
		v.terminate()
		v.logMu.Lock()
		if b, err := ReadTail(v.qemuLog, SerialTailMax); err == nil {
			v.keptLog = string(b)
		}
		v.stopErr = os.RemoveAll(v.dir)
		v.logMu.Unlock()
		v.fds.closeAll()
		if v.fds != nil && v.fds.qmpPath != "" {
			// Start created it (QEMU, which removed its own, only
			// accepted on it).
			if st, err := os.Lstat(v.fds.qmpPath); err == nil && st.Mode()&os.ModeSocket != 0 {
				os.Remove(v.fds.qmpPath)
			}
		}
	})
	return v.stopErr
}

// terminate ends QEMU (SIGTERM, SIGKILL after StopGrace) and waits for it
// to exit. Safe to call concurrently and after QEMU has exited.
func (v *VM) terminate() {
	select {
	case <-v.done:
		return
	default:
	}
	_ = v.child.Stop(StopGrace)
	<-v.done
}

var (
	kvmMu    sync.Mutex
	kvmProbe = map[string]error{} // by QEMU binary
)

// KVMUsable reports whether KVM really runs guests with the default QEMU
// (see ProbeKVM). The answer is cached for the life of the process.
func KVMUsable() bool { return probeKVMCached(DefaultQEMU) == nil }

func probeKVMCached(qemu string) error {
	kvmMu.Lock()
	defer kvmMu.Unlock()
	if err, ok := kvmProbe[qemu]; ok {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := ProbeKVM(ctx, qemu)
	kvmProbe[qemu] = err
	return err
}

// ProbeKVM checks that KVM can run a guest: /dev/kvm opens, answers the API
// version and creates a VM, and then QEMU with "-accel kvm -cpu host" really
// executes guest code (SeaBIOS prints its banner on the debug port within
// seconds). A /dev/kvm that opens is not enough: nested or emulated KVM can
// accept a VM and then abort on CPU state or never run it.
func ProbeKVM(ctx context.Context, qemu string) error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("kvm: %w", err)
	}
	const kvmGetAPIVersion, kvmCreateVM = 0xAE00, 0xAE01
	ver, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 || ver != 12 {
		unix.Close(fd)
		return fmt.Errorf("kvm: API version %d (%v)", ver, errno)
	}
	vmfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	unix.Close(fd)
	if errno != 0 {
		return fmt.Errorf("kvm: create VM: %v", errno)
	}
	unix.Close(int(vmfd))

	dir, err := sweep.MkdirTemp("", probeDirPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dbg := filepath.Join(dir, "debugcon")
	cmd := exec.Command(qemu, "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "64",
		"-chardev", "file,id=dbg,path="+qemuEscape(dbg), "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
		"-no-reboot")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	child, err := execx.StartPinned(cmd)
	if err != nil {
		return fmt.Errorf("kvm probe: %w", err)
	}
	defer func() {
		cmd.Process.Kill() // this PID only; a no-op once it has exited
		child.Wait()
	}()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		if b, _ := os.ReadFile(dbg); bytes.Contains(b, []byte("SeaBIOS")) {
			return nil
		}
		select {
		case <-child.Done():
			return fmt.Errorf("kvm probe: qemu -accel kvm exited (%v): %s", child.Wait(), strings.TrimSpace(lastLines(out.String(), 5)))
		case <-deadline.C:
			return fmt.Errorf("kvm probe: no guest output after 10s with -accel kvm")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (for
// a hostfwd).
func FreePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// DiskFormat tells the format of a disk image, "qcow2" or "raw", by its
// magic, never by qemu-img's probing (which guesses among dozens of
// formats, some of which name other files). The image must be a regular
// file (opened without blocking: a FIFO cannot hang it). A qcow2 that
// refers to another file of the host (a backing file or an external data
// file) is refused, by its header and again by `qemu-img info -f qcow2`
// (told the format, so it does not probe): booting it would have QEMU open
// a host file the image names. The error then wraps ErrRefused.
// refuseHeader refuses a disk whose header names what QEMU is not given
// (a backing file, an external data file), whatever format the caller
// named for it.
func refuseHeader(path string) error {
	f, _, err := imgfile.OpenRegular(path)
	if err != nil {
		return fmt.Errorf("vm: disk: %w", err)
	}
	defer f.Close()
	info, err := imgfile.Sniff(f)
	if err != nil {
		return fmt.Errorf("vm: disk %s: %w", path, err)
	}
	if info.Format == imgfile.Raw {
		return nil
	}
	if err := info.Refuse(); err != nil {
		return fmt.Errorf("vm: disk %s: %w: %w", path, ErrRefused, err)
	}
	return nil
}

func DiskFormat(ctx context.Context, path string) (string, error) {
	f, _, err := imgfile.OpenRegular(path)
	if err != nil {
		return "", fmt.Errorf("vm: disk: %w", err)
	}
	info, err := imgfile.Sniff(f)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("vm: disk %s: %w", path, err)
	}
	if info.Format == imgfile.Raw {
		return imgfile.Raw, nil
	}
	if err := info.Refuse(); err != nil {
		return "", fmt.Errorf("vm: disk %s: %w: %w", path, ErrRefused, err)
	}
	out, err := execx.Default.Output(ctx, execx.Cmd{Name: "qemu-img", Args: []string{"info", "-f", "qcow2", "--output=json", path}})
	if err != nil {
		return "", fmt.Errorf("vm: disk format: %w", err)
	}
	var qi struct {
		Format          string `json:"format"`
		BackingFilename string `json:"backing-filename"`
		FormatSpecific  struct {
			Data struct {
				DataFile string `json:"data-file"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &qi); err != nil || qi.Format == "" {
		return "", fmt.Errorf("vm: disk format of %s: cannot parse qemu-img info: %v", path, err)
	}
	if qi.BackingFilename != "" {
		return "", fmt.Errorf("vm: disk %s: %w: %w", path, ErrRefused, imgfile.Info{HasBacking: true, Backing: qi.BackingFilename}.Refuse())
	}
	if qi.FormatSpecific.Data.DataFile != "" {
		return "", fmt.Errorf("vm: disk %s: %w: %w", path, ErrRefused, imgfile.Info{ExternalData: true}.Refuse())
	}
	return imgfile.Qcow2, nil
}

// ErrRefused is wrapped by DiskFormat's error for an image that names
// other files of the host.
var ErrRefused = errors.New("refused")

func createOverlay(ctx context.Context, dir, disk, format string) (string, error) {
	abs, err := filepath.Abs(disk)
	if err != nil {
		return "", err
	}
	overlay := filepath.Join(dir, "overlay.qcow2")
	err = execx.Default.Run(ctx, execx.Cmd{Name: "qemu-img", Args: []string{
		"create", "-q", "-f", "qcow2", "-b", abs, "-F", format, overlay}})
	if err != nil {
		return "", fmt.Errorf("vm: snapshot overlay: %w", err)
	}
	return overlay, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func lastLines(s string, n int) string {
	s = strings.ReplaceAll(s, "\r", "")
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string {
	if s == "" {
		return "    (empty)"
	}
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = "    " + lines[i]
	}
	return strings.Join(lines, "\n")
}
