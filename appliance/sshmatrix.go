package appliance

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// The SSH matrix: sshd's effective settings read in every kind of
// connection context (sshd -T -C), because a Match block in sshd_config or
// any file it includes can give one user, group or address other settings
// than 00-bake.conf gives everyone. The build runs it in the tree (and
// fails on any difference from SSHRequired and the recipe's port); bake
// verify runs the same matrix in the booted guest (ssh.effective-config).

// SSHFrom is a client address and the local address it connects to.
type SSHFrom struct{ Addr, LocalAddr string }

// SSHFroms are the clients the matrix asks for: the link (link, local),
// loopback, IPv6, a private LAN and the tailnet's CGNAT range.
func SSHFroms(link, local string) []SSHFrom {
	return []SSHFrom{{link, local}, {"127.0.0.1", "127.0.0.1"}, {"fd77::1", "fd77::2"}, {"192.168.1.10", local}, {"100.100.1.1", local}}
}

// SSHNoUser is a user name no image has: the context of a client that
// names an unknown account.
const SSHNoUser = "bake-verify-nouser"

// SSHMatch is one Match block of an sshd configuration: its line and its
// criteria (keyword in lower case, patterns as written).
type SSHMatch struct {
	Line     string
	Criteria [][2]string
}

// ParseSSHDMatch finds the Match lines of sshd configuration text (the
// files concatenated). Keywords are case-insensitive; "Match all" has no
// criteria.
func ParseSSHDMatch(config string) []SSHMatch {
	var out []SSHMatch
	for _, line := range strings.Split(config, "\n") {
		line = strings.TrimSpace(line)
		f := strings.Fields(line)
		if len(f) == 0 || !strings.EqualFold(f[0], "match") {
			continue
		}
		m := SSHMatch{Line: line}
		for i := 1; i < len(f); i++ {
			k := strings.ToLower(f[i])
			if k == "all" {
				continue
			}
			if i+1 < len(f) {
				m.Criteria = append(m.Criteria, [2]string{k, f[i+1]})
				i++
			}
		}
		out = append(out, m)
	}
	return out
}

