package verify

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/firstboot"
)

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

var checkTailscaleDaemon = Check{ID: "tailscale.daemon", Scope: ScopeFirmware, Needs: "an SSH session",
	claim: func(Spec, *GatewaySpec) string {
		return fmt.Sprintf("tailscaled is active and holds %d/udp", TailscalePort)
	},
	planned: func(s Spec, _ int) bool { return s.Tailscale },
	run:     (*checker).tailscaled, ssh: true}

// Tailnet is bake verify --tailnet-*: a control server (the user's
// headscale, or Tailscale's) and a pre-auth key the last instance of each
// firmware joins with at its first boot, through its seed. That instance
// gets a second NIC on QEMU's user-mode network without restrict=on
// (vm.Config.Outbound: the guest's only way off the isolated link, out
// through the host's sockets; the host's loopback is 10.0.2.2), and its
// link sends no default route.
type Tailnet struct {
	LoginServer string // https URL (headscale's server_url; Tailscale's is https://controlplane.tailscale.com)
	AuthKey     string // never logged, never in a report
	CA          string // PEM CA certificates the control server's certificate is from; "" for none
}

// Check reports a value first boot would refuse (firstboot's own checks).
func (t *Tailnet) Check() error {
	if t.LoginServer == "" || t.AuthKey == "" {
		return fmt.Errorf("--tailnet needs a login server and an auth key")
	}
	if err := firstboot.CheckLoginServer(t.LoginServer); err != nil {
		return err
	}
	if err := firstboot.CheckTailscaleAuthKey(t.AuthKey); err != nil {
		return err
	}
	if t.CA != "" {
		if err := firstboot.CheckTailscaleCA(t.CA); err != nil {
			return err
		}
	}
	return nil
}

// tsWaitJoin bounds the wait for first boot's join (tailscale up
// --timeout=5m, after the network is online).
const tsWaitJoin = 7 * time.Minute

// joinUnitProps are the join unit's properties the tailnet checks read.
// ConditionTimestampMonotonic tells a unit whose condition was evaluated
// this boot from one whose start job has not run yet: systemd shows both
// as ActiveState=inactive ConditionResult=no (the property's zero value),
// so ConditionResult alone cannot say "no key file" (a check that read it
// before the job ran took a join still to come for a missing key: seen
// once, on a slow host, session 22).
const joinUnitProps = "ActiveState,Result,ConditionResult,ConditionTimestampMonotonic,ExecMainStatus,ExecMainStartTimestampMonotonic"

// parseUnitProps reads `systemctl show -p ...` output (KEY=VALUE lines).
func parseUnitProps(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			m[k] = v
		}
	}
	return m
}

// conditionEvaluated says whether the unit's start job ran this boot (its
// conditions were checked, whatever they said).
func conditionEvaluated(unit map[string]string) bool {
	ts := unit["ConditionTimestampMonotonic"]
	return ts != "" && ts != "0"
}

// joinSettled says whether first boot's join unit is done with this boot:
// joined (active: a oneshot that remains), failed, or skipped by its
// condition (no key file) once that condition was actually checked.
func joinSettled(unit map[string]string) bool {
	switch unit["ActiveState"] {
	case "active", "failed":
		return true
	case "inactive":
		return conditionEvaluated(unit)
	}
	return false
}

// tsWaitCondition bounds the wait for the join unit's start job to run on
// a boot where it must not join (the reboot, an upgrade): its condition
// is checked once the network is online.
const tsWaitCondition = 3 * time.Minute

// waitJoinCondition reads the join unit's properties until its condition
// was evaluated this boot (or tsWaitCondition passes) and returns them,
// with the command's result for the evidence.
func waitJoinCondition(ctx context.Context, in *instance, extra string) (map[string]string, cmdResult, error) {
	t0 := time.Now()
	for {
		res, err := in.sudo(ctx, "systemctl show -p "+joinUnitProps+" "+appliance.TailscaleUpUnitName+extra)
		if err != nil {
			return nil, res, err
		}
		unit := parseUnitProps(res.Stdout)
		if conditionEvaluated(unit) || time.Since(t0) > tsWaitCondition || ctx.Err() != nil {
			return unit, res, nil
		}
		sleepCtx(ctx, 3*time.Second)
	}
}

