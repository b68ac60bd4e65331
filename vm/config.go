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
// command line; Start refuses to go on unless the running QEMU has the
// filter in force); as root, Start has QEMU give root up (-runas
// DefaultRunAs) before the guest runs, under an init of its own in a new
// PID namespace that keeps the parent-death signal (pidns.go); and
// everything read back from the guest is bounded:
// the serial log may grow to Config.SerialLogMax before Start's watcher
// stops the VM, and no reader of it (Serial, WaitSerial, the tails in
// errors, ReadTail) holds more than a fixed window of it in memory.
package vm

import (
	"fmt"
	"net"
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
// spawn a shell, regain privileges or reach syscalls QEMU never makes.
//
// It fails closed. Cmdline has no way to leave it out, and refuses
// ExtraArgs that name -sandbox (a later "-sandbox off" would merge with and
// override it). A QEMU built without seccomp (or on a kernel without it)
// refuses the option and exits at once, which Start reports as a QEMU that
// cannot confine itself; and Start does not return a VM until the running
// QEMU process has a seccomp filter of its own in force (more filters in
// /proc/PID/status than bake's own), so a binary that accepts the option
// and ignores it (a wrapper, a patched build) is stopped and refused too.
// There is no switch to run a guest unconfined.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// SandboxRunAs is Sandbox for a QEMU that drops root itself (Config.RunAs,
// -runas): the same filter, but set*uid/set*gid allowed, since QEMU's own
// drop is such a call and its filter is in force before it (QEMU 7.2 kills
// itself with "Bad system call" otherwise). Once dropped, QEMU has no
// capability left and no_new_privs set (Start checks both), so those calls
// can no longer gain anything: a guest that escapes into QEMU finds an
// unprivileged process, which "elevateprivileges=deny" as root never gave.
const SandboxRunAs = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"

// Config describes one VM. The zero value of most fields means the default.
type Config struct {
	QEMU string // binary; DefaultQEMU when empty
	// RunAs is the account QEMU runs as once it has opened its disks,
	// devices, sockets and logs, before the guest runs (-runas; needs
	// root). Start sets DefaultRunAs when bake runs as root; "" keeps
	// bake's own (non-root) user. With RunAs, Cmdline starts QEMU paused
	// (-S) and needs QMPSocket (Start sets one): Start resumes the guest
	// once QEMU has given root up.
	RunAs string
	// keepUser: Start leaves RunAs empty even as root. Only this
	// package's tests set it: their stand-in for QEMU is a script that
	// cannot give root up the way QEMU does (it opens its files later).
	keepUser bool

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
	// (QEMU is then run inside that namespace with `ip netns exec`).
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
// same arguments. With Net.Netns set, argv starts with `ip netns exec NS`.
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

	if c.Net.Mode == NetTap && c.Net.Netns != "" {
		if !netnsRE.MatchString(c.Net.Netns) {
			return nil, fmt.Errorf("vm: bad netns name %q", c.Net.Netns)
		}
		add("ip", "netns", "exec", c.Net.Netns)
	} else if c.Net.Netns != "" {
		return nil, fmt.Errorf("vm: Net.Netns needs Net.Mode %q", NetTap)
	}
	if c.RunAs != "" {
		// Paused (-S): QEMU switches to c.RunAs at the end of its setup,
		// after it has started the vCPUs; Start lets the guest run (QMP
		// cont) once it sees the switch done.
		add(c.QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-sandbox", SandboxRunAs, "-runas", c.RunAs, "-S")
	} else {
		add(c.QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-sandbox", Sandbox)
	}

	add("-machine", "q35")
	switch c.Accel {
	case AccelKVM:
		add("-accel", "kvm", "-cpu", "host")
	case AccelTCG:
		add("-accel", "tcg", "-cpu", "max")
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
		add("-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuEscape(c.OVMFCode),
			"-drive", "if=pflash,format=raw,unit=1,file="+qemuEscape(c.OVMFVars))
	default:
		return nil, fmt.Errorf("vm: unknown Firmware %q (want bios or uefi)", c.Firmware)
	}

	if c.Kernel != "" {
		add("-kernel", c.Kernel)
		if c.Initrd != "" {
			add("-initrd", c.Initrd)
		}
		if c.Append != "" {
			add("-append", c.Append)
		}
	}

	if c.Disk != "" {
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
		spec := "if=none,id=" + id + ",file=" + qemuEscape(d.Path) + ",format=" + d.Format
		if d.ReadOnly || d.Interface == IfCDROM {
			spec += ",readonly=on"
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
		add("-drive", spec, "-device", dev)
	}

	add("-device", "virtio-rng-pci")

	nic, err := nicArgs(c)
	if err != nil {
		return nil, err
	}
	add(nic...)

	switch {
	case c.SerialPipe != "" && c.SerialLog == "":
		return nil, fmt.Errorf("vm: SerialPipe needs SerialLog (Start sets one)")
	case c.SerialPipe != "":
		add("-chardev", "pipe,id=serial0,path="+qemuEscape(c.SerialPipe)+",logfile="+qemuEscape(c.SerialLog), "-serial", "chardev:serial0")
	case c.SerialLog != "":
		add("-chardev", "file,id=serial0,path="+qemuEscape(c.SerialLog), "-serial", "chardev:serial0")
	}
	if c.QMPSocket != "" {
		add("-qmp", "unix:"+qemuEscape(c.QMPSocket)+",server=on,wait=off")
	}
	if c.NoReboot {
		add("-no-reboot")
	}
	add(c.ExtraArgs...)
	return a, nil
}

func nicArgs(c Config) ([]string, error) {
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
		netdev = "tap,id=net0,ifname=" + n.Tap + ",script=no,downscript=no"
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
