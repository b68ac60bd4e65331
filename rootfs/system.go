package rootfs

import (
	"context"
	"fmt"

	"github.com/bakeimg/bake/internal/safepath"
)

// Systemd enables, disables and masks units with the tree's own systemctl
// in the chroot. systemctl sees it runs in a chroot with no systemd and
// only edits the symlinks in /etc/systemd/system, offline, so no daemon is
// involved and unit files installed by packages in the tree are found.
// A unit that does not exist makes it fail.
func Systemd(ctx context.Context, ch *Chroot, enable, disable, mask []string) error {
	for _, op := range []struct {
		verb  string
		units []string
	}{{"enable", enable}, {"disable", disable}, {"mask", mask}} {
		if len(op.units) == 0 {
			continue
		}
		if err := ch.Run(ctx, append([]string{"systemctl", op.verb, "--"}, op.units...)...); err != nil {
			return fmt.Errorf("systemctl %s: %w", op.verb, err)
		}
	}
	return nil
}

// BasePackages are the packages BaseSystem needs; the builder adds them to
// the bootstrap's --include (one apt run). They make a machine that boots
// with systemd, configures any NIC by DHCP/RA with systemd-networkd, resolves
// with systemd-resolved, keeps time with systemd-timesyncd and grows its
// root at first boot (growpart from cloud-guest-utils, which pulls in
// python3 for its other tools; sfdisk from fdisk; resize2fs from e2fsprogs).
// No ifupdown: networkd is the one network manager.
func BasePackages() []string {
	return []string{
		"systemd", "systemd-sysv", "udev", "dbus",
		"systemd-resolved", "libnss-resolve", "libnss-myhostname",
		"systemd-timesyncd",
		"iproute2", "netbase", "ca-certificates",
		"e2fsprogs", "fdisk", "cloud-guest-utils",
	}
}

// Files written by BaseSystem, exported for the checks that verify them.
const (
	NetworkFile       = "/etc/systemd/network/80-bake-ether.network"
	NetworkdConfFile  = "/etc/systemd/networkd.conf.d/80-bake.conf"
	WaitOnlineDropIn  = "/etc/systemd/system/systemd-networkd-wait-online.service.d/80-bake-any.conf"
	ResolvedConfFile  = "/etc/systemd/resolved.conf.d/80-bake.conf"
	GrowrootScript    = "/usr/lib/bake/growroot"
	GrowrootUnit      = "/etc/systemd/system/bake-growroot.service"
	GrowrootUnitName  = "bake-growroot.service"
	ResolvedStubLink  = "../run/systemd/resolve/stub-resolv.conf"
	defaultHostsFile  = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
	defaultHostname   = "localhost\n"
	baseSystemMessage = "# Written by bake (rootfs.BaseSystem).\n"
)

// networkFile matches every physical Ethernet NIC whatever its name: an
// image boots on hosts where the NIC is ens3, ens5, eth0 or enp1s0.
//
// Type=ether alone also matches veth pairs (Docker's container ends), tap,
// macvlan and vxlan links; those have a netdev kind and physical NICs have
// none, hence Kind=!*. Bridges (docker0, br-*) are Type=bridge. The name
// exclusions are a second fence for the same links. DHCP=yes asks for v4
// (and v6 when the router says so); IPv6AcceptRA takes SLAAC addresses.
const networkFile = baseSystemMessage + `[Match]
Type=ether
Kind=!*
Name=!veth* docker* br-* virbr* vnet* tap* tun* tailscale* wg*

[Network]
DHCP=yes
IPv6AcceptRA=yes

[DHCPv4]
UseDomains=yes

[IPv6AcceptRA]
UseDomains=yes
`

// networkdConf keeps networkd's hands off routes and policy rules it did
// not make: by default a restart of systemd-networkd removes "foreign"
// routes and rules, among them Docker's and Tailscale's (tailscaled routes
// through its own ip rules).
const networkdConf = baseSystemMessage + `[Network]
ManageForeignRoutes=no
ManageForeignRoutingPolicyRules=no
`

// resolvedConf turns off systemd-resolved's multicast name services: LLMNR
// answers on 5355/udp and tcp and mDNS on 5353/udp on every link by default,
// announcing the host's name to its neighbours and listening where an
// appliance has no business listening. Unicast DNS is unaffected.
const resolvedConf = baseSystemMessage + `[Resolve]
LLMNR=no
MulticastDNS=no
`

// waitOnlineDropIn: online as soon as one link is configured. Without it,
// a second NIC with no DHCP server holds network-online.target (and every
// unit after it) for two minutes.
const waitOnlineDropIn = baseSystemMessage + `[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any
`

