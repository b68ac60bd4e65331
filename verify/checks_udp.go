package verify

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/vm"
)

// UDP exposure. From outside, a filtered UDP port and an open one whose
// program stays silent look alike, so the verdict is the guest's own
// accounting, read over SSH before and after a sweep that sends one
// datagram to every port 1-65535 from the outside namespace:
//
//   - verify's counting rules, tagged by the sweep's source port: one in
//     raw PREROUTING (the probe reached the guest's IP layer: none was lost
//     on the way, so the sweep covered every port) and one in the security
//     table's INPUT and FORWARD (which netfilter runs after the filter
//     table: the probe passed the firewall), with a LOG rule beside it
//     that names each passing probe's port in the kernel log;
//   - /proc/net/snmp and snmp6: Udp InDatagrams (reached a socket),
//     NoPorts (reached the UDP layer, no socket), InErrors;
//   - the firewall's per-rule and policy counters (iptables -L -v -x -n);
//   - the UDP sockets bound on the guest (/proc/net/udp, udp6): each one
//     on an address other than loopback must be on an allowed port.
//
// Allowed: the spec's PORT/udp (41641, tailscale) from any source port,
// and 68 from source port 67 (the DHCPv4 client). The sweep runs from a
// high source port (IPv4 and IPv6) and from source port 67 (IPv4).

// udpTag prefixes the comments and log lines of verify's counting rules.
const udpTag = "bake-verify-udp"

// tcpTag is network.scan's (checks_network.go: countedScan).
const tcpTag = "bake-verify-tcp"

// udpSweepRate bounds the probes sent per second; a sweep that lost
// probes on the way is sent again at udpSlowRate. The guest reads them at
// its own pace from the link's tap queue, which holds a whole sweep
// (vm.LinkTapQueue; with the tap's default queue of 1000, 8000/s lost
// about 2% of an IPv4 sweep under TCG on a busy 2-core host: the tap
// dropped what the guest had not read yet); verify then waits until the
// guest's counting rule saw every probe (udpDrainWait). The rate only
// bounds how much of a sweep waits in the queue at once.
const (
	udpSweepRate = 16000
	udpSlowRate  = 1500
)

// udpDrainStall: a sweep whose probes stopped arriving at the guest for
// this long has lost the rest; udpDrainMax bounds the whole wait.
const (
	udpDrainStall = 4 * time.Second
	udpDrainMax   = 3 * time.Minute
)

// udpSweep is one sweep: every port from one source address and port.
type udpSweep struct {
	Src   netip.Addr
	Dst   netip.Addr
	Sport int
	// TCP: the sweep is network.scan's (nmap's SYNs from Sport), counted
	// by the same kind of rules under tcpTag; UDP otherwise.
	TCP bool
}

// prefix is the tag of the sweep's protocol.
func (s udpSweep) prefix() string {
	if s.TCP {
		return tcpTag
	}
	return udpTag
}

func (s udpSweep) ipt() string {
	if s.Src.Is6() {
		return "ip6tables"
	}
	return "iptables"
}

func (s udpSweep) String() string {
	v := 4
	if s.Src.Is6() {
		v = 6
	}
	return fmt.Sprintf("IPv%d from %s source port %d", v, s.Src, s.Sport)
}

// tag is the comment of the sweep's counting rules (per source port and
// family: the families have their own tables).
func (s udpSweep) tag(what string) string {
	return fmt.Sprintf("%s-%s-%d", s.prefix(), what, s.Sport)
}

// udpAllowed reports whether a datagram from sport to dport may reach a
// socket: an allowed PORT/udp or PORT-PORT/udp of the spec, or 68 from 67
// over IPv4 (the DHCPv4 client).
func udpAllowed(allow []string, v6 bool, sport, dport int) bool {
	if !v6 && sport == 67 && dport == 68 {
		return true
	}
	for _, p := range udpAllowPorts(allow) {
		if dport >= p[0] && dport <= p[1] {
			return true
		}
	}
	return false
}

