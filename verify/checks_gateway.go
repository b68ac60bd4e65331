package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/gwprobe"
	"github.com/bakeimg/bake/vm"
)

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
	unit := "bake-container-" + g.Container + ".service"
	// Once it answers, how often systemd started the container again
	// (docker's own RestartCount stays 0: each start is a new --rm
	// container): a gateway that crashed at start and came back is told
	// from one that started once.
	probe := fmt.Sprintf(`docker inspect -f 'status={{.State.Status}} restarts={{.RestartCount}} health={{if .State.Health}}{{.State.Health.Status}}{{end}}' %s 2>&1
timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null && echo ANSWERS && echo "unit restarts $(systemctl show -p NRestarts --value %s)"`, shellQuote(g.Container), g.Port, shellQuote(unit))
	var last cmdResult
	for ctx.Err() == nil {
		r, err := c.in.sudo(ctx, probe)
		if err != nil {
			c.gwNote.add("waiting for the gateway: %v", err)
			return
		}
		last = r
		if strings.Contains(r.Stdout, "ANSWERS") {
			restarts := "unit restarts unknown"
			for _, l := range strings.Split(r.Stdout, "\n") {
				if strings.HasPrefix(l, "unit restarts ") {
					restarts = strings.TrimSpace(l)
				}
			}
			c.gwNote.add("the gateway answered on 127.0.0.1:%d %s after power-on (waited %s here; %s; %s %s)",
				g.Port, time.Since(c.in.poweredOn).Round(time.Second), time.Since(t0).Round(time.Second),
				strings.TrimSpace(strings.SplitN(r.Stdout, "\n", 2)[0]), unit, restarts)
			c.r.logf("%s: the gateway answered on 127.0.0.1:%d %s after power-on (%s)", c.in.name(), g.Port, time.Since(c.in.poweredOn).Round(time.Second), restarts)
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
	if r, err := c.in.sudo(ctx, "systemctl status --no-pager -n 0 "+shellQuote(unit)+" 2>&1 | head -12; journalctl -b --no-pager -n 30 -u "+shellQuote(unit)+" 2>&1; docker logs --tail 30 "+shellQuote(g.Container)+" 2>&1"); err == nil {
		c.gwNote.cmd(r)
	}
}

func (c *checker) gatewayProcess(ctx context.Context) (Status, string) {
	c.waitGateway(ctx)
	g := c.spec.Gateway
	script := gatewayProcessScript(g.Container) + `
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

// gatewayProcessScript's start: one docker inspect (a Docker CLI start is
// about a second of the guest's CPU under TCG; there were two, three
// when the cgroup was not found) prints the container's state line and
// gives its ID and main PID; $pids is every process of its cgroup, or
// that PID.
func gatewayProcessScript(container string) string {
	return `n=` + shellQuote(container) + `
out=$(docker inspect -f '{{.Id}} status={{.State.Status}} pid={{.State.Pid}} user={{.Config.User}} restarts={{.RestartCount}}' "$n") || exit 3
id=${out%% *}
echo "${out#* }"
pid=${out#* pid=}; pid=${pid%% *}
pids=$(cat $(find /sys/fs/cgroup -type d -name "*$id*" 2>/dev/null | sed 's|$|/cgroup.procs|') 2>/dev/null | sort -un)
[ -n "$pids" ] || pids=$pid`
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

// guestConnectScript connects from inside the guest (bash's /dev/tcp),
// bounded by 5 s, and prints "connected" when host:port accepted.
func guestConnectScript(host string, port int) string {
	return fmt.Sprintf(`timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%d' 2>&1 && echo connected`, host, port)
}

// Markers between the parts of gateway.listen's guest command.
const (
	gwMarkSockets = "@@bake-verify-sockets@@"
	gwMarkLoop    = "@@bake-verify-loopback@@"
	gwMarkOwn     = "@@bake-verify-own-address@@"
)

// gatewayListenScript (sudo) is gateway.listen's one guest command (were
// four): the container's port bindings and docker inspect's status
// ("inspect-rc=N"), the sockets (socketsScript), a connection to
// 127.0.0.1:port and, unless ownIP is "", one to the guest's own address,
// each part after its marker.
func gatewayListenScript(container string, port int, ownIP string) string {
	s := "docker inspect -f '{{json .HostConfig.PortBindings}}' " + shellQuote(container) + "\necho \"inspect-rc=$?\"\n" +
		"echo " + gwMarkSockets + "\n" + socketsScript + "\n" +
		"echo " + gwMarkLoop + "\n" + guestConnectScript("127.0.0.1", port)
	if ownIP != "" {
		s += "\necho " + gwMarkOwn + "\n" + guestConnectScript(ownIP, port)
	}
	return s + "\ntrue"
}

// gatewayListenParts splits gatewayListenScript's output: docker inspect's
// output and exit status (-1: not printed), the sockets, the loopback
// connection's and the own address's output; ok when every marker came.
func gatewayListenParts(out string, own bool) (inspect string, inspectRC int, socks, loop, ownOut string, ok bool) {
	inspectRC = -1
	head, rest, ok1 := strings.Cut(out, gwMarkSockets+"\n")
	socks, rest, ok2 := strings.Cut(rest, gwMarkLoop+"\n")
	loop = rest
	ok3 := true
	if own {
		loop, ownOut, ok3 = strings.Cut(rest, gwMarkOwn+"\n")
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(head, "\n"), "\n") {
		if v, found := strings.CutPrefix(l, "inspect-rc="); found {
			if n, err := strconv.Atoi(v); err == nil {
				inspectRC = n
			}
			continue
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n"), inspectRC, socks, loop, ownOut, ok1 && ok2 && ok3
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
	wantHost := "127.0.0.1"
	if g.Mode == "network" {
		wantHost = "0.0.0.0"
	}
	ownIP := ""
	if g.Mode != "network" {
		ownIP = c.guestIPv4()
	}
	// From outside, both families at once (each its own connection and
	// timeout), while the guest command runs: the two are independent.
	var (
		outWG  sync.WaitGroup
		from   = vm.LinkHostIPv4.Addr()
		expect = false
		addrs  = []netip.Addr{c.in.ipv4, c.in.ipv6}
		oks    = make([]bool, 2)
		lines  = make([]string, 2)
	)
	if c.in.link != nil {
		for _, p := range g.Allowed {
			if g.Mode == "network" && p.Contains(from) {
				expect = true
			}
		}
		for i, a := range addrs {
			if !a.IsValid() {
				continue
			}
			outWG.Add(1)
			go func() { defer outWG.Done(); oks[i], lines[i] = c.outsideProbe(ctx, a, g.Port) }()
		}
	}
	// One guest command: the container's bindings, the sockets, the
	// connections from the guest to 127.0.0.1 and to its own address.
	res, err := c.in.sudo(ctx, gatewayListenScript(g.Container, g.Port, ownIP))
	outWG.Wait()
	if err != nil {
		return Fail, err.Error()
	}
	inspect, inspectRC, sockOut, loopOut, ownOut, ok := gatewayListenParts(res.Stdout, ownIP != "")
	if !ok {
		ev.cmd(res)
		return Fail, "the guest command did not run to its end\n\n" + ev.String()
	}
	ires := cmdResult{Cmd: "docker inspect -f '{{json .HostConfig.PortBindings}}' " + shellQuote(g.Container), Stdout: inspect, Exit: inspectRC}
	ev.cmd(ires)
	var bindings map[string][]struct{ HostIp, HostPort string }
	if ires.OK() {
		json.Unmarshal([]byte(strings.TrimSpace(inspect)), &bindings)
	} else {
		problems = append(problems, "no container "+g.Container)
	}
	for port, bs := range bindings {
		for _, b := range bs {
			if b.HostIp != wantHost && !(g.Mode == "network" && b.HostIp == "") {
				problems = append(problems, fmt.Sprintf("container port %s published on %q:%s, want %s", port, b.HostIp, b.HostPort, wantHost))
			}
		}
	}
	for _, s := range parseProcNet(sockOut) {
		if strings.HasPrefix(s.Proto, "tcp") && int(s.Addr.Port()) == g.Port {
			ev.add("listening: %s %s", s.Proto, s.Addr)
			if g.Mode != "network" && !s.Addr.Addr().IsLoopback() {
				problems = append(problems, fmt.Sprintf("a socket listens on %s (not loopback)", s.Addr))
			}
		}
	}
	connected := func(out string) bool { return strings.Contains(out, "connected") }
	ev.add("guest -> 127.0.0.1:%d: %s", g.Port, map[bool]string{true: "connected", false: "not connected: " + strings.TrimSpace(loopOut)}[connected(loopOut)])
	if !connected(loopOut) && g.Mode != "network" {
		problems = append(problems, fmt.Sprintf("nothing answers on 127.0.0.1:%d in the guest", g.Port))
	}
	if ownIP != "" {
		ev.add("guest -> %s:%d (its own external address): %s", ownIP, g.Port, map[bool]string{true: "CONNECTED", false: "not connected"}[connected(ownOut)])
		if connected(ownOut) {
			problems = append(problems, fmt.Sprintf("the gateway answers on the guest's external address %s:%d", ownIP, g.Port))
		}
	}
	if c.in.link != nil {
		for i, a := range addrs {
			if !a.IsValid() {
				continue
			}
			ev.add("%s", lines[i])
			if oks[i] && !expect {
				problems = append(problems, fmt.Sprintf("the gateway port is reachable from outside on %s", a))
			}
		}
	} else {
		ev.add("(not probed from outside: %s)", c.r.outsideWhy)
	}
	return verdict(problems, ev, fmt.Sprintf("published on %s:%d only; answers on the guest's loopback, not on its own address nor from outside", wantHost, g.Port))
}

// gatewayRelay is the guest's end of gateway.auth's connection: a byte
// relay (bash's /dev/tcp) to 127.0.0.1:port, run over an SSH session; the
// host speaks the protocol on it.
func gatewayRelay(port int) string {
	return "bash -c " + shellQuote(fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d || exit 97; cat <&3 & exec cat >&3", port))
}

// gatewayAuthPaths are gateway.auth's two paths to the gateway and the
// guest command of each: the relay on the guest's loopback, and the relay
// run in the network namespace of the container's process pid.
func gatewayAuthPaths(g *GatewaySpec, pid int) []struct{ what, cmd string } {
	return []struct{ what, cmd string }{
		{fmt.Sprintf("through the published port (127.0.0.1:%d in the guest)", g.Port), "exec " + gatewayRelay(g.Port)},
		{fmt.Sprintf("inside the container %s (its loopback, 127.0.0.1:%d; nsenter -n -t %d)", g.Container, g.Port, pid),
			fmt.Sprintf("sudo -n nsenter -n -t %d ", pid) + gatewayRelay(g.Port)},
	}
}

// gatewayAuth speaks the gateway's WebSocket protocol (internal/gwprobe)
// from the host, relayed into the guest, on two paths: the port as every
// process of the guest reaches it (docker's proxy on the guest's
// loopback), and the gateway's own loopback inside its container (where
// OpenClaw trusts local clients most: the vantage point of its own CLI
// run with docker exec). On each the right token is accepted (hello-ok,
// and health answers ok), a wrong one and none are refused by the gateway
// itself. The same client differs only in the token, so a refusal is the
// token's.
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
	if c.in.sess == nil {
		return Fail, "no SSH session"
	}
	c.waitGateway(ctx)
	ev := append(evidence{}, c.gwNote...)
	var problems []string
	wrong, _ := NewToken()
	r, err := c.in.sudo(ctx, "docker inspect -f 'status={{.State.Status}} pid={{.State.Pid}}' "+shellQuote(g.Container))
	if err != nil {
		return Fail, err.Error()
	}
	var pid int
	if _, err := fmt.Sscanf(strings.TrimSpace(r.Stdout), "status=running pid=%d", &pid); err != nil || pid <= 0 {
		return Fail, fmt.Sprintf("the gateway container %s is not running, nothing to probe\n\n%s\n%s", g.Container, r.Evidence(), ev)
	}
	paths := gatewayAuthPaths(g, pid)
	// The token never reaches a command line: it travels inside the
	// relayed stream, from the host to the gateway. What the gateway
	// answers is evidence, written to the report: a gateway that echoes
	// a token back (a hostile one, or a debug message) must not put it
	// there.
	hide := tokenHider(tok, wrong)
	host := fmt.Sprintf("127.0.0.1:%d", g.Port)
	probe := func(cmd string, a *gatewayAttempt) {
		t0 := time.Now()
		defer func() { a.took = time.Since(t0) }()
		pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		conn, errb, err := c.in.sess.relay(pctx, cmd, time.Minute)
		if err != nil {
			a.err = err
			return
		}
		a.res, a.err = gwprobe.Probe(pctx, conn, host, a.token)
		if a.err != nil {
			if e := strings.TrimSpace(errb.String()); e != "" {
				a.err = fmt.Errorf("%w (the relay in the guest: %s)", a.err, e)
			}
		}
	}
	newAttempts := func() []*gatewayAttempt {
		return []*gatewayAttempt{{what: "the right token", token: tok}, {what: "a wrong token", token: wrong}, {what: "no token", token: ""}}
	}
	runs := [][]*gatewayAttempt{newAttempts(), newAttempts()}
	// The right token on the published port first, retried while the
	// gateway settles (it may answer TCP before it answers the
	// protocol); then the five others at once (each its own SSH session
	// and connection: under emulation the sessions' start-up is most of
	// each one's time).
	first := runs[0][0]
	t0 := time.Now()
	deadline := t0.Add(max(3*time.Minute, c.gatewayLimit()))
	var earlier []string // what the tries before the last one got
	for {
		probe(paths[0].cmd, first)
		if first.err == nil && first.res.Accepted && first.res.Health || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		if first.err != nil {
			earlier = append(earlier, first.err.Error())
		} else {
			earlier = append(earlier, first.res.String())
		}
		sleepCtx(ctx, 5*time.Second)
	}
	if len(earlier) > 0 {
		ev.add("the right token on the published port: %d tries in %s while the gateway settled; the first got: %s", len(earlier)+1, time.Since(t0).Round(time.Second), hide.Replace(earlier[0]))
	}
	var wg sync.WaitGroup
	for pi, run := range runs {
		for _, a := range run {
			if a == first {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				probe(paths[pi].cmd, a)
			}()
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return Fail, ctx.Err().Error()
	}
	problems, ev = judgeGatewayAuth(paths, runs, tok, wrong, g.ProbeRefused, problems, ev)
	return verdict(problems, ev, fmt.Sprintf("right token: hello-ok and health ok; wrong token: %q; no token: refused (on the published port and inside the container)", g.ProbeRefused))
}

// tokenHider replaces each token in a text with its redacted form.
func tokenHider(tokens ...string) *strings.Replacer {
	var pairs []string
	for _, t := range tokens {
		if t != "" {
			pairs = append(pairs, t, "<"+redact(t)+">")
		}
	}
	return strings.NewReplacer(pairs...)
}

// gatewayNotPaired is OpenClaw's refusal of a client with neither the
// token nor a paired device identity ("device identity required"): the
// answer to a client with no token.
const gatewayNotPaired = "NOT_PAIRED"

// gatewayAttempt is one connection of gateway.auth: which token, what the
// gateway answered (or the error that left no answer), how long it took.
type gatewayAttempt struct {
	what  string // the token: the right one, a wrong one, none
	token string
	res   gwprobe.Result
	err   error
	took  time.Duration
}

// judgeGatewayAuth judges gateway.auth's attempts, one run of three per
// path (the right token, a wrong one, none), into problems and evidence.
// Neither token is written: a gateway's answer that echoes one is
// redacted.
func judgeGatewayAuth(paths []struct{ what, cmd string }, runs [][]*gatewayAttempt, tok, wrong, refused string, problems []string, ev evidence) ([]string, evidence) {
	hide := tokenHider(tok, wrong)
	for pi, run := range runs {
		p := paths[pi]
		ev.add("%s:", p.what)
		for _, a := range run {
			if a.err != nil {
				a.err = errors.New(hide.Replace(a.err.Error()))
				ev.add("  %s: %v (%s)", a.what, a.err, a.took.Round(100*time.Millisecond))
			} else {
				a.res.Code, a.res.Message, a.res.HealthErr = hide.Replace(a.res.Code), hide.Replace(a.res.Message), hide.Replace(a.res.HealthErr)
				a.res.Server, a.res.Role = hide.Replace(a.res.Server), hide.Replace(a.res.Role)
				for i := range a.res.Scopes {
					a.res.Scopes[i] = hide.Replace(a.res.Scopes[i])
				}
				ev.add("  %s: %s (%s)", a.what, a.res, a.took.Round(100*time.Millisecond))
			}
			right := a.token == tok
			switch {
			case a.err != nil && right:
				problems = append(problems, fmt.Sprintf("%s: the right token got no answer from the gateway (%v)", p.what, a.err))
			case a.err != nil:
				problems = append(problems, fmt.Sprintf("%s: a client with %s got no answer from the gateway, neither refused nor accepted (%v)", p.what, a.what, a.err))
			case right && !a.res.Accepted:
				problems = append(problems, fmt.Sprintf("%s: the right token is not accepted (%s)", p.what, a.res))
			case right && !a.res.Health:
				problems = append(problems, fmt.Sprintf("%s: accepted, but health did not answer ok (%s)", p.what, a.res.HealthErr))
			case right:
			case a.res.Accepted:
				problems = append(problems, fmt.Sprintf("%s: a client with %s is accepted", p.what, a.what))
			case a.token != "" && !strings.Contains(a.res.Message, refused):
				problems = append(problems, fmt.Sprintf("%s: a client with %s is not refused with %q (%s)", p.what, a.what, refused, a.res))
			case a.token == "" && !strings.Contains(a.res.Message, refused) && a.res.Code != gatewayNotPaired:
				// A refusal for another reason (UNAVAILABLE "gateway
				// starting; retry shortly") says nothing of credentials.
				problems = append(problems, fmt.Sprintf("%s: a client with %s is not refused for its credentials (%s; want %q or %s)", p.what, a.what, a.res, refused, gatewayNotPaired))
			}
		}
	}
	return problems, ev
}

func (c *checker) gatewayOffline(ctx context.Context) (Status, string) {
	c.waitGateway(ctx)
	g := c.spec.Gateway
	ev := append(evidence{}, c.gwNote...)
	var problems []string
	script := `docker inspect -f 'status={{.State.Status}} running={{.State.Running}} started={{.State.StartedAt}} restarts={{.RestartCount}} image={{.Image}}' ` + shellQuote(g.Container) + `
echo "baked:"; cat ` + appliance.ContainersRecord + ` 2>/dev/null || echo none
echo "routes:"; ip route 2>/dev/null || cat /proc/net/route; ip -6 route 2>/dev/null
{ i=0; for a in 1.1.1.1/443 8.8.8.8/53 2606:4700:4700::1111/443; do
  i=$((i+1)); (if timeout 5 bash -c "exec 3<>/dev/tcp/$a" 2>/dev/null; then echo "$i REACHED $a"; else echo "$i unreachable: $a"; fi) &
done; wait; } | sort -n | cut -d' ' -f2-`
	res, err := c.in.sudo(ctx, script)
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	if !strings.Contains(res.Stdout, "running=true") {
		problems = append(problems, "the gateway container is not running")
	}
	// Without the disk's record there is nothing to compare with: not a
	// pass (the gateway may have pulled its image at boot, with a network
	// the previous boot had).
	switch id, baked, ok := bakedImage(res.Stdout, g.Container); {
	case !ok || baked == "":
		problems = append(problems, fmt.Sprintf("the disk has no record of the image baked for %s (%s): cannot show the container runs an image from the disk", g.Container, appliance.ContainersRecord))
	case id == "":
		problems = append(problems, "cannot read the image the gateway container runs")
	case id != baked:
		problems = append(problems, fmt.Sprintf("the gateway runs image %s, not the one baked into the disk (%s, %s)", id, baked, appliance.ContainersRecord))
	default:
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

// The gateway checks: planned when the spec has a gateway.
var (
	checkGatewayConfig = Check{ID: "gateway.config", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(_ Spec, gw *GatewaySpec) string {
			return fmt.Sprintf("%s is mode 0600, owned by %s, with a 64-character token (the seed's when given)", gw.ConfigPath, gw.User)
		},
		planned: hasGateway, run: (*checker).gatewayConfig, ssh: true}
	checkGatewayProcess = Check{ID: "gateway.process", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(Spec, *GatewaySpec) string {
			return "gateway processes: NoNewPrivs 1, CapEff 0, uid neither root nor a login user"
		},
		planned: hasGateway, run: (*checker).gatewayProcess, ssh: true}
	checkGatewayListen = Check{ID: "gateway.listen", Scope: ScopeFirmware, Needs: "an SSH session, the outside namespace",
		claim: func(_ Spec, gw *GatewaySpec) string {
			if gw.Mode == "network" {
				return fmt.Sprintf("gateway port %d reachable only from its allowed networks", gw.Port)
			}
			return fmt.Sprintf("gateway listens on 127.0.0.1:%d only", gw.Port)
		},
		planned: hasGateway, run: (*checker).gatewayListen, ssh: true}
	checkGatewayAuth = Check{ID: "gateway.auth", Scope: ScopeFirmware, Needs: "an SSH session; bash, sudo and nsenter in the guest",
		claim: func(Spec, *GatewaySpec) string {
			return "gateway refuses a client without the token or with a wrong one, accepts the right one (its own answers to verify's client of its WebSocket protocol, through the published port in the guest and inside its container)"
		},
		planned: hasGateway, run: (*checker).gatewayAuth, ssh: true}
	checkGatewayOffline = Check{ID: "gateway.offline", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(Spec, *GatewaySpec) string {
			return "the gateway came up with no route to the outside (its image is in the disk)"
		},
		planned: hasGateway, run: (*checker).gatewayOffline, ssh: true}
)

func hasGateway(s Spec, _ int) bool { return s.Gateway != nil }
