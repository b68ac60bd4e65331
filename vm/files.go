package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// As root, QEMU runs as DefaultRunAs from its first instruction (pidns.go)
// and opens nothing of bake's by name: the disks, the overlay and the disk
// under it, OVMF's code and variables, the seed, extra drives, the serial
// log, the tap device, the kernel and initrd, SMBIOS credential files live
// in root's directories or are root's own (0600), and the account has, and
// gets, no access to any of them. Start opens each (as root) and QEMU
// inherits the descriptors:
//
//   - block files and logs go into descriptor sets ("-add-fd fd=N,set=M",
//     named /dev/fdset/M: QEMU's qemu_open dups the one whose access mode
//     matches). Disks are -blockdev nodes, each format node over a file
//     node of its own, with the backing chain given explicitly: the disk
//     under Start's Snapshot overlay is a read-only node from its own
//     descriptor, never the name in the overlay's header, and any other
//     qcow2 gets "backing": null, so QEMU follows no backing file at all.
//   - files QEMU reads whole by name (-kernel, -initrd, -smbios path= and
//     file=) are copied into a memfd owned by the account, mode 0400, and
//     named /proc/self/fd/N: QEMU's reopen of it passes the inode's check,
//     and no other user can reach another process's /proc/PID/fd.
//   - the QMP socket is created and listened on by Start at
//     Config.QMPSocket (so bake connects by path as before) and QEMU
//     accepts on the inherited listening socket (-chardev socket,fd=N).
//   - the tap device is opened by Start (inside Net.Netns) and passed
//     (-netdev tap,fd=N): QEMU needs no namespace nor CAP_NET_ADMIN.
//   - the interactive console (SerialPipe): QEMU's pipe chardev opens two
//     FIFOs by name, which no descriptor set can stand for; QEMU gets one
//     end of a socket pair instead (-chardev socket,fd=N) and Start relays
//     between the other end and the caller's FIFOs.
//
// A private directory owned by the account (sockets and logs created by
// QEMU there) was the alternative: it would still leave the disks, the
// firmware and the credentials to pass, and give a compromised QEMU a
// place of its own inside bake's temp dir that bake later reads and
// removes. Descriptors give QEMU exactly the files of this VM, in exactly
// the mode it needs, and nothing by name.

// firstFD is the first descriptor QEMU inherits from Start: 0-2 are its
// stdio, 3 is the init's lifeline (not passed on).
const firstFD = 4

// procFileMax bounds a file QEMU reads whole (kernel, initrd, SMBIOS
// credential), copied to memory for it.
const procFileMax = 1 << 30

// fdPlan is what Start opened for one QEMU.
type fdPlan struct {
	files []*os.File // files[i] is descriptor firstFD+i in QEMU
	addFD []string   // -add-fd values
	set   map[string]int
	modes map[string]map[int]bool
	proc  map[string]int
	tap   int // descriptors in QEMU (0: none)
	qmp   int
	// serial is QEMU's end of the console's socket pair; bake's end and
	// the caller's FIFOs are relayed by relaySerial.
	serial                   int
	serialEnd, conIn, conOut *os.File
	relayDone                chan struct{} // the output copy is done
	uid, gid                 int
	qmpPath                  string
	passedOnce, allOnce      sync.Once
}

func newFDPlan(uid, gid int) *fdPlan {
	return &fdPlan{set: map[string]int{}, modes: map[string]map[int]bool{}, proc: map[string]int{}, uid: uid, gid: gid}
}

func (p *fdPlan) add(f *os.File) int {
	p.files = append(p.files, f)
	return firstFD + len(p.files) - 1
}

// setPath is /dev/fdset/M for a file put in a set; an error for one that
// was not.
func (p *fdPlan) setPath(path string) (string, error) {
	id, ok := p.set[path]
	if !ok {
		return "", fmt.Errorf("vm: no descriptor for %s (QEMU runs unprivileged: Start opens its files)", path)
	}
	return "/dev/fdset/" + strconv.Itoa(id), nil
}

// procPath is /proc/self/fd/N for a file Start copied for QEMU, the path
// itself without a plan.
func (p *fdPlan) procPath(path string) (string, error) {
	if p == nil {
		return path, nil
	}
	fd, ok := p.proc[path]
	if !ok {
		return "", fmt.Errorf("vm: no descriptor for %s (QEMU runs unprivileged: Start opens its files)", path)
	}
	return "/proc/self/fd/" + strconv.Itoa(fd), nil
}

// addSet opens path (a regular file) once per access mode (O_RDONLY,
// O_RDWR, O_WRONLY|O_APPEND) into its descriptor set.
func (p *fdPlan) addSet(path string, modes ...int) error {
	id, ok := p.set[path]
	if !ok {
		id = len(p.set) + 1
		p.set[path] = id
		p.modes[path] = map[int]bool{}
	}
	for _, m := range modes {
		if p.modes[path][m] {
			continue
		}
		f, err := openRegular(path, m)
		if err != nil {
			return err
		}
		p.modes[path][m] = true
		p.addFD = append(p.addFD, fmt.Sprintf("fd=%d,set=%d", p.add(f), id))
	}
	return nil
}

