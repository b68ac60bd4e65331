package verify

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/vm"
)

// title is the claim a check proves, worded from the spec.
func title(s Spec, id string) string {
	gw := s.Gateway
	if gw == nil {
		gw = defaultGateway(DefaultGatewayName, DefaultGatewayPort)
	}
	allow := "22/tcp and 41641/udp"
	if s.Firewall != nil {
		allow = strings.Join(s.Firewall.Allow, ", ")
	}
	switch id {
	case "ssh.key-login":
		return fmt.Sprintf("SSH key login as %s with the seed's key works", s.AdminUser)
	case "ssh.password-refused":
		return "password and keyboard-interactive logins are refused, even with the right password"
	case "ssh.root-refused":
		return "root cannot log in over SSH, even with an authorized key or the right password"
	case "ssh.effective-config":
		return "effective sshd settings (sshd -T): passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin no"
	case "firewall.rules":
		if s.Firewall != nil && s.Firewall.Backend == "iptables-persistent" {
			return "iptables: INPUT and FORWARD drop by default; allowed: " + allow
		}
		return "ufw active: deny (incoming), allow (outgoing), deny (routed); allowed: " + allow
	case "tailscale.daemon":
		return fmt.Sprintf("tailscaled is active and holds %d/udp", TailscalePort)
	case "gateway.config":
		return fmt.Sprintf("%s is mode 0600, owned by %s, with a 64-character token (the seed's when given)", gw.ConfigPath, gw.User)
	case "gateway.process":
		return "gateway processes: NoNewPrivs 1, CapEff 0, uid neither root nor a login user"
	case "gateway.listen":
		if gw.Mode == "network" {
			return fmt.Sprintf("gateway port %d reachable only from its allowed networks", gw.Port)
		}
		return fmt.Sprintf("gateway listens on 127.0.0.1:%d only", gw.Port)
	case "gateway.auth":
		return "gateway refuses a client without the token or with a wrong one, accepts the right one"
	case "gateway.offline":
		return "the gateway came up with no route to the outside (its image is in the disk)"
	case "system.running":
		return "systemctl is-system-running is \"running\", no failed units, cloud-init (if any) not degraded"
	case "network.scan":
		return fmt.Sprintf("external scan (nmap -p-, IPv4 and IPv6): only %s open", portList(s.ExpectedOpenTCP(netip.Addr{})))
	case "isolation.loopback":
		return "published container ports (-p 80:80, -p 0.0.0.0:8080:80, -p 127.0.0.1:8081:80) answer on the guest's loopback"
	case "isolation.outside":
		return "published container ports are unreachable from outside over IPv4 and IPv6"
	case "isolation.loopback-via-mac":
		return "packets to 127.0.0.0/8 sent to the guest's MAC from outside get no answer (moby#45610)"
	case "identity.unique":
		return "instances of one image differ in gateway token, SSH host keys and machine-id"
	case "identity.reboot":
		return "a rebooted instance keeps its gateway token, SSH host keys and machine-id"
	case "secrets.disk":
		return "no secret from the build in the image (raw disk with free blocks, every compressed stream and layer)"
	case "verify.timeout":
		return "the verification finished in time"
	case "image.format":
		return "the image is a regular file, raw or a self-contained qcow2 (no backing or data file, no snapshots, tables and clusters inside the file, none shared)"
	}
	return id
}

func portList(ports []int) string {
	var s []string
	for _, p := range ports {
		s = append(s, fmt.Sprintf("%d/tcp", p))
	}
	return strings.Join(s, ", ")
}

// Plan lists the checks of one firmware for spec, in the order they run.
// identity.* need two instances or more: with one they are not run, and
// the report lists them as skipped by request (ByRequest), not as
// failures.
func Plan(s Spec, instances int) []string {
	ids := []string{"ssh.key-login", "system.running", "ssh.effective-config", "ssh.password-refused", "ssh.root-refused"}
	if s.Firewall != nil {
		ids = append(ids, "firewall.rules")
	}
	if s.Tailscale {
		ids = append(ids, "tailscale.daemon")
	}
	if s.Gateway != nil {
		ids = append(ids, "gateway.config", "gateway.process", "gateway.listen", "gateway.auth", "gateway.offline")
	}
	ids = append(ids, "network.scan")
	if s.isolation() {
		ids = append(ids, "isolation.loopback", "isolation.outside", "isolation.loopback-via-mac")
	}
	if instances >= 2 {
		ids = append(ids, "identity.unique", "identity.reboot")
	}
	return ids
}

// ByRequest lists the checks of one firmware that a run of that many
// instances leaves out by the user's choice: identity.* with one.
func ByRequest(instances int) []string {
	if instances < 2 {
		return []string{"identity.unique", "identity.reboot"}
	}
	return nil
}

// imageChecks are the checks of the image file itself (no firmware).
var imageChecks = []string{"secrets.disk"}

// Catalog lists every check verify has that can be skipped: those of a
// firmware (each run once per firmware) and those of the image file.
// image.format and verify.timeout are not in it: they pass or fail.
func Catalog() (firmware, image []string) {
	return Plan(DefaultSpec(), 2), append([]string(nil), imageChecks...)
}

// ResolveAllowSkip checks an --allow-skip ID against the catalog: a check
// ID ("network.scan", "secrets.disk") or a key as the report names it
// ("bios/network.scan", "uefi/identity.reboot", "image/secrets.disk").
// It returns the ID trimmed, or an error naming the valid IDs.
func ResolveAllowSkip(id string) (string, error) {
	id = strings.TrimSpace(id)
	fwChecks, imgChecks := Catalog()
	prefix, check, keyed := strings.Cut(id, "/")
	if !keyed {
		check = id
	}
	switch {
	case !keyed && (slices.Contains(fwChecks, check) || slices.Contains(imgChecks, check)):
		return id, nil
	case keyed && (prefix == vm.BIOS || prefix == vm.UEFI) && slices.Contains(fwChecks, check):
		return id, nil
	case keyed && prefix == "image" && slices.Contains(imgChecks, check):
		return id, nil
	}
	why := "names no check of bake verify"
	switch {
	case check == "image.format" || check == "verify.timeout":
		why = "names a check that never skips (it passes or fails)"
	case keyed && prefix != vm.BIOS && prefix != vm.UEFI && prefix != "image":
		why = fmt.Sprintf("%q is no firmware (%s, %s) nor \"image\"", prefix, vm.BIOS, vm.UEFI)
	case keyed && slices.Contains(fwChecks, check):
		why = fmt.Sprintf("%s is a check of each firmware: prefix it with %s/ or %s/, or give it bare", check, vm.BIOS, vm.UEFI)
	case keyed && slices.Contains(imgChecks, check):
		why = fmt.Sprintf("%s is a check of the image file: image/%s, or give it bare", check, check)
	}
	return "", fmt.Errorf("%q %s; the checks: %s (each firmware's, as CHECK or FIRMWARE/CHECK), %s (the image's, as CHECK or image/CHECK)",
		id, why, strings.Join(fwChecks, ", "), strings.Join(imgChecks, ", "))
}

func (s Spec) isolation() bool {
	return s.Docker && (s.Firewall == nil || s.Firewall.DockerIsolation)
}

