package verify

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/bakeimg/bake/appliance"
)

// DNS at the metadata addresses (part of isolation.metadata): where a
// cloud's resolver sits on a metadata address (GCE's 169.254.169.254,
// Azure's 168.63.129.16; appliance.MetadataDNS), containers must keep DNS
// there, port 53 only, while the rest of the service stays out of reach.
// verify's stand-in resolver answers one name on those addresses; the
// guest and the probe container's network namespace each send it a real
// DNS query (bash's /dev/udp, the reply read by dd and printed in hex) and
// the reply is judged here.

// metadataDNSName is the one name the stand-in resolver answers, with
// metadataDNSAnswer (TEST-NET-1: never routed).
const metadataDNSName = "metadata-dns.bake-verify.test."

var metadataDNSAnswer = netip.MustParseAddr("192.0.2.53")

// metadataDNSAddrs are the stand-ins that are cloud resolvers.
func metadataDNSAddrs() []string {
	var out []string
	for _, a := range metadataStandIns {
		if slices.Contains(appliance.MetadataDNS, a) {
			out = append(out, a.String())
		}
	}
	return out
}

// dnsQuery is a recursive A query for metadataDNSName with the given ID.
func dnsQuery(id uint16) ([]byte, error) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(metadataDNSName), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// dnsReply answers one query: metadataDNSAnswer for an A query of
// metadataDNSName, NXDOMAIN for any other name; nil for what is not a
// query.
func dnsReply(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	hit := strings.EqualFold(qs[0].Name.String(), metadataDNSName) && qs[0].Type == dnsmessage.TypeA && qs[0].Class == dnsmessage.ClassINET
	if !hit {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(qs[0]) != nil || b.StartAnswers() != nil {
		return nil
	}
	if hit {
		if b.AResource(dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: metadataDNSAnswer.As4()}) != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// serveDNS answers queries on pc until it is closed.
func serveDNS(pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if r := dnsReply(buf[:n]); r != nil {
			pc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			pc.WriteTo(r, from)
		}
	}
}

// serveDNSOn serves the stand-in resolver on port 53/udp of each address
// in namespace ns (the addresses must be there). One socket per address:
// a reply must come from the address asked, or the asker's connected
// socket drops it. stop closes them all.
func serveDNSOn(ns string, addrs []string) (stop func(), err error) {
	var conns []net.PacketConn
	stop = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for _, a := range addrs {
		var pc net.PacketConn
		if err := inNetns(ns, func() error {
			var err error
			pc, err = net.ListenPacket("udp4", net.JoinHostPort(a, "53"))
			return err
		}); err != nil {
			stop()
			return nil, err
		}
		conns = append(conns, pc)
		go serveDNS(pc)
	}
	return stop, nil
}

// metadataDNSScript sends q to port 53 of each address from the guest
// (host) and from the container's network namespace ($pid, set by
// metadataProbes, which runs first), all at once, each bounded by 10 s; a
// line per attempt: dns WHO ADDR rc=N HEX-OF-THE-REPLY. Its wait waits
// for every background probe of the script, metadataProbes' too.
func metadataDNSScript(addrs []string, q []byte) string {
	var esc strings.Builder
	for _, c := range q {
		fmt.Fprintf(&esc, `\x%02x`, c)
	}
	return `
dnsprobe() {
	local cmd="exec 3<>/dev/udp/$2/53 && printf '` + esc.String() + `' >&3 && dd bs=512 count=1 <&3 2>/dev/null | od -An -v -tx1 | tr -d ' \n'"
	if [ "$1" = host ]; then
		timeout 10 bash -c "$cmd"
	else
		timeout 10 nsenter -t "$pid" -n bash -c "$cmd"
	fi
}
for a in ` + strings.Join(addrs, " ") + `; do
	for who in host container; do
		( out=$(dnsprobe "$who" "$a" 2>&1); rc=$?; echo "dns $who $a rc=$rc $(printf '%s' "$out" | tr -d '\r\n')" ) &
	done
done
wait`
}

// metadataDNSVerdict judges metadataDNSScript's lines: every attempt
// must get the stand-in's answer to query id.
func metadataDNSVerdict(out string, addrs []string, id uint16) (problems []string, ok string) {
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "dns" {
			continue
		}
		key := f[1] + " " + f[2]
		if len(f) < 5 || f[3] != "rc=0" {
			got[key] = "no reply (" + strings.Join(f[3:], " ") + ")"
			continue
		}
		got[key] = judgeDNSReply(f[4], id)
	}
	for _, a := range addrs {
		for _, who := range []string{"host", "container"} {
			what, seen := got[who+" "+a]
			switch {
			case !seen:
				problems = append(problems, fmt.Sprintf("no result for the DNS query %s -> %s:53", who, a))
			case what != "" && who == "container":
				problems = append(problems, fmt.Sprintf("a container cannot resolve at the cloud resolver %s:53: %s (containers lose DNS on a cloud whose resolver sits on a metadata address)", a, what))
			case what != "":
				problems = append(problems, fmt.Sprintf("not decided: the guest itself cannot resolve at the stand-in %s:53: %s", a, what))
			}
		}
	}
	return problems, fmt.Sprintf("the guest and a container resolve %s (%s) at the cloud resolvers %s, port 53", strings.TrimSuffix(metadataDNSName, "."), metadataDNSAnswer, strings.Join(addrs, ", "))
}

// judgeDNSReply says what is wrong with the reply in hex ("" when it is
// the stand-in's answer to query id).
func judgeDNSReply(hx string, id uint16) string {
	b, err := hex.DecodeString(hx)
	if err != nil || len(b) == 0 {
		return fmt.Sprintf("no reply (%q)", truncate(hx, 40))
	}
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil {
		return "not a DNS message: " + err.Error()
	}
	if !h.Response || h.ID != id || h.RCode != dnsmessage.RCodeSuccess {
		return fmt.Sprintf("an unexpected reply (id %d, response %v, rcode %v)", h.ID, h.Response, h.RCode)
	}
	if err := p.SkipAllQuestions(); err != nil {
		return "a malformed reply: " + err.Error()
	}
	for {
		rh, err := p.AnswerHeader()
		if err != nil {
			return "no A record in the reply"
		}
		if rh.Type != dnsmessage.TypeA {
			if err := p.SkipAnswer(); err != nil {
				return "a malformed reply: " + err.Error()
			}
			continue
		}
		a, err := p.AResource()
		if err != nil {
			return "a malformed reply: " + err.Error()
		}
		if netip.AddrFrom4(a.A) == metadataDNSAnswer {
			return ""
		}
		return fmt.Sprintf("the answer %s is not the stand-in's %s", netip.AddrFrom4(a.A), metadataDNSAnswer)
	}
}