// udpAllowPorts are the spec's allowed UDP port ranges.
func udpAllowPorts(allow []string) [][2]int {
	var out [][2]int
	for _, a := range allow {
		port, proto, _ := strings.Cut(a, "/")
		if proto != "udp" {
			continue
		}
		lo, hi, rng := strings.Cut(port, "-")
		if !rng {
			hi = lo
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil {
			out = append(out, [2]int{l, h})
		}
	}
	return out
}

// udpRulesScript adds (op "-A"/"-I") or deletes ("-D") verify's counting
// rules of the sweeps.
func udpRulesScript(sweeps []udpSweep, del bool) string {
	var b strings.Builder
	for _, s := range sweeps {
		m := fmt.Sprintf("-s %s -p udp --sport %d", s.Src, s.Sport)
		if s.TCP {
			m = fmt.Sprintf("-s %s -p tcp --syn --sport %d", s.Src, s.Sport)
		}
		add := func(table, chain, rest string) {
			op := "-A"
			if table == "raw" {
				op = "-I"
			}
			if del {
				op = "-D"
			}
			fmt.Fprintf(&b, "%s -w -t %s %s %s %s %s\n", s.ipt(), table, op, chain, m, rest)
		}
		add("raw", "PREROUTING", "-m comment --comment "+s.tag("seen"))
		for _, chain := range []string{"INPUT", "FORWARD"} {
			add("security", chain, "-m comment --comment "+s.tag("passed-"+strings.ToLower(chain)))
			add("security", chain, fmt.Sprintf("-m limit --limit 200/second --limit-burst 400 -j LOG --log-level 7 --log-prefix %q", s.prefix()+": "))
		}
	}
	return b.String()
}

// udpState is what the guest says at one moment.
type udpState struct {
	snmp     map[string]int64 // "Udp.InDatagrams", "Udp6.NoPorts", "Ip.InReceives", ...
	counters []ruleCounter    // every table's rules, iptables and ip6tables
	raw      string
}

// udpStateScript prints the counters: snmp, snmp6, then iptables -L -v -x
// -n of each table, each section headed "== NAME".
const udpStateScript = `echo "== snmp"; cat /proc/net/snmp
echo "== snmp6"; cat /proc/net/snmp6 2>/dev/null
for t in iptables ip6tables; do for tb in filter raw security; do echo "== $t $tb"; $t -w -t $tb -L -v -x -n 2>&1; done; done`

func parseUDPState(out string) udpState {
	st := udpState{snmp: map[string]int64{}, raw: out}
	for name, body := range sections(out) {
		switch {
		case name == "snmp" || name == "snmp6":
			for k, v := range parseSNMP(body) {
				st.snmp[k] = v
			}
		default:
			for _, rc := range parseRuleCounters(body) {
				rc.Table = name
				st.counters = append(st.counters, rc)
			}
		}
	}
	sort.SliceStable(st.counters, func(i, j int) bool { return st.counters[i].Table < st.counters[j].Table })
	return st
}

// sections splits output into "== NAME" sections.
func sections(out string) map[string]string {
	m := map[string]string{}
	name := ""
	var b strings.Builder
	flush := func() {
		if name != "" {
			m[name] += b.String()
		}
		b.Reset()
	}
	for _, l := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(l, "== "); ok {
			flush()
			name = strings.TrimSpace(n)
			continue
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	flush()
	return m
}

// parseSNMP reads /proc/net/snmp (pairs of lines "Udp: Name Name ..." and
// "Udp: 1 2 ...") and /proc/net/snmp6 ("Udp6InDatagrams 12") into
// "Udp.InDatagrams", "Udp6.InDatagrams", ... A value that is no integer
// is left out.
func parseSNMP(s string) map[string]int64 {
	m := map[string]int64{}
	var head []string
	headProto := ""
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if proto, ok := strings.CutSuffix(f[0], ":"); ok {
			if _, err := strconv.ParseInt(f[min(1, len(f)-1)], 10, 64); len(f) > 1 && err != nil {
				head, headProto = f[1:], proto
				continue
			}
			if proto == headProto {
				for i, v := range f[1:] {
					if i >= len(head) {
						break
					}
					if n, err := strconv.ParseInt(v, 10, 64); err == nil {
						m[proto+"."+head[i]] = n
					}
				}
			}
			head, headProto = nil, ""
			continue
		}
		if len(f) == 2 {
			for _, p := range []string{"Udp6", "UdpLite6", "Ip6", "Icmp6"} {
				if name, ok := strings.CutPrefix(f[0], p); ok && name != "" && name[0] >= 'A' && name[0] <= 'Z' {
					if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
						m[p+"."+name] = n
					}
					break
				}
			}
		}
	}
	return m
}

