package verify

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/vm"
)

const (
	probeLoopPort = 8081
)

// probeContainerName is the one probe container verify runs, published
// three ways (probePorts). With userland-proxy off (appliance.DaemonConfig)
// each -p is its own DNAT rule in the nat table's DOCKER chain, whatever
// container it leads to, and every packet to a published port takes the
// same FORWARD and DOCKER-USER path to the container's address: one
// container with the three -p makes the same published ports as three
// containers with one each, in one `docker run` instead of three (each a
// container start: dockerd's work on one vCPU under TCG, 3-10 s).
const probeContainerName = "bake-verify-probe"

// probePort is one way verify publishes the probe container's port 80.
type probePort struct {
	publish string // docker run -p
	port    int    // the port on the guest's loopback
}

var probePorts = []probePort{
	{"80:80", 80},
	{"0.0.0.0:8080:80", 8080},
	{fmt.Sprintf("127.0.0.1:%d:80", probeLoopPort), probeLoopPort},
}

// probeRunScript (sudo) starts the probe container published with every
// -p of ps (a container of that name left over is removed first), then
// lists the DNAT rules Docker made for published ports: a line per -p.
func probeRunScript(name string, ps []probePort) string {
	var pub []string
	for _, p := range ps {
		pub = append(pub, "-p "+shellQuote(p.publish))
	}
	return "docker rm -f " + shellQuote(name) + " >/dev/null 2>&1\n" +
		"docker run -d --name " + shellQuote(name) + " " + strings.Join(pub, " ") + " " + ProbeImageRef + " || exit 1\n" +
		"iptables -w -t nat -S DOCKER 2>&1 | grep -F -e DNAT -e 'iptables' || true"
}

