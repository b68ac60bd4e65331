//go:build integration

package tailnettest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/aptrepo"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/testcache"
	"github.com/bakeimg/bake/vm"
)

// TestTailnetOverHeadscale: headscale (HTTPS from a test CA, embedded
// DERP, STUN, no external DERP map) in a hub namespace; two tailscaled
// nodes, each in a namespace of its own joined to the hub by a veth pair,
// join with pre-auth keys, reach each other over the tailnet (tailscale ping
// and a TCP exchange through the TUN devices) and the path is reported.
// node2 serves over plain HTTP (serve-http) and funnel is refused; a third
// node runs the appliance's first-boot join script (applianceJoin); a node
// that does not trust the test CA cannot join. Then UDP between the nodes'
// underlay addresses is dropped in the hub and the path must fall back to
// the DERP relay (and the TCP exchange still work through it).
func TestTailnetOverHeadscale(t *testing.T) {
	// Cold: the headscale build (about 6.5 min here) and the tailscale
	// build (about 10) come first; make test gives the package 30 min.
	ctx, cancel := context.WithTimeout(context.Background(), 28*time.Minute)
	defer cancel()
	hsBin, err := BuildHeadscale(ctx, DefaultHeadscaleVersion, testcache.Dir("headscale"))
	if err != nil {
		t.Fatal(err)
	}
	ts, tsd := tailscaleBins(ctx, t)
	// Namespaces of an earlier run that was killed (SIGKILL runs no
	// cleanup; its tailscaled and headscale died with it, Pdeathsig).
	if rm, err := vm.RemoveStaleLinks(ctx, "tn"); err != nil {
		t.Fatal(err)
	} else if len(rm) > 0 {
		t.Logf("removed what a killed run left: %v", rm)
	}

	hub := newNetns(ctx, t, "hub")
	hubAddr := netip.MustParseAddr("10.78.0.1")
	// The hub's own address for headscale, on its lo (no dummy module
	// needed); every child reaches it through its default route.
	if err := ip(ctx, "-n", hub.Name, "addr", "add", hubAddr.String()+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hsDir := filepath.Join(dir, "hs")
	os.Mkdir(hsDir, 0o700)
	hs, err := StartHeadscale(ctx, HeadscaleConfig{Bin: hsBin, Netns: hub.Name, Addr: hubAddr, Dir: hsDir})
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	t.Logf("headscale %s (pid %d) at %s", DefaultHeadscaleVersion, hs.PID(), hs.URL)
	uid, err := hs.CreateUser(ctx, "bake")
	if err != nil {
		t.Fatal(err)
	}

	var nodes []*Node
	var netnss []*Netns
	var underlay []netip.Addr
	for i := 1; i <= 2; i++ {
		ns := newNetns(ctx, t, fmt.Sprintf("n%d", i))
		p := netip.MustParsePrefix(fmt.Sprintf("10.78.%d.1/24", i))
		c := netip.MustParsePrefix(fmt.Sprintf("10.78.%d.2/24", i))
		if err := Connect(ctx, hub.Name, ns, p, c); err != nil {
			t.Fatal(err)
		}
		nd := filepath.Join(dir, fmt.Sprintf("n%d", i))
		os.Mkdir(nd, 0o700)
		// node1 trusts the CA alone (SSL_CERT_FILE); node2 the way the
		// appliance's tailscaled does: besides the system's roots, from a
		// directory of its own (SSL_CERT_DIR).
		caFile, viaDir := hs.CA.CertFile, i == 2
		if viaDir {
			caDir := filepath.Join(dir, "ca2")
			os.Mkdir(caDir, 0o755)
			b, err := os.ReadFile(hs.CA.CertFile)
			if err != nil {
				t.Fatal(err)
			}
			caFile = filepath.Join(caDir, "ca.pem")
			os.WriteFile(caFile, b, 0o644)
		}
		n, err := StartNode(ctx, NodeConfig{Tailscale: ts, Tailscaled: tsd, Netns: ns.Name, Dir: nd, CAFile: caFile, CAViaDir: viaDir})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		key, err := hs.PreAuthKey(ctx, uid, false)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := n.Up(ctx, hs.URL, key, fmt.Sprintf("node%d", i)); err != nil {
			t.Fatalf("node%d: tailscale up: %v\n%s\nheadscale:\n%s", i, err, n.LogTail(40), hs.LogTail(20))
		}
		t.Logf("node%d joined in %v", i, time.Since(start).Round(time.Millisecond))
		nodes, netnss, underlay = append(nodes, n), append(netnss, ns), append(underlay, c.Addr())
	}
	hsNodes, err := hs.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hsNodes) != 2 {
		t.Fatalf("headscale lists %d nodes, want 2: %+v", len(hsNodes), hsNodes)
	}
	st2, err := nodes[1].Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st2.BackendState != "Running" || len(st2.TailscaleIPs) == 0 {
		t.Fatalf("node2: state %q, addresses %v", st2.BackendState, st2.TailscaleIPs)
	}
	var target netip.Addr
	for _, a := range st2.TailscaleIPs {
		if a.Is4() {
			target = a
		}
	}
	if !target.IsValid() {
		t.Fatalf("node2 has no tailnet IPv4 address: %v", st2.TailscaleIPs)
	}

	path, err := nodes[0].Ping(ctx, target, 20, true)
	if err != nil {
		t.Fatalf("%v\nnode1:\n%s", err, nodes[0].LogTail(30))
	}
	t.Logf("node1 -> node2 (%s): %s", target, path)
	if !path.Direct || !strings.HasPrefix(path.Via, underlay[1].String()+":") {
		t.Errorf("path between nodes on one hub: %s, want direct via %s", path, underlay[1])
	}
	exchange(ctx, t, netnss[1].Name, netnss[0].Name, target)
	serveHTTP(ctx, t, nodes[1], netnss[1].Name, netnss[0].Name, target)
	applianceJoin(ctx, t, hs, uid, ts, tsd, dir, hub.Name, nodes[0], netnss[0].Name)
	untrusted(ctx, t, hs, uid, ts, tsd, dir, hub.Name)

	// Drop UDP between the two underlays in the hub: only DERP (TCP to the
	// hub, port 443) is left, and the nodes must say so.
	// (A policy-routing rule: no nftables needed.)
	for _, dir := range [][2]string{{"10.78.1.0/24", "10.78.2.0/24"}, {"10.78.2.0/24", "10.78.1.0/24"}} {
		if err := ip(ctx, "-n", hub.Name, "rule", "add", "from", dir[0], "to", dir[1], "ipproto", "udp", "blackhole"); err != nil {
			t.Fatal(err)
		}
	}
	relayed, err := waitRelayed(ctx, nodes[0], target)
	if err != nil {
		t.Fatalf("%v\nnode1:\n%s", err, nodes[0].LogTail(30))
	}
	t.Logf("node1 -> node2 with UDP between them dropped: %s", relayed)
	exchange(ctx, t, netnss[1].Name, netnss[0].Name, target)
}

