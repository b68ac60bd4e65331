package appliance

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Firewall backends.
const (
	BackendUFW      = "ufw"
	BackendIptables = "iptables-persistent"
)

// Firewall file locations.
const (
	UFWConf      = "/etc/ufw/ufw.conf"
	UFWDefaults  = "/etc/default/ufw"
	UFWUserRules = "/etc/ufw/user.rules"
	UFWUser6     = "/etc/ufw/user6.rules"
	RulesV4      = "/etc/iptables/rules.v4"
	RulesV6      = "/etc/iptables/rules.v6"
)

// Allow is one allow rule of layer 1: Ports ("22" or "60000:61000") of
// Proto from Source (any address when invalid), with a comment.
type Allow struct {
	Proto   string
	Ports   string
	Source  netip.Prefix
	Comment string
}

func (a Allow) multi() bool { return strings.ContainsAny(a.Ports, ":,") }

// applies reports whether a rule belongs in the IPv4 (v6 false) or IPv6
// rules: a rule with a source goes only where its address family is.
func (a Allow) applies(v6 bool) bool {
	return !a.Source.IsValid() || a.Source.Addr().Is6() == v6
}

// UFWConfFile is /etc/ufw/ufw.conf with the firewall enabled: ufw.service
// (ufw-init) loads the rules at boot, before the network is up, with no
// ufw command run on a live host.
func UFWConfFile() string {
	return `# /etc/ufw/ufw.conf
#
` + Header + `
# Set to yes to start on boot. If setting this remotely, be sure to add a rule
# to allow your remote connection before starting ufw. Eg: 'ufw allow 22/tcp'
ENABLED=yes

# Please use the 'ufw' command to set the loglevel. Eg: 'ufw logging medium'.
# See 'man ufw' for details.
LOGLEVEL=low
`
}

// UFWDefaultPolicies are set in /etc/default/ufw: deny incoming, allow
// outgoing, deny routed, and IPv6 handled too (Docker 20.10 sends IPv6
// to published ports through docker-proxy, in INPUT).
var UFWDefaultPolicies = []KV{
	{"IPV6", "yes"},
	{"DEFAULT_INPUT_POLICY", `"DROP"`},
	{"DEFAULT_OUTPUT_POLICY", `"ACCEPT"`},
	{"DEFAULT_FORWARD_POLICY", `"DROP"`},
	{"MANAGE_BUILTINS", "no"},
}

// KV is a shell variable assignment.
type KV struct{ Key, Value string }