// isolation runs the probe container and records isolation.loopback,
// isolation.outside, isolation.loopback-via-mac and isolation.metadata.
func (c *checker) isolation(ctx context.Context) {
	ids := []string{checkIsolationLoopback.ID, checkIsolationOutside.ID, checkIsolationViaMAC.ID}
	metadata := checkIsolationMetadata.planned(c.spec, c.r.o.Instances)
	if metadata {
		ids = append(ids, checkIsolationMetadata.ID)
	}
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
	tLoad := time.Since(t0)
	// One container, published with every -p (probeContainerName); its
	// start and the DNAT rules Docker made for it are the evidence.
	res, err = c.in.sudo(ctx, probeRunScript(probeContainerName, probePorts))
	if err != nil {
		runFailed(err)
		return
	}
	ev.cmd(res)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.in.sudo(cctx, "docker rm -f "+probeContainerName+" >/dev/null 2>&1; docker rmi "+ProbeImageRef+" >/dev/null 2>&1")
	}()
	if !res.OK() {
		fail("docker run of the probe container failed")
		return
	}

	// 1. Each published port answers on the guest's loopback: the three
	// probes at once, in one command (each retried for up to 60 s while
	// the container starts).
	tRun := time.Since(t0) - tLoad
	var problems []string
	var lev evidence
	t1p := time.Now()
	res, err = c.in.runT(ctx, loopbackScript(probePorts), nil, 90*time.Second)
	if err != nil {
		runFailed(err)
		return
	}
	answered := parseLoopback(res.Stdout)
	for _, p := range probePorts {
		a, ok := answered[p.port]
		if ok && a.ok {
			lev.add("guest -> 127.0.0.1:%d (-p %s): answered %s (after %d attempts)", p.port, p.publish, ProbeBody, a.tries)
			continue
		}
		why := "no result"
		if ok {
			why = fmt.Sprintf("after %d attempts: %s", a.tries, a.last)
		}
		lev.add("guest -> 127.0.0.1:%d (-p %s): NO ANSWER %s", p.port, p.publish, why)
		problems = append(problems, fmt.Sprintf("the container published with -p %s does not answer on 127.0.0.1:%d", p.publish, p.port))
	}
	times := fmt.Sprintf("docker load %s, docker run (one container, %d -p) %s, the loopback probes (at once) %s", tLoad.Round(100*time.Millisecond), len(probePorts), tRun.Round(100*time.Millisecond), time.Since(t1p).Round(100*time.Millisecond))
	lev.add("times: %s", times)
	c.r.logf("%s: isolation.loopback: %s", c.in.name(), times)
	if !res.OK() && len(problems) == 0 {
		problems = append(problems, fmt.Sprintf("the loopback probe exited %d", res.Exit))
	}
	lev.cmd(res)
	loopOK := len(problems) == 0
	st, text := verdict(problems, append(lev, ev...), loopbackPassText(probePorts))
	c.r.record(c.fw, checkIsolationLoopback.ID, st, text, time.Since(t0))

	// 2-4 run at once, each recorded with its own time, in this order once
	// all are done: they are independent (connections from the outside
	// namespace to the guest's published ports; raw SYNs to 127.0.0.1
	// through its MAC; the guest's and the container's connections to
	// stand-ins on the link) and each mostly waits out its own timeouts
	// (4 s, 4 s, 10 s: one after the other about 23 s).
	type outcome struct {
		id   string
		st   Status
		text string
		d    time.Duration
	}
	var outs []*outcome
	var wg sync.WaitGroup
	add := func(id string, st Status, text string) { outs = append(outs, &outcome{id: id, st: st, text: text}) }
	start := func(id string, f func(context.Context) (Status, string)) {
		o := &outcome{id: id}
		outs = append(outs, o)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.Now()
			o.st, o.text = f(ctx)
			o.d = time.Since(t)
		}()
	}
	// 2. None answers from outside, over IPv4 or IPv6.
	switch {
	case c.in.link == nil:
		add(checkIsolationOutside.ID, Skip, "not run: "+c.r.outsideWhy)
	case !loopOK:
		add(checkIsolationOutside.ID, Skip, "not decided: the probe container does not even answer on the guest's loopback, so its being unreachable from outside proves nothing")
	default:
		start(checkIsolationOutside.ID, c.isolationOutside)
	}
	// 3. moby#45610: packets to 127.0.0.0/8 through the NIC.
	if c.in.link == nil {
		add(checkIsolationViaMAC.ID, Skip, "not run: "+c.r.outsideWhy)
	} else {
		start(checkIsolationViaMAC.ID, c.loopbackViaMAC)
	}
	// 4. The metadata services, from the probe container's network
	// namespace.
	if metadata {
		switch {
		case c.in.link == nil:
			add(checkIsolationMetadata.ID, Skip, "not run: "+c.r.outsideWhy)
		case !loopOK:
			add(checkIsolationMetadata.ID, Skip, "not decided: the probe container does not run")
		default:
			start(checkIsolationMetadata.ID, c.isolationMetadata)
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	for _, o := range outs {
		c.r.record(c.fw, o.id, o.st, o.text, o.d)
	}
}

// loopbackPassText is isolation.loopback's verdict when every port
// answered.
func loopbackPassText(ps []probePort) string {
	var pub, ports []string
	for _, p := range ps {
		pub = append(pub, "-p "+p.publish)
		ports = append(ports, fmt.Sprintf("127.0.0.1:%d", p.port))
	}
	return fmt.Sprintf("the probe container answers in the guest on %s (one container published with %s)", strings.Join(ports, ", "), strings.Join(pub, ", "))
}

// loopbackScript probes 127.0.0.1:PORT of each published port at once,
// each attempt bounded by 5 s, retried every second for up to 60 s until
// the probe container's body comes back; a line per port: loop PORT ok|no
// TRIES LAST-ERROR.
func loopbackScript(ps []probePort) string {
	var ports []string
	for _, p := range ps {
		ports = append(ports, strconv.Itoa(p.port))
	}
	return `probe() {
	n=0; end=$((SECONDS + 60))
	while :; do
		n=$((n + 1))
		out=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf 'GET / HTTP/1.0\r\n\r\n' >&3; cat <&3" 2>&1)
		case "$out" in *` + ProbeBody + `*) echo "loop $1 ok $n"; return;; esac
		if [ "$SECONDS" -ge "$end" ]; then
			echo "loop $1 no $n $(printf '%s' "$out" | tail -c 200 | tr -d '\r\n')"; return
		fi
		sleep 1
	done
}
for p in ` + strings.Join(ports, " ") + `; do probe "$p" & done
wait`
}

type loopbackResult struct {
	ok    bool
	tries int
	last  string
}

// parseLoopback reads loopbackScript's lines.
func parseLoopback(out string) map[int]loopbackResult {
	m := map[int]loopbackResult{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(strings.TrimSpace(line), " ", 5)
		if len(f) < 4 || f[0] != "loop" {
			continue
		}
		port, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || (f[2] != "ok" && f[2] != "no") {
			continue
		}
		r := loopbackResult{ok: f[2] == "ok", tries: n}
		if len(f) == 5 {
			r.last = f[4]
		}
		m[port] = r
	}
	return m
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
	// The probes are independent (each its own connection and timeout):
	// they run at once, and are reported in order.
	type probe struct {
		a    netip.Addr
		p    probePort
		ok   bool
		line string
	}
	var probes []*probe
	for _, a := range addrs {
		for _, p := range probePorts {
			probes = append(probes, &probe{a: a, p: p})
		}
	}
	var wg sync.WaitGroup
	for _, x := range probes {
		wg.Add(1)
		go func() { defer wg.Done(); x.ok, x.line = c.outsideProbe(ctx, x.a, x.p.port) }()
	}
	wg.Wait()
	for _, x := range probes {
		ev.add("%s", x.line)
		if x.ok {
			problems = append(problems, fmt.Sprintf("the container published with -p %s is reachable from outside on %s", x.p.publish, net.JoinHostPort(x.a.String(), strconv.Itoa(x.p.port))))
		}
	}
	return verdict(problems, ev, "no published port reachable from outside over IPv4 or IPv6 (the SSH port is: the control)")
}

func (c *checker) loopbackViaMAC(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	src := vm.LinkHostIPv4.Addr()
	// The guest's listening sockets (over SSH) are read while the control
	// runs: the two are independent.
	type sockList struct {
		socks []listener
		err   error
	}
	sockc := make(chan sockList, 1)
	go func() {
		socks, _, err := c.sockets(ctx)
		sockc <- sockList{socks, err}
	}()
	// Control: the same hand-made SYN to the guest's own address and SSH
	// port must be answered, or the probe itself is broken. Its SYN-ACK is
	// all it waits for (up to 4 s, two SYNs a second apart); the targets
	// below each wait their whole 4 s for an answer that must not come.
	ans, err := sendSYNUntil(c.in.link.Netns, c.in.link.Tap, c.in.mac, src, c.in.ipv4, c.spec.SSHPort, 2, 4*time.Second, hasSYNACK)
	sl := <-sockc
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
	if socks, err := sl.socks, sl.err; err == nil {
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
	// One SYN exchange per target, all at once: each has its own socket,
	// source port and wait, and takes only the answers to its own SYN.
	answers := make([][]synAnswer, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, t := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = sendSYN(c.in.link.Netns, c.in.link.Tap, c.in.mac, src, t.Addr(), int(t.Port()), 3, 4*time.Second)
		}()
	}
	wg.Wait()
	for i, t := range keys {
		ans, err := answers[i], errs[i]
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

// The isolation checks, run together by (*checker).isolation with the
// probe container: planned when the image runs Docker with isolation on.
var (
	checkIsolationLoopback = Check{ID: "isolation.loopback", Scope: ScopeFirmware, Needs: "an SSH session, Docker in the image",
		claim: func(Spec, *GatewaySpec) string {
			return "published container ports (-p 80:80, -p 0.0.0.0:8080:80, -p 127.0.0.1:8081:80) answer on the guest's loopback"
		},
		planned: isolationOn}
	checkIsolationOutside = Check{ID: "isolation.outside", Scope: ScopeFirmware, Needs: "the outside namespace, isolation.loopback passing",
		claim: func(Spec, *GatewaySpec) string {
			return "published container ports are unreachable from outside over IPv4 and IPv6"
		},
		planned: isolationOn}
	checkIsolationViaMAC = Check{ID: "isolation.loopback-via-mac", Scope: ScopeFirmware, Needs: "the outside namespace (raw frames)",
		claim: func(Spec, *GatewaySpec) string {
			return "packets to 127.0.0.0/8 sent to the guest's MAC from outside get no answer (moby#45610)"
		},
		planned: isolationOn}
)

func isolationOn(s Spec, _ int) bool { return isolation(s) }

// checkIsolationDockerGroup: the docker group can run any container with
// the host's root filesystem mounted, so membership is root without a
// password; the admin gets root through sudo, which asks (or at least
// logs), never through the group (security architecture: "not in the
// docker group").
var checkIsolationDockerGroup = Check{ID: "isolation.docker-group", Scope: ScopeFirmware, Needs: "an SSH session, Docker in the image",
	claim: func(s Spec, _ *GatewaySpec) string {
		return fmt.Sprintf("%s is not in the docker group, neither as primary nor as supplementary group (the group is root without a password)", s.AdminUser)
	},
	planned: isolationOn, run: (*checker).dockerGroup, ssh: true}

func (c *checker) dockerGroup(ctx context.Context) (Status, string) {
	u := shellQuote(c.spec.AdminUser)
	res, err := c.in.sudo(ctx, "echo \"groups: $(id -G "+u+")\"; echo \"names: $(id -Gn "+u+")\"; getent group docker || echo 'docker group: none'")
	if err != nil {
		return Fail, err.Error()
	}
	var ev evidence
	ev.cmd(res)
	return dockerGroupVerdict(c.spec.AdminUser, res.Stdout, res.OK(), ev)
}

// dockerGroupVerdict judges the output of dockerGroup's script.
func dockerGroupVerdict(user, out string, ok bool, ev evidence) (Status, string) {
	if !ok {
		return Fail, "could not read the groups of " + user + "\n\n" + ev.String()
	}
	var groups []string
	dockerGID, members := "", []string{}
	seenGroups, seenDocker := false, false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "groups: "):
			groups = strings.Fields(strings.TrimPrefix(line, "groups: "))
			seenGroups = true
		case strings.HasPrefix(line, "docker group: none"):
			seenDocker = true
		case strings.HasPrefix(line, "docker:"):
			f := strings.Split(line, ":")
			if len(f) == 4 {
				dockerGID = f[2]
				if f[3] != "" {
					members = strings.Split(f[3], ",")
				}
				seenDocker = true
			}
		}
	}
	if !seenGroups || len(groups) == 0 || !seenDocker {
		return Fail, "could not read the groups of " + user + " or the docker group\n\n" + ev.String()
	}
	if dockerGID == "" {
		return Pass, "there is no docker group\n\n" + ev.String()
	}
	var problems []string
	if slices.Contains(groups, dockerGID) {
		problems = append(problems, fmt.Sprintf("%s is in the docker group (gid %s): root without a password", user, dockerGID))
	}
	if slices.Contains(members, user) && !slices.Contains(groups, dockerGID) {
		problems = append(problems, fmt.Sprintf("/etc/group names %s in the docker group", user))
	}
	return verdict(problems, ev, fmt.Sprintf("%s's groups (%s) do not include docker (gid %s)", user, strings.Join(groups, " "), dockerGID))
}

