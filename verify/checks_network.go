package verify

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
	mode := "nmap -p-"
	if c.in.sess != nil {
		counted, why := c.countedScan(ctx, targets, &ev)
		if ctx.Err() != nil {
			return Skip, "interrupted"
		}
		if counted != nil {
			problems = append(problems, counted...)
			return verdict(problems, ev, "only "+portList(c.spec.ExpectedOpenTCP(vm.LinkHostIPv4.Addr()))+" open, over IPv4 and IPv6 (nmap -p-, every SYN counted by the guest)")
		}
		c.r.logf("%s: TCP scan: %s; scanning again, slowly (nmap -T4, 2 retries)", c.in.name(), why)
		ev.add("the counted scan was not proof (%s): the thorough scan judges", why)
		mode = "nmap -p-, thorough"
	}
	outs := c.nmapAll(ctx, targets, NmapArgs, "")
	for i, a := range targets {
		problems = append(problems, c.judgeNmap(a, outs[i], &ev)...)
	}
	return verdict(problems, ev, "only "+portList(c.spec.ExpectedOpenTCP(vm.LinkHostIPv4.Addr()))+" open, over IPv4 and IPv6 ("+mode+")")
}

// nmapOut is one nmap run's result.
type nmapOut struct {
	res NmapResult
	err error
	raw []byte
}

// nmapAll scans every target at once, in the outside namespace, and keeps
// each XML in the report directory (name suffix: "" or "-counted").
func (c *checker) nmapAll(ctx context.Context, targets []netip.Addr, args func(netip.Addr) []string, suffix string) []nmapOut {
	outs := make([]nmapOut, len(targets))
	var wg sync.WaitGroup
	for i, a := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
			defer cancel()
			b, err := c.in.link.Exec(sctx, args(a)...)
			outs[i].raw = b
			if err != nil {
				outs[i].err = fmt.Errorf("$ %s: %w", strings.Join(args(a), " "), err)
				return
			}
			outs[i].res, outs[i].err = ParseNmapXML(b)
		}()
	}
	wg.Wait()
	for i, a := range targets {
		if c.r.o.ReportDir != "" && len(outs[i].raw) > 0 {
			name := fmt.Sprintf("nmap-%s-ipv%d%s.xml", c.fw, map[bool]int{true: 6, false: 4}[a.Is6()], suffix)
			if os.MkdirAll(c.r.o.ReportDir, 0o755) == nil && os.WriteFile(filepath.Join(c.r.o.ReportDir, name), outs[i].raw, 0o644) == nil {
				c.r.mu.Lock()
				c.r.rep.Files = append(c.r.rep.Files, name)
				c.r.mu.Unlock()
			}
		}
	}
	return outs
}

// linkHost is the outside namespace's address of a's family.
func linkHost(a netip.Addr) netip.Addr {
	if a.Is6() {
		return vm.LinkHostIPv6.Addr()
	}
	return vm.LinkHostIPv4.Addr()
}