// fillSkipped records every planned check that has no result yet as Skip.
func (r *runner) fillSkipped(reason string) {
	for _, fw := range r.o.Firmwares {
		for _, id := range Plan(r.o.Spec, r.o.Instances) {
			if !r.has(fw, id) {
				r.record(fw, id, Skip, reason, 0)
			}
		}
	}
	for _, id := range imageChecks {
		if !r.has("", id) {
			r.record("", id, Skip, reason, 0)
		}
	}
}

// checker runs the checks of one instance.
type checker struct {
	r    *runner
	in   *instance
	spec Spec
	fw   string

	token string // the gateway's token as read from openclaw.json

	gwWaited bool     // waitGateway ran
	gwNote   evidence // how long it took, or the container's state and logs
}

type step struct {
	id      string
	ssh     bool // needs the SSH session
	outside bool // needs the outside namespace
	run     func(context.Context) (Status, string)
}

func (c *checker) runAll(ctx context.Context) {
	planned := map[string]bool{}
	for _, id := range Plan(c.spec, c.r.o.Instances) {
		planned[id] = true
	}
	steps := []step{
		{"system.running", true, false, c.systemRunning},
		{"ssh.effective-config", true, false, c.sshdEffective},
		{"ssh.password-refused", true, false, c.passwordRefused},
		{"ssh.root-refused", true, false, c.rootRefused},
		{"firewall.rules", true, false, c.firewallRules},
		{"tailscale.daemon", true, false, c.tailscaled},
		{"gateway.config", true, false, c.gatewayConfig},
		{"gateway.process", true, false, c.gatewayProcess},
		{"gateway.listen", true, false, c.gatewayListen},
		{"gateway.auth", true, false, c.gatewayAuth},
		{"gateway.offline", true, false, c.gatewayOffline},
		{"network.scan", false, true, c.networkScan},
	}
	for _, s := range steps {
		if !planned[s.id] {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		c.step(ctx, s)
	}
	if planned["isolation.loopback"] && ctx.Err() == nil {
		c.isolation(ctx)
	}
}

func (c *checker) noSSH() string {
	return fmt.Sprintf("not run: no SSH session as %s (see ssh.key-login)", c.spec.AdminUser)
}

func (c *checker) step(ctx context.Context, s step) {
	t0 := time.Now()
	if s.ssh && c.in.sess == nil {
		c.r.record(c.fw, s.id, Skip, c.noSSH(), 0)
		return
	}
	if s.outside && c.in.link == nil {
		c.r.record(c.fw, s.id, Skip, "not run: "+c.r.outsideWhy, 0)
		return
	}
	st, ev := s.run(ctx)
	if ctx.Err() != nil {
		return // cut short: not a result (the run records why)
	}
	c.r.record(c.fw, s.id, st, ev, time.Since(t0))
}

// evidence joins command results and notes.
type evidence []string

func (e *evidence) add(format string, args ...any) { *e = append(*e, fmt.Sprintf(format, args...)) }
func (e *evidence) cmd(r cmdResult)                { *e = append(*e, r.Evidence()) }
func (e evidence) String() string                  { return strings.Join(e, "\n") }

// verdict: the problems found (Fail), or Pass with summary (the first
// line of a pass) and the evidence.
func verdict(problems []string, ev evidence, summary string) (Status, string) {
	if len(problems) == 0 {
		if summary == "" {
			return Pass, ev.String()
		}
		return Pass, summary + "\n\n" + ev.String()
	}
	return Fail, strings.Join(problems, "\n") + "\n\n" + ev.String()
}

func (c *checker) systemRunning(ctx context.Context) (Status, string) {
	script := `state=$(timeout 600 systemctl is-system-running --wait 2>&1)
echo "is-system-running: $state"
echo "failed units:"
systemctl --failed --no-legend --plain --no-pager
if command -v cloud-init >/dev/null 2>&1; then echo "cloud-init:"; cloud-init status --long 2>&1 | sed 's/^/  /'; fi`
	res, err := c.in.runT(ctx, "sudo -n sh -c "+shellQuote(script), nil, 11*time.Minute)
	if err != nil {
		return Fail, err.Error()
	}
	var ev evidence
	ev.cmd(res)
	var problems []string
	state := ""
	var failed []string
	inFailed, inCI := false, false
	ciStatus := ""
	for _, l := range strings.Split(res.Stdout, "\n") {
		switch {
		case strings.HasPrefix(l, "is-system-running: "):
			state = strings.TrimSpace(strings.TrimPrefix(l, "is-system-running: "))
		case l == "failed units:":
			inFailed = true
		case l == "cloud-init:":
			inFailed, inCI = false, true
		case inFailed && strings.TrimSpace(l) != "":
			failed = append(failed, strings.Fields(l)[0])
		case inCI && strings.HasPrefix(strings.TrimSpace(l), "status:"):
			ciStatus = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "status:"))
		}
	}
	if state != "running" {
		problems = append(problems, fmt.Sprintf("the system is %q, not \"running\"", state))
	}
	if len(failed) > 0 {
		problems = append(problems, "failed units: "+strings.Join(failed, ", "))
		for i, u := range failed {
			if i == 3 {
				break
			}
			if r, err := c.in.sudo(ctx, "systemctl status --no-pager -n 20 "+shellQuote(u)); err == nil {
				ev.cmd(r)
			}
		}
	}
	if ciStatus != "" && ciStatus != "done" {
		problems = append(problems, fmt.Sprintf("cloud-init status is %q, not \"done\"", ciStatus))
	}
	return verdict(problems, ev, "the system is running: no failed units"+map[bool]string{true: "; cloud-init done", false: ""}[ciStatus == "done"])
}

// guestAddr is the address the guest's SSH connections come from and go
// to, for sshd -T -C.
func (c *checker) connSpec(user string) string {
	addr, laddr := "10.0.2.2", "10.0.2.15"
	if c.in.link != nil {
		addr, laddr = vm.LinkHostIPv4.Addr().String(), c.in.ipv4.String()
	}
	return fmt.Sprintf("user=%s,host=outside.invalid,addr=%s,laddr=%s,lport=%d", user, addr, laddr, c.spec.SSHPort)
}

func (c *checker) sshdEffective(ctx context.Context) (Status, string) {
	want := map[string]string{"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitrootlogin": "no", "pubkeyauthentication": "yes"}
	var ev evidence
	var problems []string
	for _, args := range []string{"", "-C " + c.connSpec(c.spec.AdminUser), "-C " + c.connSpec("root")} {
		res, err := c.in.sudo(ctx, "sshd=$(command -v sshd || echo /usr/sbin/sshd); $sshd -T "+args+" | grep -Ei '^(passwordauthentication|kbdinteractiveauthentication|challengeresponseauthentication|permitrootlogin|pubkeyauthentication|authenticationmethods|permitemptypasswords|usepam|port) '")
		if err != nil {
			return Fail, err.Error()
		}
		ev.cmd(res)
		got := map[string]string{}
		for _, l := range strings.Split(res.Stdout, "\n") {
			if f := strings.Fields(l); len(f) >= 2 {
				got[strings.ToLower(f[0])] = strings.ToLower(strings.Join(f[1:], " "))
			}
		}
		what := "sshd -T"
		if args != "" {
			what += " " + args
		}
		if !res.OK() && len(got) == 0 {
			problems = append(problems, what+": failed")
			continue
		}
		keys := make([]string, 0, len(want))
		for k := range want {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if got[k] != want[k] {
				problems = append(problems, fmt.Sprintf("%s: %s is %q, want %q", what, k, got[k], want[k]))
			}
		}
		if got["permitemptypasswords"] == "yes" {
			problems = append(problems, what+": permitemptypasswords yes")
		}
	}
	return verdict(problems, ev, "passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin no, pubkeyauthentication yes (sshd -T, and -C for "+c.spec.AdminUser+" and for root)")
}