// ruleCounter is one rule (or a chain's policy) of iptables -L -v -x -n.
type ruleCounter struct {
	Table string // "iptables filter", as the section names it
	Chain string
	Index int    // 1-based; 0 = the chain's policy
	Pkts  int64  // packets
	Text  string // the rule as listed after the counters, or "policy DROP"
}

func (r ruleCounter) key() string {
	return fmt.Sprintf("%s/%s/%d/%s", r.Table, r.Chain, r.Index, r.Text)
}

var chainRE = regexp.MustCompile(`^Chain (\S+) \((?:policy (\S+) (\d+) packets, \d+ bytes|\d+ references)\)`)

// parseRuleCounters reads `iptables -L -v -x -n`: each rule's packet
// count and text, and each built-in chain's policy count.
func parseRuleCounters(s string) []ruleCounter {
	var out []ruleCounter
	chain := ""
	idx := 0
	for _, l := range strings.Split(s, "\n") {
		if m := chainRE.FindStringSubmatch(l); m != nil {
			chain, idx = m[1], 0
			if m[2] != "" {
				n, _ := strconv.ParseInt(m[3], 10, 64)
				out = append(out, ruleCounter{Chain: chain, Pkts: n, Text: "policy " + m[2]})
			}
			continue
		}
		f := strings.Fields(l)
		if chain == "" || len(f) < 3 || f[0] == "pkts" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue
		}
		idx++
		out = append(out, ruleCounter{Chain: chain, Index: idx, Pkts: n, Text: strings.Join(f[2:], " ")})
	}
	return out
}

// counterDeltas are the rules whose packet count grew from a to b, by
// at least min packets.
func counterDeltas(a, b []ruleCounter, min int64) []string {
	before := map[string]int64{}
	for _, r := range a {
		before[r.key()] = r.Pkts
	}
	var out []string
	for _, r := range b {
		old, ok := before[r.key()]
		if !ok {
			continue // verify's own rules, added in between
		}
		if d := r.Pkts - old; d >= min {
			out = append(out, fmt.Sprintf("%s %s #%d +%d: %s", r.Table, r.Chain, r.Index, d, r.Text))
		}
	}
	return out
}

// tagged is the packet count of the rules whose text holds comment (summed
// over the tables whose name starts with tool+" "+table).
func (st udpState) tagged(tool, comment string) int64 {
	var n int64
	for _, r := range st.counters {
		if strings.HasPrefix(r.Table, tool+" ") && strings.Contains(r.Text, "/* "+comment+" */") {
			n += r.Pkts
		}
	}
	return n
}

// logLineRE reads verify's LOG lines: "bake-verify-udp: IN=... SRC=... DST=... ... PROTO=UDP SPT=67 DPT=68",
// "bake-verify-tcp: ... PROTO=TCP SPT=45678 DPT=22 ...".
var logLineRE = regexp.MustCompile(`(` + udpTag + `|` + tcpTag + `): .*?\bSRC=(\S+) DST=(\S+) .*?\bPROTO=(UDP|TCP) SPT=(\d+) DPT=(\d+)`)

// udpPass is one probe the guest's log says passed the firewall.
type udpPass struct {
	Src, Dst     netip.Addr
	Sport, Dport int
}

// parseUDPLog reads the kernel log lines of verify's UDP LOG rules.
func parseUDPLog(s string) []udpPass { return parseProbeLog(s, false) }

