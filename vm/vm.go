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
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/imgfile"
)

// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
var StopGrace = 5 * time.Second

// serialTailLines is how much serial output an error carries.
const serialTailLines = 40

// VM is a running QEMU process and the temporary files it owns.
type VM struct {
	// Config is the resolved configuration QEMU was started with: the
	// overlay instead of the original disk, the OVMF_VARS copy, the
	// accelerator actually chosen.
	Config Config
	// Args is the argv QEMU was started with (Cmdline(Config)).
	Args []string

	cmd     *exec.Cmd
	dir     string // temp dir, removed by Stop
	qemuLog string // QEMU's own stdout+stderr

	done    chan struct{} // closed when QEMU has exited
	waitErr error         // set before done is closed

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
func Start(ctx context.Context, c Config) (_ *VM, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	dir, err := os.MkdirTemp("", "bake-vm-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()

	if c.Accel == AccelAuto {
		if v := os.Getenv("BAKE_VM_ACCEL"); v == AccelKVM || v == AccelTCG {
			c.Accel = v
		} else if probeKVMCached(c.QEMU) == nil {
			c.Accel = AccelKVM
		} else {
			c.Accel = AccelTCG
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
		}
		if c.Snapshot {
			overlay, err := createOverlay(ctx, dir, c.Disk, c.DiskFormat)
			if err != nil {
				return nil, err
			}
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

	args, err := Cmdline(c)
	if err != nil {
		return nil, err
	}
	v := &VM{Config: c, Args: args, dir: dir, qemuLog: filepath.Join(dir, "qemu.log"), done: make(chan struct{})}
	logf, err := os.Create(v.qemuLog)
	if err != nil {
		return nil, err
	}
	defer logf.Close()

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = dir
	// QEMU dies with this process (Pdeathsig), and only then: see
	// execx.StartPinned for why the forking thread must stay put.
	child, err := execx.StartPinned(cmd)
	if err != nil {
		return nil, fmt.Errorf("vm: starting %s: %w", args[0], err)
	}
	v.cmd = cmd
	go func() {
		v.waitErr = child.Wait()
		close(v.done)
	}()

	// Bad arguments make QEMU exit at once: report that from Start.
	select {
	case <-v.done:
		v.Stop()
		return nil, fmt.Errorf("vm: qemu exited at start (%v): %s\n%s", v.waitErr, strings.Join(args, " "), indent(lastLines(v.QEMULog(), 20)))
	case <-time.After(300 * time.Millisecond):
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

// PID of the QEMU process.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// Dir is the VM's temp dir (removed by Stop).
func (v *VM) Dir() string { return v.dir }

// SerialLog is the path of the serial console log.
func (v *VM) SerialLog() string { return v.Config.SerialLog }

// Serial returns the serial output so far.
func (v *VM) Serial() ([]byte, error) { return os.ReadFile(v.Config.SerialLog) }

// QEMULog returns QEMU's own stdout/stderr so far.
func (v *VM) QEMULog() string {
	v.logMu.Lock()
	defer v.logMu.Unlock()
	if v.keptLog != "" {
		return v.keptLog
	}
	b, _ := os.ReadFile(v.qemuLog)
	return string(b)
}

// Exited is closed when QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.done }

// Wait blocks until QEMU exits (e.g. the guest powered off) and returns its
// exit status. Stop is still needed to remove the temp files.
func (v *VM) Wait() error {
	<-v.done
	return v.waitErr
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

// waitSerial polls the serial log from offset from until match returns
// non-nil, QEMU exits, ctx is done or timeout passes.
func (v *VM) waitSerial(ctx context.Context, from int64, match func([]byte) ([]string, int), what string, timeout time.Duration) ([]string, int64, error) {
	deadline := time.Now().Add(timeout)
	var buf []byte
	var off int64 = from
	f, err := os.Open(v.Config.SerialLog)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
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
		chunk, err := readFrom(f, off)
		if err != nil {
			return nil, 0, err
		}
		off += int64(len(chunk))
		buf = append(buf, chunk...)
		if m, end := match(buf); m != nil {
			return m, from + int64(end), nil
		}
		var reason string
		switch {
		case exited:
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
			all, _ := os.ReadFile(v.Config.SerialLog)
			return nil, 0, fmt.Errorf("vm: %s\nlast %d lines of serial output (%s):\n%s",
				reason, serialTailLines, v.Config.SerialLog, indent(lastLines(string(all), serialTailLines)))
		}
		select {
		case <-tick.C:
		case <-v.done:
		case <-ctx.Done():
		}
	}
}

func readFrom(f *os.File, off int64) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := f.ReadAt(buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if err == io.EOF || n == 0 {
			return out, nil
		}
		if err != nil {
			return out, err
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
		select {
		case <-v.done:
		default:
			_ = v.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-v.done:
			case <-time.After(StopGrace):
				_ = v.cmd.Process.Kill()
				<-v.done
			}
		}
		v.logMu.Lock()
		if b, err := os.ReadFile(v.qemuLog); err == nil {
			v.keptLog = string(b)
		}
		v.stopErr = os.RemoveAll(v.dir)
		v.logMu.Unlock()
	})
	return v.stopErr
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

	dir, err := os.MkdirTemp("", "bake-kvm-probe-")
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