// judgeNmap: nmap saw open exactly the ports the spec expects from the
// link.
func (c *checker) judgeNmap(a netip.Addr, o nmapOut, ev *evidence) []string {
	var problems []string
	if o.err != nil {
		ev.add("error: %v", o.err)
		return []string{fmt.Sprintf("the scan of %s did not complete: %v", a, firstLine(o.err.Error()))}
	}
	ev.add("$ %s\n%s", o.res.Args, o.res.Summary())
	want := map[int]bool{}
	for _, p := range c.spec.ExpectedOpenTCP(linkHost(a)) {
		want[p] = true
	}
	got := map[int]bool{}
	for _, p := range o.res.Open() {
		got[p.Port] = true
		if !want[p.Port] {
			problems = append(problems, fmt.Sprintf("%s: %s is open", a, p))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if !got[p] {
			problems = append(problems, fmt.Sprintf("%s: %d/tcp is not open (expected: the scan must see it)", a, p))
		}
	}
	return problems
}

// scanRate is the counted scan's rate (SYNs per second per family). The
// guest reads them at its own pace from the tap's queue, which holds a
// whole scan (vm.LinkTapQueue), as it does network.udp's sweeps.
const scanRate = 10000

// countedScan is network.scan with the guest's accounting, as network.udp
// does it: verify's rules count nmap's SYNs (tagged by its fixed source
// port) as they reach the guest's IP layer (raw PREROUTING) and as they
// pass its firewall (security INPUT and FORWARD, with a LOG rule naming
// each port). nmap then sends one SYN per port, fast: a SYN lost on the
// way shows in the count (nil and why: the caller scans again, thoroughly),
// and a port is judged open by the guest's log, whatever nmap saw of the
// answers; nmap's open ports must match too (an expected port it did not
// see is looked at again, thoroughly). The problems found, or an empty
// non-nil slice.
func (c *checker) countedScan(ctx context.Context, targets []netip.Addr, ev *evidence) ([]string, string) {
	sport := 30000 + int(time.Now().UnixNano()%10000)
	var sweeps []udpSweep
	for _, a := range targets {
		sweeps = append(sweeps, udpSweep{Src: linkHost(a), Dst: a, Sport: sport, TCP: true})
	}
	// One command adds verify's counting rules and reads the counters
	// before the scan; one reads them after it, with the kernel log, and
	// removes the rules (or the deferred removal does).
	removed := false
	defer c.removeCountingRules(ctx, sweeps, &removed)
	setup, err := c.in.sudo(ctx, countingSetupScript(sweeps))
	if err != nil {
		return nil, fmt.Sprintf("could not add verify's counting rules in the guest: %v", err)
	}
	_, rulesOut, stateOut, rulesOK := udpSetupParts(setup.Stdout)
	if !rulesOK {
		return nil, fmt.Sprintf("could not add verify's counting rules in the guest: %v", errOr(nil, cmdResult{Exit: setup.Exit, Stderr: rulesOut + setup.Stderr}))
	}
	if bres := (cmdResult{Stdout: stateOut, Stderr: setup.Stderr, Exit: setup.Exit}); !bres.OK() {
		return nil, fmt.Sprintf("reading the guest's counters: %v", errOr(nil, bres))
	}
	before := parseUDPState(stateOut)
	t0 := time.Now()
	// One family at a time, each drained before the next: the tap's queue
	// holds one sweep (vm.LinkTapQueue), not two. Both at once, a
	// one-vCPU guest under TCG that read fewer than about 10000 SYNs a
	// second lost some, and the thorough scan that follows a loss took
	// about 100 s (TestVerifyAppliance in three runs out of three).
	outs := make([]nmapOut, len(targets))
	for i, s := range sweeps {
		outs[i] = c.nmapAll(ctx, targets[i:i+1], func(a netip.Addr) []string { return NmapCountedArgs(a, linkHost(a), c.in.link.Tap, sport, scanRate) }, "-counted")[0]
		c.udpDrainWait(ctx, s, before.tagged(s.ipt(), s.tag("seen")), 65535)
	}
	fin, err := c.in.sudo(ctx, udpFinishScript(sweeps, tcpTag))
	if err != nil {
		return nil, fmt.Sprintf("reading the guest's counters: %v", err)
	}
	stateAfter, logOut, finOK, rm := udpFinishParts(fin.Stdout)
	removed = rm
	if !finOK {
		return nil, fmt.Sprintf("reading the guest's counters: %v", errOr(nil, cmdResult{Exit: fin.Exit, Stderr: fin.Stderr}))
	}
	after := parseUDPState(stateAfter)
	d := func(s udpSweep, what string) int64 {
		return after.tagged(s.ipt(), s.tag(what)) - before.tagged(s.ipt(), s.tag(what))
	}
	for i, s := range sweeps {
		if outs[i].err != nil {
			return nil, fmt.Sprintf("the counted scan of %s did not complete: %v", s.Dst, firstLine(outs[i].err.Error()))
		}
		if seen := d(s, "seen"); seen < 65535 {
			return nil, fmt.Sprintf("the guest saw %d of nmap's SYNs to %s from source port %d, fewer than its 65535 ports (lost on the way)", seen, s.Dst, s.Sport)
		}
	}
	logRes := cmdResult{Cmd: probeLogScript(tcpTag), Stdout: logOut}
	passes := parseProbeLog(logRes.Stdout, true)
	problems := []string{}
	for i, s := range sweeps {
		a := s.Dst
		want := map[int]bool{}
		for _, p := range c.spec.ExpectedOpenTCP(s.Src) {
			want[p] = true
		}
		passed := d(s, "passed-input") + d(s, "passed-forward")
		var named []int
		reported := map[int]bool{}
		for _, p := range passes {
			if p.Src != s.Src || p.Sport != s.Sport {
				continue
			}
			named = append(named, p.Dport)
			if !want[p.Dport] {
				state := "filtered"
				for _, np := range outs[i].res.Ports {
					if np.Port == p.Dport {
						state = np.State + " (" + np.Reason + ")"
					}
				}
				reported[p.Dport] = true
				problems = append(problems, fmt.Sprintf("%s: %d/tcp is open: a SYN to it passed the guest's firewall (nmap: %s)", a, p.Dport, state))
			}
		}
		ev.add("$ %s\nthe guest saw %d SYNs from %s source port %d (%s after the scan started), %d passed its firewall, to %s",
			strings.Join(NmapCountedArgs(a, s.Src, c.in.link.Tap, sport, scanRate), " "), d(s, "seen"), s.Src, s.Sport, time.Since(t0).Round(time.Millisecond), passed, orDash(joinInts(named)))
		if passed > 0 && len(named) == 0 {
			problems = append(problems, fmt.Sprintf("%s: %d SYNs passed the guest's firewall and its kernel log names none of their ports", a, passed))
		}
		// nmap's view: what it saw open must be expected; an expected
		// port it did not see open (an answer lost under load) is scanned
		// again, thoroughly, and must be open then.
		var missing []int
		got := map[int]bool{}
		for _, p := range outs[i].res.Open() {
			got[p.Port] = true
		}
		for _, p := range slices.Sorted(maps.Keys(want)) {
			if !got[p] {
				missing = append(missing, p)
			}
		}
		o := outs[i]
		if len(missing) > 0 {
			ev.add("%s: nmap's fast scan did not see %s open: scanning those again", a, joinInts(missing))
			again := c.nmapAll(ctx, []netip.Addr{a}, func(a netip.Addr) []string { return NmapPortsArgs(a, missing) }, "-again")[0]
			if again.err != nil {
				problems = append(problems, fmt.Sprintf("the second scan of %s did not complete: %v", a, firstLine(again.err.Error())))
				continue
			}
			ev.add("$ %s\n%s", again.res.Args, again.res.Summary())
			for _, p := range again.res.Open() {
				got[p.Port] = true
			}
			o.res.Ports = append(slices.Clone(o.res.Ports), again.res.Open()...)
		}
		for _, p := range o.res.Open() {
			if !want[p.Port] && !reported[p.Port] {
				problems = append(problems, fmt.Sprintf("%s: %s is open", a, p))
			}
		}
		for _, p := range slices.Sorted(maps.Keys(want)) {
			if !got[p] {
				problems = append(problems, fmt.Sprintf("%s: %d/tcp is not open (expected: the scan must see it)", a, p))
			}
		}
		ev.add("nmap: %s", o.res.Summary())
	}
	if len(problems) > 0 {
		ev.cmd(logRes)
	}
	return problems, ""
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