// applianceJoin runs the appliance's own first-boot join script
// (appliance.TailscaleUpScriptText, as the image gets it, for a recipe
// with tailscale.login_server, tailscale.ca and gateway.tailscale_mode
// serve-http) for a third node whose tailscaled trusts the CA the way the
// image's drop-in makes it (SSL_CERT_DIR=/etc/ssl/certs:DIR): the node
// joins with the key file, the file is gone afterwards, the gateway
// stand-in on its 127.0.0.1:18789 answers node1 through the tailnet at
// http://appliance/, and serve status has no funnel. The script's
// `tailscale` is a wrapper that runs the real CLI in the node's namespace
// and socket and adds --accept-dns=false --netfilter-mode=off
// --hostname=appliance to `up`: the test's namespaces share the machine's
// /etc/resolv.conf, which the node must not rewrite.
func applianceJoin(ctx context.Context, t *testing.T, hs *Headscale, uid uint64, ts, tsd, dir, hub string, client *Node, clientNetns string) {
	t.Helper()
	if appliance.TailscaleCertDirs != "/etc/ssl/certs:"+appliance.TailscaleCADir+":"+appliance.TailscaleSeedCADir {
		t.Fatalf("the image's SSL_CERT_DIR is %q: the node below no longer trusts the CA as the image does", appliance.TailscaleCertDirs)
	}
	ns := newNetns(ctx, t, "appl")
	if err := Connect(ctx, hub, ns, netip.MustParsePrefix("10.78.3.1/24"), netip.MustParsePrefix("10.78.3.2/24")); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(hs.CA.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	adir := filepath.Join(dir, "appliance")
	caDir := filepath.Join(adir, "tailscale-ca") // the image's /etc/bake/tailscale-ca
	secrets := filepath.Join(adir, "secrets")    // the image's /var/lib/bake/secrets
	bin := filepath.Join(adir, "bin")
	for _, d := range []string{caDir, secrets, bin} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(caDir, "ca.pem"), ca, 0o644)
	n, err := StartNode(ctx, NodeConfig{Tailscale: ts, Tailscaled: tsd, Netns: ns.Name, Dir: adir,
		CAFile: filepath.Join(caDir, "ca.pem"), CAViaDir: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	gw, err := ListenIn(ns.Name, "127.0.0.1:18789")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "appliance gateway, via %s\n", r.Host)
	})}
	go srv.Serve(gw)
	defer srv.Close()

	key, err := hs.PreAuthKey(ctx, uid, false)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(secrets, "tailscale_authkey")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrapper := fmt.Sprintf(`#!/bin/sh
echo "tailscale $*" >>%[1]s/calls
if [ "$1" = up ]; then shift; set -- up --accept-dns=false --netfilter-mode=off --hostname=appliance "$@"; fi
exec ip netns exec %[2]s %[3]s --socket=%[4]s "$@"
`, adir, ns.Name, ts, n.Socket)
	if err := os.WriteFile(filepath.Join(bin, "tailscale"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	script := appliance.TailscaleUpScriptText(appliance.TailscaleOptions{
		Operator: "nobody", Mode: "serve-http", GatewayPort: 18789, HTTPPort: 80,
		LoginServer: hs.URL, CA: ca,
	})
	script = strings.Replace(script, "key="+appliance.TailscaleAuthKeyFile+"\n", "key="+keyFile+"\n", 1)
	if !strings.Contains(script, "key="+keyFile+"\n") {
		t.Fatalf("the join script no longer reads its key from key=%s:\n%s", appliance.TailscaleAuthKeyFile, script)
	}
	scriptPath := filepath.Join(adir, "tailscale-up")
	os.WriteFile(scriptPath, []byte(script), 0o755)
	cmd := exec.CommandContext(ctx, "/bin/sh", scriptPath)
	cmd.Env = []string{"PATH=" + bin + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	calls, _ := os.ReadFile(filepath.Join(adir, "calls"))
	if err != nil {
		t.Fatalf("the appliance's join script: %v\n%s\ncalls:\n%s\ntailscaled:\n%s", err, out, calls, n.LogTail(30))
	}
	t.Logf("the appliance's join script (%v):\n%s\ncalls:\n%s", time.Since(start).Round(time.Millisecond), out, calls)
	if !strings.Contains(string(calls), "tailscale up --login-server="+hs.URL+" --auth-key=file:"+keyFile) {
		t.Errorf("the script's join did not name the login server and the key file:\n%s", calls)
	}
	if _, err := os.Stat(keyFile); !os.IsNotExist(err) {
		t.Errorf("the auth key file is still there after the join (%v)", err)
	}
	st, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.BackendState != "Running" {
		t.Fatalf("appliance node: %s", st.BackendState)
	}
	var addr netip.Addr
	for _, a := range st.TailscaleIPs {
		if a.Is4() {
			addr = a
		}
	}
	path, err := client.Ping(ctx, addr, 20, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node1 -> appliance (%s): %s", addr, path)

	tr := &http.Transport{Proxy: nil, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		return DialIn(ctx, clientNetns, a)
	}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr.String()+"/", nil)
	req.Host = "appliance"
	resp, err := (&http.Client{Timeout: 20 * time.Second, Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET http://appliance/ from node1 over the tailnet: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "appliance gateway") {
		t.Fatalf("GET http://appliance/ from node1: %s %q", resp.Status, body)
	}
	t.Logf("GET http://appliance/ from node1 through the tailnet (serve-http): %s %q", resp.Status, strings.TrimSpace(string(body)))
	sj, err := n.CLI(ctx, "serve", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sj), `"80"`) || strings.Contains(string(sj), "AllowFunnel") {
		t.Errorf("the appliance's serve status --json: want port 80 and no funnel:\n%s", sj)
	}
	operatorChecks(ctx, t, ts, n.Socket, dir, adir)

	// A restart of tailscaled on the same state (the reboot, as the
	// node sees it): the same node, back online, with no join (the key
	// file is gone; the script does not run again) and no new node in
	// headscale.
	before, err := hs.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if n, err = n.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var again *Status
	for {
		again, err = n.Status(ctx)
		if err == nil && again.BackendState == "Running" {
			break
		}
		if time.Since(t0) > time.Minute {
			t.Fatalf("after a restart the node is not running: %v %+v\n%s", err, again, n.LogTail(30))
		}
		time.Sleep(500 * time.Millisecond)
	}
	after, err := hs.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Self.PublicKey != st.Self.PublicKey || again.Self.ID != st.Self.ID || len(after) != len(before) {
		t.Errorf("after a restart: node %s key %s (was %s, %s), headscale nodes %d (were %d)",
			again.Self.ID, again.Self.PublicKey, st.Self.ID, st.Self.PublicKey, len(after), len(before))
	} else {
		t.Logf("after a tailscaled restart on its state: the same node %s (%s), running again in %v, no re-auth", again.Self.ID, again.Self.HostName, time.Since(t0).Round(time.Millisecond))
	}
	if _, err := client.Ping(ctx, addr, 20, false); err != nil {
		t.Errorf("node1 -> appliance after the restart: %v", err)
	}

	// The gateway itself is on 127.0.0.1 only: from node1's side, without
	// the tailnet (the appliance's underlay address), nothing answers.
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	defer dcancel()
	if c, err := DialIn(dctx, clientNetns, "10.78.3.2:18789"); err == nil {
		c.Close()
		t.Error("the gateway port answers on the appliance's underlay address")
	}
}

// operatorChecks: the join script made "nobody" the operator (as the
// image makes its admin): nobody reads the serve configuration and changes
// it without root; another user ("daemon") cannot change it. tailscaled
// tells users apart by the socket's peer credentials, so the CLI runs as
// each user (runuser) against the node's socket.
func operatorChecks(ctx context.Context, t *testing.T, ts, socket, dir, adir string) {
	t.Helper()
	// The socket's directory must be reachable by the other users.
	for _, d := range []string{filepath.Dir(dir), dir, adir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	as := func(user string, args ...string) ([]byte, error) {
		return execx.Default.Output(ctx, execx.Cmd{Name: "runuser", Args: append([]string{"-u", user, "--", ts, "--socket=" + socket}, args...)})
	}
	st, err := as("nobody", "serve", "status", "--json")
	if err != nil || !strings.Contains(string(st), `"80"`) {
		t.Errorf("the operator (nobody) reading serve status: %v\n%s", err, st)
	}
	if out, err := as("nobody", "serve", "--bg", "--http=8080", "http://127.0.0.1:18789"); err != nil {
		t.Errorf("the operator (nobody) adding a serve port: %v\n%s", err, out)
	} else if out, err := as("nobody", "serve", "--http=8080", "off"); err != nil {
		t.Errorf("the operator (nobody) removing it: %v\n%s", err, out)
	} else {
		t.Logf("the operator (nobody, not root) read the serve configuration and changed it")
	}
	out, err := as("daemon", "serve", "--bg", "--http=8081", "http://127.0.0.1:18789")
	if err == nil {
		t.Errorf("a user who is neither root nor the operator (daemon) changed the serve configuration:\n%s", out)
	} else {
		msg := err.Error()
		if i := strings.Index(msg, "exit status"); i >= 0 {
			msg = msg[i:]
		}
		t.Logf("daemon (not the operator) refused: %s", strings.Join(strings.Fields(msg), " "))
	}
	if st, err := as("nobody", "serve", "status", "--json"); err != nil || strings.Contains(string(st), "8081") || strings.Contains(string(st), "8080") {
		t.Errorf("serve status after the changes: %v\n%s", err, st)
	}
	if st, err := as("daemon", "serve", "status", "--json"); err != nil {
		t.Logf("daemon reading serve status: refused (%v)", strings.Join(strings.Fields(err.Error()), " "))
	} else {
		t.Logf("daemon reading serve status: allowed (tailscaled lets every local user read)")
		_ = st
	}
}

// untrusted: a node that trusts only the system's roots (the image
// without tailscale.ca) cannot join: the control server's certificate is
// refused.
func untrusted(ctx context.Context, t *testing.T, hs *Headscale, uid uint64, ts, tsd, dir, hub string) {
	t.Helper()
	ns := newNetns(ctx, t, "noca")
	if err := Connect(ctx, hub, ns, netip.MustParsePrefix("10.78.4.1/24"), netip.MustParsePrefix("10.78.4.2/24")); err != nil {
		t.Fatal(err)
	}
	nd := filepath.Join(dir, "noca")
	empty := filepath.Join(nd, "no-ca")
	os.MkdirAll(empty, 0o700)
	n, err := StartNode(ctx, NodeConfig{Tailscale: ts, Tailscaled: tsd, Netns: ns.Name, Dir: nd,
		CAFile: filepath.Join(empty, "none.pem"), CAViaDir: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	key, err := hs.PreAuthKey(ctx, uid, false)
	if err != nil {
		t.Fatal(err)
	}
	out, err := n.CLI(ctx, "up", "--login-server="+hs.URL, "--auth-key="+key, "--hostname=noca",
		"--accept-dns=false", "--netfilter-mode=off", "--timeout=10s")
	if err == nil {
		t.Fatalf("a node without the test CA joined:\n%s", out)
	}
	log := n.LogTail(200)
	if !strings.Contains(log, "x509") && !strings.Contains(log, "certificate") {
		t.Errorf("the untrusted join failed (%v), but tailscaled says nothing of the certificate:\n%s", err, n.LogTail(30))
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "x509") || strings.Contains(l, "certificate") {
			t.Logf("without the CA, tailscale up fails: %s", strings.TrimSpace(l))
			break
		}
	}
}

// serveHTTP proves the appliance's serve-http mode against headscale: a
// local HTTP server on node2's 127.0.0.1:18789 (the gateway's place),
// `tailscale serve --bg --http=80` of it, a GET from node1 to node2's
// tailnet address on port 80 through it; serve status has no funnel
// entry, and `tailscale funnel` is refused (headscale grants no funnel
// node attribute).
func serveHTTP(ctx context.Context, t *testing.T, n *Node, server, client string, target netip.Addr) {
	t.Helper()
	l, err := ListenIn(server, "127.0.0.1:18789")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "gateway here, via %s\n", r.Host)
	})}
	go srv.Serve(l)
	defer srv.Close()
	if out, err := n.CLI(ctx, "serve", "--bg", "--http=80", "http://127.0.0.1:18789"); err != nil {
		t.Fatalf("tailscale serve --bg --http=80: %v\n%s", err, out)
	}
	defer n.CLI(context.Background(), "serve", "reset")
	tr := &http.Transport{Proxy: nil, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return DialIn(ctx, client, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 20 * time.Second, Transport: tr}
	// Serve's HTTP handlers are keyed by the node's MagicDNS name: a
	// request must name the node (http://node2/ or its FQDN), not its
	// address (that is a 404). The client resolves nothing here (no DNS in
	// the namespaces): it dials the address and sends the name.
	st2, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimSuffix(st2.Self.DNSName, ".")
	if host == "" {
		t.Fatal("node2 has no MagicDNS name")
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+target.String()+"/", nil)
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET http://%s/ over the tailnet (tailscale serve --http=80): %v", target, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "gateway here") {
		t.Fatalf("GET http://%s/ over the tailnet: %s %q", target, resp.Status, body)
	}
	t.Logf("tailscale serve --http=80 on node2, GET http://%s/ from node1 (to %s): %s %q", host, target, resp.Status, strings.TrimSpace(string(body)))
	st, err := n.CLI(ctx, "serve", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		TCP         map[string]json.RawMessage
		Web         map[string]json.RawMessage
		AllowFunnel map[string]bool
	}
	if err := json.Unmarshal(st, &cfg); err != nil {
		t.Fatalf("serve status --json: %v\n%s", err, st)
	}
	if _, ok := cfg.TCP["80"]; !ok || len(cfg.AllowFunnel) != 0 {
		t.Errorf("serve status --json: want TCP port 80 and no funnel:\n%s", st)
	}
	t.Logf("serve status --json: %s", strings.Join(strings.Fields(string(st)), " "))
	out, err := n.CLI(ctx, "funnel", "--bg", "--https=443", "http://127.0.0.1:18789")
	if err == nil {
		st, _ := n.CLI(ctx, "serve", "status", "--json")
		t.Fatalf("tailscale funnel was accepted under headscale:\n%s\n%s", out, st)
	}
	msg := err.Error()
	if i := strings.Index(msg, "exit status"); i >= 0 {
		msg = msg[i:]
	}
	t.Logf("tailscale funnel refused, as it must be: %s", strings.Join(strings.Fields(msg), " "))
	if !strings.Contains(err.Error(), "funnel") && !strings.Contains(err.Error(), "Funnel") {
		t.Errorf("tailscale funnel failed, but not for want of funnel: %v", err)
	}
	st, _ = n.CLI(ctx, "serve", "status", "--json")
	if strings.Contains(string(st), "AllowFunnel") {
		t.Errorf("a refused funnel left a funnel entry:\n%s", st)
	}
}

