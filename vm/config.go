// Package vm launches QEMU virtual machines for bake's tests and for
// `bake verify`: a pure command-line builder (Cmdline), a launcher that owns
// every temporary file and process it creates (Start/Stop), a NoCloud seed
// writer (WriteNoCloudSeed) and, for checks "from outside", a network
// namespace joined to the VM by a tap device with DHCP and router
// advertisements on it (NewLink).
//
// Networking is never open to the host's own network: user-mode networking
// always has restrict=on (only the listed host forwards on 127.0.0.1 reach
// the guest), and a Link's namespace holds nothing but the 10.77.0.0/24 and
// fd77::/64 link to the guest.
//
// The guest is hostile (bake verify boots images it did not build, as
// root). QEMU always runs confined by its seccomp filter (Sandbox on every
// command line, with set*uid/set*gid denied; Start refuses to go on unless
// the running QEMU has the filter in force); as root, Start never lets QEMU
// hold root at all: QEMU is started, already as the unprivileged account
// DefaultRunAs with no capability and no_new_privs, by an init of its own
// in a new PID namespace that keeps the parent-death signal (pidns.go), and
// every file, socket and device it needs is opened by bake and handed to it
// as an inherited descriptor (files.go); and everything read back from the
// guest is bounded:
// the serial log may grow to Config.SerialLogMax before Start's watcher
// stops the VM, and no reader of it (Serial, WaitSerial, the tails in
// errors, ReadTail) holds more than a fixed window of it in memory.
package vm

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Firmware values.
const (
	BIOS = "bios"
	UEFI = "uefi"
)