// checkIsolationMetadata: containers cannot reach the cloud metadata
// services (appliance.MetadataV4: a container that can is one request
// away from the instance's cloud credentials). Recorded by the isolation
// group: the probe container's network namespace is where the requests
// come from.
var checkIsolationMetadata = Check{ID: "isolation.metadata", Scope: ScopeFirmware, Needs: "an SSH session, Docker in the image, the outside namespace (root)",
	claim: func(Spec, *GatewaySpec) string {
		return "containers cannot reach the cloud metadata services (169.254.169.254, 169.254.170.2, 168.63.129.16, 100.100.100.200 stand in on the link; the guest itself can), but keep DNS at the cloud resolvers on metadata addresses (169.254.169.254, 168.63.129.16: port 53 only)"
	},
	planned: func(s Spec, _ int) bool {
		return isolation(s) && (s.Firewall == nil || s.Firewall.MetadataBlocked)
	}}

// metadataStandIns are the metadata addresses verify puts on its side of
// the guest's link (the guest routes them there by its default route), one
// per rule of appliance.MetadataV4 and ECS's task metadata besides.
var metadataStandIns = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("169.254.170.2"),
	netip.MustParseAddr("168.63.129.16"),
	netip.MustParseAddr("100.100.100.200"),
}

// metadataMarker is what verify's stand-in answers.
const metadataMarker = "bake-verify-metadata-stand-in"