// tsSelf is what `tailscale status --json` says of the node itself.
type tsSelf struct {
	BackendState string
	Self         struct {
		ID           string
		PublicKey    string
		HostName     string
		DNSName      string
		Online       bool
		TailscaleIPs []string
	}
}

func (s tsSelf) String() string {
	return fmt.Sprintf("backend %s, node %s (%s, key %s, %s), online %v", s.BackendState, orDash(s.Self.ID), orDash(s.Self.HostName),
		orDash(s.Self.PublicKey), orDash(strings.Join(s.Self.TailscaleIPs, " ")), s.Self.Online)
}

func parseTSStatus(out string) (tsSelf, error) {
	var s tsSelf
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return s, fmt.Errorf("tailscale status --json: %v", err)
	}
	return s, nil
}

// redactKey replaces the auth key in s.
func (r *runner) redactKey(s string) string {
	if r.o.Tailnet == nil || r.o.Tailnet.AuthKey == "" {
		return s
	}
	return strings.ReplaceAll(s, r.o.Tailnet.AuthKey, "[AUTH KEY]")
}

// tailnetChecks records tailscale.joined, tailscale.key-gone and
// tailscale.serve on in (the tailnet instance, before its reboot) and
// returns what the node was for tailscale.reboot (zero when it did not
// join).
func (r *runner) tailnetChecks(ctx context.Context, fw string, in *instance) tsSelf {
	t0 := time.Now()
	st, ev, self := r.tailnetJoined(ctx, in)
	if ctx.Err() != nil {
		return tsSelf{}
	}
	r.record(fw, checkTailscaleJoined.ID, st, r.redactKey(ev), time.Since(t0))
	t1 := time.Now()
	st, ev = r.tailnetKeyGone(ctx, in)
	if ctx.Err() != nil {
		return tsSelf{}
	}
	r.record(fw, checkTailscaleKeyGone.ID, st, r.redactKey(ev), time.Since(t1))
	t2 := time.Now()
	st, ev = r.tailnetServe(ctx, in)
	if ctx.Err() != nil {
		return tsSelf{}
	}
	r.record(fw, checkTailscaleServe.ID, st, r.redactKey(ev), time.Since(t2))
	return self
}