func randomPassword() string {
	t, _ := NewToken()
	return "Bv-" + t[:20]
}

func describeAttempt(who, how string, a authAttempt, err error) string {
	switch {
	case err != nil:
		return fmt.Sprintf("%s with %s: connection problem: %v", who, how, err)
	case a.LoggedIn:
		return fmt.Sprintf("%s with %s: LOGGED IN", who, how)
	}
	return fmt.Sprintf("%s with %s: refused; methods the server let the client try: [%s] (%s)", who, how, strings.Join(a.Attempted, " "), a.Err)
}

func offered(a authAttempt, methods ...string) []string {
	var out []string
	for _, m := range methods {
		for _, x := range a.Attempted {
			if x == m {
				out = append(out, m)
			}
		}
	}
	return out
}

// shadowHash reads user's password hash (to put it back afterwards). err
// is Run's (a connection problem, or output cut).
func (c *checker) shadowHash(ctx context.Context, user string) (string, bool, error) {
	r, err := c.in.sudo(ctx, "getent shadow "+shellQuote(user)+" | cut -d: -f2")
	if err != nil || !r.OK() {
		return "", false, err
	}
	return strings.TrimSpace(r.Stdout), true, nil
}

// setPassword gives user a known password (through stdin: never on a
// command line).
func (c *checker) setPassword(ctx context.Context, user, pw string) (cmdResult, error) {
	return c.in.runT(ctx, "sudo -n chpasswd", []byte(user+":"+pw+"\n"), time.Minute)
}

func (c *checker) passwordRefused(ctx context.Context) (Status, string) {
	user := c.spec.AdminUser
	var ev evidence
	var problems []string
	check := func(how string, a authAttempt, err error) {
		ev.add("%s", describeAttempt(user, how, a, err))
		if err != nil {
			problems = append(problems, fmt.Sprintf("could not attempt a %s login: %v", how, err))
			return
		}
		if a.LoggedIn {
			problems = append(problems, fmt.Sprintf("%s logged in with %s", user, how))
		}
		if o := offered(a, "password", "keyboard-interactive"); len(o) > 0 {
			problems = append(problems, fmt.Sprintf("the server offers %s authentication to %s", strings.Join(o, " and "), user))
		}
	}
	pw := randomPassword()
	a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), user, 20*time.Second, passwordMethods(pw)...)
	check("a wrong password", a, err)

	// Now give the admin a password and try it: refusing a wrong password
	// proves nothing about the right one.
	old, ok, _ := c.shadowHash(ctx, user)
	res, err := c.setPassword(ctx, user, pw)
	if err != nil || !res.OK() || !ok {
		ev.add("could not set a password for %s to try the right one: %v %s", user, err, res.Stderr)
		problems = append(problems, "could not set a known password (sudo chpasswd) to try it")
		return verdict(problems, ev, "")
	}
	ev.add("set a throwaway password for %s (sudo chpasswd, from stdin)", user)
	a, err = tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), user, 20*time.Second, passwordMethods(pw)...)
	check("the right password", a, err)
	if r, err := c.in.sudo(ctx, "usermod -p "+shellQuote(old)+" "+shellQuote(user)); err != nil || !r.OK() {
		ev.add("warning: could not restore %s's password hash: %v %s", user, err, r.Stderr)
	} else {
		ev.add("restored %s's password hash", user)
	}
	return verdict(problems, ev, fmt.Sprintf("%s refused with a wrong and with the right password; the server never offered password or keyboard-interactive", user))
}

func (c *checker) rootRefused(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	// Authorize the throwaway key for root, then try it: with
	// PermitRootLogin no, sshd refuses root whatever its keys.
	add := `umask 077; mkdir -p /root/.ssh; touch /root/.ssh/authorized_keys
cp -p /root/.ssh/authorized_keys /root/.ssh/.authorized_keys.bake-verify
printf '%s\n' ` + shellQuote(c.in.key.AuthorizedKey) + ` >> /root/.ssh/authorized_keys`
	res, err := c.in.sudo(ctx, add)
	if err != nil {
		return Fail, err.Error()
	}
	keyAdded := res.OK()
	if keyAdded {
		ev.add("added the throwaway key to /root/.ssh/authorized_keys")
	} else {
		ev.add("could not add the key to root's authorized_keys (trying anyway):\n%s", res.Evidence())
		problems = append(problems, "could not authorize the key for root to try it (sudo)")
	}
	a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), "root", 20*time.Second, ssh.PublicKeys(c.in.key.Signer))
	ev.add("%s", describeAttempt("root", "an authorized key", a, err))
	if err != nil {
		problems = append(problems, fmt.Sprintf("could not attempt a root login: %v", err))
	} else if a.LoggedIn {
		problems = append(problems, "root logged in with an authorized key")
	}
	if keyAdded {
		if r, err := c.in.sudo(ctx, "mv /root/.ssh/.authorized_keys.bake-verify /root/.ssh/authorized_keys"); err == nil && r.OK() {
			ev.add("restored root's authorized_keys")
		}
	}
	old, ok, herr := c.shadowHash(ctx, "root")
	pw := randomPassword()
	if r, err := c.setPassword(ctx, "root", pw); err == nil && r.OK() && ok {
		a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), "root", 20*time.Second, passwordMethods(pw)...)
		ev.add("%s", describeAttempt("root", "the right password", a, err))
		if err == nil && a.LoggedIn {
			problems = append(problems, "root logged in with its password")
		}
		if o := offered(a, "password", "keyboard-interactive"); err == nil && len(o) > 0 {
			problems = append(problems, "the server offers "+strings.Join(o, " and ")+" authentication to root")
		}
		c.in.sudo(ctx, "usermod -p "+shellQuote(old)+" root")
	} else {
		ev.add("could not set a root password to try it")
		for _, e := range []error{herr, err} {
			if errors.Is(e, errOutputCut) {
				problems = append(problems, "could not try root's password: "+e.Error())
			}
		}
	}
	return verdict(problems, ev, "root refused with an authorized key and with its password")
}

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

// listener is a listening or bound socket from /proc/net.
type listener struct {
	Proto string // tcp, tcp6, udp, udp6
	Addr  netip.AddrPort
	Inode string
}

// parseProcNet reads /proc/net/{tcp,tcp6,udp,udp6} content (concatenated,
// each preceded by a line "== NAME"); for TCP only LISTEN sockets.
func parseProcNet(s string) []listener {
	var out []listener
	proto := ""
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == "==" {
			proto = f[1]
			continue
		}
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		if strings.HasPrefix(proto, "tcp") && f[3] != "0A" {
			continue
		}
		ap, ok := procAddr(f[1])
		if !ok {
			continue
		}
		out = append(out, listener{Proto: proto, Addr: ap, Inode: f[9]})
	}
	return out
}

// procAddr decodes /proc/net's "0100007F:4965" (host-order 32-bit words).
func procAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), true
}

func (c *checker) sockets(ctx context.Context) ([]listener, cmdResult, error) {
	res, err := c.in.sudo(ctx, "for f in tcp tcp6 udp udp6; do echo \"== $f\"; cat /proc/net/$f 2>/dev/null; done")
	if err != nil {
		return nil, res, err
	}
	return parseProcNet(res.Stdout), res, nil
}

