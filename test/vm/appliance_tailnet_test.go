//go:build vm

package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/aptrepo"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/internal/tailnettest"
	"github.com/bakeimg/bake/internal/testcache"
	"github.com/bakeimg/bake/verify"
	"github.com/bakeimg/bake/vm"
)

// tailnet is a headscale control server on a vm.Link (in the link's
// namespace, on the host side's 10.77.0.1: HTTPS from a test CA, embedded
// DERP and STUN, no external DERP map), for an appliance booted on that
// link with the seed's auth key, login server and CA.
type tailnet struct {
	link    *vm.Link
	hs      *tailnettest.Headscale
	user    uint64
	authKey string // the appliance's pre-auth key (single use)
	ca      string // the test CA, PEM
	ts, tsd string // the tailscale CLI and daemon (the build the image's .deb is made from)
	dir     string
}

// startTailnet makes the link and starts headscale on it; everything is
// stopped and removed when t ends (after the VM, which is stopped first).
func startTailnet(t *testing.T, name string) *tailnet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// Cached by version (a cold build is about 6.5 min).
	hsBin, err := tailnettest.BuildHeadscale(ctx, tailnettest.DefaultHeadscaleVersion, testcache.Dir("headscale"))
	if err != nil {
		t.Fatal(err)
	}
	deb, err := aptrepo.BuildTailscaleDeb(ctx, aptrepo.DefaultTailscaleVersion,
		filepath.Join(filepath.Dir(testcache.Dir("tailscale")), "tailscale"), "")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(filepath.Dir(deb)), "bin")
	tn := &tailnet{ts: filepath.Join(bin, "tailscale"), tsd: filepath.Join(bin, "tailscaled"), dir: t.TempDir()}
	if tn.link, err = vm.NewLink(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.link.Close() })
	hsDir := filepath.Join(tn.dir, "hs")
	os.Mkdir(hsDir, 0o700)
	tn.hs, err = tailnettest.StartHeadscale(ctx, tailnettest.HeadscaleConfig{Bin: hsBin, Netns: tn.link.Netns,
		Addr: vm.LinkHostIPv4.Addr(), Dir: hsDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("headscale log (last 40 lines):\n%s", tn.hs.LogTail(40))
		}
		tn.hs.Close()
	})
	if tn.user, err = tn.hs.CreateUser(ctx, "bake"); err != nil {
		t.Fatal(err)
	}
	if tn.authKey, err = tn.hs.PreAuthKey(ctx, tn.user, false); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(tn.hs.CA.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	tn.ca = string(b)
	t.Logf("headscale %s (pid %d) at %s on %s", tailnettest.DefaultHeadscaleVersion, tn.hs.PID(), tn.hs.URL, tn.link.Netns)
	return tn
}

// seed puts the auth key, the login server and the CA in the seed: the
// shared image (Tailscale's control server by default) joins headscale.
func (tn *tailnet) seed(s *firstboot.Seed) {
	s.TailscaleAuthKey, s.TailscaleLoginServer, s.TailscaleCA = tn.authKey, tn.hs.URL, tn.ca
}