// parseProbeLog reads the kernel log lines of verify's LOG rules of one
// protocol (network.udp's, or network.scan's when tcp).
func parseProbeLog(s string, tcp bool) []udpPass {
	tag, proto := udpTag, "UDP"
	if tcp {
		tag, proto = tcpTag, "TCP"
	}
	var out []udpPass
	seen := map[udpPass]bool{}
	for _, l := range strings.Split(s, "\n") {
		m := logLineRE.FindStringSubmatch(l)
		if m == nil || m[1] != tag || m[4] != proto {
			continue
		}
		src, err1 := netip.ParseAddr(m[2])
		dst, err2 := netip.ParseAddr(m[3])
		sp, err3 := strconv.Atoi(m[5])
		dp, err4 := strconv.Atoi(m[6])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || sp > 65535 || dp > 65535 {
			continue
		}
		p := udpPass{src, dst, sp, dp}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// sendUDPSweep sends one datagram to every port 1-65535 of s.Dst from
// s.Src:s.Sport, through raw sockets in the namespace ns (any source port,
// 67 included, without binding it), at most rate per second. It returns
// how many it sent.
func sendUDPSweep(ctx context.Context, ns string, s udpSweep, rate int) (int, error) {
	sent := 0
	err := inNetns(ns, func() error {
		var fd int
		var err error
		var to unix.Sockaddr
		if s.Dst.Is6() {
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
			if err != nil {
				return fmt.Errorf("raw UDP socket: %w", err)
			}
			// The kernel fills in the UDP checksum (offset 6).
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6); err != nil {
				unix.Close(fd)
				return fmt.Errorf("IPV6_CHECKSUM: %w", err)
			}
			if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: s.Src.As16()}); err != nil {
				unix.Close(fd)
				return fmt.Errorf("bind %s: %w", s.Src, err)
			}
			to = &unix.SockaddrInet6{Addr: s.Dst.As16()}
		} else {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
			if err != nil {
				return fmt.Errorf("raw UDP socket: %w", err)
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: s.Src.As4()}); err != nil {
				unix.Close(fd)
				return fmt.Errorf("bind %s: %w", s.Src, err)
			}
			to = &unix.SockaddrInet4{Addr: s.Dst.As4()}
		}
		defer unix.Close(fd)
		// Nothing is read from this socket: a small buffer.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
		t0 := time.Now()
		for port := 1; port <= 65535; port++ {
			if port%256 == 0 {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				// Bounded rate: wait until this many probes are due.
				if due := t0.Add(time.Duration(port) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
					time.Sleep(time.Until(due))
				}
			}
			pkt := udpProbe(s.Sport, port)
			for try := 0; ; try++ {
				err := unix.Sendto(fd, pkt, 0, to)
				if err == nil {
					sent++
					break
				}
				if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) || try > 100 {
					return fmt.Errorf("send to port %d: %w", port, err)
				}
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	})
	return sent, err
}

// udpProbe is a UDP header and a short payload (checksum 0: none, over
// IPv4; the kernel computes it over IPv6).
func udpProbe(sport, dport int) []byte {
	payload := []byte(udpTag)
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], uint16(sport))
	binary.BigEndian.PutUint16(b[2:], uint16(dport))
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	return b
}

func (c *checker) udpState(ctx context.Context) (udpState, cmdResult, error) {
	res, err := c.in.sudo(ctx, udpStateScript)
	if err != nil {
		return udpState{}, res, err
	}
	return parseUDPState(res.Stdout), res, nil
}