// owners maps socket inodes to "pid/comm".
func (c *checker) owners(ctx context.Context, inodes []string) map[string]string {
	if len(inodes) == 0 {
		return nil
	}
	res, err := c.in.sudo(ctx, ownersScript(inodes))
	if err != nil {
		return nil
	}
	want := map[string]bool{}
	for _, i := range inodes {
		want["["+i+"]"] = true
	}
	out := map[string]string{}
	for _, l := range strings.Split(res.Stdout, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && want[f[0]] {
			out[strings.Trim(f[0], "[]")] = f[1]
		}
	}
	return out
}

// ownersScript prints "[INODE] PID/COMM" for each socket of inodes that a
// process holds. One find lists every process's sockets (a readlink per
// descriptor, forked from a shell loop, took a minute under emulation);
// only the matching lines cost a cat. Without find, the shell loop.
func ownersScript(inodes []string) string {
	var re []string
	for _, i := range inodes {
		if strings.Trim(i, "0123456789") == "" && i != "" {
			re = append(re, i)
		}
	}
	pat := `^socket:\[(` + strings.Join(re, "|") + `)\] `
	return `if command -v find >/dev/null 2>&1; then
find /proc/[0-9]*/fd -maxdepth 1 -lname 'socket:*' -printf '%l %h\n' 2>/dev/null | grep -E '` + pat + `' |
while read -r l h; do p=${h#/proc/}; p=${p%/fd}; echo "${l#socket:} $p/$(cat /proc/$p/comm 2>/dev/null)"; done
else
for p in /proc/[0-9]*; do for fd in $p/fd/*; do l=$(readlink $fd 2>/dev/null) || continue; case "$l" in socket:*) echo "${l#socket:} ${p#/proc/}/$(cat $p/comm 2>/dev/null)";; esac; done; done
fi`
}

func (c *checker) tailscaled(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	res, err := c.in.sudo(ctx, "systemctl is-active tailscaled; systemctl show -p MainPID --value tailscaled")
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	lines := strings.Fields(res.Stdout)
	if len(lines) == 0 || lines[0] != "active" {
		problems = append(problems, "tailscaled is not active")
	}
	socks, sres, err := c.sockets(ctx)
	if err != nil {
		return Fail, err.Error()
	}
	var inodes []string
	var bound []listener
	for _, s := range socks {
		if strings.HasPrefix(s.Proto, "udp") && s.Addr.Port() == TailscalePort {
			bound = append(bound, s)
			inodes = append(inodes, s.Inode)
		}
	}
	own := c.owners(ctx, inodes)
	if len(bound) == 0 {
		problems = append(problems, fmt.Sprintf("nothing is bound to %d/udp", TailscalePort))
		ev.add("UDP sockets: %s", summarizeSockets(socks, "udp"))
		_ = sres
	}
	for _, s := range bound {
		o := own[s.Inode]
		ev.add("%s %s held by %s", s.Proto, s.Addr, orDash(o))
		if !strings.HasSuffix(o, "/tailscaled") {
			problems = append(problems, fmt.Sprintf("%s %s is held by %s, not tailscaled", s.Proto, s.Addr, orDash(o)))
		}
	}
	return verdict(problems, ev, fmt.Sprintf("tailscaled is active and holds %d/udp", TailscalePort))
}