// tailnetJoined waits for first boot's join unit to finish and judges it.
func (r *runner) tailnetJoined(ctx context.Context, in *instance) (Status, string, tsSelf) {
	var ev evidence
	var problems []string
	t0 := time.Now()
	unit := map[string]string{}
	for {
		res, err := in.sudo(ctx, "systemctl show -p "+joinUnitProps+" "+appliance.TailscaleUpUnitName)
		if err != nil {
			return Fail, err.Error(), tsSelf{}
		}
		unit = parseUnitProps(res.Stdout)
		if joinSettled(unit) {
			break
		}
		if time.Since(t0) > tsWaitJoin || ctx.Err() != nil {
			problems = append(problems, fmt.Sprintf("%s did not finish within %s of the login", appliance.TailscaleUpUnitName, tsWaitJoin))
			break
		}
		sleepCtx(ctx, 3*time.Second)
	}
	ev.add("%s after %s: ActiveState=%s Result=%s ConditionResult=%s ConditionTimestampMonotonic=%s ExecMainStatus=%s", appliance.TailscaleUpUnitName, time.Since(t0).Round(time.Second),
		unit["ActiveState"], unit["Result"], unit["ConditionResult"], orDash(unit["ConditionTimestampMonotonic"]), unit["ExecMainStatus"])
	if unit["ActiveState"] != "active" || unit["Result"] != "success" {
		why := "it failed"
		switch {
		case !conditionEvaluated(unit):
			why = "its start job had not run: the network never came online, or the unit is not enabled"
		case unit["ActiveState"] == "inactive" && unit["ConditionResult"] == "no":
			why = "no key file: the seed's key never arrived"
		}
		problems = append(problems, fmt.Sprintf("first boot's join (%s) did not succeed: ActiveState=%s Result=%s ConditionResult=%s (%s)",
			appliance.TailscaleUpUnitName, unit["ActiveState"], unit["Result"], unit["ConditionResult"], why))
	}
	if res, err := in.sudo(ctx, "journalctl -b -o short-monotonic --no-pager -u "+appliance.TailscaleUpUnitName+" | tail -n 30"); err == nil {
		ev.add("its journal:\n%s", strings.TrimSpace(res.Stdout))
		if strings.Contains(res.Stdout, r.o.Tailnet.AuthKey) {
			problems = append(problems, "the join unit's journal shows the auth key")
		}
	}
	// The node: running, online, on the given control server.
	var self tsSelf
	for {
		res, err := in.sudo(ctx, "tailscale status --json")
		if err != nil {
			return Fail, err.Error(), tsSelf{}
		}
		self, err = parseTSStatus(res.Stdout)
		if err == nil && self.BackendState == "Running" && self.Self.Online {
			break
		}
		if time.Since(t0) > tsWaitJoin+time.Minute || ctx.Err() != nil || len(problems) > 0 {
			if err != nil {
				problems = append(problems, err.Error())
			}
			problems = append(problems, fmt.Sprintf("the node is not running and online: %s", self))
			break
		}
		sleepCtx(ctx, 2*time.Second)
	}
	ev.add("tailscale status --json: %s", self)
	res, err := in.sudo(ctx, "tailscale debug prefs")
	if err != nil {
		return Fail, err.Error(), tsSelf{}
	}
	var prefs struct{ ControlURL string }
	if err := json.Unmarshal([]byte(res.Stdout), &prefs); err != nil {
		problems = append(problems, fmt.Sprintf("tailscale debug prefs: %v", err))
	}
	ev.add("tailscale debug prefs: ControlURL %s", orDash(prefs.ControlURL))
	if strings.TrimRight(prefs.ControlURL, "/") != strings.TrimRight(r.o.Tailnet.LoginServer, "/") {
		problems = append(problems, fmt.Sprintf("the node's control server is %s, not the given %s", orDash(prefs.ControlURL), r.o.Tailnet.LoginServer))
	}
	if len(problems) > 0 {
		self = tsSelf{}
	}
	st, text := verdict(problems, ev, fmt.Sprintf("%s joined %s at first boot with the seed's auth key, no human step: node %s running and online", in.name(), r.o.Tailnet.LoginServer, self.Self.ID))
	return st, text, self
}

// tailnetKeyGone: the key file is gone and no log line of this boot holds
// the key (secrets.seed-copies searches every file for it).
func (r *runner) tailnetKeyGone(ctx context.Context, in *instance) (Status, string) {
	var ev evidence
	var problems []string
	res, err := in.runT(ctx, `sudo -n sh -c 'test ! -e `+appliance.TailscaleAuthKeyFile+` && echo gone; journalctl -b --no-pager -o cat | grep -cF -f /dev/stdin; true'`,
		[]byte(r.o.Tailnet.AuthKey+"\n"), 2*time.Minute)
	if err != nil {
		return Fail, err.Error()
	}
	lines := strings.Fields(res.Stdout)
	if !slices.Contains(lines, "gone") {
		problems = append(problems, appliance.TailscaleAuthKeyFile+" is still on the disk after the join")
	} else {
		ev.add("%s is gone", appliance.TailscaleAuthKeyFile)
	}
	n := -1
	if len(lines) > 0 {
		n, _ = strconv.Atoi(lines[len(lines)-1])
	}
	switch {
	case n < 0:
		problems = append(problems, "the search of this boot's journal did not run: "+strings.Join(lines, " "))
	case n > 0:
		problems = append(problems, fmt.Sprintf("%d lines of this boot's journal hold the auth key", n))
	default:
		ev.add("no line of this boot's journal holds the auth key")
	}
	ev.add("every file on the disk is searched for it by %s (after the reboot, %s allowed)", checkSecretsSeedCopies.ID, TailscaledState)
	return verdict(problems, ev, "the seed's auth key is gone after the join: its file removed, in no log line")
}