// isolationMetadata serves a stand-in for the metadata services on the
// outside namespace's side of the link, then from the guest connects to
// each address from the host itself (the control: the path exists) and
// from the probe container's network namespace (must not connect), and to
// the link's own address from the container (the control: containers do
// reach the link, so a refusal is the firewall's).
func (c *checker) isolationMetadata(ctx context.Context) (Status, string) {
	l := c.in.link
	var ev evidence
	for _, a := range metadataStandIns {
		out, err := execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: []string{"-n", l.Netns, "addr", "replace", a.String() + "/32", "dev", l.Tap}})
		if err != nil {
			return Fail, fmt.Sprintf("putting the stand-in %s on the outside namespace's link: %v %s", a, err, out)
		}
	}
	var ln net.Listener
	if err := inNetns(l.Netns, func() error {
		var err error
		ln, err = net.Listen("tcp4", "0.0.0.0:80")
		return err
	}); err != nil {
		return Fail, "listening on port 80 in the outside namespace: " + err.Error()
	}
	defer ln.Close()
	dnsAddrs := metadataDNSAddrs()
	stopDNS, err := serveDNSOn(l.Netns, dnsAddrs)
	if err != nil {
		return Fail, "listening on 53/udp in the outside namespace (the stand-in resolver): " + err.Error()
	}
	defer stopDNS()
	var idb [2]byte
	rand.Read(idb[:])
	qid := uint16(idb[0])<<8 | uint16(idb[1])
	query, err := dnsQuery(qid)
	if err != nil {
		return Fail, "building the DNS query: " + err.Error()
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write([]byte(metadataMarker + "\n"))
			conn.Close()
		}
	}()
	control := vm.LinkHostIPv4.Addr()
	var addrs []string
	for _, a := range metadataStandIns {
		addrs = append(addrs, a.String())
	}
	ev.add("stand-ins on the link (outside namespace %s, port 80): %s; control %s:80; a stand-in resolver on %s, 53/udp, answering %s", l.Netns, strings.Join(addrs, ", "), control, strings.Join(dnsAddrs, ", "), metadataDNSName)
	// The TCP probes and the DNS probes run at once (metadataProbes leaves
	// its probes running; metadataDNSScript's wait waits for them all):
	// the blocked ones each wait out their 10 s, which one after the other
	// cost 10 s more whenever a DNS probe went unanswered.
	res, err := c.in.sudo(ctx, metadataProbes(probeContainerName, append(addrs, control.String()))+"\n"+metadataDNSScript(dnsAddrs, query))
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	if !res.OK() {
		return Fail, "the probe did not run\n\n" + ev.String()
	}
	st, text := metadataVerdict(res.Stdout, addrs, control.String(), ev)
	problems, ok := metadataDNSVerdict(res.Stdout, dnsAddrs, qid)
	switch {
	case len(problems) > 0:
		return Fail, strings.Join(problems, "\n") + "\n" + text
	case st == Pass:
		return Pass, ok + "; " + text
	}
	return st, text
}

