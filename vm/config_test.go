package vm

import (
	"strings"
	"testing"
)

func TestCmdlineGolden(t *testing.T) {
	base := "qemu-system-x86_64 -nodefaults -no-user-config -display none" +
		" -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -machine q35"
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{
			name: "bios user-mode forwards tcg",
			c: Config{
				Disk: "/img/a.qcow2", DiskFormat: "qcow2", Accel: AccelTCG, MemoryMiB: 2048, CPUs: 2,
				Net: NetConfig{Mode: NetUser, Forwards: []Forward{
					{HostPort: 2222, GuestPort: 22},
					{Proto: "udp", HostPort: 41641, GuestPort: 41641},
				}},
				SerialLog: "/tmp/s.log",
			},
			want: base + " -accel tcg -cpu max,-erms,-fsrm,-la57 -smp 2 -m 2048" +
				" -drive if=none,id=disk0,file=/img/a.qcow2,format=qcow2 -device virtio-blk-pci,drive=disk0,bootindex=1" +
				" -device virtio-rng-pci" +
				" -netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:41641-:41641" +
				" -device virtio-net-pci,netdev=net0" +
				" -chardev file,id=serial0,path=/tmp/s.log -serial chardev:serial0",
		},
		{
			name: "uefi kvm snapshot seed e1000 any slot mac",
			c: Config{
				Firmware: UEFI, OVMFVars: "/tmp/vm/VARS.fd", Accel: AccelKVM,
				Disk: "/img/a,b.raw", DiskFormat: "raw", Snapshot: true,
				SeedISO: "/tmp/seed.iso", NICModel: "e1000", NICPCIAddr: "0x7",
				Net:       NetConfig{Forwards: []Forward{{HostAddr: "127.0.0.2", HostPort: 10022, GuestPort: 22}}, MAC: "52:54:00:AB:CD:EF"},
				UUID:      "0b9a5c3e-1f2d-4c5b-8a7e-6d5c4b3a2f10",
				SerialLog: "/tmp/s.log", NoReboot: true,
			},
			want: base + " -accel kvm -cpu host -smp 1 -m 1024 -uuid 0b9a5c3e-1f2d-4c5b-8a7e-6d5c4b3a2f10" +
				" -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd" +
				" -drive if=pflash,format=raw,unit=1,file=/tmp/vm/VARS.fd" +
				" -drive if=none,id=disk0,file=/img/a,,b.raw,format=raw,snapshot=on -device virtio-blk-pci,drive=disk0,bootindex=1" +
				" -drive if=none,id=drive1,file=/tmp/seed.iso,format=raw,readonly=on -device virtio-blk-pci,drive=drive1" +
				" -device virtio-rng-pci" +
				" -netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.2:10022-:22" +
				" -device e1000,netdev=net0,mac=52:54:00:ab:cd:ef,addr=0x7" +
				" -chardev file,id=serial0,path=/tmp/s.log -serial chardev:serial0 -no-reboot",
		},
		{
			name: "tap in netns, seed as cdrom, extra drives, auto accel",
			c: Config{
				Disk: "/img/d.qcow2", DiskFormat: "qcow2", SeedISO: "/s.iso", SeedCDROM: true,
				ExtraDrives: []Drive{{Path: "/data.raw", Serial: "data1"}, {Path: "/x.qcow2", Format: "qcow2", ReadOnly: true}},
				Net:         NetConfig{Tap: "tap0", Netns: "bake-t-1"},
			},
			want: "ip netns exec bake-t-1 " + base + " -accel kvm -accel tcg -cpu max -smp 1 -m 1024" +
				" -drive if=none,id=disk0,file=/img/d.qcow2,format=qcow2 -device virtio-blk-pci,drive=disk0,bootindex=1" +
				" -drive if=none,id=drive1,file=/s.iso,format=raw,readonly=on -device ide-cd,drive=drive1" +
				" -drive if=none,id=drive2,file=/data.raw,format=raw -device virtio-blk-pci,drive=drive2,serial=data1" +
				" -drive if=none,id=drive3,file=/x.qcow2,format=qcow2,readonly=on -device virtio-blk-pci,drive=drive3" +
				" -device virtio-rng-pci" +
				" -netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=net0",
		},
		{
			name: "interactive console pipe and QMP (bake run)",
			c: Config{
				Disk: "/img/a.raw", DiskFormat: "raw", Accel: AccelTCG,
				SerialLog: "/v/serial.log", SerialPipe: "/w/con,sole", QMPSocket: "/w/qmp.sock",
			},
			want: base + " -accel tcg -cpu max,-erms,-fsrm,-la57 -smp 1 -m 1024" +
				" -drive if=none,id=disk0,file=/img/a.raw,format=raw -device virtio-blk-pci,drive=disk0,bootindex=1" +
				" -device virtio-rng-pci -nic none" +
				" -chardev pipe,id=serial0,path=/w/con,,sole,logfile=/v/serial.log -serial chardev:serial0" +
				" -qmp unix:/w/qmp.sock,server=on,wait=off",
		},
		{
			name: "direct kernel boot, no net",
			c: Config{
				QEMU: "/opt/qemu", Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Append: "console=ttyS0 panic=-1",
				Accel: AccelTCG, SerialLog: "/s", NoReboot: true,
			},
			want: "/opt/qemu -nodefaults -no-user-config -display none" +
				" -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" +
				" -machine q35 -accel tcg -cpu max,-erms,-fsrm,-la57 -smp 1 -m 1024" +
				" -kernel /k/vmlinuz -initrd /k/initrd -append console=ttyS0 panic=-1" +
				" -device virtio-rng-pci -nic none -chardev file,id=serial0,path=/s -serial chardev:serial0 -no-reboot",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Cmdline(tc.c)
			if err != nil {
				t.Fatal(err)
			}
			// The kernel command line is one argument even with spaces.
			if tc.c.Append != "" {
				found := false
				for _, a := range got {
					found = found || a == tc.c.Append
				}
				if !found {
					t.Errorf("-append value not a single argument: %q", got)
				}
			}
			if s := strings.Join(got, " "); s != tc.want {
				t.Errorf("Cmdline mismatch\n got: %s\nwant: %s", s, tc.want)
			}
			// Pure: same input, same output.
			again, _ := Cmdline(tc.c)
			if strings.Join(again, " ") != strings.Join(got, " ") {
				t.Error("Cmdline not deterministic")
			}
		})
	}
}