// ServeStatus is `tailscale serve status --json` (ipn.ServeConfig), the
// parts judged.
type ServeStatus struct {
	TCP map[string]struct{ HTTP, HTTPS bool }
	Web map[string]struct {
		Handlers map[string]struct{ Proxy string }
	}
	AllowFunnel map[string]bool
	Foreground  map[string]ServeStatus
}

// JudgeServe judges serve status JSON against the image's claims: with
// serve-http on port P (claims' TailscaleServeHTTP), exactly TCP port P
// in plain HTTP, proxied to the gateway on 127.0.0.1:gatewayPort; without
// it, no plain-HTTP serve entry (an HTTPS serve entry is reported, not
// judged: headscale cannot issue its certificate, so it stays unproven
// here). Any funnel entry (AllowFunnel, in a foreground session too) fails.
func JudgeServe(s Spec, out string) (problems []string, summary string) {
	var st ServeStatus
	if strings.TrimSpace(out) == "" {
		out = "{}"
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return []string{fmt.Sprintf("tailscale serve status --json: %v", err)}, ""
	}
	var funnel []string
	var walk func(prefix string, c ServeStatus)
	walk = func(prefix string, c ServeStatus) {
		for hp, on := range c.AllowFunnel {
			if on {
				funnel = append(funnel, prefix+hp)
			}
		}
		for id, f := range c.Foreground {
			walk(prefix+"foreground session "+id+": ", f)
		}
	}
	walk("", st)
	sort.Strings(funnel)
	for _, f := range funnel {
		problems = append(problems, "funnel is on for "+f+" (the gateway would be served to the internet)")
	}
	var ports []string
	for p := range st.TCP {
		ports = append(ports, p)
	}
	sort.Strings(ports)
	gwPort := 0
	if s.Gateway != nil {
		gwPort = s.Gateway.Port
	}
	if p := s.TailscaleServeHTTP; p > 0 {
		want := strconv.Itoa(p)
		if len(ports) != 1 || ports[0] != want || !st.TCP[want].HTTP {
			problems = append(problems, fmt.Sprintf("serve has TCP ports [%s], want only %s in plain HTTP (gateway.tailscale_mode serve-http)", strings.Join(ports, " "), want))
		}
		proxied := false
		for hp, w := range st.Web {
			if strings.HasSuffix(hp, ":"+want) {
				for _, h := range w.Handlers {
					proxied = proxied || h.Proxy == fmt.Sprintf("http://127.0.0.1:%d", gwPort)
				}
			}
		}
		if !proxied {
			problems = append(problems, fmt.Sprintf("no web handler on port %s proxies to the gateway at http://127.0.0.1:%d", want, gwPort))
		}
		summary = fmt.Sprintf("serve: the gateway (127.0.0.1:%d) on the tailnet at port %d in plain HTTP (serve-http), nothing else, no funnel", gwPort, p)
	} else {
		for _, p := range ports {
			if st.TCP[p].HTTP {
				problems = append(problems, fmt.Sprintf("serve has plain-HTTP port %s, which the image's claims do not name", p))
			}
		}
		summary = fmt.Sprintf("serve: no plain-HTTP entry (the claims name none), no funnel; TCP ports [%s] (an HTTPS serve entry is not judged)", strings.Join(ports, " "))
	}
	return problems, summary
}

// tailnetServe: serve status as the admin (the operator, no sudo).
func (r *runner) tailnetServe(ctx context.Context, in *instance) (Status, string) {
	var ev evidence
	res, err := in.runT(ctx, "tailscale serve status --json", nil, time.Minute)
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	if res.Exit != 0 {
		return Fail, fmt.Sprintf("tailscale serve status --json as %s (no sudo) exited %d\n\n%s", r.o.Spec.AdminUser, res.Exit, ev)
	}
	problems, summary := JudgeServe(r.o.Spec, res.Stdout)
	return verdict(problems, ev, summary+fmt.Sprintf("; read by %s without sudo", r.o.Spec.AdminUser))
}

