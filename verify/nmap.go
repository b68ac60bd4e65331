package verify

import (
	"encoding/xml"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// NmapArgs is the full TCP port scan of addr: every port, no host
// discovery (a firewall that drops pings must not make the host look down),
// no DNS, SYN scan, XML on stdout.
func NmapArgs(addr netip.Addr) []string {
	a := []string{"nmap", "-p-", "-Pn", "-n", "-sS", "-T4", "--max-retries", "2", "--reason", "-oX", "-"}
	if addr.Is6() {
		a = append(a, "-6")
	}
	return append(a, addr.String())
}

// NmapCountedArgs is the fast full scan network.scan runs when the guest
// counts what arrives (an SSH session): every SYN from source port sport,
// one per port (no retries) at rate per second at least. A SYN lost on
// the way shows in the guest's count, and the thorough scan (NmapArgs)
// runs instead; what passed the guest's firewall is the guest's log. The
// source address and device are explicit and the kernel routes nmap's
// packets (--send-ip): the guest's rules count by source address (left to
// itself, nmap sent the IPv6 SYNs in a real boot from an address those
// rules did not match: the guest counted none).
func NmapCountedArgs(addr, src netip.Addr, dev string, sport, rate int) []string {
	a := []string{"nmap", "-p-", "-Pn", "-n", "-sS", "-T4", "-e", dev, "-S", src.String(), "--send-ip", "-g", strconv.Itoa(sport), "--max-retries", "0",
		"--min-rate", strconv.Itoa(rate), "--reason", "-oX", "-"}
	if addr.Is6() {
		a = append(a, "-6")
	}
	return append(a, addr.String())
}

// NmapPortsArgs scans the given ports only, thoroughly (network.scan's
// second look at an expected port the counted scan did not see open).
func NmapPortsArgs(addr netip.Addr, ports []int) []string {
	var ps []string
	for _, p := range ports {
		ps = append(ps, strconv.Itoa(p))
	}
	a := []string{"nmap", "-p", strings.Join(ps, ","), "-Pn", "-n", "-sS", "-T4", "--max-retries", "2", "--reason", "-oX", "-"}
	if addr.Is6() {
		a = append(a, "-6")
	}
	return append(a, addr.String())
}

// NmapPort is one port nmap reported by itself (not in extraports).
type NmapPort struct {
	Proto   string
	Port    int
	State   string // open, closed, filtered, open|filtered, ...
	Reason  string // syn-ack, reset, no-response, ...
	Service string
}

func (p NmapPort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Proto) }

// NmapResult is what one scan of one host found.
type NmapResult struct {
	Args    string
	Address string
	HostUp  bool
	Ports   []NmapPort     // listed individually
	Extra   map[string]int // state -> count of ports not listed
	Scanned int            // ports scanned
	Elapsed string
	Exit    string // "success" or "error"
	Error   string
}

// Open returns the ports in state open.
func (r NmapResult) Open() []NmapPort {
	var out []NmapPort
	for _, p := range r.Ports {
		if p.State == "open" {
			out = append(out, p)
		}
	}
	return out
}

// Summary is a one-line account: "open 22/tcp (syn-ack); 65534 filtered".
func (r NmapResult) Summary() string {
	var parts []string
	var open []string
	for _, p := range r.Open() {
		open = append(open, fmt.Sprintf("%s (%s%s)", p, p.Reason, suffix(", ", p.Service)))
	}
	if len(open) == 0 {
		parts = append(parts, "no open port")
	} else {
		parts = append(parts, "open "+strings.Join(open, ", "))
	}
	counts := map[string]int{}
	for st, n := range r.Extra {
		counts[st] += n
	}
	for _, p := range r.Ports {
		if p.State != "open" {
			counts[p.State]++
		}
	}
	var states []string
	for st := range counts {
		states = append(states, st)
	}
	sort.Strings(states)
	for _, st := range states {
		parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
	}
	s := strings.Join(parts, "; ")
	if r.Elapsed != "" {
		s += fmt.Sprintf(" (%d ports in %ss)", r.Scanned, r.Elapsed)
	}
	return s
}

type nmapXML struct {
	Args     string `xml:"args,attr"`
	ScanInfo []struct {
		Protocol    string `xml:"protocol,attr"`
		NumServices int    `xml:"numservices,attr"`
	} `xml:"scaninfo"`
	Hosts []struct {
		Status struct {
			State string `xml:"state,attr"`
		} `xml:"status"`
		Addresses []struct {
			Addr string `xml:"addr,attr"`
			Type string `xml:"addrtype,attr"`
		} `xml:"address"`
		Ports struct {
			Extra []struct {
				State string `xml:"state,attr"`
				Count int    `xml:"count,attr"`
			} `xml:"extraports"`
			Port []struct {
				Protocol string `xml:"protocol,attr"`
				PortID   string `xml:"portid,attr"`
				State    struct {
					State  string `xml:"state,attr"`
					Reason string `xml:"reason,attr"`
				} `xml:"state"`
				Service struct {
					Name string `xml:"name,attr"`
				} `xml:"service"`
			} `xml:"port"`
		} `xml:"ports"`
	} `xml:"host"`
	RunStats struct {
		Finished struct {
			Elapsed string `xml:"elapsed,attr"`
			Exit    string `xml:"exit,attr"`
			ErrMsg  string `xml:"errormsg,attr"`
		} `xml:"finished"`
	} `xml:"runstats"`
}

// ParseNmapXML reads `nmap -oX -` output of a scan of one host. A scan
// that did not finish (no runstats, exit="error") is an error: its open
// ports cannot be trusted to be all of them.
func ParseNmapXML(b []byte) (NmapResult, error) {
	var x nmapXML
	if err := xml.Unmarshal(b, &x); err != nil {
		return NmapResult{}, fmt.Errorf("nmap XML: %w", err)
	}
	r := NmapResult{Args: x.Args, Extra: map[string]int{}, Elapsed: x.RunStats.Finished.Elapsed, Exit: x.RunStats.Finished.Exit, Error: x.RunStats.Finished.ErrMsg}
	for _, si := range x.ScanInfo {
		r.Scanned += si.NumServices
	}
	if r.Exit != "success" {
		msg := r.Error
		if msg == "" {
			msg = "the scan did not finish"
		}
		return r, fmt.Errorf("nmap: %s", msg)
	}
	if len(x.Hosts) != 1 {
		return r, fmt.Errorf("nmap: %d hosts in the output, want 1", len(x.Hosts))
	}
	h := x.Hosts[0]
	r.HostUp = h.Status.State == "up"
	for _, a := range h.Addresses {
		if a.Type == "ipv4" || a.Type == "ipv6" {
			r.Address = a.Addr
		}
	}
	for _, e := range h.Ports.Extra {
		r.Extra[e.State] += e.Count
	}
	for _, p := range h.Ports.Port {
		n, err := strconv.Atoi(p.PortID)
		if err != nil {
			return r, fmt.Errorf("nmap: port %q", p.PortID)
		}
		r.Ports = append(r.Ports, NmapPort{Proto: p.Protocol, Port: n, State: p.State.State, Reason: p.State.Reason, Service: p.Service.Name})
	}
	sort.Slice(r.Ports, func(i, j int) bool { return r.Ports[i].Port < r.Ports[j].Port })
	listed := len(r.Ports)
	for _, n := range r.Extra {
		listed += n
	}
	if r.Scanned > 0 && listed != r.Scanned {
		return r, fmt.Errorf("nmap: %d ports accounted for, %d scanned", listed, r.Scanned)
	}
	return r, nil
}
