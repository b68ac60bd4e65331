package vm

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/sweep"
)

// The addresses of a Link. They exist only inside the Link's namespace:
// nothing is ever sent anywhere else.
var (
	LinkHostIPv4   = netip.MustParsePrefix("10.77.0.1/24")
	LinkHostIPv6   = netip.MustParsePrefix("fd77::1/64")
	LinkDHCPFirst  = netip.MustParseAddr("10.77.0.50")
	LinkDHCPLast   = netip.MustParseAddr("10.77.0.99")
	linkTap        = "tap0"
	linkNameRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)
	errLinkClosed  = errors.New("vm: link closed")
	linkPollPeriod = 250 * time.Millisecond
	linkDirPrefix  = "bake-link-"
	netnsDir       = "/run/netns"
)

// LinkTapQueue is the length of the link's tap queue (txqueuelen): more
// than the 65535 probes of one port sweep, so that none is dropped on the
// way to a guest that reads them slower than they are sent.
const LinkTapQueue = 65536

// Link is the "outside" of a VM: a network namespace of its own holding a
// tap device (tap0, 10.77.0.1/24 and fd77::1/64) and dnsmasq serving DHCPv4
// (10.77.0.50-99) and router advertisements for SLAAC on fd77::/64. QEMU
// runs inside the namespace (Config.Net = link.NetConfig()), and checks run
// there with Exec, so a scan reaches the guest as any neighbour on its
// network would. Root only.
type Link struct {
	Netns string // bake-<name>-<pid>
	Tap   string // the tap device inside Netns

	dir          string // leases, dnsmasq log; removed by Close
	dnsmasq      *exec.Cmd
	dnsmasqDone  <-chan struct{}
	dnsmasqChild *execx.Child

	noRoute bool // LinkNoDefaultRoute

	release func() // gives the name back (sweep.Claim)

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// LinkOption changes what a Link offers the guest.
type LinkOption string

// LinkNoDefaultRoute: the link's DHCP sends no router and its router
// advertisements have a lifetime of 0, so the guest has no default route
// through the link (a guest with a second NIC, vm.Config.Outbound, then
// routes everything off the link through that NIC).
const LinkNoDefaultRoute LinkOption = "no-default-route"

// NewLink creates the namespace bake-<name>-<pid>, its tap device and
// addresses, and starts dnsmasq in it. On error everything made so far is
// undone. Close undoes it all.
func NewLink(ctx context.Context, name string, opts ...LinkOption) (_ *Link, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("vm: a network namespace link needs root")
	}
	if !linkNameRE.MatchString(name) {
		return nil, fmt.Errorf("vm: link name %q: want [a-z0-9-], at most 31 characters", name)
	}
	for _, tool := range []string{"ip", "dnsmasq"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("vm: link needs %s: %w", tool, err)
		}
	}
	l := &Link{
		noRoute: slices.Contains(opts, LinkNoDefaultRoute),
		Netns:   fmt.Sprintf("bake-%s-%d", name, sweep.OwnerPID()),
		Tap:     linkTap,
		closed:  make(chan struct{}),
	}
	// A namespace of this exact name is a leftover of an earlier process
	// with our PID that died without cleaning up, unless this process
	// holds the name (sweep.Claim): then it is a live link of ours, whose
	// Close would kill whatever runs in the namespace, and the name is
	// refused instead.
	release, ok := sweep.Claim(l.Netns)
	if !ok {
		return nil, fmt.Errorf("vm: link %s: this process has a link of that name already", l.Netns)
	}
	l.release = release
	if _, err := os.Stat(filepath.Join("/run/netns", l.Netns)); err == nil {
		_ = ipCmd(ctx, "netns", "delete", l.Netns)
	}
	if err := ipCmd(ctx, "netns", "add", l.Netns); err != nil {
		release()
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	// The owner's PID in the name: RemoveStaleLinks tells a dir left by a
	// killed process from a live one's.
	if l.dir, err = sweep.MkdirTemp("", linkDirPrefix); err != nil {
		return nil, err
	}
	ns := []string{"-n", l.Netns}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"tuntap", "add", "dev", l.Tap, "mode", "tap"},
		// The tap's queue (the ring QEMU reads) holds a whole sweep of
		// 65535 probes: a TCG guest reads slower than a scan sends, and
		// the tap drops what its queue cannot hold (1000 by default),
		// silently to the sender.
		{"link", "set", l.Tap, "txqueuelen", strconv.Itoa(LinkTapQueue)},
		{"addr", "add", LinkHostIPv4.String(), "dev", l.Tap},
		{"-6", "addr", "add", LinkHostIPv6.String(), "dev", l.Tap, "nodad"},
		{"link", "set", l.Tap, "up"},
	} {
		if err := ipCmd(ctx, append(ns, args...)...); err != nil {
			return nil, err
		}
	}
	if err := l.startDNSMasq(); err != nil {
		return nil, err
	}
	return l, nil
}

func ipCmd(ctx context.Context, args ...string) error {
	return execx.Default.Run(ctx, execx.Cmd{Name: "ip", Args: args})
}