func summarizeSockets(socks []listener, proto string) string {
	var s []string
	for _, l := range socks {
		if strings.HasPrefix(l.Proto, proto) {
			s = append(s, l.Proto+" "+l.Addr.String())
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

var tokenRE = regexp.MustCompile(`"token"\s*:\s*"([^"]*)"`)

// redact shows the start of a secret only.
func redact(s string) string {
	if len(s) <= 8 {
		return strings.Repeat("*", len(s))
	}
	return s[:4] + "..." + fmt.Sprintf("(%d characters)", len(s))
}

// readToken reads the gateway token from openclaw.json.
func (c *checker) readToken(ctx context.Context, in *instance) (string, cmdResult, error) {
	res, err := in.sudo(ctx, "cat "+shellQuote(c.spec.Gateway.ConfigPath))
	if err != nil || !res.OK() {
		return "", res, err
	}
	m := tokenRE.FindStringSubmatch(res.Stdout)
	if m == nil {
		return "", res, nil
	}
	return m[1], res, nil
}

func (c *checker) gatewayConfig(ctx context.Context) (Status, string) {
	g := c.spec.Gateway
	var ev evidence
	var problems []string
	res, err := c.in.sudo(ctx, "stat -c '%a %U:%G %u:%g %s %n' "+shellQuote(g.ConfigPath)+" "+shellQuote(filepath.Dir(g.ConfigPath)))
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if !res.OK() || len(lines) < 1 {
		return Fail, fmt.Sprintf("%s does not exist\n\n%s", g.ConfigPath, ev)
	}
	f := strings.Fields(lines[0])
	if len(f) >= 3 {
		if f[0] != "600" {
			problems = append(problems, fmt.Sprintf("%s is mode %s, want 600", g.ConfigPath, f[0]))
		}
		// A gateway run as UID:GID has no name: compare the number.
		owner, _, _ := strings.Cut(f[1], ":")
		want := g.User
		if uid, _, ok := recipe.ParseUIDGID(g.User); ok {
			owner, _, _ = strings.Cut(f[2], ":")
			want = strconv.Itoa(uid)
		}
		if owner != want {
			problems = append(problems, fmt.Sprintf("%s is owned by %s (%s), want %s", g.ConfigPath, f[1], f[2], g.User))
		}
	}
	tok, cres, err := c.readToken(ctx, c.in)
	if err != nil {
		return Fail, err.Error()
	}
	if !cres.OK() {
		problems = append(problems, "cannot read "+g.ConfigPath)
	}
	c.token = tok
	switch {
	case tok == "":
		problems = append(problems, "no gateway.auth.token in "+g.ConfigPath)
	case !ValidToken(tok):
		problems = append(problems, fmt.Sprintf("the token is %d characters, not 64 of [A-Za-z0-9]", len(tok)))
	}
	ev.add("gateway.auth.token: %s", redact(tok))
	if c.in.token != "" {
		if tok == c.in.token {
			ev.add("the token is the one the seed gave")
		} else {
			problems = append(problems, "the token is not the one the seed gave")
		}
	}
	if strings.Contains(cres.Stdout, TokenPlaceholderHint) {
		problems = append(problems, "openclaw.json still holds the template's placeholder")
	}
	return verdict(problems, ev, fmt.Sprintf("%s: mode 600, owner %s, token of 64 characters%s", g.ConfigPath, g.User, map[bool]string{true: " (the seed's)", false: " (generated)"}[c.in.token != ""]))
}

// TokenPlaceholderHint is how the image's template marks the token (a
// first boot that did not run leaves it in place).
const TokenPlaceholderHint = "@BAKE_GATEWAY_TOKEN@"

// procStatus is what /proc/PID/status says of a gateway process.
type procStatus struct {
	PID, Name          string
	UIDs               []string
	NoNewPrivs, CapEff string
}

// GatewayStartTimeout is the default bound (--gateway-timeout) of the wait
// for the gateway to answer on its port after the system is running. The
// image is in Docker's store from the build, but under software emulation
// Node starts the real gateway in minutes (and OpenClaw restarts it when a
// start misses one of its fixed deadlines); on KVM it is seconds.
const GatewayStartTimeout = 8 * time.Minute

// gatewayLimit is --gateway-timeout, or its default.
func (c *checker) gatewayLimit() time.Duration {
	if c.r.o.GatewayTimeout > 0 {
		return c.r.o.GatewayTimeout
	}
	return GatewayStartTimeout
}

// waitGateway waits, once per instance, until something answers on
// 127.0.0.1:PORT in the guest, so that the gateway checks judge a gateway
// that had the time to start rather than one still loading. When it never
// answers, the container's state, its unit's journal and its logs become
// the evidence of every gateway check.
func (c *checker) waitGateway(ctx context.Context) {
	if c.gwWaited {
		return
	}
	c.gwWaited = true
	g := c.spec.Gateway
	t0 := time.Now()
	limit := c.gatewayLimit()
	deadline := t0.Add(limit)
	probe := fmt.Sprintf(`docker inspect -f 'status={{.State.Status}} restarts={{.RestartCount}} health={{if .State.Health}}{{.State.Health.Status}}{{end}}' %s 2>&1
timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null && echo ANSWERS`, shellQuote(g.Container), g.Port)
	var last cmdResult
	for ctx.Err() == nil {
		r, err := c.in.sudo(ctx, probe)
		if err != nil {
			c.gwNote.add("waiting for the gateway: %v", err)
			return
		}
		last = r
		if strings.Contains(r.Stdout, "ANSWERS") {
			c.gwNote.add("the gateway answered on 127.0.0.1:%d %s after power-on (waited %s here; %s)",
				g.Port, time.Since(c.in.poweredOn).Round(time.Second), time.Since(t0).Round(time.Second),
				strings.TrimSpace(strings.SplitN(r.Stdout, "\n", 2)[0]))
			c.r.logf("%s: the gateway answered on 127.0.0.1:%d %s after power-on", c.in.name(), g.Port, time.Since(c.in.poweredOn).Round(time.Second))
			return
		}
		if time.Now().After(deadline) {
			break
		}
		sleepCtx(ctx, 5*time.Second)
	}
	if ctx.Err() != nil {
		return
	}
	c.gwNote.add("nothing answered on 127.0.0.1:%d within %s of the system running (--gateway-timeout); last state:", g.Port, limit)
	c.gwNote.cmd(last)
	unit := "bake-container-" + g.Container + ".service"
	if r, err := c.in.sudo(ctx, "systemctl status --no-pager -n 0 "+shellQuote(unit)+" 2>&1 | head -12; journalctl -b --no-pager -n 30 -u "+shellQuote(unit)+" 2>&1; docker logs --tail 30 "+shellQuote(g.Container)+" 2>&1"); err == nil {
		c.gwNote.cmd(r)
	}
}

func (c *checker) gatewayProcess(ctx context.Context) (Status, string) {
	c.waitGateway(ctx)
	g := c.spec.Gateway
	script := `n=` + shellQuote(g.Container) + `
id=$(docker inspect -f '{{.Id}}' "$n") || exit 3
docker inspect -f 'status={{.State.Status}} pid={{.State.Pid}} user={{.Config.User}} restarts={{.RestartCount}}' "$n"
pids=$(cat $(find /sys/fs/cgroup -type d -name "*$id*" 2>/dev/null | sed 's|$|/cgroup.procs|') 2>/dev/null | sort -un)
[ -n "$pids" ] || pids=$(docker inspect -f '{{.State.Pid}}' "$n")
for p in $pids; do echo "pid $p"; grep -E '^(Name|Uid|Gid|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/$p/status; done
echo "gateway user: $(getent passwd ` + shellQuote(gatewayUserName(g.User)) + ` | cut -d: -f3)"
echo "login users:"
getent passwd | awk -F: '$7 !~ /(nologin|false|sync|halt|shutdown)$/ {print $1" "$3" "$7}'`
	res, err := c.in.sudo(ctx, script)
	if err != nil {
		return Fail, err.Error()
	}
	ev := append(evidence{}, c.gwNote...)
	ev.cmd(res)
	if res.Exit == 3 {
		return Fail, fmt.Sprintf("no container %q\n\n%s", g.Container, ev)
	}
	var procs []*procStatus
	login := map[string]string{}
	inLogin := false
	gwUID := ""
	for _, l := range strings.Split(res.Stdout, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case strings.HasPrefix(l, "gateway user:"):
			gwUID = strings.TrimSpace(strings.TrimPrefix(l, "gateway user:"))
			if uid, _, ok := recipe.ParseUIDGID(g.User); ok {
				gwUID = strconv.Itoa(uid) // run by number: no passwd entry to ask
			}
		case l == "login users:":
			inLogin = true
		case inLogin && len(f) >= 2:
			login[f[1]] = f[0]
		case f[0] == "pid" && len(f) == 2:
			procs = append(procs, &procStatus{PID: f[1]})
		case len(procs) > 0:
			p := procs[len(procs)-1]
			switch strings.TrimSuffix(f[0], ":") {
			case "Name":
				p.Name = strings.Join(f[1:], " ")
			case "Uid":
				p.UIDs = f[1:]
			case "NoNewPrivs":
				p.NoNewPrivs = f[len(f)-1]
			case "CapEff":
				p.CapEff = f[len(f)-1]
			}
		}
	}
	var problems []string
	if len(procs) == 0 {
		problems = append(problems, "the gateway container has no running process")
	}
	for _, p := range procs {
		who := fmt.Sprintf("pid %s (%s)", p.PID, p.Name)
		if p.NoNewPrivs != "1" {
			problems = append(problems, fmt.Sprintf("%s: NoNewPrivs %q, want 1", who, p.NoNewPrivs))
		}
		if strings.Trim(p.CapEff, "0") != "" || p.CapEff == "" {
			problems = append(problems, fmt.Sprintf("%s: CapEff %q, want 0000000000000000", who, p.CapEff))
		}
		if len(p.UIDs) == 0 {
			problems = append(problems, who+": no Uid line")
		}
		for _, u := range p.UIDs {
			if u == "0" {
				problems = append(problems, fmt.Sprintf("%s runs as root (Uid %s)", who, strings.Join(p.UIDs, " ")))
				break
			}
			if name, ok := login[u]; ok {
				problems = append(problems, fmt.Sprintf("%s runs as uid %s, the login user %s", who, u, name))
				break
			}
		}
		if g.User != "" && len(p.UIDs) > 0 && p.UIDs[0] != gwUID {
			problems = append(problems, fmt.Sprintf("%s runs as uid %s, not as %s (uid %q)", who, p.UIDs[0], g.User, gwUID))
		}
	}
	who := "not root, not a login user"
	if g.User != "" {
		who = g.User + ", " + who
	}
	return verdict(problems, ev, fmt.Sprintf("%d gateway process(es): NoNewPrivs 1, CapEff 0, uid %s (%s)", len(procs), procUIDs(procs), who))
}

// gatewayUserName is the name getent looks up for the gateway's user; a
// UID:GID is looked up by its uid.
func gatewayUserName(user string) string {
	if uid, _, ok := recipe.ParseUIDGID(user); ok {
		return strconv.Itoa(uid)
	}
	return user
}

func procUIDs(procs []*procStatus) string {
	seen := map[string]bool{}
	var out []string
	for _, p := range procs {
		if len(p.UIDs) > 0 && !seen[p.UIDs[0]] {
			seen[p.UIDs[0]] = true
			out = append(out, p.UIDs[0])
		}
	}
	return strings.Join(out, ",")
}

// guestConnect connects from inside the guest (bash's /dev/tcp) and says
// whether host:port accepted the connection.
func (c *checker) guestConnect(ctx context.Context, host string, port int) (bool, cmdResult, error) {
	script := fmt.Sprintf(`timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%d' 2>&1 && echo connected`, host, port)
	res, err := c.in.runT(ctx, script, nil, 30*time.Second)
	return err == nil && strings.Contains(res.Stdout, "connected"), res, err
}

// outsideProbe connects from the outside namespace and describes what
// happened; true when the connection was accepted.
func (c *checker) outsideProbe(ctx context.Context, addr netip.Addr, port int) (bool, string) {
	target := net.JoinHostPort(addr.String(), strconv.Itoa(port))
	conn, err := c.in.dialOutside(ctx, target, 4*time.Second)
	if err != nil {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "refused"):
			msg = "refused (RST)"
		case strings.Contains(msg, "timeout"), strings.Contains(msg, "i/o timeout"):
			msg = "no answer (dropped)"
		}
		return false, fmt.Sprintf("outside -> %s: %s", target, msg)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(4 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", target)
	buf := make([]byte, 512)
	n, _ := conn.Read(buf)
	answer := strings.TrimSpace(strings.SplitN(string(buf[:n]), "\r\n", 2)[0])
	if strings.Contains(string(buf[:n]), ProbeBody) {
		answer += " (the probe container)"
	}
	return true, fmt.Sprintf("outside -> %s: CONNECTED; answered %q", target, answer)
}

func (c *checker) guestIPv4() string {
	if c.in.ipv4.IsValid() {
		return c.in.ipv4.String()
	}
	return "10.0.2.15"
}

func (c *checker) gatewayListen(ctx context.Context) (Status, string) {
	c.waitGateway(ctx)
	g := c.spec.Gateway
	ev := append(evidence{}, c.gwNote...)
	var problems []string
	res, err := c.in.sudo(ctx, "docker inspect -f '{{json .HostConfig.PortBindings}}' "+shellQuote(g.Container))
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	var bindings map[string][]struct{ HostIp, HostPort string }
	if res.OK() {
		json.Unmarshal([]byte(strings.TrimSpace(res.Stdout)), &bindings)
	} else {
		problems = append(problems, "no container "+g.Container)
	}
	wantHost := "127.0.0.1"
	if g.Mode == "network" {
		wantHost = "0.0.0.0"
	}
	for port, bs := range bindings {
		for _, b := range bs {
			if b.HostIp != wantHost && !(g.Mode == "network" && b.HostIp == "") {
				problems = append(problems, fmt.Sprintf("container port %s published on %q:%s, want %s", port, b.HostIp, b.HostPort, wantHost))
			}
		}
	}
	socks, _, err := c.sockets(ctx)
	if err != nil {
		return Fail, err.Error()
	}
	for _, s := range socks {
		if strings.HasPrefix(s.Proto, "tcp") && int(s.Addr.Port()) == g.Port {
			ev.add("listening: %s %s", s.Proto, s.Addr)
			if g.Mode != "network" && !s.Addr.Addr().IsLoopback() {
				problems = append(problems, fmt.Sprintf("a socket listens on %s (not loopback)", s.Addr))
			}
		}
	}
	ok, r, err := c.guestConnect(ctx, "127.0.0.1", g.Port)
	if err != nil {
		return Fail, err.Error()
	}
	ev.add("guest -> 127.0.0.1:%d: %s", g.Port, map[bool]string{true: "connected", false: "not connected: " + strings.TrimSpace(r.Stdout+r.Stderr)}[ok])
	if !ok && g.Mode != "network" {
		problems = append(problems, fmt.Sprintf("nothing answers on 127.0.0.1:%d in the guest", g.Port))
	}
	if g.Mode != "network" {
		ip := c.guestIPv4()
		ok, _, err := c.guestConnect(ctx, ip, g.Port)
		if err != nil {
			return Fail, err.Error()
		}
		ev.add("guest -> %s:%d (its own external address): %s", ip, g.Port, map[bool]string{true: "CONNECTED", false: "not connected"}[ok])
		if ok {
			problems = append(problems, fmt.Sprintf("the gateway answers on the guest's external address %s:%d", ip, g.Port))
		}
	}
	if c.in.link != nil {
		from := vm.LinkHostIPv4.Addr()
		expect := false
		for _, p := range g.Allowed {
			if g.Mode == "network" && p.Contains(from) {
				expect = true
			}
		}
		for _, a := range []netip.Addr{c.in.ipv4, c.in.ipv6} {
			if !a.IsValid() {
				continue
			}
			ok, line := c.outsideProbe(ctx, a, g.Port)
			ev.add("%s", line)
			if ok && !expect {
				problems = append(problems, fmt.Sprintf("the gateway port is reachable from outside on %s", a))
			}
		}
	} else {
		ev.add("(not probed from outside: %s)", c.r.outsideWhy)
	}
	return verdict(problems, ev, fmt.Sprintf("published on %s:%d only; answers on the guest's loopback, not on its own address nor from outside", wantHost, g.Port))
}

func (c *checker) probeCmd(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func (c *checker) gatewayAuth(ctx context.Context) (Status, string) {
	g := c.spec.Gateway
	tok := c.token
	if tok == "" {
		if t, _, err := c.readToken(ctx, c.in); err == nil {
			tok = t
		}
	}
	if tok == "" {
		tok = c.in.token
	}
	if tok == "" {
		return Fail, "no token to probe with: openclaw.json has none and the seed gave none"
	}
	c.waitGateway(ctx)
	ev := append(evidence{}, c.gwNote...)
	var problems []string
	hide := func(s string, secrets ...string) string {
		for _, x := range secrets {
			if x != "" {
				s = strings.ReplaceAll(s, x, "<"+redact(x)+">")
			}
		}
		return s
	}
	wrong, _ := NewToken()
	// The gateway's own client is Node too: under software emulation on a
	// busy host one call can take minutes. Its bounds follow the
	// gateway's (--gateway-timeout): a call may take that long, and the
	// right token is retried for that long while the gateway settles.
	limit := c.gatewayLimit()
	run := func(argv []string) (cmdResult, error) {
		r, err := c.in.runT(ctx, "sudo -n sh -c "+shellQuote(c.probeCmd(argv)), nil, max(2*time.Minute, limit))
		r.Cmd = hide(r.Cmd, tok, wrong)
		r.Stdout, r.Stderr = hide(r.Stdout, tok, wrong), hide(r.Stderr, tok, wrong)
		return r, err
	}
	if r, err := c.in.sudo(ctx, "docker inspect -f '{{.State.Status}}' "+shellQuote(g.Container)); err != nil {
		return Fail, err.Error()
	} else if strings.TrimSpace(r.Stdout) != "running" {
		return Fail, fmt.Sprintf("the gateway container %s is not running, nothing to probe\n\n%s\n%s", g.Container, r.Evidence(), ev)
	}
	// The right token first, retried while the gateway starts.
	var good cmdResult
	deadline := time.Now().Add(max(3*time.Minute, limit))
	for {
		r, err := run(g.ProbeArgv(g.Container, tok))
		if err != nil {
			return Fail, err.Error()
		}
		good = r
		if r.OK() && strings.Contains(r.Stdout, g.ProbeOK) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		sleepCtx(ctx, 5*time.Second)
	}
	ev.add("with the right token:")
	ev.cmd(good)
	if !(good.OK() && strings.Contains(good.Stdout, g.ProbeOK)) {
		problems = append(problems, fmt.Sprintf("the right token is not accepted (no %q)", g.ProbeOK))
	}
	for _, v := range []struct {
		what string
		argv []string
	}{
		{"with a wrong token", g.ProbeArgv(g.Container, wrong)},
		{"with no token", noTokenArgv(g.ProbeArgv(g.Container, tok), tok)},
	} {
		r, err := run(v.argv)
		if err != nil {
			return Fail, err.Error()
		}
		ev.add("%s:", v.what)
		ev.cmd(r)
		out := r.Stdout + r.Stderr
		if v.what == "with no token" && !r.OK() && g.ProbeNoCredentials != "" && strings.Contains(out, g.ProbeNoCredentials) {
			ev.add("(the client itself will not connect without credentials; the wrong token above is refused by the gateway)")
			continue
		}
		if r.OK() || (strings.Contains(r.Stdout, g.ProbeOK) && !strings.Contains(out, g.ProbeRefused)) {
			problems = append(problems, "a client "+v.what+" is accepted")
		} else if !strings.Contains(out, g.ProbeRefused) {
			problems = append(problems, fmt.Sprintf("a client %s is not refused with %q (it failed otherwise: the gateway may not be answering)", v.what, g.ProbeRefused))
		}
	}
	return verdict(problems, ev, fmt.Sprintf("right token: %q; wrong token and no token: %q", g.ProbeOK, g.ProbeRefused))
}

// noTokenArgv drops "--token T" and, for docker exec, hides any config the
// CLI could take a token from.
func noTokenArgv(argv []string, tok string) []string {
	var out []string
	for i := 0; i < len(argv); i++ {
		if argv[i] == "--token" && i+1 < len(argv) && argv[i+1] == tok {
			i++
			continue
		}
		out = append(out, argv[i])
		if len(out) == 2 && out[0] == "docker" && out[1] == "exec" {
			out = append(out, "-e", "OPENCLAW_CONFIG_PATH=/nonexistent/openclaw.json", "-e", "OPENCLAW_GATEWAY_TOKEN=")
		}
	}
	return out
}

func (c *checker) gatewayOffline(ctx context.Context) (Status, string) {
	c.waitGateway(ctx)
	g := c.spec.Gateway
	ev := append(evidence{}, c.gwNote...)
	var problems []string
	script := `docker inspect -f 'status={{.State.Status}} running={{.State.Running}} started={{.State.StartedAt}} restarts={{.RestartCount}} image={{.Image}}' ` + shellQuote(g.Container) + `
echo "baked:"; cat ` + appliance.ContainersRecord + ` 2>/dev/null || echo none
echo "routes:"; ip route 2>/dev/null || cat /proc/net/route; ip -6 route 2>/dev/null
for a in 1.1.1.1/443 8.8.8.8/53 2606:4700:4700::1111/443; do
  if timeout 5 bash -c "exec 3<>/dev/tcp/$a" 2>/dev/null; then echo "REACHED $a"; else echo "unreachable: $a"; fi
done`
	res, err := c.in.sudo(ctx, script)
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	if !strings.Contains(res.Stdout, "running=true") {
		problems = append(problems, "the gateway container is not running")
	}
	if id, baked, ok := bakedImage(res.Stdout, g.Container); ok && id != baked {
		problems = append(problems, fmt.Sprintf("the gateway runs image %s, not the one baked into the disk (%s, %s)", id, baked, appliance.ContainersRecord))
	} else if ok {
		ev.add("the container runs the image baked into the disk: %s", baked)
	}
	if strings.Contains(res.Stdout, "REACHED") {
		problems = append(problems, "the guest reaches the internet: this run cannot show the gateway needs no network (check the host's isolation)")
	}
	if c.in.link != nil {
		for _, fam := range []string{"-4", "-6"} {
			out, err := execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: []string{"-n", c.in.link.Netns, fam, "route"}})
			ev.add("$ ip -n %s %s route   (the outside namespace: the guest's only link)\n%s", c.in.link.Netns, fam, strings.TrimSpace(string(out)))
			if err == nil && strings.Contains(string(out), "default") {
				problems = append(problems, "the outside namespace has a default route")
			}
		}
	} else {
		ev.add("user-mode networking with restrict=on: the guest has no route beyond QEMU")
	}
	return verdict(problems, ev, "the gateway container runs; the guest reaches nothing beyond its link, and the link has no route out")
}

// bakedImage reads the gateway check's output: the image the container
// runs (image=...) and the one the disk's record names for it. ok is
// false when the disk has no record (an image not made by bake).
func bakedImage(out, container string) (running, baked string, ok bool) {
	if i := strings.Index(out, "image="); i >= 0 {
		if f := strings.Fields(out[i+len("image="):]); len(f) > 0 {
			running = f[0]
		}
	}
	_, rest, found := strings.Cut(out, "baked:\n")
	if !found {
		return running, "", false
	}
	rest, _, _ = strings.Cut(rest, "\nroutes:")
	var recs []appliance.ContainerRecord
	if json.Unmarshal([]byte(rest), &recs) != nil {
		return running, "", false
	}
	for _, r := range recs {
		if r.Name == container {
			return running, r.ImageID, true
		}
	}
	return running, "", false
}

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

const (
	probeLoopPort = 8081
)

var probeContainers = []struct {
	name, publish string
	port          int
}{
	{"bake-verify-p80", "80:80", 80},
	{"bake-verify-p8080", "0.0.0.0:8080:80", 8080},
	{"bake-verify-lo", fmt.Sprintf("127.0.0.1:%d:80", probeLoopPort), probeLoopPort},
}

// isolation runs the probe containers and records isolation.loopback,
// isolation.outside and isolation.loopback-via-mac.
func (c *checker) isolation(ctx context.Context) {
	ids := []string{"isolation.loopback", "isolation.outside", "isolation.loopback-via-mac"}
	if c.in.sess == nil {
		for _, id := range ids {
			c.r.record(c.fw, id, Skip, c.noSSH(), 0)
		}
		return
	}
	t0 := time.Now()
	var ev evidence
	fail := func(msg string) {
		for _, id := range ids {
			c.r.record(c.fw, id, Fail, msg+"\n\n"+ev.String(), time.Since(t0))
		}
	}
	if c.r.probeTar == nil {
		b, err := ProbeImageTar()
		if err != nil {
			fail("building the probe image: " + err.Error())
			return
		}
		c.r.probeTar = b
	}
	// An error of Run (connection lost, output cut) fails the three checks;
	// an interrupted run records nothing (the run says why).
	runFailed := func(err error) {
		if ctx.Err() == nil {
			fail(err.Error())
		}
	}
	res, err := c.in.runT(ctx, "sudo -n docker load", c.r.probeTar, 5*time.Minute)
	if err != nil {
		runFailed(err)
		return
	}
	ev.cmd(res)
	if !res.OK() {
		fail("cannot load the probe image into Docker (is Docker installed and running?)")
		return
	}
	var run []string
	for _, p := range probeContainers {
		run = append(run, fmt.Sprintf("docker rm -f %s >/dev/null 2>&1; docker run -d --name %s -p %s %s", p.name, p.name, p.publish, ProbeImageRef))
	}
	res, err = c.in.sudo(ctx, strings.Join(run, "\n"))
	if err != nil {
		runFailed(err)
		return
	}
	ev.cmd(res)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var names []string
		for _, p := range probeContainers {
			names = append(names, p.name)
		}
		c.in.sudo(cctx, "docker rm -f "+strings.Join(names, " ")+" >/dev/null 2>&1; docker rmi "+ProbeImageRef+" >/dev/null 2>&1")
	}()
	if !res.OK() {
		fail("docker run of the probe containers failed")
		return
	}

	// 1. Each answers on the guest's loopback.
	var problems []string
	var lev evidence
	for _, p := range probeContainers {
		var r cmdResult
		deadline := time.Now().Add(60 * time.Second)
		for {
			script := fmt.Sprintf(`timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d; printf "GET / HTTP/1.0\r\n\r\n" >&3; cat <&3'`, p.port)
			r, err = c.in.runT(ctx, script, nil, 30*time.Second)
			if err != nil {
				runFailed(err)
				return
			}
			if strings.Contains(r.Stdout, ProbeBody) || time.Now().After(deadline) {
				break
			}
			sleepCtx(ctx, 2*time.Second)
		}
		ok := strings.Contains(r.Stdout, ProbeBody)
		lev.add("guest -> 127.0.0.1:%d (-p %s): %s", p.port, p.publish, map[bool]string{true: "answered " + ProbeBody, false: "NO ANSWER " + strings.TrimSpace(r.Stderr)}[ok])
		if !ok {
			problems = append(problems, fmt.Sprintf("the container published with -p %s does not answer on 127.0.0.1:%d", p.publish, p.port))
		}
	}
	loopOK := len(problems) == 0
	st, text := verdict(problems, append(lev, ev...), "the probe containers answer on 127.0.0.1:80, :8080 and :8081 in the guest")
	c.r.record(c.fw, "isolation.loopback", st, text, time.Since(t0))

	// 2. None answers from outside, over IPv4 or IPv6.
	t1 := time.Now()
	switch {
	case c.in.link == nil:
		c.r.record(c.fw, "isolation.outside", Skip, "not run: "+c.r.outsideWhy, 0)
	case !loopOK:
		c.r.record(c.fw, "isolation.outside", Skip, "not decided: the probe containers do not even answer on the guest's loopback, so their being unreachable from outside proves nothing", 0)
	default:
		st, text := c.isolationOutside(ctx)
		if ctx.Err() != nil {
			return
		}
		c.r.record(c.fw, "isolation.outside", st, text, time.Since(t1))
	}

	// 3. moby#45610: packets to 127.0.0.0/8 through the NIC.
	t2 := time.Now()
	if c.in.link == nil {
		c.r.record(c.fw, "isolation.loopback-via-mac", Skip, "not run: "+c.r.outsideWhy, 0)
		return
	}
	st, text = c.loopbackViaMAC(ctx)
	if ctx.Err() != nil {
		return
	}
	c.r.record(c.fw, "isolation.loopback-via-mac", st, text, time.Since(t2))
}