// udpDrainWait waits until the guest's counting rule in raw PREROUTING
// saw want probes of s more than seen0 (the guest has read the tap's queue
// to the end), or saw none more for udpDrainStall, or udpDrainMax passed.
// It returns the last count it read (more than seen0), ok false when it
// read none. The verdict is the caller's, on counters it reads itself:
// this count only says whether the sweep is worth sending again.
func (c *checker) udpDrainWait(ctx context.Context, s udpSweep, seen0, want int64) (got int64, ok bool) {
	script := s.ipt() + " -w -t raw -L PREROUTING -v -x -n"
	deadline := time.Now().Add(udpDrainMax)
	last, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		res, err := c.in.sudo(ctx, script)
		if err == nil && res.OK() {
			st := udpState{}
			for _, rc := range parseRuleCounters(res.Stdout) {
				rc.Table = s.ipt() + " raw"
				st.counters = append(st.counters, rc)
			}
			seen := st.tagged(s.ipt(), s.tag("seen")) - seen0
			got, ok = seen, true
			if seen >= want {
				return got, ok
			}
			if seen != last {
				last, lastChange = seen, time.Now()
			}
		}
		if time.Since(lastChange) > udpDrainStall {
			return got, ok
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return got, ok
}

// removeCountingRules removes verify's counting rules of sweeps from the
// guest unless *removed (the check's last command removed them): deferred
// by network.udp and network.scan, so that the rules go whatever happens.
func (c *checker) removeCountingRules(ctx context.Context, sweeps []udpSweep, removed *bool) {
	if *removed {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	c.in.sudo(dctx, udpRulesScript(sweeps, true)+"true")
}

// Markers between the parts of network.udp's combined guest commands.
const (
	udpMarkRules = "@@bake-verify-udp-rules@@"
	udpMarkState = "@@bake-verify-udp-state@@"
	udpMarkLog   = "@@bake-verify-udp-log@@"
	udpMarkDel   = "@@bake-verify-udp-removed@@"
)

// udpSetupScript (sudo) is network.udp's first command: the guest's
// sockets (socketsScript), then verify's counting rules added (all or the
// command fails: set -e), then the counters before the sweeps
// (udpStateScript), each part after its marker. One command where there
// were three.
func udpSetupScript(sweeps []udpSweep) string {
	return socketsScript + "\n" + countingSetupScript(sweeps)
}

// countingSetupScript is udpSetupScript without the sockets (network.scan's
// first command).
func countingSetupScript(sweeps []udpSweep) string {
	// The subshell stands alone (its status read after it): in an and-or
	// list set -e would be ignored inside it.
	return "echo " + udpMarkRules + "\n( set -e\n" + udpRulesScript(sweeps, false) + ") 2>&1\n[ $? -eq 0 ] || exit 3\necho " + udpMarkState + "\n" + udpStateScript
}

// udpSetupParts splits udpSetupScript's output: the sockets, the rules'
// output, the counters; rulesOK when the rules were added (the counters'
// marker printed).
func udpSetupParts(out string) (socks, rules, state string, rulesOK bool) {
	socks, rest, ok := strings.Cut(out, udpMarkRules+"\n")
	if !ok {
		return out, "", "", false
	}
	rules, state, rulesOK = strings.Cut(rest, udpMarkState+"\n")
	return socks, rules, state, rulesOK
}

// probeLogScript prints the kernel log lines of verify's LOG rules of one
// tag (udpTag or tcpTag).
func probeLogScript(tag string) string {
	return "dmesg 2>/dev/null | grep -F " + shellQuote(tag+": ") + " | tail -n 2000 || journalctl -k -q --no-pager -g " + shellQuote(tag) + " | tail -n 2000"
}

// udpFinishScript (sudo) is network.udp's last command: the counters after
// the sweeps, the kernel log's lines of verify's LOG rules, then verify's
// counting rules removed, each part after its marker. One command where
// there were three.
func udpFinishScript(sweeps []udpSweep, tag string) string {
	return udpStateScript + "\necho " + udpMarkLog + "\n" + probeLogScript(tag) + "\necho " + udpMarkDel + "\n" + udpRulesScript(sweeps, true) + "true"
}

// udpFinishParts splits udpFinishScript's output; ok when the log's
// marker was printed (the counters were read), removed when the rules'
// removal ran.
func udpFinishParts(out string) (state, log string, ok, removed bool) {
	state, rest, ok := strings.Cut(out, udpMarkLog+"\n")
	if !ok {
		return out, "", false, false
	}
	log, _, removed = strings.Cut(rest, udpMarkDel+"\n")
	return state, log, true, removed
}

func (c *checker) udpExposure(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	if !c.in.ipv4.IsValid() {
		return Fail, "the guest has no IPv4 address on the link (no DHCPv4 lease): nothing to probe\n" + c.in.serialTail(20)
	}
	allow := c.spec.Firewall.Allow
	sport := 40000 + int(time.Now().UnixNano()%20000)
	// The sweep from source port 67 first: its counting rules also count
	// the DHCP server's replies to the guest (10.77.0.1:67 -> 68, allowed),
	// so it is counted only over its own time, from the reading before the
	// sweeps to one right after it (see the loop below).
	sweeps := []udpSweep{
		{Src: vm.LinkHostIPv4.Addr(), Dst: c.in.ipv4, Sport: 67},
		{Src: vm.LinkHostIPv4.Addr(), Dst: c.in.ipv4, Sport: sport},
	}
	if c.in.ipv6.IsValid() {
		sweeps = append(sweeps, udpSweep{Src: vm.LinkHostIPv6.Addr(), Dst: c.in.ipv6, Sport: sport})
	} else {
		problems = append(problems, "the guest has no IPv6 address on the link (no SLAAC): no IPv6 sweep")
	}

	// One command: the sockets bound on the guest, verify's counting rules
	// added, the counters before the sweeps. The rules are removed
	// whatever happens (by the last command, or here).
	removed := false
	defer c.removeCountingRules(ctx, sweeps, &removed)
	tSetup := time.Now()
	setup, err := c.in.sudo(ctx, udpSetupScript(sweeps))
	if err != nil {
		return Fail, err.Error()
	}
	dSetup := time.Since(tSetup)
	sockOut, rulesOut, stateOut, rulesOK := udpSetupParts(setup.Stdout)

	// The sockets: on an address other than loopback, only allowed ports.
	socks := parseProcNet(sockOut)
	sres := cmdResult{Cmd: socketsScript, Stdout: sockOut}
	var exposed []listener
	var socketLines []string
	for _, l := range socks {
		if !strings.HasPrefix(l.Proto, "udp") || l.Addr.Addr().IsLoopback() || l.Connected {
			continue
		}
		socketLines = append(socketLines, fmt.Sprintf("%s %s", l.Proto, l.Addr))
		p := int(l.Addr.Port())
		if !udpAllowed(allow, l.Proto == "udp6", 0, p) && p != 68 {
			exposed = append(exposed, l)
		}
	}
	if len(exposed) > 0 {
		var inodes []string
		for _, l := range exposed {
			inodes = append(inodes, l.Inode)
		}
		own := c.owners(ctx, inodes)
		for _, l := range exposed {
			problems = append(problems, fmt.Sprintf("a UDP socket is bound on %s %s (%s), a port no allow names", l.Proto, l.Addr, orDash(own[l.Inode])))
		}
		ev.cmd(sres)
	}
	ev.add("UDP sockets bound on addresses other than loopback (unconnected): %s", orDash(strings.Join(socketLines, ", ")))
	if !rulesOK {
		add := cmdResult{Cmd: "set -e\n" + udpRulesScript(sweeps, false), Stdout: rulesOut, Stderr: setup.Stderr, Exit: setup.Exit}
		ev.cmd(add)
		return Fail, fmt.Sprintf("could not add verify's counting rules in the guest (raw and security tables): %v\n\n%s", errOr(nil, add), ev)
	}
	bres := cmdResult{Cmd: udpStateScript, Stdout: stateOut, Stderr: setup.Stderr, Exit: setup.Exit, Cut: setup.Cut}
	if !bres.OK() {
		ev.cmd(bres)
		return Fail, fmt.Sprintf("reading the guest's counters: %v\n\n%s", errOr(nil, bres), ev)
	}
	before := parseUDPState(stateOut)

	type result struct {
		sweep      udpSweep
		sent, seen int64
		passed     int64 // to the guest (INPUT) or through it (FORWARD)
		passedIn   int64
		rate       int
		took       time.Duration
		err        error
		base       udpState  // the counters this sweep's are counted from
		end        *udpState // and to (nil: the reading after every sweep)
	}
	var results []result
	// The counters are read once before the sweeps and once after them
	// all: each sweep has counting rules of its own (source address and
	// port, per family), which nothing else sends to, so the one reading
	// after is every sweep's "after". Except the sweep from source port 67
	// (the DHCP server's replies count there too): it runs first and is
	// counted to a reading right after it, its window as short as before.
	// Between the sweeps only the drain's count of the sweep's own
	// raw-PREROUTING rule is read (one iptables listing, as before): it
	// says whether every probe arrived. A sweep that lost probes is sent
	// again, slower, counted from a full reading taken before the re-send.
	// (A full reading, six iptables listings, took about a second under
	// TCG after each sweep.)
	for _, s := range sweeps {
		shared := !s.Src.Is6() && s.Sport == 67
		rate := udpSweepRate
		base := before
		var r result
		for attempt := 0; attempt < 2; attempt++ {
			t0 := time.Now()
			n, err := sendUDPSweep(ctx, c.in.link.Netns, s, rate)
			if ctx.Err() != nil {
				return Skip, "interrupted"
			}
			r = result{sweep: s, sent: int64(n), rate: rate, err: err, base: base}
			if err != nil {
				r.took = time.Since(t0)
				break
			}
			seen, known := c.udpDrainWait(ctx, s, base.tagged(s.ipt(), s.tag("seen")), int64(n))
			r.took = time.Since(t0)
			if known && seen >= int64(n) && !shared {
				break
			}
			// Lost on the way, or the drain could not count, or the sweep
			// from port 67: the full counters decide (and are the 67
			// sweep's end, and a re-send's baseline).
			b1, _, err2 := c.udpState(ctx)
			if err2 != nil {
				return Fail, err2.Error()
			}
			r.end = &b1
			if b1.tagged(s.ipt(), s.tag("seen"))-base.tagged(s.ipt(), s.tag("seen")) >= int64(n) || attempt == 1 {
				break
			}
			c.r.logf("%s: UDP sweep %s: sent %d in %s, the guest saw %d: sending it again at %d/s", c.in.name(), s, n, r.took.Round(time.Millisecond), b1.tagged(s.ipt(), s.tag("seen"))-base.tagged(s.ipt(), s.tag("seen")), udpSlowRate)
			base = b1
			rate = udpSlowRate // lost on the way: once more, slower
		}
		results = append(results, r)
	}
	// One command: the counters after the sweeps, the kernel log, verify's
	// rules removed.
	tFin := time.Now()
	fin, err := c.in.sudo(ctx, udpFinishScript(sweeps, udpTag))
	if err != nil {
		return Fail, err.Error()
	}
	c.r.logf("%s: network.udp: first command (sockets, rules, counters) %s, last (counters, log, rules removed) %s", c.in.name(), dSetup.Round(100*time.Millisecond), time.Since(tFin).Round(100*time.Millisecond))
	stateAfter, logOut, finOK, rm := udpFinishParts(fin.Stdout)
	removed = rm
	ares := cmdResult{Cmd: udpStateScript, Stdout: stateAfter, Stderr: fin.Stderr, Exit: fin.Exit}
	if !finOK {
		ev.cmd(ares)
		return Fail, fmt.Sprintf("reading the guest's counters after the sweeps: %v\n\n%s", errOr(nil, ares), ev)
	}
	after := parseUDPState(stateAfter)
	logRes := cmdResult{Cmd: probeLogScript(udpTag), Stdout: logOut}
	for i := range results {
		r := &results[i]
		s, b, e := r.sweep, r.base, &after
		if r.end != nil {
			e = r.end
		}
		r.seen = e.tagged(s.ipt(), s.tag("seen")) - b.tagged(s.ipt(), s.tag("seen"))
		r.passedIn = e.tagged(s.ipt(), s.tag("passed-input")) - b.tagged(s.ipt(), s.tag("passed-input"))
		r.passed = r.passedIn + e.tagged(s.ipt(), s.tag("passed-forward")) - b.tagged(s.ipt(), s.tag("passed-forward"))
		c.r.logf("%s: UDP sweep %s: sent %d in %s, the guest saw %d, %d passed its firewall", c.in.name(), s, r.sent, r.took.Round(time.Millisecond), r.seen, r.passed)
	}
	passes := parseUDPLog(logRes.Stdout)

	listening := map[string]bool{} // "udp/PORT", "udp6/PORT": unconnected sockets
	for _, l := range socks {
		if strings.HasPrefix(l.Proto, "udp") && !l.Connected {
			listening[fmt.Sprintf("%s/%d", l.Proto, l.Addr.Port())] = true
		}
	}
	for _, r := range results {
		s := r.sweep
		line := fmt.Sprintf("sweep %s to %s, ports 1-65535 at %d/s: sent %d, the guest saw %d, %d passed its firewall", s, s.Dst, r.rate, r.sent, r.seen, r.passed)
		ev.add("%s", line)
		if r.err != nil {
			problems = append(problems, fmt.Sprintf("sweep %s: %v", s, r.err))
			continue
		}
		if r.sent != 65535 || r.seen < r.sent {
			problems = append(problems, fmt.Sprintf("sweep %s: only %d of 65535 probes reached the guest's IP layer (lost on the way): the sweep does not cover every port", s, r.seen))
		}
		var named []string
		bad := 0
		var allowedPassed []int
		for _, p := range passes {
			if p.Src != s.Src || p.Sport != s.Sport {
				continue
			}
			named = append(named, strconv.Itoa(p.Dport))
			if udpAllowed(allow, s.Src.Is6(), p.Sport, p.Dport) {
				allowedPassed = append(allowedPassed, p.Dport)
				continue
			}
			bad++
			proto := "udp"
			if s.Src.Is6() {
				proto = "udp6"
			}
			sock := "no socket: the guest answers with port unreachable"
			if listening[fmt.Sprintf("%s/%d", proto, p.Dport)] || listening[fmt.Sprintf("udp6/%d", p.Dport)] {
				sock = "a socket is bound on it: it reached a program"
			}
			problems = append(problems, fmt.Sprintf("sweep %s: %d/udp passed the firewall (%s)", s, p.Dport, sock))
		}
		if others := r.passed - int64(len(allowedPassed)); others > int64(bad) {
			problems = append(problems, fmt.Sprintf("sweep %s: %d probes to ports no allow names passed the firewall; the kernel log names %d of them (its LOG rule is rate-limited)", s, others, bad))
		}
		if len(allowedPassed) > 0 {
			ev.add("  passed (allowed): %s", joinInts(allowedPassed))
		}
	}
	// The guest's own UDP accounting over the whole sweep (all traffic:
	// the probes that passed, and the guest's DNS, DHCP, NTP replies).
	for _, fam := range []string{"Udp", "Udp6"} {
		d := func(k string) int64 { return after.snmp[fam+"."+k] - before.snmp[fam+"."+k] }
		ev.add("/proc/net/snmp%s over the sweeps: %s InDatagrams +%d, NoPorts +%d, InErrors +%d", map[string]string{"Udp": "", "Udp6": "6"}[fam], fam, d("InDatagrams"), d("NoPorts"), d("InErrors"))
	}
	var passedV4, passedV6 int64
	for _, r := range results {
		if r.sweep.Src.Is6() {
			passedV6 += r.passedIn
		} else {
			passedV4 += r.passedIn
		}
	}
	for fam, n := range map[string]int64{"Udp": passedV4, "Udp6": passedV6} {
		got := after.snmp[fam+".InDatagrams"] + after.snmp[fam+".NoPorts"] + after.snmp[fam+".InErrors"] -
			before.snmp[fam+".InDatagrams"] - before.snmp[fam+".NoPorts"] - before.snmp[fam+".InErrors"]
		if _, ok := after.snmp[fam+".InDatagrams"]; ok && got < n {
			problems = append(problems, fmt.Sprintf("the guest's counters disagree: %d %s probes passed the firewall but the UDP layer counted only %d datagrams", n, fam, got))
		}
	}
	if d := counterDeltas(before.counters, after.counters, 1000); len(d) > 0 {
		ev.add("firewall rules and policies that counted the sweeps (+1000 packets or more):\n  %s", strings.Join(d, "\n  "))
	}
	if len(problems) > 0 {
		ev.cmd(ares)
		ev.cmd(logRes)
	}
	var allowDesc []string
	for _, a := range allow {
		if strings.HasSuffix(a, "/udp") {
			allowDesc = append(allowDesc, a)
		}
	}
	allowDesc = append(allowDesc, "68/udp from source port 67")
	return verdict(problems, ev, fmt.Sprintf("a datagram to each UDP port 1-65535 (%d sweeps): only %s passed the firewall; UDP sockets off loopback only on allowed ports", len(sweeps), strings.Join(allowDesc, ", ")))
}

func joinInts(ns []int) string {
	ns = slices.Clone(ns)
	slices.Sort(ns)
	var s []string
	for _, n := range ns {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ", ")
}

// errOr is err, or the command's failure.
func errOr(err error, r cmdResult) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("exit %d: %s", r.Exit, firstLine(strings.TrimSpace(r.Stderr)))
}