// tailnetReboot: after the reboot the node is the same (ID and node key),
// running again, and the join did not run again.
func (r *runner) tailnetReboot(ctx context.Context, in *instance, before tsSelf) (Status, string) {
	var ev evidence
	var problems []string
	if before.Self.ID == "" {
		return Fail, fmt.Sprintf("not comparable: the node did not join before the reboot (see %s)", checkTailscaleJoined.ID)
	}
	ev.add("before the reboot: %s", before)
	t0 := time.Now()
	var after tsSelf
	for {
		res, err := in.sudo(ctx, "tailscale status --json")
		if err == nil {
			after, err = parseTSStatus(res.Stdout)
		}
		if err == nil && after.BackendState == "Running" && after.Self.Online {
			break
		}
		if time.Since(t0) > 3*time.Minute || ctx.Err() != nil {
			problems = append(problems, fmt.Sprintf("not running and online again within 3 min of the login after the reboot: %s %v", after, err))
			break
		}
		sleepCtx(ctx, 2*time.Second)
	}
	ev.add("after the reboot (%s after the login): %s", time.Since(t0).Round(time.Second), after)
	if after.Self.ID != before.Self.ID || after.Self.PublicKey != before.Self.PublicKey {
		problems = append(problems, fmt.Sprintf("another node after the reboot: %s key %s (was %s key %s)", orDash(after.Self.ID), orDash(after.Self.PublicKey), before.Self.ID, before.Self.PublicKey))
	}
	// The join unit's start job runs once the network is online: until
	// then its ConditionResult reads "no" without meaning it.
	unit, res, err := waitJoinCondition(ctx, in, "; test -e "+appliance.TailscaleAuthKeyFile+" && echo key-present; true")
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	switch {
	case !conditionEvaluated(unit):
		problems = append(problems, fmt.Sprintf("the join unit's start job had not run within %s after the reboot: cannot tell whether it would join again", tsWaitCondition))
	case unit["ConditionResult"] != "no":
		problems = append(problems, "the join unit's condition (the key file) was not false after the reboot: it may have joined again")
	}
	if strings.Contains(res.Stdout, "key-present") {
		problems = append(problems, appliance.TailscaleAuthKeyFile+" is back after the reboot")
	}
	return verdict(problems, ev, fmt.Sprintf("%s is the same node %s (same node key) after a reboot, running with no re-auth", in.name(), before.Self.ID))
}

// The tailnet checks: planned only with --tailnet (Options.Tailnet), on
// the last instance of each firmware.
var (
	checkTailscaleJoined = Check{ID: "tailscale.joined", Scope: ScopeFirmware, Needs: "--tailnet-login-server and --tailnet-authkey-file, --instances 2+, root",
		claim: func(Spec, *GatewaySpec) string {
			return "first boot joins the tailnet of the seed's login server with the seed's auth key, no human step: the node is running and online, its control server the given one"
		}, tailnet: true}
	checkTailscaleKeyGone = Check{ID: "tailscale.key-gone", Scope: ScopeFirmware, Needs: "--tailnet-*",
		claim: func(Spec, *GatewaySpec) string {
			return "the seed's auth key is gone after the join: its file removed, in no log line (secrets.seed-copies searches every file for it)"
		}, tailnet: true}
	checkTailscaleServe = Check{ID: "tailscale.serve", Scope: ScopeFirmware, Needs: "--tailnet-*",
		claim: func(s Spec, gw *GatewaySpec) string {
			if s.TailscaleServeHTTP > 0 {
				return fmt.Sprintf("tailscale serve status (read by the operator without sudo) serves the gateway on the tailnet at port %d in plain HTTP and nothing else, with no funnel entry", s.TailscaleServeHTTP)
			}
			return "tailscale serve status (read by the operator without sudo) has no plain-HTTP entry and no funnel entry"
		}, tailnet: true}
	checkTailscaleReboot = Check{ID: "tailscale.reboot", Scope: ScopeFirmware, Needs: "--tailnet-*",
		claim: func(Spec, *GatewaySpec) string {
			return "after a reboot the instance is the same node (node ID and key), running again with no re-auth"
		}, tailnet: true}
)