func TestCmdlineErrors(t *testing.T) {
	ok := Config{Disk: "/d", DiskFormat: "raw"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"nothing to boot", func(c *Config) { c.Disk = "" }, "nothing to boot"},
		{"append without kernel", func(c *Config) { c.Append = "x" }, "need Kernel"},
		{"bad firmware", func(c *Config) { c.Firmware = "coreboot" }, "Firmware"},
		{"uefi without vars", func(c *Config) { c.Firmware = UEFI }, "OVMFVars"},
		{"bad accel", func(c *Config) { c.Accel = "hvf" }, "Accel"},
		{"forward in tap mode", func(c *Config) {
			c.Net = NetConfig{Mode: NetTap, Tap: "tap0", Forwards: []Forward{{HostPort: 1, GuestPort: 22}}}
		}, "user-mode"},
		{"public forward address is fine but v6 is not", func(c *Config) {
			c.Net.Forwards = []Forward{{HostAddr: "::1", HostPort: 2, GuestPort: 22}}
		}, "not IPv4"},
		{"port range", func(c *Config) { c.Net.Forwards = []Forward{{HostPort: 70000, GuestPort: 22}} }, "out of range"},
		{"proto", func(c *Config) { c.Net.Forwards = []Forward{{Proto: "sctp", HostPort: 1, GuestPort: 1}} }, "protocol"},
		{"tap without name", func(c *Config) { c.Net.Mode = NetTap }, "Net.Tap"},
		{"tap name injection", func(c *Config) { c.Net = NetConfig{Tap: "tap0,script=/x"} }, "Net.Tap"},
		{"netns without tap", func(c *Config) { c.Net.Netns = "x" }, "Netns"},
		{"netns bad", func(c *Config) { c.Net = NetConfig{Tap: "t", Netns: "a b"} }, "netns"},
		{"nic model", func(c *Config) { c.NICModel = "ne2k_pci"; c.Net.Forwards = []Forward{{HostPort: 1, GuestPort: 1}} }, "NICModel"},
		{"pci addr", func(c *Config) { c.NICPCIAddr = "7,x=1"; c.Net.Forwards = []Forward{{HostPort: 1, GuestPort: 1}} }, "NICPCIAddr"},
		{"mac", func(c *Config) { c.Net = NetConfig{Tap: "t", MAC: "01:00:00:00:00:01"} }, "multicast"},
		{"memory", func(c *Config) { c.MemoryMiB = 16 }, "MemoryMiB"},
		{"drive iface", func(c *Config) { c.ExtraDrives = []Drive{{Path: "/x", Interface: "floppy"}} }, "interface"},
		{"drive path", func(c *Config) { c.ExtraDrives = []Drive{{}} }, "no Path"},
		{"uuid", func(c *Config) { c.UUID = "nope" }, "UUID"},
		{"pipe without log", func(c *Config) { c.SerialPipe = "/w/console" }, "SerialPipe needs SerialLog"},
		{"sandbox off in ExtraArgs", func(c *Config) { c.ExtraArgs = []string{"-sandbox", "off"} }, "may not set -sandbox"},
		{"--sandbox in ExtraArgs", func(c *Config) { c.ExtraArgs = []string{"--sandbox", "on"} }, "may not set --sandbox"},
		{"negative serial limit", func(c *Config) { c.SerialLogMax = -1 }, "SerialLogMax"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			_, err := Cmdline(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil || p <= 0 || p > 65535 {
		t.Fatalf("FreePort = %d, %v", p, err)
	}
}

// Every command line is confined, whatever the Config: there is no field
// that leaves -sandbox out.
func TestCmdlineAlwaysSandboxed(t *testing.T) {
	for _, c := range []Config{
		{Disk: "/d", DiskFormat: "raw"},
		{Kernel: "/k", Accel: AccelKVM, Firmware: UEFI, OVMFVars: "/v"},
		{Disk: "/d", Net: NetConfig{Tap: "tap0", Netns: "ns"}, ExtraArgs: []string{"-S"}},
	} {
		got, err := Cmdline(c)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for i, a := range got {
			if a == "-sandbox" {
				n++
				if i+1 >= len(got) || got[i+1] != Sandbox {
					t.Errorf("-sandbox value in %q", got)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d -sandbox options in %q, want 1", n, got)
		}
	}
	if Sandbox != "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" {
		t.Errorf("Sandbox = %q", Sandbox)
	}
}

// As root (RunAs) QEMU opens nothing of bake's by name: every file is a
// descriptor Start opened (files.go), disks are -blockdev nodes with their
// backing chain spelled out (the disk under the Snapshot overlay from a
// read-only descriptor of its own, no backing file for any other qcow2),
// the tap and the QMP socket are descriptors, the console a socket, and
// files QEMU reads whole (kernel, SMBIOS credentials) memfd copies.
func TestCmdlineDescriptors(t *testing.T) {
	p := newFDPlan(995, 995)
	for path, id := range map[string]int{
		"/usr/share/OVMF/OVMF_CODE_4M.fd": 1, "/t/VARS.fd": 2, "/t/overlay.qcow2": 3, "/img/a,b.raw": 4,
		"/t/seed.iso": 5, "/data.qcow2": 6, "/t/serial.log": 7,
	} {
		p.set[path] = id
	}
	p.addFD = []string{"fd=4,set=1", "fd=5,set=2", "fd=6,set=2"}
	p.proc["/k/vmlinuz"], p.proc["/run/cred,0"] = 8, 9
	p.tap, p.qmp, p.serial = 10, 11, 12
	c := Config{
		RunAs: "bake-qemu", fds: p, Firmware: UEFI, OVMFVars: "/t/VARS.fd", Accel: AccelTCG,
		Disk: "/t/overlay.qcow2", DiskFormat: "qcow2", backing: "/img/a,b.raw", backingFormat: "raw",
		SeedISO: "/t/seed.iso", SeedCDROM: true, ExtraDrives: []Drive{{Path: "/data.qcow2", Format: "qcow2", Serial: "s1"}},
		Net:       NetConfig{Tap: "tap0", Netns: "bake-t-1"},
		SerialLog: "/t/serial.log", SerialPipe: "/w/console", QMPSocket: "/t/qmp.sock",
		ExtraArgs: []string{"-smbios", "type=11,path=/run/cred,,0"},
	}
	got, err := Cmdline(c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny", "-S",
		"-add-fd", "fd=4,set=1", "-add-fd", "fd=5,set=2", "-add-fd", "fd=6,set=2",
		"-machine", "q35", "-accel", "tcg", "-cpu", TCGCPU, "-smp", "1", "-m", "1024",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/dev/fdset/1",
		"-drive", "if=pflash,format=raw,unit=1,file=/dev/fdset/2",
		"-blockdev", `{"driver":"file","filename":"/dev/fdset/4","node-name":"disk0-base-file","read-only":true}`,
		"-blockdev", `{"driver":"raw","file":"disk0-base-file","node-name":"disk0-base","read-only":true}`,
		"-blockdev", `{"driver":"file","filename":"/dev/fdset/3","node-name":"disk0-file","read-only":false}`,
		"-blockdev", `{"backing":"disk0-base","driver":"qcow2","file":"disk0-file","node-name":"disk0","read-only":false}`,
		"-device", "virtio-blk-pci,drive=disk0,bootindex=1",
		"-blockdev", `{"driver":"file","filename":"/dev/fdset/5","node-name":"drive1-file","read-only":true}`,
		"-blockdev", `{"driver":"raw","file":"drive1-file","node-name":"drive1","read-only":true}`,
		"-device", "ide-cd,drive=drive1",
		"-blockdev", `{"driver":"file","filename":"/dev/fdset/6","node-name":"drive2-file","read-only":false}`,
		"-blockdev", `{"backing":null,"driver":"qcow2","file":"drive2-file","node-name":"drive2","read-only":false}`,
		"-device", "virtio-blk-pci,drive=drive2,serial=s1",
		"-device", "virtio-rng-pci",
		"-netdev", "tap,id=net0,fd=10", "-device", "virtio-net-pci,netdev=net0",
		"-chardev", "socket,id=serial0,fd=12,logfile=/dev/fdset/7", "-serial", "chardev:serial0",
		"-chardev", "socket,id=qmp,fd=11,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		"-smbios", "type=11,path=/proc/self/fd/9",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Cmdline\n got: %q\nwant: %q", got, want)
	}

	// Direct kernel boot, plain serial log, no tap: the kernel from its
	// copy, the log from its set.
	k := Config{RunAs: "bake-qemu", fds: p, Kernel: "/k/vmlinuz", Accel: AccelTCG, SerialLog: "/t/serial.log", QMPSocket: "/t/qmp.sock"}
	got, err = Cmdline(k)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(got, " "); !strings.Contains(s, " -kernel /proc/self/fd/8 ") || !strings.Contains(s, " -chardev file,id=serial0,path=/dev/fdset/7 ") {
		t.Errorf("kernel boot: %s", s)
	}

	// A file Start did not open is an error, never a path QEMU opens.
	for name, mod := range map[string]func(*Config){
		"disk":   func(c *Config) { c.Disk = "/other.raw" },
		"vars":   func(c *Config) { c.OVMFVars = "/other.fd" },
		"drive":  func(c *Config) { c.ExtraDrives[0].Path = "/other.raw" },
		"smbios": func(c *Config) { c.ExtraArgs = []string{"-smbios", "type=11,path=/other"} },
		"kernel": func(c *Config) { c.Disk, c.Kernel = "", "/other" },
	} {
		d := c
		d.ExtraDrives = append([]Drive(nil), c.ExtraDrives...)
		mod(&d)
		if _, err := Cmdline(d); err == nil || !strings.Contains(err.Error(), "no descriptor") {
			t.Errorf("%s: %v, want no descriptor", name, err)
		}
	}
}

func TestSMBIOSPath(t *testing.T) {
	for _, tc := range []struct{ in, path, out string }{
		{"type=11,path=/a,,b", "/a,b", "type=11,path=/N"},
		{"file=/x", "/x", "file=/N"},
		{"type=11,value=io.systemd.credential:x=y", "", ""},
	} {
		p, ok := smbiosPath(tc.in)
		if p != tc.path || ok != (tc.path != "") {
			t.Errorf("smbiosPath(%q) = %q %v", tc.in, p, ok)
		}
		if ok {
			if got := replaceSMBIOSPath(tc.in, "/N"); got != tc.out {
				t.Errorf("replaceSMBIOSPath(%q) = %q, want %q", tc.in, got, tc.out)
			}
		}
	}
}

// TestCmdlineOutbound: Config.Outbound adds a second NIC on an
// unrestricted user-mode network (IPv4 only, no forwards) after the main
// one, which keeps restrict=on; a bad or shared MAC is refused.
func TestCmdlineOutbound(t *testing.T) {
	c := Config{Disk: "/img/a.qcow2", DiskFormat: "qcow2", Accel: AccelTCG,
		Net:      NetConfig{Mode: NetUser, MAC: "52:54:00:be:01:01", Forwards: []Forward{{HostPort: 2222, GuestPort: 22}}},
		Outbound: &OutboundNIC{MAC: "52:54:00:be:81:01"}}
	got, err := Cmdline(c)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(got, " ")
	want := "-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22 -device virtio-net-pci,netdev=net0,mac=52:54:00:be:01:01" +
		" -netdev user,id=net1,ipv4=on,ipv6=off -device virtio-net-pci,netdev=net1,mac=52:54:00:be:81:01"
	if !strings.Contains(s, want) {
		t.Errorf("command line:\n%s\nlacks\n%s", s, want)
	}
	for _, mac := range []string{"52:54:00:be:01:01", "01:00:5e:00:00:01", "x"} {
		c.Outbound.MAC = mac
		if _, err := Cmdline(c); err == nil {
			t.Errorf("Outbound.MAC %q accepted", mac)
		}
	}
}

func TestThpDisabled(t *testing.T) {
	for _, c := range []struct {
		accel, thp, env string
		off             bool
	}{
		{AccelTCG, THPAuto, "", true},
		{AccelKVM, THPAuto, "", false},
		{AccelTCG, THPOn, "", false},
		{AccelKVM, THPOff, "", true},
		{AccelTCG, THPAuto, "on", false},
		{AccelKVM, THPAuto, "off", true},
		{AccelTCG, THPOn, "off", false}, // the Config's own choice wins
		{AccelTCG, THPAuto, "bogus", true},
	} {
		t.Setenv("BAKE_VM_THP", c.env)
		if got := thpDisabled(Config{Accel: c.accel, HostTHP: c.thp}); got != c.off {
			t.Errorf("accel %s, HostTHP %q, BAKE_VM_THP %q: off %v, want %v", c.accel, c.thp, c.env, got, c.off)
		}
	}
}