func (l *Link) leaseFile() string { return filepath.Join(l.dir, "dnsmasq.leases") }

// DNSMasqLog is the path of dnsmasq's log (DHCP and RA traffic).
func (l *Link) DNSMasqLog() string { return filepath.Join(l.dir, "dnsmasq.log") }

// DNSMasqPID is the PID of the link's dnsmasq, 0 when not running.
func (l *Link) DNSMasqPID() int {
	if l.dnsmasq == nil || l.dnsmasq.Process == nil {
		return 0
	}
	return l.dnsmasq.Process.Pid
}

func (l *Link) startDNSMasq() error {
	args := []string{"netns", "exec", l.Netns, "dnsmasq",
		"--keep-in-foreground",
		"--conf-file=/dev/null",
		"--user=root", "--group=root", // writes its lease file and log in our temp dir
		"--port=0", // no DNS: the guest has nothing to resolve here
		"--bind-dynamic", "--interface=" + l.Tap, "--except-interface=lo",
		"--dhcp-authoritative",
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,1h", LinkDHCPFirst, LinkDHCPLast),
		"--enable-ra",
		"--dhcp-range=" + LinkHostIPv6.Masked().Addr().String() + ",ra-only,64,1h",
	}
	if l.noRoute {
		// An empty router option sends none; router lifetime 0: not a
		// default router (the prefix is still advertised for SLAAC).
		args = append(args, "--dhcp-option=option:router", "--ra-param="+l.Tap+",60,0")
	} else {
		args = append(args, "--dhcp-option=option:router,"+LinkHostIPv4.Addr().String())
	}
	args = append(args,
		"--dhcp-leasefile="+l.leaseFile(),
		"--pid-file="+filepath.Join(l.dir, "dnsmasq.pid"),
		"--log-facility="+l.DNSMasqLog(),
		"--log-dhcp",
	)
	out, err := os.Create(filepath.Join(l.dir, "dnsmasq.out"))
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = out, out
	child, err := execx.StartPinned(cmd) // dies with us, and only then
	if err != nil {
		return fmt.Errorf("vm: starting dnsmasq: %w", err)
	}
	l.dnsmasq = cmd
	l.dnsmasqDone, l.dnsmasqChild = child.Done(), child

	// Ready once it logs its DHCP range; an early exit is an error.
	deadline := time.Now().Add(10 * time.Second)
	for {
		log, _ := os.ReadFile(l.DNSMasqLog())
		if strings.Contains(string(log), "DHCP, IP range") {
			return nil
		}
		select {
		case <-l.dnsmasqDone:
			o, _ := os.ReadFile(filepath.Join(l.dir, "dnsmasq.out"))
			return fmt.Errorf("vm: dnsmasq exited (%v):\n%s%s", cmd.ProcessState, indent(lastLines(string(o), 20)), "\n"+indent(lastLines(string(log), 20)))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vm: dnsmasq not ready after 10s:\n%s", indent(lastLines(string(log), 20)))
		}
	}
}

// NetConfig is the VM network configuration that puts the VM on this link.
func (l *Link) NetConfig() NetConfig {
	return NetConfig{Mode: NetTap, Tap: l.Tap, Netns: l.Netns}
}

// Command returns a command that runs argv inside the namespace.
func (l *Link) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Netns}, argv...)...)
}

// Exec runs argv inside the namespace and returns its stdout; on failure the
// error carries the command and its stderr.
func (l *Link) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("vm: Exec: no command")
	}
	return execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: append([]string{"netns", "exec", l.Netns}, argv...)})
}

// Lease is one DHCPv4 lease from dnsmasq's lease file.
type Lease struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
}

// Leases returns the current DHCPv4 leases.
func (l *Link) Leases() ([]Lease, error) {
	f, err := os.Open(l.leaseFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Lease
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// expiry mac ip hostname client-id
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 || fs[0] == "duid" {
			continue
		}
		mac, err1 := net.ParseMAC(fs[1])
		ip, err2 := netip.ParseAddr(fs[2])
		if err1 != nil || err2 != nil || !ip.Is4() {
			continue
		}
		host := fs[3]
		if host == "*" {
			host = ""
		}
		out = append(out, Lease{MAC: mac, IP: ip, Hostname: host})
	}
	return out, sc.Err()
}

// GuestIPv4 waits until the guest has taken a DHCPv4 lease and returns its
// address (the last lease when there are several).
func (l *Link) GuestIPv4(ctx context.Context) (netip.Addr, error) {
	for {
		ls, err := l.Leases()
		if err != nil {
			return netip.Addr{}, err
		}
		if len(ls) > 0 {
			return ls[len(ls)-1].IP, nil
		}
		if err := l.sleep(ctx, "a DHCPv4 lease"); err != nil {
			return netip.Addr{}, err
		}
	}
}