// waitRelayed pings until a pong comes through DERP (the direct path
// takes a while to be declared dead).
func waitRelayed(ctx context.Context, n *Node, target netip.Addr) (Path, error) {
	deadline := time.Now().Add(2 * time.Minute)
	var last Path
	for time.Now().Before(deadline) {
		p, err := n.Ping(ctx, target, 1, false)
		if err == nil {
			last = p
			if !p.Direct {
				return p, nil
			}
		}
		time.Sleep(time.Second)
	}
	return last, fmt.Errorf("no relayed pong within 2 minutes; last: %s", last)
}

// exchange listens on target:8080 in server's namespace and sends a line
// from client's namespace through the tailnet; the server answers it.
func exchange(ctx context.Context, t *testing.T, server, client string, target netip.Addr) {
	t.Helper()
	l, err := ListenIn(server, netip.AddrPortFrom(target, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo %s", line)
	}()
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	c, err := DialIn(dctx, client, netip.AddrPortFrom(target, 8080).String())
	if err != nil {
		t.Fatalf("dial %s:8080 over the tailnet: %v", target, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "hello over the tailnet\n")
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "echo hello over the tailnet\n" {
		t.Fatalf("TCP over the tailnet: got %q, %v", got, err)
	}
	t.Logf("TCP exchange over the tailnet with %s: %q from %v", target, strings.TrimSpace(got), c.RemoteAddr())
}

func newNetns(ctx context.Context, t *testing.T, name string) *Netns {
	t.Helper()
	ns, err := NewNetns(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("deleting %s: %v", ns.Name, err)
		}
	})
	return ns
}

// tailscaleBins returns the cached tailscale build's CLI and daemon (the
// build the appliance's .deb is made from).
func tailscaleBins(ctx context.Context, t *testing.T) (string, string) {
	t.Helper()
	deb, err := aptrepo.BuildTailscaleDeb(ctx, aptrepo.DefaultTailscaleVersion, testcache.Dir("tailscale"), "")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(filepath.Dir(deb)), "bin")
	return filepath.Join(bin, "tailscale"), filepath.Join(bin, "tailscaled")
}