// tailnetObs is what a later boot of an upgrade run (the new image, the
// rollback) showed of its node: `tailscale status --json` once running
// and online (or the time limit), `tailscale debug prefs`' control
// server, the join unit's state and whether the auth key file exists.
type tailnetObs struct {
	Self       tsSelf
	StatusErr  string        // the last error reading the status, if any
	Waited     time.Duration // from the login to Running and online (or the limit)
	ControlURL string
	Unit       map[string]string // the join unit's joinUnitProps, read once its condition was evaluated (or the limit)
	KeyPresent bool              // appliance.TailscaleAuthKeyFile exists
	Err        string            // a command that could not run
	Outbound   string            // what outboundUp found or did
	// Diag is tailscaled's journal of the boot and its state directory,
	// read when the node is not running and online (for the evidence).
	Diag string
}

// tsWaitUpgrade bounds the wait for a later boot's node to be running and
// online again (after the login).
const tsWaitUpgrade = 4 * time.Minute

// outboundUp makes sure verify's outbound NIC (the user-mode one, its
// only way to the control server) has an IPv4 address on an upgrade run's
// boot with no seed. An image built on a cloud image configures only its
// first NIC when no datasource says otherwise (cloud-init's fallback
// network configuration); an image built from Debian packages (networkd
// on every ethernet NIC) has configured it already. The NIC is verify's,
// not the image's, so verify asks its DHCP server for an address itself
// (dhclient) and says so in the evidence.
func (in *instance) outboundUp(ctx context.Context) string {
	if in.outMAC == "" {
		return "no outbound NIC"
	}
	script := `mac=` + shellQuote(in.outMAC) + `; i=
for d in /sys/class/net/*; do [ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && i=${d##*/}; done
if [ -z "$i" ]; then echo "no NIC has the outbound MAC $mac"; exit 0; fi
a=$(ip -4 -o addr show dev "$i" | awk '{print $4}' | head -n 1)
if [ -n "$a" ]; then echo "the outbound NIC $i ($mac) has $a: the image configured it"; exit 0; fi
if ! command -v dhclient >/dev/null; then echo "the outbound NIC $i ($mac) has no IPv4 address and there is no dhclient to ask for one"; exit 0; fi
ip link set "$i" up
timeout 90 dhclient -1 -4 "$i" >/dev/null 2>&1
a=$(ip -4 -o addr show dev "$i" | awk '{print $4}' | head -n 1)
echo "the outbound NIC $i ($mac) had no IPv4 address (the image configures only its first NIC without a datasource); verify ran dhclient on it: ${a:-still none}"`
	res, err := in.runT(ctx, "sudo -n sh -c "+shellQuote(script), nil, 2*time.Minute)
	if err != nil {
		return "bringing up the outbound NIC: " + err.Error()
	}
	return strings.TrimSpace(res.Stdout + " " + firstLine(res.Stderr))
}

// observeTailnet records o on in.
func (r *runner) observeTailnet(ctx context.Context, in *instance) tailnetObs {
	var o tailnetObs
	o.Outbound = in.outboundUp(ctx)
	t0 := time.Now()
	for {
		res, err := in.sudo(ctx, "tailscale status --json")
		if err == nil {
			o.Self, err = parseTSStatus(res.Stdout)
		}
		o.StatusErr = ""
		if err != nil {
			o.StatusErr = err.Error()
		}
		if err == nil && o.Self.BackendState == "Running" && o.Self.Self.Online {
			break
		}
		if time.Since(t0) > tsWaitUpgrade || ctx.Err() != nil {
			break
		}
		sleepCtx(ctx, 2*time.Second)
	}
	o.Waited = time.Since(t0).Round(time.Second)
	if o.Self.BackendState != "Running" || !o.Self.Self.Online {
		if res, err := in.sudo(ctx, "systemctl show -p ActiveState,NRestarts,ExecMainStartTimestampMonotonic tailscaled; ls -la /var/lib/tailscale /var/lib/tailscale/bake-ca 2>&1; tailscale status 2>&1 | head -n 5; journalctl -b -u tailscaled --no-pager -o short-monotonic | tail -n 80"); err == nil {
			o.Diag = strings.TrimSpace(res.Stdout)
		}
	}
	res, err := in.sudo(ctx, "tailscale debug prefs")
	if err != nil {
		o.Err = err.Error()
		return o
	}
	var p struct{ ControlURL string }
	if err := json.Unmarshal([]byte(res.Stdout), &p); err != nil {
		o.Err = fmt.Sprintf("tailscale debug prefs: %v", err)
	}
	o.ControlURL = p.ControlURL
	unit, res, err := waitJoinCondition(ctx, in, "; test -e "+appliance.TailscaleAuthKeyFile+" && echo key-present; true")
	if err != nil {
		o.Err = err.Error()
		return o
	}
	o.Unit = unit
	for _, l := range strings.Split(res.Stdout, "\n") {
		if strings.TrimSpace(l) == "key-present" {
			o.KeyPresent = true
		}
	}
	return o
}