// addProc copies path into a memfd QEMU's account may read (0400).
func (p *fdPlan) addProc(path string) error {
	if _, ok := p.proc[path]; ok {
		return nil
	}
	src, err := openRegular(path, os.O_RDONLY)
	if err != nil {
		return err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("bake-qemu-"+filepath.Base(path), unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("vm: memfd for %s: %w", path, err)
	}
	m := os.NewFile(uintptr(fd), path)
	n, err := io.Copy(m, io.LimitReader(src, procFileMax+1))
	if err == nil && n > procFileMax {
		err = fmt.Errorf("larger than %d MiB", procFileMax>>20)
	}
	if err == nil {
		err = m.Chown(p.uid, p.gid)
	}
	if err == nil {
		err = m.Chmod(0o400)
	}
	if err != nil {
		m.Close()
		return fmt.Errorf("vm: copying %s for QEMU: %w", path, err)
	}
	p.proc[path] = p.add(m)
	return nil
}

// openRegular opens path with flag, refusing anything but a regular file
// (opened without blocking: a FIFO cannot hang it).
func openRegular(path string, flag int) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("vm: %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		if err == nil {
			err = errors.New("not a regular file")
		}
		return nil, fmt.Errorf("vm: %s: %w", path, err)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openFiles opens, as root, everything c's QEMU will use, for a QEMU that
// runs as uid:gid. On error nothing stays open.
func openFiles(c Config, uid, gid int) (_ *fdPlan, err error) {
	p := newFDPlan(uid, gid)
	defer func() {
		if err != nil {
			p.closeAll()
		}
	}()
	ro, rw := os.O_RDONLY, os.O_RDWR
	if c.Firmware == UEFI {
		if err := p.addSet(c.OVMFCode, ro); err != nil {
			return nil, err
		}
		if err := p.addSet(c.OVMFVars, rw, ro); err != nil {
			return nil, err
		}
	}
	if c.Kernel != "" {
		if err := p.addProc(c.Kernel); err != nil {
			return nil, err
		}
	}
	if c.Initrd != "" {
		if err := p.addProc(c.Initrd); err != nil {
			return nil, err
		}
	}
	if c.Disk != "" {
		if err := p.addSet(c.Disk, rw, ro); err != nil {
			return nil, err
		}
	}
	if c.backing != "" {
		// Read-only: the disk under the overlay is never written.
		if err := p.addSet(c.backing, ro); err != nil {
			return nil, err
		}
	}
	if c.SeedISO != "" {
		if err := p.addSet(c.SeedISO, ro); err != nil {
			return nil, err
		}
	}
	for _, d := range c.ExtraDrives {
		modes := []int{ro}
		if !d.ReadOnly && d.Interface != IfCDROM {
			modes = []int{rw, ro}
		}
		if err := p.addSet(d.Path, modes...); err != nil {
			return nil, err
		}
	}
	if c.SerialLog != "" {
		if err := p.addSet(c.SerialLog, os.O_WRONLY|os.O_APPEND); err != nil {
			return nil, err
		}
	}
	for i := 0; i+1 < len(c.ExtraArgs); i++ {
		if x := c.ExtraArgs[i]; x == "-smbios" || x == "--smbios" {
			if path, ok := smbiosPath(c.ExtraArgs[i+1]); ok {
				if err := p.addProc(path); err != nil {
					return nil, err
				}
			}
		}
	}
	if c.Net.Mode == NetTap {
		f, err := openTap(c.Net.Tap, c.Net.Netns)
		if err != nil {
			return nil, err
		}
		p.tap = p.add(f)
	}
	if c.SerialPipe != "" {
		for _, x := range []struct {
			ext string
			f   **os.File
		}{{".in", &p.conIn}, {".out", &p.conOut}} {
			f, err := os.OpenFile(c.SerialPipe+x.ext, os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("vm: console: %w", err)
			}
			*x.f = f
			if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
				return nil, fmt.Errorf("vm: console %s: not a FIFO", f.Name())
			}
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("vm: console socket pair: %w", err)
		}
		p.serial = p.add(os.NewFile(uintptr(fds[0]), "console (QEMU's end)"))
		if err := unix.SetNonblock(fds[1], true); err != nil {
			unix.Close(fds[1])
			return nil, err
		}
		p.serialEnd = os.NewFile(uintptr(fds[1]), "console")
	}
	if c.QMPSocket != "" {
		f, err := listenUnix(c.QMPSocket)
		if err != nil {
			return nil, err
		}
		p.qmpPath = c.QMPSocket
		p.qmp = p.add(f)
	}
	return p, nil
}

// listenUnix creates a unix socket at path, listening, and returns its
// descriptor (blocking, as QEMU wants it). A socket left at path is
// replaced, as QEMU's own server=on did; any other file is refused.
func listenUnix(path string) (*os.File, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("vm: QMP socket %s: a file that is not a socket is in the way", path)
		}
		os.Remove(path)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vm: QMP socket: %w", err)
	}
	// QEMU accepts on it; bake's listener goes, the path stays.
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	l.Close()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("vm: QMP socket: %w", err)
	}
	return f, nil
}