// GuestIPv6 waits until a host on the link answers an ICMPv6 echo to
// all-nodes (ff02::1) sent from fd77::1, and returns the address in
// fd77::/64 it answered from (the guest's SLAAC address). It falls back to
// the namespace's neighbour table.
func (l *Link) GuestIPv6(ctx context.Context) (netip.Addr, error) {
	for {
		addrs, err := l.PingAllNodes(time.Second)
		if err != nil {
			return netip.Addr{}, err
		}
		if len(addrs) == 0 {
			addrs, _ = l.neighboursV6(ctx)
		}
		for _, a := range addrs {
			if LinkHostIPv6.Contains(a) && a != LinkHostIPv6.Addr() {
				return a, nil
			}
		}
		if err := l.sleep(ctx, "an IPv6 neighbour in "+LinkHostIPv6.Masked().String()); err != nil {
			return netip.Addr{}, err
		}
	}
}

func (l *Link) sleep(ctx context.Context, what string) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("vm: waiting for %s on %s: %w", what, l.Netns, ctx.Err())
	case <-l.closed:
		return errLinkClosed
	case <-time.After(linkPollPeriod):
		return nil
	}
}

func (l *Link) neighboursV6(ctx context.Context) ([]netip.Addr, error) {
	out, err := execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: []string{"-n", l.Netns, "-6", "neigh", "show", "dev", l.Tap}})
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for _, line := range strings.Split(string(out), "\n") {
		fs := strings.Fields(line)
		if len(fs) == 0 || strings.Contains(line, "FAILED") || strings.Contains(line, "INCOMPLETE") {
			continue
		}
		if a, err := netip.ParseAddr(fs[0]); err == nil {
			addrs = append(addrs, a)
		}
	}
	return addrs, nil
}

// PingAllNodes sends one ICMPv6 echo request from fd77::1 to ff02::1 on the
// link's tap device and returns the sources of the replies received within
// wait (fd77::1 itself excluded). Runs in the namespace without a ping
// binary.
func (l *Link) PingAllNodes(wait time.Duration) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := l.inNetns(func() error {
		ifi, err := net.InterfaceByName(l.Tap)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		src := &unix.SockaddrInet6{Addr: LinkHostIPv6.Addr().As16()}
		if err := unix.Bind(fd, src); err != nil {
			return fmt.Errorf("bind %s: %w", LinkHostIPv6.Addr(), err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index); err != nil {
			return err
		}
		id := uint16(os.Getpid())
		msg := make([]byte, 16)
		msg[0] = 128 // echo request; the kernel fills in the checksum
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], 1)
		copy(msg[8:], "bakelink")
		dst := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(ifi.Index)}
		if err := unix.Sendto(fd, msg, 0, dst); err != nil {
			return fmt.Errorf("send echo to ff02::1%%%s: %w", l.Tap, err)
		}
		deadline := time.Now().Add(wait)
		buf := make([]byte, 1500)
		seen := map[netip.Addr]bool{}
		for {
			left := time.Until(deadline)
			if left <= 0 {
				return nil
			}
			tv := unix.NsecToTimeval(left.Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			sa, ok := from.(*unix.SockaddrInet6)
			if !ok || n < 8 || buf[0] != 129 || binary.BigEndian.Uint16(buf[4:]) != id {
				continue
			}
			a := netip.AddrFrom16(sa.Addr)
			if a != LinkHostIPv6.Addr() && !seen[a] {
				seen[a] = true
				addrs = append(addrs, a)
			}
		}
	})
	return addrs, err
}

// InNetns runs f on an OS thread that has joined the network namespace ns
// (by its name under /run/netns). The thread is never handed back to the
// Go scheduler: it ends with f, so no other goroutine ever runs in ns. A
// socket made in f stays in ns and may be used from any goroutine.
func InNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with this goroutine
		nsfd, err := unix.Open(filepath.Join(netnsDir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(nsfd, unix.CLONE_NEWNET)
		unix.Close(nsfd)
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// inNetns runs f in the link's namespace (InNetns).
func (l *Link) inNetns(f func() error) error {
	if err := InNetns(l.Netns, f); err != nil {
		return fmt.Errorf("vm: in netns %s: %w", l.Netns, err)
	}
	return nil
}

// Close stops dnsmasq (by PID), ends any process still inside the namespace
// (only this link's own: QEMU, a scan), deletes the namespace with its tap
// device and removes the temp dir. Idempotent; safe from t.Cleanup.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		var errs []error
		if l.dnsmasq != nil {
			_ = l.dnsmasqChild.Stop(3 * time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// The namespace was made by this Link, so whatever still runs in it
		// was started for it.
		if out, err := execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: []string{"netns", "pids", l.Netns}}); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if err := ipCmd(ctx, "netns", "delete", l.Netns); err != nil {
			if _, serr := os.Stat(filepath.Join("/run/netns", l.Netns)); serr == nil {
				errs = append(errs, err)
			}
		}
		if l.dir != "" {
			if err := os.RemoveAll(l.dir); err != nil {
				errs = append(errs, err)
			}
		}
		l.closeErr = errors.Join(errs...)
		if l.release != nil {
			l.release()
		}
	})
	return l.closeErr
}