// JudgeTailnetUpgrade judges a later boot of an upgrade run (who: new,
// rollback) against the node the old boot joined as (before): the same
// node (ID and node key), running and online, on the given control
// server, and no new login: the join unit's condition (the auth key file)
// false and the unit never started, no key file. Fail closed: an old boot
// that did not join (no node ID) fails, never passes.
func JudgeTailnetUpgrade(before tsSelf, o tailnetObs, loginServer, who string) (problems []string, ev evidence) {
	if o.Outbound != "" {
		ev.add("%s: %s", who, o.Outbound)
	}
	ev.add("%s: tailscale status --json after %s: %s", who, o.Waited, o.Self)
	ev.add("%s: control server %s; join unit ActiveState=%s ConditionResult=%s ConditionTimestampMonotonic=%s ExecMainStartTimestampMonotonic=%s; auth key file present: %v",
		who, orDash(o.ControlURL), orDash(o.Unit["ActiveState"]), orDash(o.Unit["ConditionResult"]), orDash(o.Unit["ConditionTimestampMonotonic"]), orDash(o.Unit["ExecMainStartTimestampMonotonic"]), o.KeyPresent)
	if before.Self.ID == "" || before.Self.PublicKey == "" {
		return []string{fmt.Sprintf("%s: not comparable: the old boot did not join the tailnet (no node to be the same as)", who)}, ev
	}
	if o.Err != "" {
		problems = append(problems, fmt.Sprintf("%s: %s", who, o.Err))
	}
	if o.Self.BackendState != "Running" || !o.Self.Self.Online {
		problems = append(problems, fmt.Sprintf("%s: the node is not running and online within %s of the login: %s %s", who, tsWaitUpgrade, o.Self, o.StatusErr))
		if o.Diag != "" {
			ev.add("%s: tailscaled's unit, state directory and journal:\n%s", who, o.Diag)
		}
	}
	if o.Self.Self.ID != before.Self.ID || o.Self.Self.PublicKey != before.Self.PublicKey {
		problems = append(problems, fmt.Sprintf("%s: another node: %s key %s (the old boot joined as %s key %s)", who,
			orDash(o.Self.Self.ID), orDash(o.Self.Self.PublicKey), before.Self.ID, before.Self.PublicKey))
	}
	if strings.TrimRight(o.ControlURL, "/") != strings.TrimRight(loginServer, "/") {
		problems = append(problems, fmt.Sprintf("%s: the node's control server is %s, not %s", who, orDash(o.ControlURL), loginServer))
	}
	switch {
	case o.Unit["ConditionResult"] != "no":
		problems = append(problems, fmt.Sprintf("%s: the join unit's condition (the auth key file) was not false (ConditionResult=%s): it may have joined again", who, orDash(o.Unit["ConditionResult"])))
	case !conditionEvaluated(o.Unit):
		problems = append(problems, fmt.Sprintf("%s: the join unit's start job had not run within %s (ConditionTimestampMonotonic=%s): cannot tell whether it would join again", who, tsWaitCondition, orDash(o.Unit["ConditionTimestampMonotonic"])))
	}
	if ts := o.Unit["ExecMainStartTimestampMonotonic"]; ts != "" && ts != "0" {
		problems = append(problems, fmt.Sprintf("%s: the join unit ran (started at monotonic %s µs)", who, ts))
	}
	if o.KeyPresent {
		problems = append(problems, fmt.Sprintf("%s: %s exists: an auth key is on this boot's disk", who, appliance.TailscaleAuthKeyFile))
	}
	return problems, ev
}
