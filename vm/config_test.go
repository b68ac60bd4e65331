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
			want: base + " -accel tcg -cpu max -smp 2 -m 2048" +
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
			want: base + " -accel tcg -cpu max -smp 1 -m 1024" +
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
				" -machine q35 -accel tcg -cpu max -smp 1 -m 1024" +
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