// SetShellVars sets KEY=VALUE lines in a shell-style config file (such as
// /etc/default/ufw): an existing assignment is replaced in place, keeping
// the file's comments, and a missing one is appended.
func SetShellVars(content string, kvs []KV) string {
	lines := strings.Split(strings.TrimSuffix(content, "\n"), "\n")
	if content == "" {
		lines = nil
	}
	for _, kv := range kvs {
		re := regexp.MustCompile(`^\s*` + regexp.QuoteMeta(kv.Key) + `=`)
		found := false
		for i, l := range lines {
			if re.MatchString(l) {
				lines[i] = kv.Key + "=" + kv.Value
				found = true
			}
		}
		if !found {
			lines = append(lines, kv.Key+"="+kv.Value)
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// UFWUserRulesFile renders /etc/ufw/user.rules (v6 false) or user6.rules
// exactly as ufw 0.36 writes them after `ufw allow ...` at log level low:
// a "### tuple ###" line per rule (what `ufw status` reads back) followed by
// its iptables rule, then ufw's logging and rate-limiting sections.
func UFWUserRulesFile(allows []Allow, v6 bool) string {
	p := "ufw"
	any := "0.0.0.0/0"
	if v6 {
		p = "ufw6"
		any = "::/0"
	}
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, c := range []string{"user-input", "user-output", "user-forward",
		"before-logging-input", "before-logging-output", "before-logging-forward",
		"user-logging-input", "user-logging-output", "user-logging-forward",
		"after-logging-input", "after-logging-output", "after-logging-forward",
		"logging-deny", "logging-allow", "user-limit", "user-limit-accept"} {
		fmt.Fprintf(&b, ":%s-%s - [0:0]\n", p, c)
	}
	b.WriteString("### RULES ###\n")
	for _, a := range allows {
		if !a.applies(v6) {
			continue
		}
		src := any
		if a.Source.IsValid() {
			src = a.Source.String()
		}
		fmt.Fprintf(&b, "\n### tuple ### allow %s %s %s any %s in", a.Proto, a.Ports, any, src)
		if a.Comment != "" {
			// ufw keeps comments hex-encoded, so that any text fits.
			b.WriteString(" comment=" + hex.EncodeToString([]byte(a.Comment)))
		}
		b.WriteString("\n")
		fmt.Fprintf(&b, "-A %s-user-input %s\n", p, iptRule(a))
	}
	b.WriteString("\n### END RULES ###\n")
	b.WriteString("\n### LOGGING ###\n")
	lim := `-m limit --limit 3/min --limit-burst 10`
	fmt.Fprintf(&b, "-A %s-after-logging-input -j LOG --log-prefix \"[UFW BLOCK] \" %s\n", p, lim)
	fmt.Fprintf(&b, "-A %s-after-logging-forward -j LOG --log-prefix \"[UFW BLOCK] \" %s\n", p, lim)
	fmt.Fprintf(&b, "-I %s-logging-deny -m conntrack --ctstate INVALID -j RETURN %s\n", p, lim)
	fmt.Fprintf(&b, "-A %s-logging-deny -j LOG --log-prefix \"[UFW BLOCK] \" %s\n", p, lim)
	fmt.Fprintf(&b, "-A %s-logging-allow -j LOG --log-prefix \"[UFW ALLOW] \" %s\n", p, lim)
	b.WriteString("### END LOGGING ###\n")
	b.WriteString("\n### RATE LIMITING ###\n")
	fmt.Fprintf(&b, "-A %s-user-limit -m limit --limit 3/minute -j LOG --log-prefix \"[UFW LIMIT BLOCK] \"\n", p)
	fmt.Fprintf(&b, "-A %s-user-limit -j REJECT\n", p)
	fmt.Fprintf(&b, "-A %s-user-limit-accept -j ACCEPT\n", p)
	b.WriteString("### END RATE LIMITING ###\n")
	b.WriteString("COMMIT\n")
	return b.String()
}

// iptRule is the match part and target of an allow, in ufw's order.
func iptRule(a Allow) string {
	s := "-p " + a.Proto
	if a.multi() {
		s += " -m multiport --dports " + a.Ports
	} else {
		s += " --dport " + a.Ports
	}
	if a.Source.IsValid() {
		s += " -s " + a.Source.String()
	}
	return s + " -j ACCEPT"
}

// UFWFiles are the ufw backend's files. defaults is the tree's
// /etc/default/ufw (from the package), which keeps its comments.
func UFWFiles(allows []Allow, defaults string) []File {
	return []File{
		file(UFWConf, UFWConfFile(), 0o644),
		file(UFWDefaults, SetShellVars(defaults, UFWDefaultPolicies), 0o644),
		file(UFWUserRules, UFWUserRulesFile(allows, false), 0o640),
		file(UFWUser6, UFWUserRulesFile(allows, true), 0o640),
	}
}

// IptablesRules renders /etc/iptables/rules.v4 (v6 false) or rules.v6
// for netfilter-persistent, which restores them at boot before the network
// is up: the same policy as the ufw backend (deny incoming, allow
// outgoing, deny routed), the ICMP and DHCP traffic a host needs, and the
// allows. Docker adds its own chains after it starts.
func IptablesRules(allows []Allow, v6 bool) string {
	var b strings.Builder
	b.WriteString(Header)
	b.WriteString("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	b.WriteString("-A INPUT -i lo -j ACCEPT\n")
	b.WriteString("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	b.WriteString("-A INPUT -m conntrack --ctstate INVALID -j DROP\n")
	if !v6 {
		for _, t := range []string{"destination-unreachable", "time-exceeded", "parameter-problem", "echo-request"} {
			fmt.Fprintf(&b, "-A INPUT -p icmp --icmp-type %s -j ACCEPT\n", t)
		}
		b.WriteString("-A INPUT -p udp --sport 67 --dport 68 -j ACCEPT\n")
	} else {
		for _, t := range []string{"destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-request"} {
			fmt.Fprintf(&b, "-A INPUT -p ipv6-icmp --icmpv6-type %s -j ACCEPT\n", t)
		}
		// Neighbour discovery only from the link itself (hop limit 255).
		for _, t := range []string{"router-solicitation", "router-advertisement", "neighbour-solicitation", "neighbour-advertisement"} {
			fmt.Fprintf(&b, "-A INPUT -p ipv6-icmp --icmpv6-type %s -m hl --hl-eq 255 -j ACCEPT\n", t)
		}
		for _, t := range []string{"130", "131", "132", "143"} {
			fmt.Fprintf(&b, "-A INPUT -s fe80::/10 -p ipv6-icmp --icmpv6-type %s -j ACCEPT\n", t)
		}
		b.WriteString("-A INPUT -s fe80::/10 -d fe80::/10 -p udp --sport 547 --dport 546 -j ACCEPT\n")
	}
	for _, a := range allows {
		if !a.applies(v6) {
			continue
		}
		s := "-A INPUT"
		if a.Source.IsValid() {
			s += " -s " + a.Source.String()
		}
		s += " -p " + a.Proto
		if a.multi() {
			s += " -m multiport --dports " + a.Ports
		} else {
			s += " --dport " + a.Ports
		}
		if a.Comment != "" {
			s += " -m comment --comment " + iptQuote(a.Comment)
		}
		b.WriteString(s + " -j ACCEPT\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// iptQuote quotes a comment for iptables-restore, which splits on spaces
// and honours double quotes (no escapes inside them).
func iptQuote(s string) string {
	s = strings.NewReplacer(`"`, "'", "\\", "/", "\n", " ").Replace(s)
	if len(s) > 255 {
		s = s[:255]
	}
	return `"` + s + `"`
}

// IptablesFiles are the iptables-persistent backend's files.
func IptablesFiles(allows []Allow) []File {
	return []File{
		file(RulesV4, IptablesRules(allows, false), 0o640),
		file(RulesV6, IptablesRules(allows, true), 0o640),
	}
}
