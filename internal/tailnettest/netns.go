package tailnettest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/vm"
)

var nsNameRE = regexp.MustCompile(`^[a-z0-9]{1,12}$`)

// Netns is a network namespace a test made: bake-tn<name>-<pid>, with only
// lo up. Close deletes it (and with it every device inside).
type Netns struct {
	Name    string
	once    sync.Once
	release func()
}

// NewNetns creates the namespace bake-tn<name>-<pid> (a leftover of that
// exact name, from an earlier process with our PID, is deleted first).
// Tests of one binary that ask for the same name at once get
// bake-tn<name>2-<pid>, 3, ...: before session 22 the second deleted the
// first's namespace by name and made its own under it, so that the first
// test's headscale, probes and `ip netns exec` landed in the second's
// (TestVerifyAppliance, TestVerifyNegative and TestStateVolume all ask for
// "verify"; seen as a headscale whose certificate another test's CA had
// signed).
func NewNetns(ctx context.Context, name string) (_ *Netns, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("tailnettest: a network namespace needs root")
	}
	if !nsNameRE.MatchString(name) {
		return nil, fmt.Errorf("tailnettest: namespace name %q: want [a-z0-9], at most 12", name)
	}
	n := &Netns{}
	for i := 1; n.release == nil; i++ {
		suffix := ""
		if i > 1 {
			suffix = strconv.Itoa(i)
		}
		cand := fmt.Sprintf("bake-tn%s%s-%d", name, suffix, sweep.OwnerPID())
		if release, ok := sweep.Claim(cand); ok {
			n.Name, n.release = cand, release
		}
	}
	defer func() {
		if err != nil {
			n.release()
		}
	}()
	if _, err := os.Stat(filepath.Join("/run/netns", n.Name)); err == nil {
		_ = ip(ctx, "netns", "delete", n.Name)
	}
	if err := ip(ctx, "netns", "add", n.Name); err != nil {
		return nil, err
	}
	if err := ip(ctx, "-n", n.Name, "link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Close deletes the namespace. Processes still inside keep it alive until
// they exit: stop them first.
func (n *Netns) Close() error {
	var err error
	n.once.Do(func() {
		err = ip(context.Background(), "netns", "delete", n.Name)
		n.release()
	})
	return err
}

// Exec runs argv inside the namespace and returns its stdout.
func (n *Netns) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return ExecIn(ctx, n.Name, argv...)
}

// ExecIn runs argv inside the named namespace and returns its stdout; on
// failure the error carries the command and its stderr.
func ExecIn(ctx context.Context, netns string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("tailnettest: Exec: no command")
	}
	return execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: append([]string{"netns", "exec", netns}, argv...)})
}

func ip(ctx context.Context, args ...string) error {
	return execx.Default.Run(ctx, execx.Cmd{Name: "ip", Args: args})
}

// Connect joins child to the namespace parent with a veth pair: parentAddr
// on parent's end, childAddr on child's (same prefix), a default route in
// child via parentAddr, and IPv4 forwarding on in parent, so that children
// of one parent (and a VM on the parent's link) reach each other through it.
// The pair goes away with either namespace.
func Connect(ctx context.Context, parent string, child *Netns, parentAddr, childAddr netip.Prefix) error {
	// Interface names are per namespace; the pair is made in child and one
	// end moved, so that no name is ever taken in the root namespace.
	pname := "tn" + fmt.Sprint(childAddr.Addr().As4()[2]) + "p" + fmt.Sprint(childAddr.Addr().As4()[3])
	for _, args := range [][]string{
		{"-n", child.Name, "link", "add", "eth0", "type", "veth", "peer", "name", pname},
		{"-n", child.Name, "link", "set", pname, "netns", parent},
		{"-n", parent, "addr", "add", parentAddr.String(), "dev", pname},
		{"-n", parent, "link", "set", pname, "up"},
		{"-n", child.Name, "addr", "add", childAddr.String(), "dev", "eth0"},
		{"-n", child.Name, "link", "set", "eth0", "up"},
		{"-n", child.Name, "route", "add", "default", "via", parentAddr.Addr().String()},
	} {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	_, err := ExecIn(ctx, parent, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return err
}

// InNetns runs f on an OS thread that has joined the named namespace
// (vm.InNetns): sockets f opens stay there.
func InNetns(netns string, f func() error) error { return vm.InNetns(netns, f) }

// ListenIn opens a TCP listener inside the named namespace.
func ListenIn(netns, addr string) (net.Listener, error) {
	var l net.Listener
	err := InNetns(netns, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// DialIn opens a TCP connection from inside the named namespace.
func DialIn(ctx context.Context, netns, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(netns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}