// SSHContexts is the matrix: "" (sshd -T with no context), the admin, root
// and SSHNoUser from each of froms, and one context built to satisfy each
// Match block (members gives a member of a group, "" when it has none).
func SSHContexts(admin string, port int, froms []SSHFrom, matches []SSHMatch, members func(group string) string) []string {
	ctx := func(user, host, addr, laddr string, lport int, rdomain string) string {
		s := fmt.Sprintf("user=%s,host=%s,addr=%s,laddr=%s,lport=%d", user, host, addr, laddr, lport)
		if rdomain != "" {
			s += ",rdomain=" + rdomain
		}
		return s
	}
	out := []string{""}
	for _, user := range []string{admin, "root", SSHNoUser} {
		for _, f := range froms {
			out = append(out, ctx(user, "outside.invalid", f.Addr, f.LocalAddr, port, ""))
		}
	}
	seen := map[string]bool{}
	for _, c := range out {
		seen[c] = true
	}
	for _, m := range matches {
		user, host, addr, laddr, lport, rdomain := admin, "outside.invalid", froms[0].Addr, froms[0].LocalAddr, port, ""
		for _, c := range m.Criteria {
			p := firstPattern(c[1])
			if p == "" {
				continue
			}
			switch c[0] {
			case "user":
				user = patternValue(p)
			case "group":
				if u := members(patternValue(p)); u != "" {
					user = u
				}
			case "host":
				host = patternValue(p)
			case "address":
				addr = addressIn(p, addr)
			case "localaddress":
				laddr = addressIn(p, laddr)
			case "localport":
				if n, err := strconv.Atoi(p); err == nil {
					lport = n
				}
			case "rdomain":
				rdomain = patternValue(p)
			}
		}
		c := ctx(user, host, addr, laddr, lport, rdomain)
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

// firstPattern is the first pattern of a comma-separated list that is not
// negated.
func firstPattern(list string) string {
	for _, p := range strings.Split(list, ",") {
		if p != "" && !strings.HasPrefix(p, "!") {
			return p
		}
	}
	return ""
}

// patternValue is a value a wildcard pattern matches (* and ? as "x"),
// restricted to characters safe in an sshd -C list.
func patternValue(p string) string {
	var b strings.Builder
	for _, r := range p {
		switch {
		case r == '*' || r == '?':
			b.WriteByte('x')
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("._-@:", r):
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "x"
	}
	return b.String()
}

// addressIn is an address a Match Address pattern matches: inside a CIDR
// (its first host), a wildcard with 1 for each *, or def.
func addressIn(p, def string) string {
	if pfx, err := netip.ParsePrefix(p); err == nil {
		a := pfx.Masked().Addr()
		if pfx.Bits() < a.BitLen() {
			a = a.Next()
		}
		return a.String()
	}
	if a, err := netip.ParseAddr(strings.NewReplacer("*", "1", "?", "1").Replace(p)); err == nil {
		return a.String()
	}
	return def
}

// sshdMatrixKeys are the settings the matrix prints of each context.
const sshdMatrixKeys = "passwordauthentication|kbdinteractiveauthentication|challengeresponseauthentication|permitrootlogin|pubkeyauthentication|authenticationmethods|permitemptypasswords|usepam|port"

// SSHDMatrixScript reads the effective settings of every context: a
// section "== sshd -T[ -C CONTEXT]" per context with the settings the
// judge reads (or, when sshd fails, the end of what it said). hostKey,
// when not "", is a shell word passed with -h (a build tree has no host
// key: SSHDTreeMatrixScript makes a throwaway one).
func SSHDMatrixScript(ctxs []string, hostKey string) string {
	var b strings.Builder
	b.WriteString("sshd=$(command -v sshd || echo /usr/sbin/sshd)\n")
	b.WriteString("show() { o=$(\"$@\" 2>&1); printf '%s\\n' \"$o\" | grep -Ei '^(" + sshdMatrixKeys + ") ' || printf '%s\\n' \"$o\" | tail -n 5; }\n")
	h := ""
	if hostKey != "" {
		h = " -h " + hostKey
	}
	for _, cx := range ctxs {
		if cx == "" {
			b.WriteString("echo '== sshd -T'; show $sshd -T" + h + "\n")
			continue
		}
		b.WriteString("echo '== sshd -T -C " + cx + "'; show $sshd -T" + h + " -C " + shellQuote(cx) + "\n")
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// JudgeSSHDMatrix checks SSHDMatrixScript's output: every context read,
// and in each SSHRequired's settings (authenticationmethods: publickey
// only, in every list) and the port. It returns every difference.
func JudgeSSHDMatrix(out string, contexts, port int) []string {
	if port == 0 {
		port = 22
	}
	type section struct{ what, body string }
	var secs []*section
	for _, l := range strings.Split(out, "\n") {
		if w, ok := strings.CutPrefix(l, "== "); ok {
			secs = append(secs, &section{what: w})
			continue
		}
		if len(secs) > 0 {
			secs[len(secs)-1].body += l + "\n"
		}
	}
	var problems []string
	if len(secs) != contexts {
		problems = append(problems, fmt.Sprintf("read %d of %d connection contexts", len(secs), contexts))
	}
	keys := make([]string, 0, len(SSHRequired))
	for k := range SSHRequired {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, s := range secs {
		m := ParseSSHDT(s.body)
		if len(m) == 0 || m["port"] == "" {
			problems = append(problems, fmt.Sprintf("%s: failed: %s", s.what, strings.TrimSpace(s.body)))
			continue
		}
		for _, k := range keys {
			got := m[k]
			if k == "authenticationmethods" {
				if !publickeyOnly(got) {
					problems = append(problems, fmt.Sprintf("%s: authenticationmethods %q allows more than publickey", s.what, got))
				}
				continue
			}
			if got != SSHRequired[k] {
				problems = append(problems, fmt.Sprintf("%s: %s is %q, want %q", s.what, k, got, SSHRequired[k]))
			}
		}
		if got := m["port"]; got != strconv.Itoa(port) {
			problems = append(problems, fmt.Sprintf("%s: port is %q, want %d", s.what, got, port))
		}
	}
	return problems
}

// publickeyOnly: an AuthenticationMethods value whose every list is made
// of publickey alone ("any" allows every method).
func publickeyOnly(v string) bool {
	if v == "" {
		return false
	}
	for _, list := range strings.Fields(v) {
		for _, meth := range strings.Split(list, ",") {
			if meth != "publickey" {
				return false
			}
		}
	}
	return true
}

// SSHDTreeMatrixScript runs the matrix in a chroot of the tree at build
// time. bookworm's sshd -T needs a host key and /run/sshd: a throwaway key
// is made under /run (a tmpfs in bake's chroot) and both are removed
// afterwards.
func SSHDTreeMatrixScript(ctxs []string) string {
	return `set -eu
d=$(mktemp -d /run/bake-sshd-check.XXXXXX)
made_run=
if [ ! -d /run/sshd ]; then mkdir -m 0755 /run/sshd; made_run=1; fi
cleanup() { rm -rf "$d"; if [ -n "$made_run" ]; then rmdir /run/sshd; fi; }
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -C bake-check -f "$d/key" >/dev/null
` + SSHDMatrixScript(ctxs, `"$d/key"`)
}