// metadataScript connects from the guest (host) and from container's
// network namespace (container) to port 80 of each address, all at once,
// each bounded by 10 s; a line per attempt: WHO ADDR rc=N OUTPUT.
func metadataScript(container string, addrs []string) string {
	return metadataProbes(container, addrs) + "\nwait"
}

// metadataProbes is metadataScript without its wait: the probes run in the
// background, and $pid is the container's.
func metadataProbes(container string, addrs []string) string {
	return `pid=$(docker inspect -f '{{.State.Pid}}' ` + shellQuote(container) + `) || exit 3
[ "${pid:-0}" -gt 0 ] || exit 3
probe() {
	if [ "$1" = host ]; then
		timeout 10 bash -c "exec 3<>/dev/tcp/$2/80 && head -c 64 <&3"
	else
		timeout 10 nsenter -t "$pid" -n bash -c "exec 3<>/dev/tcp/$2/80 && head -c 64 <&3"
	fi
}
for a in ` + strings.Join(addrs, " ") + `; do
	for who in host container; do
		( out=$(probe "$who" "$a" 2>&1); rc=$?; echo "$who $a rc=$rc $(printf '%s' "$out" | tr -d '\r\n')" ) &
	done
done`
}

// metadataVerdict judges metadataScript's lines.
func metadataVerdict(out string, addrs []string, control string, ev evidence) (Status, string) {
	reached := map[string]bool{}
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || (f[0] != "host" && f[0] != "container") {
			continue
		}
		key := f[0] + " " + f[1]
		seen[key] = true
		reached[key] = f[2] == "rc=0" && strings.Contains(line, metadataMarker)
	}
	var problems []string
	for _, a := range append(append([]string(nil), addrs...), control) {
		for _, who := range []string{"host", "container"} {
			if !seen[who+" "+a] {
				problems = append(problems, fmt.Sprintf("no result for %s -> %s:80", who, a))
			}
		}
	}
	if len(problems) > 0 {
		return Fail, strings.Join(problems, "\n") + "\n\n" + ev.String()
	}
	if !reached["container "+control] {
		problems = append(problems, fmt.Sprintf("not decided: a container does not reach the link's own address %s:80 either, so its not reaching the metadata addresses proves nothing", control))
	}
	for _, a := range addrs {
		if !reached["host "+a] {
			problems = append(problems, fmt.Sprintf("not decided: the guest itself does not reach the stand-in at %s:80", a))
		}
		if reached["container "+a] {
			problems = append(problems, fmt.Sprintf("a container reached %s:80: the metadata service is reachable from containers", a))
		}
	}
	return verdict(problems, ev, fmt.Sprintf("containers reach %s:80 on the link but none of %s:80; the guest itself reaches them all", control, strings.Join(addrs, ", ")))
}