// checkTailnet: the appliance's first boot joined headscale with the
// seed's key, login server and CA, with no human step; the key is gone from
// the disk; a second node (tailscaled with a TUN in a namespace of the
// test, joined to the link) reaches the gateway through the tailnet
// (serve-http, port 80) and gets its health answer with the token, while
// the same request from the link, without the tailnet, is refused; the
// path is reported, and again with 41641/udp closed (closedPath); serve
// status has no funnel; the operator (the admin)
// reads it without sudo, and another user cannot change it.
func checkTailnet(t *testing.T, g *guest, tn *tailnet, token string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// First boot: the seed's values, logged without the key.
	fb := g.must("sudo journalctl -b -u bake-firstboot --no-pager")
	for _, want := range []string{"tailscale login server from the seed (nocloud): " + tn.hs.URL,
		"tailscale CA from the seed (nocloud): 1 certificate(s) in " + appliance.TailscaleSeedCAFile,
		"tailscale auth key from the seed (nocloud)"} {
		if !strings.Contains(fb, want) {
			t.Errorf("first boot log lacks %q:\n%s", want, fb)
		}
	}
	// The join unit ran once the network was online (is-system-running
	// waited for it) and worked.
	// (systemctl show prints in its own order, not -p's.)
	up := g.must("systemctl show -p ActiveState,Result bake-tailscale-up.service; sudo journalctl -b -o short-monotonic -u bake-tailscale-up --no-pager")
	t.Logf("bake-tailscale-up:\n%s", up)
	if !strings.Contains(up, "ActiveState=active\n") || !strings.Contains(up, "Result=success\n") || !strings.Contains(up, "login server from the seed: "+tn.hs.URL) {
		t.Fatalf("the join unit did not join with the seed's login server:\n%s", up)
	}
	for _, s := range []string{fb, up} {
		if strings.Contains(s, tn.authKey) {
			t.Error("a log shows the auth key")
		}
	}
	// headscale has the node, online.
	nodes, err := tn.hs.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var appl *tailnettest.HSNode
	for i, n := range nodes {
		if n.Name == "openclaw-test" || n.GivenName == "openclaw-test" {
			appl = &nodes[i]
		}
	}
	if appl == nil || !appl.Online {
		t.Fatalf("headscale does not list openclaw-test online: %+v", nodes)
	}
	t.Logf("headscale lists the appliance: id %s, %s, %v, online", appl.ID, appl.GivenName, appl.IPAddresses)

	// The key: its file gone, and no file on the disk holds it (but
	// tailscaled's state, which the design lets hold what it became).
	// headscale made the key just before this boot: only a file changed
	// since the boot began (ctime, which no program sets; 5 s of margin)
	// can hold it, so those are searched (bake verify's secrets.seed-copies
	// searches every file, at about a minute here). The key goes through
	// /dev/shm (memory), never on a command line or the disk.
	g.must("sudo test ! -e " + appliance.TailscaleAuthKeyFile)
	found := g.mustIn(tn.authKey+"\n", `umask 077; d=$(mktemp -d /dev/shm/k.XXXXXX); trap 'rm -rf "$d"' EXIT; cat >"$d/k"
since=$(( $(date +%s) - $(cut -d. -f1 /proc/uptime) - 5 ))
sudo find / /boot -xdev -type f -newerct "@$since" -print0 2>/dev/null >"$d/l"; echo "files $(tr -cd '\0' <"$d/l" | wc -c)"
sudo xargs -0 -r -a "$d/l" grep -lsF -f "$d/k" -- | sed 's/^/found /'; true`)
	files := ""
	for _, l := range strings.Split(found, "\n") {
		if f, ok := strings.CutPrefix(l, "found "); ok && f != "/var/lib/tailscale/tailscaled.state" {
			t.Errorf("the auth key is in %s on the guest's disk", f)
		}
		if n, ok := strings.CutPrefix(l, "files "); ok {
			files = n
		}
	}
	if files == "" || files == "0" {
		t.Fatalf("the search for the auth key did not run:\n%s", found)
	}
	t.Logf("the auth key: its file gone, in none of the %s files changed on the guest's disk since the boot began (tailscaled.state allowed): %s", files, strings.Join(strings.Fields(found), " "))

	// A second node, in a namespace of the test joined to the link.
	ns, err := tailnettest.NewNetns(ctx, "client")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := tailnettest.Connect(ctx, tn.link.Netns, ns, netip.MustParsePrefix("10.77.1.1/24"), netip.MustParsePrefix("10.77.1.2/24")); err != nil {
		t.Fatal(err)
	}
	nd := filepath.Join(tn.dir, "client")
	os.Mkdir(nd, 0o700)
	ncfg := tailnettest.NodeConfig{Tailscale: tn.ts, Tailscaled: tn.tsd, Netns: ns.Name, Dir: nd, CAFile: tn.hs.CA.CertFile}
	client, err := tailnettest.StartNode(ctx, ncfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { client.Close() }() // the one running at the end (closedPath restarts it)
	key2, err := tn.hs.PreAuthKey(ctx, tn.user, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Up(ctx, tn.hs.URL, key2, "client"); err != nil {
		t.Fatalf("client: tailscale up: %v\n%s", err, client.LogTail(30))
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(g.must("tailscale ip -4 2>/dev/null")))
	if err != nil {
		t.Fatal(err)
	}
	path, err := client.Ping(ctx, addr, 20, true)
	if err != nil {
		t.Errorf("client -> appliance: %v\n%s", err, client.LogTail(30))
	} else {
		t.Logf("path client (10.77.1.2) -> appliance (%s): %s", addr, path)
	}

	// The gateway's health through the tailnet (serve-http: port 80,
	// keyed by the node's name), with the token, and with a wrong one.
	get := func(netns, url, host, bearer string, timeout time.Duration) (string, error) {
		tr := &http.Transport{Proxy: nil, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var c net.Conn
			err := vm.InNetns(netns, func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, "tcp", a)
				return err
			})
			return c, err
		}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if host != "" {
			req.Host = host
		}
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := (&http.Client{Timeout: timeout, Transport: tr}).Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b))), nil
	}
	url := "http://" + addr.String() + "/health"
	if got, err := get(ns.Name, url, "openclaw-test", token, 20*time.Second); err != nil || got != "200 OK" {
		t.Errorf("GET %s (Host openclaw-test) with the token from the client over the tailnet: %q, %v", url, got, err)
	} else {
		t.Logf("GET http://openclaw-test/health (%s) with the token, from the client over the tailnet: %s", addr, got)
	}
	if got, err := get(ns.Name, url, "openclaw-test", "wrong-token-0123456789", 20*time.Second); err != nil || strings.HasPrefix(got, "200") {
		t.Errorf("GET %s with a wrong token: %q, %v", url, got, err)
	} else {
		t.Logf("with a wrong token: %s", got)
	}
	// The same request from the link, without the tailnet: the guest's
	// link address, port 80 (serve's) and 18789 (the gateway's).
	ls, err := tn.link.Leases()
	if err != nil || len(ls) == 0 {
		t.Fatalf("no lease on the link: %v", err)
	}
	guestIP := ls[len(ls)-1].IP.String()
	// Both at once: each expects no answer (its 5 s timeout), was one
	// after the other.
	urls := []string{"http://" + guestIP + "/health", "http://" + guestIP + ":18789/health"}
	type result struct {
		got string
		err error
	}
	results := make([]result, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := get(tn.link.Netns, u, "openclaw-test", token, 5*time.Second)
			results[i] = result{got, err}
		}()
	}
	wg.Wait()
	for i, u := range urls {
		if r := results[i]; r.err == nil {
			t.Errorf("GET %s from the link without the tailnet answered: %s", u, r.got)
		} else {
			t.Logf("GET %s from the link without the tailnet: refused (%v)", u, r.err)
		}
	}

	// Serve status: the recipe's serve-http, no funnel; the operator reads
	// it without sudo; a user who is neither root nor the operator cannot
	// change it.
	sj := g.must("tailscale serve status --json 2>/dev/null")
	var cfg struct {
		TCP         map[string]json.RawMessage
		Web         map[string]json.RawMessage
		AllowFunnel map[string]bool
	}
	if err := json.Unmarshal([]byte(sj), &cfg); err != nil {
		t.Fatalf("tailscale serve status --json (as the admin, no sudo): %v\n%s", err, sj)
	}
	if _, ok := cfg.TCP["80"]; !ok || len(cfg.AllowFunnel) != 0 || strings.Contains(sj, "AllowFunnel") {
		t.Errorf("serve status --json: want TCP port 80 and no funnel:\n%s", sj)
	}
	t.Logf("tailscale serve status --json, as the admin without sudo: %s", strings.Join(strings.Fields(sj), " "))
	judgeFunnel(t, g, sj, cfg.Web)
	if out, err := g.run("sudo -u nobody tailscale serve --bg --http=8081 http://127.0.0.1:18789"); err == nil {
		t.Errorf("nobody (neither root nor the operator) changed the serve configuration:\n%s", out)
	} else {
		t.Logf("nobody changing the serve configuration: refused: %s", strings.Join(strings.Fields(out), " "))
	}

	// Last (it restarts the client): the path again with 41641/udp closed.
	client = closedPath(ctx, t, g, ncfg, client, addr, path)
}