// Accel values.
const (
	AccelAuto = "auto" // KVM when usable, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// TCGCPU is the CPU model under TCG: QEMU's "max" without three features
// that make an emulated guest slower, not faster. With ERMS and FSRM the
// guest's glibc (memset, memcpy) and kernel (clear_page, copies to and
// from user space) use rep stosb / rep movsb, which TCG runs one byte per
// iteration: in a guest on "max", a 64 MiB memset took 0.08-0.10 s, and
// 0.008 s without the two flags (glibc's vector loop); 200 process
// starts took a fifth less. LA57 makes the guest kernel
// use five-level page tables, one more level for every page walk of
// TCG's software TLB, for guests of a few GiB. Measured on the test
// appliance's first boot, two VMs at once (one with each model, four
// pairs): 3-10% less QEMU CPU to `is-system-running` in every pair
// (BENCHMARKS.md, session 25). KVM keeps "-cpu host". Cmdline's
// AccelAuto ("-accel kvm -accel tcg", where QEMU picks) keeps "max"; Start
// never passes it on: it resolves AccelAuto to KVM or TCG first.
const TCGCPU = "max,-erms,-fsrm,-la57"

// NetConfig modes.
const (
	NetNone = "none"
	NetUser = "user" // QEMU user-mode networking, always restrict=on
	NetTap  = "tap"  // an existing tap device, optionally inside a netns
)

// Drive interfaces.
const (
	IfVirtio = "virtio" // virtio-blk-pci
	IfCDROM  = "cdrom"  // ide-cd on the q35 AHCI controller
)

// Config.HostTHP values.
const (
	THPAuto = ""
	THPOn   = "on"
	THPOff  = "off"
)

// thpDisabled says whether QEMU runs with the host's transparent huge
// pages off, for c (Accel already resolved to kvm or tcg). Under TCG
// they are off by default: every 2 MiB huge page QEMU's first touch
// allocates is zeroed at once, and on a host that is itself a VM (CI
// runners, cloud machines), whose hypervisor took back the host's free
// 2 MiB blocks (free page reporting), each of those touches faults the
// whole block in again. Measured (BENCHMARKS.md, "Host huge pages"):
// clear_page under huge-page faults was 6% of all the CPU of the VM tier,
// and the test appliance's first boot used 54-55 s of CPU to its SSH
// login with them off, 65-71 s with them on. Under KVM huge pages back
// the guest's memory in the second-level page tables, which is where
// they pay: kept.
func thpDisabled(c Config) bool {
	v := c.HostTHP
	if v == THPAuto {
		v = os.Getenv("BAKE_VM_THP")
	}
	switch v {
	case THPOn:
		return false
	case THPOff:
		return true
	}
	return c.Accel == AccelTCG
}

// Defaults used when a Config leaves the field empty.
const (
	DefaultQEMU      = "qemu-system-x86_64"
	DefaultOVMFCode  = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DefaultOVMFVars  = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	DefaultMemoryMiB = 1024
	DefaultCPUs      = 1
	DefaultNICModel  = "virtio-net-pci"

	// DefaultSerialLogMax is how much the guest may write to its serial
	// console (Config.SerialLogMax) before Start's watcher stops QEMU.
	DefaultSerialLogMax = 64 << 20
)

var runAsRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// Sandbox is the value of QEMU's -sandbox option on every command line
// Cmdline makes: QEMU's seccomp filter (QEMU 7.2 has it, Debian builds it
// in), with obsolete system calls, set*uid/set*gid, fork/exec and
// affinity/priority changes denied. A guest that escapes into QEMU cannot
// spawn a shell, change its credentials or reach syscalls QEMU never makes.
// As root, QEMU never needs a set*uid call of its own: it is started
// unprivileged (pidns.go), so "elevateprivileges=deny" holds there too (no
// -runas, which QEMU 7.2 runs after its filter is in force).
//
// It fails closed. Cmdline has no way to leave it out, and refuses
// ExtraArgs that name -sandbox (a later "-sandbox off" would merge with and
// override it). A QEMU built without seccomp (or on a kernel without it)
// refuses the option and exits at once, which Start reports as a QEMU that
// cannot confine itself; and Start does not return a VM until the running
// QEMU process has a seccomp filter of its own in force (more filters in
// /proc/PID/status than bake's own) and its argv (/proc/PID/cmdline) has
// this very value, so a binary that accepts the option and ignores it (a
// wrapper, a patched build) is stopped and refused too. There is no switch
// to run a guest unconfined.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// Config describes one VM. The zero value of most fields means the default.
type Config struct {
	QEMU string // binary; DefaultQEMU when empty
	// RunAs is the account QEMU runs as (needs root): Start sets
	// DefaultRunAs when bake runs as root; "" keeps bake's own (non-root)
	// user. QEMU never runs as root then: its init starts it as RunAs
	// (pidns.go), and every file, device and socket it uses is opened by
	// Start and passed as a descriptor (files.go). With RunAs, Cmdline
	// starts QEMU paused (-S), needs QMPSocket (Start sets one) and the
	// descriptors Start opened: Start resumes the guest once it has seen
	// QEMU unprivileged and confined.
	RunAs string
	// keepUser: Start leaves RunAs empty even as root. Only this
	// package's tests set it: their stand-in for QEMU is a script.
	keepUser bool
	// fds: the descriptors Start opened for QEMU (RunAs); Cmdline names
	// them instead of paths. backing and backingFormat: the disk under
	// Start's Snapshot overlay, which QEMU then reads from a descriptor
	// too (never by the name in the overlay's header).
	fds                    *fdPlan
	backing, backingFormat string

	Firmware string // BIOS (default) or UEFI
	// OVMFCode is the read-only UEFI code (DefaultOVMFCode when empty).
	// OVMFVars is the variable store template: Start copies it to a temp
	// file and passes the copy; Cmdline passes it as given (writable).
	OVMFCode, OVMFVars string

	// Disk is the boot disk; DiskFormat its format ("raw", "qcow2"; Start
	// asks qemu-img when empty). With Snapshot, Start puts a qcow2 overlay
	// in a temp dir so Disk is never modified; Cmdline alone (no Start)
	// expresses Snapshot as QEMU's own snapshot=on.
	Disk       string
	DiskFormat string
	Snapshot   bool

	// Direct kernel boot (tests): Kernel, optional Initrd and Append.
	Kernel, Initrd, Append string

	MemoryMiB int // DefaultMemoryMiB when 0
	CPUs      int // DefaultCPUs when 0
	// HostTHP is whether QEMU's memory (the guest's RAM, TCG's code
	// buffer) may use the host's transparent huge pages: THPAuto (""),
	// THPOn or THPOff. Auto is off under TCG, the kernel's default under
	// KVM; BAKE_VM_THP=on|off overrides auto. Only a QEMU started
	// through the init (bake as root) is told (prctl
	// PR_SET_THP_DISABLE, which QEMU inherits): see thpDisabled.
	HostTHP string

	NICModel   string // "virtio-net-pci" (default), "e1000" or "e1000e"
	NICPCIAddr string // optional PCI slot on the root bus, e.g. "0x7" or "0x7.0"
	Net        NetConfig

	// SerialLog receives the first serial port (ttyS0). Start uses a file in
	// its temp dir when empty.
	SerialLog string
	// SerialLogMax bounds SerialLog in bytes (DefaultSerialLogMax, 64 MiB,
	// when 0; there is no "unlimited"). A guest can write gigabytes to its
	// console: when the log passes the limit, Start's watcher stops QEMU
	// and Wait, WaitSerial and friends report "the guest wrote more than N
	// MiB to its serial console" (errors.Is ErrSerialLogMax). The check
	// runs every 200 ms, so the file can pass the limit by what the guest
	// writes in that time. QEMU's own log (stdout/stderr) has the same
	// bound.
	SerialLogMax int64
	// SerialPipe, when set, is the base of two FIFOs the caller made,
	// SerialPipe+".in" and SerialPipe+".out" (QEMU's pipe chardev): the
	// serial console's input and output, for an interactive console (bake
	// run). The output is still logged to SerialLog (the chardev's
	// logfile), bounded and read as without a pipe. The caller opens both
	// FIFOs before Start (read-write, so that no open waits) and must keep
	// reading the output: a full FIFO stalls the guest's console.
	SerialPipe string

	// QMPSocket, when set, is the path of a unix socket QEMU listens on
	// for QMP (Powerdown uses it). The caller picks a path in a directory
	// of its own; QEMU creates the socket there.
	QMPSocket string

	// SeedISO is attached read-only: a virtio disk by default, an IDE
	// CD-ROM with SeedCDROM. Cloud-init finds it by its "cidata" label.
	SeedISO   string
	SeedCDROM bool

	ExtraDrives []Drive

	// Outbound, when set, gives the guest a second NIC on QEMU's
	// user-mode network WITHOUT restrict=on: the guest reaches whatever
	// QEMU's process can (the host's networks and the internet through
	// the host's sockets, the host's loopback as 10.0.2.2), and nothing
	// reaches the guest through it (no host forwards). IPv4 only; DHCP
	// gives 10.0.2.15, router 10.0.2.2, DNS 10.0.2.3. The one exception to
	// the package's rule that user-mode networking is restricted: bake
	// verify --tailnet's way to a control server.
	Outbound *OutboundNIC

	Accel string // AccelAuto (default), AccelKVM or AccelTCG

	UUID     string // optional SMBIOS system UUID
	NoReboot bool   // a guest reboot (or a panic with panic=-1) ends QEMU

	// ExtraArgs are appended verbatim (escape hatch, keep empty normally).
	ExtraArgs []string
}

// NetConfig is the VM's single NIC.
type NetConfig struct {
	Mode string // NetNone (default when empty and no forwards), NetUser or NetTap

	// User mode: ports on the host forwarded to the guest.
	Forwards []Forward

	// Tap mode: the tap device name, and the network namespace it lives in
	// (as root Start opens the tap there and passes it to QEMU, -netdev
	// tap,fd=N; otherwise QEMU is run inside that namespace with `ip netns
	// exec`).
	Tap   string
	Netns string

	MAC string // optional, e.g. "52:54:00:12:34:56"
}

// Forward is a user-mode host forward: HostAddr:HostPort -> guest GuestPort.
type Forward struct {
	Proto     string // "tcp" (default) or "udp"
	HostAddr  string // "127.0.0.1" when empty: never a public address by default
	HostPort  int
	GuestPort int
}

// Drive is an extra disk.
type Drive struct {
	Path      string
	Format    string // "raw" when empty
	Interface string // IfVirtio (default) or IfCDROM
	ReadOnly  bool
	Serial    string // optional virtio serial (/dev/disk/by-id/virtio-SERIAL)
}

var (
	pciAddrRE = regexp.MustCompile(`^(0x[0-9a-fA-F]{1,2}|[0-9]{1,2})(\.[0-7])?$`)
	serialRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)
	uuidRE    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	ifnameRE  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	netnsRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// withDefaults fills in defaults without touching the host (pure).
func (c Config) withDefaults() Config {
	if c.QEMU == "" {
		c.QEMU = DefaultQEMU
	}
	if c.Firmware == "" {
		c.Firmware = BIOS
	}
	if c.Firmware == UEFI && c.OVMFCode == "" {
		c.OVMFCode = DefaultOVMFCode
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.CPUs == 0 {
		c.CPUs = DefaultCPUs
	}
	if c.SerialLogMax == 0 {
		c.SerialLogMax = DefaultSerialLogMax
	}
	if c.NICModel == "" || c.NICModel == "virtio" {
		c.NICModel = DefaultNICModel
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.Net.Mode == "" {
		switch {
		case len(c.Net.Forwards) > 0:
			c.Net.Mode = NetUser
		case c.Net.Tap != "":
			c.Net.Mode = NetTap
		default:
			c.Net.Mode = NetNone
		}
	}
	return c
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Cmdline returns the full argv (program first) that runs c. It is pure:
// it reads no file and probes nothing, so the same Config always gives the
// same arguments. With Net.Netns set, argv starts with `ip netns exec NS`
// (not with RunAs: the tap is then a descriptor).
// AccelAuto becomes "-accel kvm -accel tcg" (QEMU falls back by itself);
// Start resolves it to one accelerator before calling Cmdline. Every
// command line has "-sandbox "+Sandbox (see Sandbox).
func Cmdline(c Config) ([]string, error) {
	c = c.withDefaults()
	var a []string
	add := func(s ...string) { a = append(a, s...) }

	if c.Disk == "" && c.Kernel == "" {
		return nil, fmt.Errorf("vm: neither Disk nor Kernel set: nothing to boot")
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Append != "") {
		return nil, fmt.Errorf("vm: Initrd/Append need Kernel")
	}
	if c.MemoryMiB < 64 {
		return nil, fmt.Errorf("vm: MemoryMiB %d too small", c.MemoryMiB)
	}
	if c.CPUs < 1 || c.CPUs > 64 {
		return nil, fmt.Errorf("vm: CPUs %d out of range", c.CPUs)
	}
	if c.SerialLogMax < 0 {
		return nil, fmt.Errorf("vm: SerialLogMax %d is negative (0 means the default, %d MiB)", c.SerialLogMax, DefaultSerialLogMax>>20)
	}
	for _, x := range c.ExtraArgs {
		for _, o := range []string{"sandbox", "runas", "chroot"} {
			if x == "-"+o || x == "--"+o || strings.HasPrefix(x, "-"+o+"=") || strings.HasPrefix(x, "--"+o+"=") {
				return nil, fmt.Errorf("vm: ExtraArgs may not set %s: bake sets QEMU's confinement (-sandbox, -runas) itself", x)
			}
		}
	}
	if c.RunAs != "" && !runAsRE.MatchString(c.RunAs) {
		return nil, fmt.Errorf("vm: RunAs %q is not an account name", c.RunAs)
	}
	if c.RunAs != "" && c.QMPSocket == "" {
		return nil, fmt.Errorf("vm: RunAs needs QMPSocket: QEMU starts paused and is resumed through it (Start sets one)")
	}
	if c.RunAs != "" && c.fds == nil {
		return nil, fmt.Errorf("vm: RunAs needs Start: QEMU then opens no file of bake's by its name, Start passes descriptors")
	}
	// file is how QEMU is told of a file: its path, or the descriptor set
	// Start put it in.
	file := func(p string) (string, error) {
		if c.fds == nil {
			return p, nil
		}
		return c.fds.setPath(p)
	}

	if c.Net.Mode == NetTap && c.Net.Netns != "" && c.fds != nil {
		// The tap device is opened by Start inside the namespace and
		// passed as a descriptor: QEMU needs no namespace of its own.
		if !netnsRE.MatchString(c.Net.Netns) {
			return nil, fmt.Errorf("vm: bad netns name %q", c.Net.Netns)
		}
	} else if c.Net.Mode == NetTap && c.Net.Netns != "" {
		if !netnsRE.MatchString(c.Net.Netns) {
			return nil, fmt.Errorf("vm: bad netns name %q", c.Net.Netns)
		}
		add("ip", "netns", "exec", c.Net.Netns)
	} else if c.Net.Netns != "" {
		return nil, fmt.Errorf("vm: Net.Netns needs Net.Mode %q", NetTap)
	}
	add(c.QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-sandbox", Sandbox)
	if c.RunAs != "" {
		// Paused (-S): Start lets the guest run (QMP cont) once it has
		// seen QEMU unprivileged and confined.
		add("-S")
	}
	if c.fds != nil {
		for _, x := range c.fds.addFD {
			add("-add-fd", x)
		}
	}

	add("-machine", "q35")
	switch c.Accel {
	case AccelKVM:
		add("-accel", "kvm", "-cpu", "host")
	case AccelTCG:
		add("-accel", "tcg", "-cpu", TCGCPU)
	case AccelAuto:
		add("-accel", "kvm", "-accel", "tcg", "-cpu", "max")
	default:
		return nil, fmt.Errorf("vm: unknown Accel %q (want auto, kvm or tcg)", c.Accel)
	}
	add("-smp", strconv.Itoa(c.CPUs), "-m", strconv.Itoa(c.MemoryMiB))
	if c.UUID != "" {
		if !uuidRE.MatchString(c.UUID) {
			return nil, fmt.Errorf("vm: bad UUID %q", c.UUID)
		}
		add("-uuid", c.UUID)
	}

	switch c.Firmware {
	case BIOS:
	case UEFI:
		if c.OVMFVars == "" {
			return nil, fmt.Errorf("vm: UEFI needs OVMFVars (a writable copy; Start makes one)")
		}
		code, err := file(c.OVMFCode)
		if err != nil {
			return nil, err
		}
		vars, err := file(c.OVMFVars)
		if err != nil {
			return nil, err
		}
		add("-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuEscape(code),
			"-drive", "if=pflash,format=raw,unit=1,file="+qemuEscape(vars))
	default:
		return nil, fmt.Errorf("vm: unknown Firmware %q (want bios or uefi)", c.Firmware)
	}

	if c.Kernel != "" {
		k, err := c.fds.procPath(c.Kernel)
		if err != nil {
			return nil, err
		}
		add("-kernel", k)
		if c.Initrd != "" {
			i, err := c.fds.procPath(c.Initrd)
			if err != nil {
				return nil, err
			}
			add("-initrd", i)
		}
		if c.Append != "" {
			add("-append", c.Append)
		}
	}

	if c.Disk != "" && c.fds != nil {
		if c.DiskFormat == "" {
			return nil, fmt.Errorf("vm: Disk %s has no DiskFormat (Start sets it)", c.Disk)
		}
		f, err := file(c.Disk)
		if err != nil {
			return nil, err
		}
		var backing *blockNode
		if c.backing != "" {
			bf, err := file(c.backing)
			if err != nil {
				return nil, err
			}
			backing = &blockNode{name: "disk0-base", file: bf, format: c.backingFormat, readOnly: true}
		}
		nodes, err := blockdevArgs(blockNode{name: "disk0", file: f, format: c.DiskFormat, backing: backing})
		if err != nil {
			return nil, err
		}
		add(nodes...)
		add("-device", "virtio-blk-pci,drive=disk0,bootindex=1")
	} else if c.Disk != "" {
		d := "if=none,id=disk0,file=" + qemuEscape(c.Disk)
		if c.DiskFormat != "" {
			d += ",format=" + c.DiskFormat
		}
		if c.Snapshot {
			d += ",snapshot=on"
		}
		add("-drive", d, "-device", "virtio-blk-pci,drive=disk0,bootindex=1")
	}

	drives := c.ExtraDrives
	if c.SeedISO != "" {
		iface := IfVirtio
		if c.SeedCDROM {
			iface = IfCDROM
		}
		drives = append([]Drive{{Path: c.SeedISO, Format: "raw", Interface: iface, ReadOnly: true}}, drives...)
	}
	for i, d := range drives {
		if d.Path == "" {
			return nil, fmt.Errorf("vm: drive %d has no Path", i)
		}
		id := "drive" + strconv.Itoa(i+1)
		if d.Format == "" {
			d.Format = "raw"
		}
		ro := d.ReadOnly || d.Interface == IfCDROM
		var spec []string
		if c.fds != nil {
			f, err := file(d.Path)
			if err != nil {
				return nil, err
			}
			if spec, err = blockdevArgs(blockNode{name: id, file: f, format: d.Format, readOnly: ro}); err != nil {
				return nil, err
			}
		} else {
			s := "if=none,id=" + id + ",file=" + qemuEscape(d.Path) + ",format=" + d.Format
			if ro {
				s += ",readonly=on"
			}
			spec = []string{"-drive", s}
		}
		var dev string
		switch d.Interface {
		case "", IfVirtio:
			dev = "virtio-blk-pci,drive=" + id
			if d.Serial != "" {
				if !serialRE.MatchString(d.Serial) {
					return nil, fmt.Errorf("vm: bad drive serial %q", d.Serial)
				}
				dev += ",serial=" + d.Serial
			}
		case IfCDROM:
			dev = "ide-cd,drive=" + id
		default:
			return nil, fmt.Errorf("vm: unknown drive interface %q", d.Interface)
		}
		add(spec...)
		add("-device", dev)
	}

	add("-device", "virtio-rng-pci")

	nic, err := nicArgs(c)
	if err != nil {
		return nil, err
	}
	add(nic...)

	serialLog := c.SerialLog
	if serialLog != "" {
		if serialLog, err = file(serialLog); err != nil {
			return nil, err
		}
	}
	switch {
	case c.SerialPipe != "" && c.SerialLog == "":
		return nil, fmt.Errorf("vm: SerialPipe needs SerialLog (Start sets one)")
	case c.SerialPipe != "" && c.fds != nil:
		// The console: one end of a socket pair, the other end Start's
		// relay to the caller's FIFOs (QEMU's pipe chardev opens them
		// by name).
		if c.fds.serial == 0 {
			return nil, fmt.Errorf("vm: no descriptor for the console %s", c.SerialPipe)
		}
		add("-chardev", "socket,id=serial0,fd="+strconv.Itoa(c.fds.serial)+",logfile="+qemuEscape(serialLog), "-serial", "chardev:serial0")
	case c.SerialLog != "" && c.fds != nil:
		add("-chardev", "file,id=serial0,path="+qemuEscape(serialLog), "-serial", "chardev:serial0")
	case c.SerialPipe != "":
		add("-chardev", "pipe,id=serial0,path="+qemuEscape(c.SerialPipe)+",logfile="+qemuEscape(c.SerialLog), "-serial", "chardev:serial0")
	case c.SerialLog != "":
		add("-chardev", "file,id=serial0,path="+qemuEscape(c.SerialLog), "-serial", "chardev:serial0")
	}
	switch {
	case c.QMPSocket != "" && c.fds != nil:
		// A socket Start created and listens on: QEMU accepts on it.
		if c.fds.qmp == 0 {
			return nil, fmt.Errorf("vm: no descriptor for the QMP socket %s", c.QMPSocket)
		}
		add("-chardev", "socket,id=qmp,fd="+strconv.Itoa(c.fds.qmp)+",server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	case c.QMPSocket != "":
		add("-qmp", "unix:"+qemuEscape(c.QMPSocket)+",server=on,wait=off")
	}
	if c.NoReboot {
		add("-no-reboot")
	}
	if c.fds == nil {
		add(c.ExtraArgs...)
		return a, nil
	}
	// SMBIOS credential files (-smbios type=11,path=FILE, 0600 root's):
	// QEMU reads the copy Start made for it.
	for i := 0; i < len(c.ExtraArgs); i++ {
		x := c.ExtraArgs[i]
		if (x == "-smbios" || x == "--smbios") && i+1 < len(c.ExtraArgs) {
			if p, ok := smbiosPath(c.ExtraArgs[i+1]); ok {
				pp, err := c.fds.procPath(p)
				if err != nil {
					return nil, err
				}
				add(x, replaceSMBIOSPath(c.ExtraArgs[i+1], pp))
				i++
				continue
			}
		}
		add(x)
	}
	return a, nil
}

// OutboundNIC is Config.Outbound.
type OutboundNIC struct {
	MAC string // e.g. "52:54:00:12:34:57"; required (it must differ from Net.MAC)
}

func outboundArgs(c Config) ([]string, error) {
	o := c.Outbound
	if o == nil {
		return nil, nil
	}
	hw, err := net.ParseMAC(o.MAC)
	if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
		return nil, fmt.Errorf("vm: bad Outbound.MAC %q", o.MAC)
	}
	if m, err := net.ParseMAC(c.Net.MAC); err == nil && m.String() == hw.String() {
		return nil, fmt.Errorf("vm: Outbound.MAC %s is Net.MAC too", o.MAC)
	}
	return []string{"-netdev", "user,id=net1,ipv4=on,ipv6=off", "-device", c.NICModel + ",netdev=net1,mac=" + hw.String()}, nil
}

func nicArgs(c Config) ([]string, error) {
	nic, err := nicArgs0(c)
	if err != nil {
		return nil, err
	}
	out, err := outboundArgs(c)
	if err != nil {
		return nil, err
	}
	return append(nic, out...), nil
}

func nicArgs0(c Config) ([]string, error) {
	n := c.Net
	if n.Mode != NetUser && len(n.Forwards) > 0 {
		return nil, fmt.Errorf("vm: host forwards need user-mode networking, not %q", n.Mode)
	}
	var netdev string
	switch n.Mode {
	case NetNone:
		if n.Tap != "" || n.MAC != "" {
			return nil, fmt.Errorf("vm: Net.Mode none with NIC settings")
		}
		return []string{"-nic", "none"}, nil
	case NetUser:
		netdev = "user,id=net0,restrict=on"
		for _, f := range n.Forwards {
			s, err := f.hostfwd()
			if err != nil {
				return nil, err
			}
			netdev += ",hostfwd=" + s
		}
	case NetTap:
		if !ifnameRE.MatchString(n.Tap) {
			return nil, fmt.Errorf("vm: tap mode needs a valid Net.Tap device name, got %q", n.Tap)
		}
		if c.fds != nil {
			if c.fds.tap == 0 {
				return nil, fmt.Errorf("vm: no descriptor for the tap device %s", n.Tap)
			}
			netdev = "tap,id=net0,fd=" + strconv.Itoa(c.fds.tap)
		} else {
			netdev = "tap,id=net0,ifname=" + n.Tap + ",script=no,downscript=no"
		}
	default:
		return nil, fmt.Errorf("vm: unknown Net.Mode %q", n.Mode)
	}
	switch c.NICModel {
	case "virtio-net-pci", "e1000", "e1000e":
	default:
		return nil, fmt.Errorf("vm: unsupported NICModel %q (virtio-net-pci, e1000, e1000e)", c.NICModel)
	}
	dev := c.NICModel + ",netdev=net0"
	if n.MAC != "" {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("vm: bad MAC %q", n.MAC)
		}
		if hw[0]&1 != 0 {
			return nil, fmt.Errorf("vm: MAC %q is multicast", n.MAC)
		}
		dev += ",mac=" + hw.String()
	}
	if c.NICPCIAddr != "" {
		if !pciAddrRE.MatchString(c.NICPCIAddr) {
			return nil, fmt.Errorf("vm: bad NICPCIAddr %q (want e.g. 0x7 or 0x7.0)", c.NICPCIAddr)
		}
		dev += ",addr=" + c.NICPCIAddr
	}
	return []string{"-netdev", netdev, "-device", dev}, nil
}

func (f Forward) hostfwd() (string, error) {
	proto := f.Proto
	if proto == "" {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return "", fmt.Errorf("vm: forward protocol %q (want tcp or udp)", f.Proto)
	}
	addr := f.HostAddr
	if addr == "" {
		addr = "127.0.0.1"
	}
	if ip := net.ParseIP(addr); ip == nil || ip.To4() == nil {
		// slirp's hostfwd takes an IPv4 host address only.
		return "", fmt.Errorf("vm: forward host address %q is not IPv4", addr)
	}
	if f.HostPort < 1 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 {
		return "", fmt.Errorf("vm: forward ports %d->%d out of range", f.HostPort, f.GuestPort)
	}
	return fmt.Sprintf("%s:%s:%d-:%d", proto, addr, f.HostPort, f.GuestPort), nil
}