// growrootScript grows the partition holding a mount point (default /) to
// the end of its disk (or to the next partition: a state partition) with growpart, then the file system to the
// partition. It runs at every boot and is a no-op when there is nothing to
// grow, so a disk enlarged later (qemu-img resize, a bigger cloud volume) is
// used after the next boot. Layouts it cannot grow (root not on a
// partition: LVM, a loop, an overlay) are left alone without failing.
const growrootScript = `#!/bin/sh
# Written by bake (rootfs.BaseSystem): grow the root partition and file
# system to fill the disk.
set -eu
mnt=${1:-/}
fstype=$(findmnt -n -o FSTYPE -M "$mnt")
# By device number, not by the mount source: a root mounted by the kernel
# itself shows up as /dev/root, which has no node and no sysfs entry.
majmin=$(findmnt -n -o MAJ:MIN -M "$mnt" | tr -d ' ')
sys=$(readlink -f "/sys/dev/block/$majmin" 2>/dev/null || true)
if [ -z "$sys" ] || [ ! -e "$sys/partition" ]; then
	echo "bake-growroot: $mnt ($fstype, device $majmin) is not on a disk partition: nothing to grow"
	exit 0
fi
dev=/dev/${sys##*/}
part=$(cat "$sys/partition")
disk=/dev/$(basename "$(dirname "$sys")")
# Sizes in 512-byte sectors from sysfs. When less than 1 MiB past the
# partition's end is free (GPT keeps its backup table in the last 33
# sectors), growpart would find nothing to do: it is not run at all, since
# it costs a boot seconds of CPU on a small or emulated machine. The file
# system is still resized, in case an earlier boot grew the partition and
# stopped before that.
start=$(cat "$sys/start")
size=$(cat "$sys/size")
disksize=$(cat "$(dirname "$sys")/size")
# A partition after it (the state partition, docs/state.md) is where it
# stops: growpart grows it up to the next partition's start.
limit=$disksize
for f in "$(dirname "$sys")"/*/start; do
	[ -r "$f" ] || continue
	s=$(cat "$f")
	if [ "$s" -gt "$start" ] && [ "$s" -lt "$limit" ]; then limit=$s; fi
done
if [ $((limit - start - size)) -lt $((2048 + 34)) ]; then
	echo "bake-growroot: $dev already fills $disk"
elif out=$(growpart "$disk" "$part" 2>&1); then
	echo "bake-growroot: $out"
else
	rc=$?
	case "$out" in
	NOCHANGE*) echo "bake-growroot: $dev already fills $disk" ;;
	*) echo "bake-growroot: growpart $disk $part failed ($rc): $out" >&2; exit 1 ;;
	esac
fi
case "$fstype" in
ext2|ext3|ext4) resize2fs "$dev" ;;
xfs) xfs_growfs "$mnt" ;;
btrfs) btrfs filesystem resize max "$mnt" ;;
*) echo "bake-growroot: $fstype on $dev: not resized" ;;
esac
`

// growrootUnit runs the script early, right after / is remounted
// read-write and before the rest of the system starts, so everything else
// sees the final size. Not in containers: they have no partition.
const growrootUnit = baseSystemMessage + `[Unit]
Description=Grow the root partition and file system to fill the disk
DefaultDependencies=no
After=systemd-remount-fs.service local-fs.target
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionVirtualization=!container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + GrowrootScript + `

[Install]
WantedBy=sysinit.target
`

// BaseSystem makes the tree a machine that is usable on any hypervisor or
// cloud: networking on any NIC name (DHCPv4 + IPv6 RA, DNS through
// systemd-resolved, time through systemd-timesyncd), a root file system that
// grows to the disk at boot, /etc/hosts and a "localhost" hostname that DHCP
// or cloud-init replace (systemd prefers a transient hostname over a static
// "localhost"). The serial console needs nothing here: systemd's getty
// generator starts serial-getty@ttyS0 for console=ttyS0 on the kernel
// command line, which bake's default boot entry has; enabling it
// unconditionally would run agetty on a phantom port on machines without a
// UART. BasePackages must be installed.
func BaseSystem(ctx context.Context, ch *Chroot) error {
	root := ch.Root()
	files := []struct {
		name    string
		content string
		mode    uint32
	}{
		{NetworkFile, networkFile, 0o644},
		{NetworkdConfFile, networkdConf, 0o644},
		{WaitOnlineDropIn, waitOnlineDropIn, 0o644},
		{ResolvedConfFile, resolvedConf, 0o644},
		{GrowrootScript, growrootScript, 0o755},
		{GrowrootUnit, growrootUnit, 0o644},
	}
	for _, f := range files {
		if err := root.WriteFile(f.name, []byte(f.content), safepath.FileMode(f.mode), rootUID, rootGID); err != nil {
			return err
		}
	}
	for name, content := range map[string]string{"/etc/hosts": defaultHostsFile, "/etc/hostname": defaultHostname} {
		if ok, err := root.Exists(name); err != nil {
			return err
		} else if !ok {
			if err := root.WriteFile(name, []byte(content), 0o644, rootUID, rootGID); err != nil {
				return err
			}
		}
	}
	// systemd-resolved's stub listener on 127.0.0.53, reached through
	// the symlink the resolved package also makes; in place once the
	// chroot (which needs the build host's DNS) is closed.
	if err := ch.setResolvConfSymlink(ResolvedStubLink); err != nil {
		return err
	}
	return Systemd(ctx, ch, []string{
		"systemd-networkd.service", "systemd-resolved.service",
		"systemd-timesyncd.service", GrowrootUnitName,
	}, nil, nil)
}