// openTap opens the existing tap device name (inside network namespace ns
// when set) for QEMU, with the flags QEMU's own open uses.
func openTap(name, ns string) (*os.File, error) {
	var f *os.File
	open := func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		f = os.NewFile(uintptr(fd), "tap "+name)
		return nil
	}
	var err error
	if ns == "" {
		err = open()
	} else {
		err = InNetns(ns, open)
	}
	if err != nil {
		return nil, fmt.Errorf("vm: tap device %s (netns %q): %w", name, ns, err)
	}
	return f, nil
}

// closePassed closes bake's copies of what QEMU inherited (once QEMU has
// started, or could not).
func (p *fdPlan) closePassed() {
	if p == nil {
		return
	}
	p.passedOnce.Do(func() {
		for _, f := range p.files {
			f.Close()
		}
	})
}

// closeAll closes everything, the console relay's ends included.
func (p *fdPlan) closeAll() {
	if p == nil {
		return
	}
	p.closePassed()
	p.allOnce.Do(func() {
		if p.conIn != nil {
			p.conIn.Close()
		}
		// What QEMU wrote to the console before it exited is still
		// copied to the output FIFO (EOF once QEMU's end is closed), for
		// a second at most (a full FIFO nobody reads).
		if p.relayDone != nil {
			select {
			case <-p.relayDone:
			case <-time.After(time.Second):
			}
		}
		for _, f := range []*os.File{p.serialEnd, p.conOut} {
			if f != nil {
				f.Close()
			}
		}
	})
}

// relaySerial copies the caller's console input FIFO to QEMU's console
// and QEMU's console to the output FIFO, until closeAll (which lets the
// output drain first). It starts once QEMU has; relayDone is set before.
func (p *fdPlan) relaySerial() {
	if p == nil || p.serialEnd == nil {
		return
	}
	in, out, conn := p.conIn, p.conOut, p.serialEnd
	// Plain Reader/Writer: no splice outside the poller.
	go func() { _, _ = io.Copy(struct{ io.Writer }{conn}, struct{ io.Reader }{in}) }()
	p.relayDone = make(chan struct{})
	go func() {
		defer close(p.relayDone)
		_, _ = io.Copy(struct{ io.Writer }{out}, struct{ io.Reader }{conn})
	}()
}

// blockNode is one disk as -blockdev nodes: a format node over a file
// node, optionally over a backing node.
type blockNode struct {
	name, file, format string
	readOnly           bool
	backing            *blockNode
}

// formatsWithBacking are the block drivers with a "backing" option.
var formatsWithBacking = map[string]bool{"qcow2": true, "qcow": true, "qed": true, "vmdk": true}

// blockFormats are the disk formats Start passes to QEMU as -blockdev nodes.
var blockFormats = map[string]bool{"raw": true, "qcow2": true, "qcow": true, "qed": true, "vmdk": true, "vpc": true, "vhdx": true, "vdi": true}

// blockdevArgs is "-blockdev JSON" for n's file and format nodes (and its
// backing's first), the format node named n.name.
func blockdevArgs(n blockNode) ([]string, error) {
	var a []string
	if !blockFormats[n.format] {
		return nil, fmt.Errorf("vm: disk format %q", n.format)
	}
	var backing any
	if n.backing != nil {
		b, err := blockdevArgs(*n.backing)
		if err != nil {
			return nil, err
		}
		a = append(a, b...)
		backing = n.backing.name
	}
	file := map[string]any{"driver": "file", "node-name": n.name + "-file", "filename": n.file, "read-only": n.readOnly}
	format := map[string]any{"driver": n.format, "node-name": n.name, "file": n.name + "-file", "read-only": n.readOnly}
	if formatsWithBacking[n.format] {
		format["backing"] = backing // nil: JSON null, no backing file
	} else if n.backing != nil {
		return nil, fmt.Errorf("vm: a %s disk cannot have a backing node", n.format)
	}
	for _, m := range []map[string]any{file, format} {
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		a = append(a, "-blockdev", string(b))
	}
	return a, nil
}

// qemuSplit splits a QEMU option value at its unescaped commas (",,").
func qemuSplit(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// smbiosPath is the file an -smbios value names (path= of type 11, or
// file=), unescaped.
func smbiosPath(v string) (string, bool) {
	for _, kv := range qemuSplit(v) {
		if p, ok := strings.CutPrefix(kv, "path="); ok {
			return p, true
		}
		if p, ok := strings.CutPrefix(kv, "file="); ok {
			return p, true
		}
	}
	return "", false
}

// replaceSMBIOSPath is v with its file named np instead.
func replaceSMBIOSPath(v, np string) string {
	parts := qemuSplit(v)
	for i, kv := range parts {
		for _, k := range []string{"path=", "file="} {
			if strings.HasPrefix(kv, k) {
				parts[i] = k + np
			}
		}
	}
	for i := range parts {
		parts[i] = qemuEscape(parts[i])
	}
	return strings.Join(parts, ",")
}