// closedPath closes 41641/udp in the appliance's firewall, makes the nodes
// find their path again and reports it, twice:
//
//  1. in ufw (ufw delete allow 41641/udp). tailscaled (netfilter mode on)
//     keeps a rule of its own in its ts-input chain, ahead of ufw's, that
//     may accept its port anyway: the chain is logged.
//  2. ahead of every accept: a DROP of new inbound flows to 41641/udp
//     (IPv4 and IPv6) first in INPUT, its packet counter logged (what it
//     dropped).
//
// Each time the client's tailscaled restarts on the same state (the same
// node) on another UDP port (41642, then 41643), so no connection-tracking
// entry the guest holds for an earlier path matches what it sends: the
// path that comes up was set up with the port closed. A pong must come back
// (direct if the appliance's own packets from 41641 open the way for the
// answers, or relayed through headscale's DERP); which, and what changed,
// is logged. Everything is put back afterwards. It returns the running
// client.
func closedPath(ctx context.Context, t *testing.T, g *guest, cfg tailnettest.NodeConfig, client *tailnettest.Node, addr netip.Addr, before tailnettest.Path) *tailnettest.Node {
	t.Helper()
	repath := func(port int, how string) tailnettest.Path {
		client.Close()
		cfg.Port = port
		t0 := time.Now()
		var err error
		if client, err = tailnettest.StartNode(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		for {
			s, err := client.Status(ctx)
			// Running, and the appliance in its netmap: a node
			// restarted on its state is Running before control's
			// netmap lists its peers (the ping then finds "no
			// matching peer").
			if err == nil && s.BackendState == "Running" && s.HasPeer(addr) {
				break
			}
			if time.Since(t0) > time.Minute {
				t.Fatalf("the client restarted on port %d is not running with the appliance (%s) among its peers: %+v %v\n%s", port, addr, s, err, client.LogTail(30))
			}
			time.Sleep(time.Second)
		}
		after, err := client.Ping(ctx, addr, 20, true)
		if err != nil {
			t.Errorf("with 41641/udp closed %s: client -> appliance: %v\n%s", how, err, client.LogTail(30))
			return after
		}
		change := "the same kind of path"
		if before.Direct != after.Direct {
			change = "another kind of path"
		}
		t.Logf("path client (10.77.1.2, now from port %d) -> appliance (%s) with 41641/udp closed %s, %s after the client's restart: %s; with it open: %s (%s; the appliance's endpoint %s -> %s)",
			port, addr, how, since(t0), after, before, change, before.Via, after.Via)
		if out, err := g.run("tailscale status --json 2>/dev/null | grep -E '\"(CurAddr|Relay)\"'"); err == nil {
			t.Logf("the appliance's status (self, then the client): %s", strings.Join(strings.Fields(out), " "))
		}
		return after
	}

	g.must("sudo ufw delete allow 41641/udp")
	defer g.must("sudo ufw allow 41641/udp")
	st := g.must("sudo ufw status; sudo iptables -S ufw-user-input; sudo ip6tables -S ufw6-user-input")
	if strings.Contains(st, "41641") {
		t.Fatalf("41641/udp still open after ufw delete:\n%s", st)
	}
	t.Logf("41641/udp closed in ufw:\n%s", st)
	ts := g.must("sudo iptables -S INPUT; sudo iptables -S ts-input 2>&1; true")
	t.Logf("INPUT and tailscaled's own chain (ts-input), with 41641/udp closed in ufw:\n%s", ts)
	inUFW := repath(41642, "in ufw")

	drop := "INPUT -p udp --dport 41641 -m conntrack --ctstate NEW -j DROP"
	g.must("sudo iptables -I " + drop + " && sudo ip6tables -I " + drop)
	defer g.must("sudo iptables -D " + drop + "; sudo ip6tables -D " + drop)
	ahead := repath(41643, "ahead of every accept (a DROP of new flows first in INPUT)")
	counters := g.must("sudo iptables -L INPUT 1 -n -v -x; sudo ip6tables -L INPUT 1 -n -v -x")
	t.Logf("the DROP's counters (packets bytes ...), what it dropped: %s", strings.Join(strings.Fields(counters), " "))
	t.Logf("41641/udp closed: in ufw %s; ahead of every accept %s; open %s", inUFW.Via, ahead.Via, before.Via)
	return client
}

// judgeFunnel: bake verify's tailscale.serve judge (verify.JudgeServe,
// for the recipe's serve-http port 80) on this real serve status passes;
// with a funnel entry for the served host written raw (tailscale serve
// set-raw: tailscaled stores it; headscale grants no funnel, so nothing is
// exposed) the judge fails, naming the entry; the configuration is put
// back as it was and passes again.
func judgeFunnel(t *testing.T, g *guest, sj string, web map[string]json.RawMessage) {
	t.Helper()
	spec := verify.DefaultSpec()
	spec.TailscaleServeHTTP = 80
	if p, _ := verify.JudgeServe(spec, sj); len(p) > 0 {
		t.Errorf("verify's serve judge fails the appliance's serve status: %v", p)
	}
	var host string
	for h := range web {
		host = h
	}
	if host == "" {
		t.Fatalf("no web entry in serve status: %s", sj)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(sj), &raw); err != nil {
		t.Fatal(err)
	}
	raw["AllowFunnel"] = map[string]bool{host: true}
	b, _ := json.Marshal(raw)
	g.mustIn(string(b), "sudo tailscale serve set-raw")
	fj := g.must("tailscale serve status --json 2>/dev/null")
	p, _ := verify.JudgeServe(spec, fj)
	if want := "funnel is on for " + host; len(p) != 1 || !strings.Contains(p[0], want) {
		t.Errorf("verify's serve judge on a serve status with a funnel entry: %q, want one problem %q\n%s", p, want, fj)
	} else {
		t.Logf("verify's serve judge on the real serve status with a funnel entry written raw: fails: %s", p[0])
	}
	g.mustIn(sj, "sudo tailscale serve set-raw")
	if back := g.must("tailscale serve status --json 2>/dev/null"); strings.Contains(back, "AllowFunnel") {
		t.Fatalf("the funnel entry is still there after the configuration was put back:\n%s", back)
	} else if p, _ := verify.JudgeServe(spec, back); len(p) > 0 {
		t.Errorf("verify's serve judge on the configuration put back: %v", p)
	}
}

// mustIn runs cmd with stdin and fails the test when it fails.
func (g *guest) mustIn(stdin, cmd string) string {
	g.t.Helper()
	s, err := g.c.NewSession()
	if err != nil {
		g.t.Fatal(err)
	}
	defer s.Close()
	s.Stdin = strings.NewReader(stdin)
	out, err := s.CombinedOutput(cmd)
	if err != nil {
		g.t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
}
