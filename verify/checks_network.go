package verify

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bakeimg/bake/vm"
)

func (c *checker) networkScan(ctx context.Context) (Status, string) {
	if c.r.nmap == "" {
		return Skip, "not run: nmap is not installed (Debian: apt-get install nmap)"
	}
	var ev evidence
	var problems []string
	targets := []netip.Addr{c.in.ipv4}
	if !c.in.ipv4.IsValid() {
		return Fail, "the guest has no IPv4 address on the link (no DHCPv4 lease): nothing to scan\n" + c.in.serialTail(20)
	}
	if c.in.ipv6.IsValid() {
		targets = append(targets, c.in.ipv6)
	} else {
		problems = append(problems, "the guest has no IPv6 address on the link (no SLAAC from the router advertisements): no IPv6 scan")
	}
	type out struct {
		res NmapResult
		err error
		raw []byte
	}
	outs := make([]out, len(targets))
	var wg sync.WaitGroup
	for i, a := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
			defer cancel()
			b, err := c.in.link.Exec(sctx, NmapArgs(a)...)
			outs[i].raw = b
			if err != nil {
				outs[i].err = err
				return
			}
			outs[i].res, outs[i].err = ParseNmapXML(b)
		}()
	}
	wg.Wait()
	for i, a := range targets {
		o := outs[i]
		from := vm.LinkHostIPv4.Addr()
		if a.Is6() {
			from = vm.LinkHostIPv6.Addr()
		}
		if c.r.o.ReportDir != "" && len(o.raw) > 0 {
			name := fmt.Sprintf("nmap-%s-ipv%d.xml", c.fw, map[bool]int{true: 6, false: 4}[a.Is6()])
			if os.MkdirAll(c.r.o.ReportDir, 0o755) == nil && os.WriteFile(filepath.Join(c.r.o.ReportDir, name), o.raw, 0o644) == nil {
				c.r.mu.Lock()
				c.r.rep.Files = append(c.r.rep.Files, name)
				c.r.mu.Unlock()
			}
		}
		if o.err != nil {
			ev.add("$ %s\nerror: %v", strings.Join(NmapArgs(a), " "), o.err)
			problems = append(problems, fmt.Sprintf("the scan of %s did not complete: %v", a, firstLine(o.err.Error())))
			continue
		}
		ev.add("$ %s\n%s", strings.Join(NmapArgs(a), " "), o.res.Summary())
		want := map[int]bool{}
		for _, p := range c.spec.ExpectedOpenTCP(from) {
			want[p] = true
		}
		got := map[int]bool{}
		for _, p := range o.res.Open() {
			got[p.Port] = true
			if !want[p.Port] {
				problems = append(problems, fmt.Sprintf("%s: %s is open", a, p))
			}
		}
		for p := range want {
			if !got[p] {
				problems = append(problems, fmt.Sprintf("%s: %d/tcp is not open (expected: the scan must see it)", a, p))
			}
		}
	}
	return verdict(problems, ev, "only "+portList(c.spec.ExpectedOpenTCP(vm.LinkHostIPv4.Addr()))+" open, over IPv4 and IPv6 (nmap -p-)")
}

var checkNetworkScan = Check{ID: "network.scan", Scope: ScopeFirmware, Needs: "nmap, the outside namespace (root, dnsmasq)",
	claim: func(s Spec, _ *GatewaySpec) string {
		return fmt.Sprintf("external scan (nmap -p-, IPv4 and IPv6): only %s open", portList(s.ExpectedOpenTCP(netip.Addr{})))
	},
	run: (*checker).networkScan, outside: true}

// checkNetworkUDP: checks_udp.go has the sweep and the guest's accounting.
var checkNetworkUDP = Check{ID: "network.udp", Scope: ScopeFirmware, Needs: "an SSH session, the outside namespace (root, dnsmasq)",
	claim: func(s Spec, _ *GatewaySpec) string {
		var udp []string
		if s.Firewall != nil {
			for _, a := range s.Firewall.Allow {
				if strings.HasSuffix(a, "/udp") {
					udp = append(udp, a)
				}
			}
		}
		udp = append(udp, "68/udp from source port 67 (DHCP)")
		return "a datagram to every UDP port (IPv4 and IPv6) reaches a socket only on " + strings.Join(udp, ", ") + " (the guest's counters and kernel log; no other UDP socket bound off loopback)"
	},
	planned: func(s Spec, _ int) bool { return s.Firewall != nil },
	run:     (*checker).udpExposure, ssh: true, outside: true}
