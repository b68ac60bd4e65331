//go:build integration

package verify

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netnsPair makes two namespaces joined by a veth pair: a (10.99.0.1) and
// b (10.99.0.2), removed at the end of the test.
func netnsPair(t *testing.T) (a, b string, bMAC net.HardwareAddr) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (network namespaces); run `make test` as root")
	}
	a = fmt.Sprintf("bake-vt-a-%d", os.Getpid())
	b = fmt.Sprintf("bake-vt-b-%d", os.Getpid())
	ip := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ip("netns", "add", a)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", a).Run() })
	ip("netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", b).Run() })
	ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
	ip("-n", a, "addr", "add", "10.99.0.1/24", "dev", "va")
	ip("-n", b, "addr", "add", "10.99.0.2/24", "dev", "vb")
	for _, ns := range []string{a, b} {
		ip("-n", ns, "link", "set", "lo", "up")
	}
	ip("-n", a, "link", "set", "va", "up")
	ip("-n", b, "link", "set", "vb", "up")
	out := ip("-n", b, "-br", "link", "show", "vb")
	for _, f := range strings.Fields(out) {
		if m, err := net.ParseMAC(f); err == nil && len(m) == 6 {
			bMAC = m
		}
	}
	if bMAC == nil {
		t.Fatalf("no MAC for vb in %q", out)
	}
	return a, b, bMAC
}

func sysctlIn(t *testing.T, ns, key, val string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", key+"="+val).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s=%s: %v %s", key, val, err, out)
	}
}

// The moby#45610 probe really detects the hole: a host with
// route_localnet=1 answers a SYN to 127.0.0.1 that arrives on its NIC, and
// one with the default (0) does not. The same probe to its own address is
// answered (the control verify uses).
func TestSendSYNDetectsRouteLocalnet(t *testing.T) {
	a, b, bMAC := netnsPair(t)
	var ln net.Listener
	if err := inNetns(b, func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:18789")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	src := netip.MustParseAddr("10.99.0.1")
	loop := netip.MustParseAddr("127.0.0.1")

	// Default: martian destination, dropped.
	ans, err := sendSYN(a, "va", bMAC, src, loop, 18789, 2, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(ans) != 0 {
		t.Fatalf("route_localnet=0: answers %v, want none", ans)
	}
	// The control: the host's own address answers (RST: nothing listens
	// there, but the packet was taken).
	ans, err = sendSYN(a, "va", bMAC, src, netip.MustParseAddr("10.99.0.2"), 18789, 2, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(ans) == 0 || ans[0].Flags != "RST" {
		t.Fatalf("control: answers %v, want an RST from 10.99.0.2", ans)
	}
	// loopback-via-mac's control: a listening port's SYN-ACK ends the
	// wait at once (sendSYNUntil with hasSYNACK), not after its 4 s.
	var ln2 net.Listener
	if err := inNetns(b, func() error {
		var err error
		ln2, err = net.Listen("tcp4", "10.99.0.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	t0 := time.Now()
	ans, err = sendSYNUntil(a, "va", bMAC, src, netip.MustParseAddr("10.99.0.2"), ln2.Addr().(*net.TCPAddr).Port, 2, 4*time.Second, hasSYNACK)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); !hasSYNACK(ans) || d > 2*time.Second {
		t.Fatalf("control with a listener: answers %v after %s, want a SYN-ACK at once", ans, d)
	}
	// Docker with userland-proxy false sets route_localnet=1: the hole.
	sysctlIn(t, b, "net.ipv4.conf.all.route_localnet", "1")
	sysctlIn(t, b, "net.ipv4.conf.vb.route_localnet", "1")
	ans, err = sendSYN(a, "va", bMAC, src, loop, 18789, 3, 4*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !hasSYNACK(ans) || ans[0].From != loop {
		t.Fatalf("route_localnet=1: answers %v, want a SYN-ACK from 127.0.0.1", ans)
	}
	t.Logf("route_localnet=1: %s", describeAnswers(ans))
}

// dialIn connects from inside a namespace, never from the host's.
func TestDialIn(t *testing.T) {
	a, b, _ := netnsPair(t)
	var ln net.Listener
	if err := inNetns(b, func() error {
		var err error
		ln, err = net.Listen("tcp4", "10.99.0.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := dialIn(t.Context(), a, "tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	c.Read(buf)
	c.Close()
	if string(buf) != "hi" {
		t.Errorf("read %q", buf)
	}
	// From the host's own namespace the address does not exist.
	if c, err := dialIn(t.Context(), "", "tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("the namespace's address answered from the host namespace")
	}
}

// The DNS part of isolation.metadata end to end on real sockets: the
// stand-in resolver in one namespace on the resolver addresses, the probe
// script (bash /dev/udp, dd, od) in another, "host" and "container" both
// (the container's namespace entered by nsenter, as in the guest); then
// with the resolver stopped, every attempt fails.
func TestMetadataDNSProbe(t *testing.T) {
	a, b, _ := netnsPair(t)
	addrs := metadataDNSAddrs()
	for _, ad := range addrs {
		if out, err := exec.Command("ip", "-n", a, "addr", "add", ad+"/32", "dev", "va").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	if out, err := exec.Command("ip", "-n", b, "route", "add", "default", "via", "10.99.0.1").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	stop, err := serveDNSOn(a, addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// The "container": a process in b's namespace for nsenter -t.
	sleeper := exec.Command("ip", "netns", "exec", b, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	q, _ := dnsQuery(4242)
	run := func() string {
		script := fmt.Sprintf("pid=%d\n", sleeper.Process.Pid) + metadataDNSScript(addrs, q)
		out, err := exec.Command("ip", "netns", "exec", b, "bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return string(out)
	}
	out := run()
	if problems, _ := metadataDNSVerdict(out, addrs, 4242); len(problems) > 0 {
		t.Fatalf("with the resolver: %q\n%s", problems, out)
	}
	stop()
	out = run()
	problems, _ := metadataDNSVerdict(out, addrs, 4242)
	if len(problems) != 4 || !strings.Contains(strings.Join(problems, "\n"), "a container cannot resolve at the cloud resolver") {
		t.Fatalf("without the resolver: %q\n%s", problems, out)
	}
}