func (c *checker) isolationOutside(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	addrs := []netip.Addr{c.in.ipv4}
	if c.in.ipv6.IsValid() {
		addrs = append(addrs, c.in.ipv6)
	} else {
		problems = append(problems, "the guest has no IPv6 address on the link: IPv6 not probed")
	}
	// Control: the outside reaches the guest at all (its SSH port).
	for _, a := range addrs {
		ok, line := c.outsideProbe(ctx, a, c.spec.SSHPort)
		ev.add("control: %s", line)
		if !ok {
			return Skip, "not decided: the outside cannot reach the guest's SSH port either, so unreachable container ports prove nothing\n\n" + ev.String()
		}
	}
	for _, a := range addrs {
		for _, p := range probeContainers {
			ok, line := c.outsideProbe(ctx, a, p.port)
			ev.add("%s", line)
			if ok {
				problems = append(problems, fmt.Sprintf("the container published with -p %s is reachable from outside on %s", p.publish, net.JoinHostPort(a.String(), strconv.Itoa(p.port))))
			}
		}
	}
	return verdict(problems, ev, "no published port reachable from outside over IPv4 or IPv6 (the SSH port is: the control)")
}

func (c *checker) loopbackViaMAC(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	src := vm.LinkHostIPv4.Addr()
	// Control: the same hand-made SYN to the guest's own address and SSH
	// port must be answered, or the probe itself is broken.
	ans, err := sendSYN(c.in.link.Netns, c.in.link.Tap, c.in.mac, src, c.in.ipv4, c.spec.SSHPort, 2, 4*time.Second)
	if err != nil {
		return Skip, "not decided: cannot send raw frames on the link: " + err.Error()
	}
	ev.add("control: SYN to %s:%d via %s: %s", c.in.ipv4, c.spec.SSHPort, c.in.mac, describeAnswers(ans))
	if !hasSYNACK(ans) {
		return Skip, "not decided: the control SYN to the guest's SSH port got no SYN-ACK, so silence on 127.0.0.1 would prove nothing\n\n" + ev.String()
	}
	// Targets: every TCP socket listening on a loopback address, and the
	// ports Docker publishes on 127.0.0.1 (DNAT rules, maybe no socket).
	targets := map[netip.AddrPort]string{}
	loop := netip.MustParseAddr("127.0.0.1")
	targets[netip.AddrPortFrom(loop, probeLoopPort)] = "probe container -p 127.0.0.1:8081:80"
	if g := c.spec.Gateway; g != nil {
		targets[netip.AddrPortFrom(loop, uint16(g.Port))] = "gateway " + g.Container
	}
	if socks, _, err := c.sockets(ctx); err == nil {
		for _, s := range socks {
			if s.Proto == "tcp" && s.Addr.Addr().IsLoopback() {
				if _, ok := targets[s.Addr]; !ok {
					targets[s.Addr] = "listening socket"
				}
			}
		}
	} else {
		// Without the guest's list, its own loopback listeners go untried:
		// silence on the rest would not prove the claim.
		problems = append(problems, "could not list the guest's listening sockets: "+err.Error())
	}
	keys := make([]netip.AddrPort, 0, len(targets))
	for k := range targets {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, t := range keys {
		ans, err := sendSYN(c.in.link.Netns, c.in.link.Tap, c.in.mac, src, t.Addr(), int(t.Port()), 3, 4*time.Second)
		if err != nil {
			return Skip, "not decided: " + err.Error()
		}
		ev.add("SYN to %s (%s) via the guest's MAC %s: %s", t, targets[t], c.in.mac, describeAnswers(ans))
		for _, a := range ans {
			if !strings.HasPrefix(a.Flags, "ICMP") {
				problems = append(problems, fmt.Sprintf("%s answered a packet from outside to %s (%s)", a.From, t, a.Flags))
				break
			}
		}
	}
	return verdict(problems, ev, fmt.Sprintf("no answer to SYNs for %d loopback targets sent to the guest's MAC (the control SYN to its SSH port was answered)", len(keys)))
}

func describeAnswers(as []synAnswer) string {
	if len(as) == 0 {
		return "no answer"
	}
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}

func hasSYNACK(as []synAnswer) bool {
	for _, a := range as {
		if a.Flags == "SYN-ACK" {
			return true
		}
	}
	return false
}
