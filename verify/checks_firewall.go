package verify

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

var ufwRuleRE = regexp.MustCompile(`^(\S+(?: \(v6\))?)\s+(ALLOW|DENY|REJECT|LIMIT)(?: (IN|OUT|FWD))?\s+(.+)$`)

func (c *checker) firewallRules(ctx context.Context) (Status, string) {
	if c.spec.Firewall.Backend == "iptables-persistent" {
		return c.iptablesRules(ctx)
	}
	res, err := c.in.sudo(ctx, "ufw status verbose")
	if err != nil {
		return Fail, err.Error()
	}
	var ev evidence
	ev.cmd(res)
	problems := ufwProblems(res.Stdout, c.spec.Firewall.Allow)
	return verdict(problems, ev, fmt.Sprintf("ufw active: deny (incoming), allow (outgoing), deny (routed); allowed over IPv4 and IPv6: %s; nothing else from anywhere", strings.Join(c.spec.Firewall.Allow, ", ")))
}

// ufwProblems reads `ufw status verbose`: active, the default policies,
// each allowed PORT/PROTO allowed from anywhere over IPv4 and IPv6, and
// nothing else allowed from anywhere.
func ufwProblems(out string, allow []string) []string {
	var problems []string
	if !strings.Contains(out, "Status: active") {
		problems = append(problems, "ufw is not active")
	}
	if !strings.Contains(out, "Default: deny (incoming), allow (outgoing), deny (routed)") {
		problems = append(problems, "default policies are not deny (incoming), allow (outgoing), deny (routed)")
	}
	type rule struct{ to, action, from string }
	var rules []rule
	for _, l := range strings.Split(out, "\n") {
		if m := ufwRuleRE.FindStringSubmatch(strings.TrimSpace(l)); m != nil && m[1] != "To" {
			from, _, _ := strings.Cut(m[4], "#") // a rule's comment
			rules = append(rules, rule{m[1], strings.TrimSpace(m[2] + " " + m[3]), strings.TrimSpace(from)})
		}
	}
	allowed := map[string]bool{}
	for _, a := range allow {
		allowed[a] = true
		for _, v6 := range []bool{false, true} {
			to, from := a, "Anywhere"
			if v6 {
				to, from = a+" (v6)", "Anywhere (v6)"
			}
			found := false
			for _, r := range rules {
				if r.to == to && r.action == "ALLOW IN" && r.from == from {
					found = true
				}
			}
			if !found {
				problems = append(problems, fmt.Sprintf("no rule %s ALLOW IN %s", to, from))
			}
		}
	}
	// Anything else allowed from anywhere widens the firewall.
	for _, r := range rules {
		base := strings.TrimSuffix(r.to, " (v6)")
		if strings.HasPrefix(r.action, "ALLOW") && strings.HasPrefix(r.from, "Anywhere") && !allowed[base] {
			problems = append(problems, fmt.Sprintf("unexpected rule: %s %s %s", r.to, r.action, r.from))
		}
	}
	return problems
}

func (c *checker) iptablesRules(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	for _, tool := range []string{"iptables", "ip6tables"} {
		res, err := c.in.sudo(ctx, tool+" -S")
		if err != nil {
			return Fail, err.Error()
		}
		ev.cmd(res)
		for _, p := range []string{"-P INPUT DROP", "-P FORWARD DROP"} {
			if !strings.Contains(res.Stdout, p) {
				problems = append(problems, fmt.Sprintf("%s: no %q", tool, p))
			}
		}
		for _, a := range c.spec.Firewall.Allow {
			port, proto, _ := strings.Cut(a, "/")
			re := regexp.MustCompile(`(?m)^-A \S+ .*-p ` + regexp.QuoteMeta(proto) + `.*--dports? ` + regexp.QuoteMeta(strings.ReplaceAll(port, "-", ":")) + `\b.*-j ACCEPT`)
			if !re.MatchString(res.Stdout) {
				problems = append(problems, fmt.Sprintf("%s: no ACCEPT rule for %s", tool, a))
			}
		}
	}
	return verdict(problems, ev, fmt.Sprintf("INPUT and FORWARD drop by default; ACCEPT rules for %s", strings.Join(c.spec.Firewall.Allow, ", ")))
}

var checkFirewallRules = Check{ID: "firewall.rules", Scope: ScopeFirmware, Needs: "an SSH session",
	claim: func(s Spec, _ *GatewaySpec) string {
		allow := "22/tcp and 41641/udp"
		if s.Firewall != nil {
			allow = strings.Join(s.Firewall.Allow, ", ")
		}
		if s.Firewall != nil && s.Firewall.Backend == "iptables-persistent" {
			return "iptables: INPUT and FORWARD drop by default; allowed: " + allow
		}
		return "ufw active: deny (incoming), allow (outgoing), deny (routed); allowed: " + allow
	},
	planned: func(s Spec, _ int) bool { return s.Firewall != nil },
	run:     (*checker).firewallRules, ssh: true}
