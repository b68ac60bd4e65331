package tailnettest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// NodeConfig says how a test node runs.
type NodeConfig struct {
	Tailscale  string // the tailscale CLI binary
	Tailscaled string // the tailscaled binary
	Netns      string // the namespace it runs in, which it has to itself
	Dir        string // its state, socket and log
	CAFile     string // the CA the control server's certificate is from (SSL_CERT_FILE)
	// CAViaDir trusts CAFile the appliance's way instead: SSL_CERT_DIR
	// naming /etc/ssl/certs and CAFile's directory, i.e. besides the
	// system's roots (appliance.TailscaleCertDirs).
	CAViaDir bool
	Port     int // magicsock's UDP port; 0 means 41641
}

// Node is a running tailscaled with a TUN device (tailscale0) in its own
// namespace. Close stops it.
type Node struct {
	Socket string
	daemon // Log: tailscaled's stdout and stderr
	cfg    NodeConfig
}

// StartNode starts tailscaled in cfg.Netns and waits until its socket
// answers. It sends no logs anywhere (--no-logs-no-support).
func StartNode(ctx context.Context, cfg NodeConfig) (_ *Node, err error) {
	if cfg.Tailscale == "" || cfg.Tailscaled == "" || cfg.Netns == "" || cfg.Dir == "" || cfg.CAFile == "" {
		return nil, fmt.Errorf("tailnettest: a node needs Tailscale, Tailscaled, Netns, Dir and CAFile")
	}
	if cfg.Port == 0 {
		cfg.Port = 41641
	}
	n := &Node{
		Socket: filepath.Join(cfg.Dir, "tailscaled.sock"),
		daemon: daemon{Log: filepath.Join(cfg.Dir, "tailscaled.log")},
		cfg:    cfg,
	}
	out, err := os.Create(n.Log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command("ip", "netns", "exec", cfg.Netns, cfg.Tailscaled,
		"--statedir="+cfg.Dir,
		"--socket="+n.Socket,
		"--port="+fmt.Sprint(cfg.Port),
		"--tun=tailscale0",
		"--no-logs-no-support",
	)
	cmd.Env = append(os.Environ(), n.caEnv(), "TS_LOGS_DIR="+cfg.Dir)
	cmd.Stdout, cmd.Stderr = out, out
	if n.child, err = execx.StartPinned(cmd); err != nil {
		return nil, fmt.Errorf("tailnettest: starting tailscaled: %w", err)
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := n.CLI(ctx, "status", "--json"); err == nil {
			return n, nil
		}
		select {
		case <-n.child.Done():
			return nil, fmt.Errorf("tailnettest: tailscaled exited (%v):\n%s", cmd.ProcessState, n.LogTail(30))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("tailnettest: tailscaled not answering after 30s:\n%s", n.LogTail(30))
		}
	}
}

// Restart stops tailscaled and starts it again on the same state (a
// reboot, as far as the node is concerned).
func (n *Node) Restart(ctx context.Context) (*Node, error) {
	n.Close()
	return StartNode(ctx, n.cfg)
}

// CLI runs the tailscale CLI against this node and returns stdout.
func (n *Node) CLI(ctx context.Context, args ...string) ([]byte, error) {
	return execx.Default.Output(ctx, execx.Cmd{Name: "ip", Args: append(
		[]string{"netns", "exec", n.cfg.Netns, n.cfg.Tailscale, "--socket=" + n.Socket}, args...),
		Env: []string{n.caEnv()}})
}

func (n *Node) caEnv() string {
	if n.cfg.CAViaDir {
		return "SSL_CERT_DIR=/etc/ssl/certs:" + filepath.Dir(n.cfg.CAFile)
	}
	return "SSL_CERT_FILE=" + n.cfg.CAFile
}

// Up joins the tailnet of loginServer with a pre-auth key. DNS and
// netfilter are left alone (the namespace is the test's, /etc/resolv.conf
// is the machine's).
func (n *Node) Up(ctx context.Context, loginServer, authKey, hostname string) error {
	_, err := n.CLI(ctx, "up", "--login-server="+loginServer, "--auth-key="+authKey,
		"--hostname="+hostname, "--accept-dns=false", "--netfilter-mode=off", "--timeout=2m")
	return err
}

// Status is the part of `tailscale status --json` the tests read.
type Status struct {
	BackendState string
	Self         PeerStatus
	Peer         map[string]PeerStatus
	TailscaleIPs []netip.Addr
}

// PeerStatus is one node in Status.
type PeerStatus struct {
	ID           string
	PublicKey    string
	HostName     string
	DNSName      string
	TailscaleIPs []netip.Addr
	Online       bool
	CurAddr      string // the direct endpoint in use, "" when relayed
	Relay        string // the home DERP region code
}

// Status returns `tailscale status --json`.
func (n *Node) Status(ctx context.Context) (*Status, error) {
	out, err := n.CLI(ctx, "status", "--json")
	if err != nil {
		return nil, err
	}
	var s Status
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("tailnettest: tailscale status --json: %w", err)
	}
	return &s, nil
}

// HasPeer reports whether the node's netmap lists a peer with the tailnet
// address addr. A node restarted on its state reports BackendState
// "Running" before control has sent it a netmap with its peers; until then
// `tailscale ping` to a peer says "no matching peer".
func (s *Status) HasPeer(addr netip.Addr) bool {
	for _, p := range s.Peer {
		for _, a := range p.TailscaleIPs {
			if a == addr {
				return true
			}
		}
	}
	return false
}

// Path is how one node reached another in a `tailscale ping`.
type Path struct {
	Direct   bool   // a direct UDP path
	Via      string // the endpoint ("10.78.2.2:41641") or the DERP region ("DERP(headscale)")
	Line     string // the pong line
	Attempts int    // pings sent before the answer that counted
}

func (p Path) String() string {
	kind := "relayed through DERP"
	if p.Direct {
		kind = "direct"
	}
	return fmt.Sprintf("%s via %s (%q)", kind, p.Via, p.Line)
}

// Ping runs `tailscale ping` to target (a tailnet IP) and reports the path
// of its last pong. With untilDirect, ping continues (up to count pings)
// until a direct path answers; without, it stops at the first pong.
func (n *Node) Ping(ctx context.Context, target netip.Addr, count int, untilDirect bool) (Path, error) {
	args := []string{"ping", "--c=" + fmt.Sprint(count), "--timeout=5s"}
	if untilDirect {
		args = append(args, "--until-direct=true")
	} else {
		args = append(args, "--until-direct=false")
	}
	out, err := n.CLI(ctx, append(args, target.String())...)
	var last string
	pongs := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "pong from ") {
			last, pongs = l, pongs+1
		}
	}
	if last == "" {
		return Path{}, fmt.Errorf("tailnettest: tailscale ping %s: no pong (%v):\n%s", target, err, out)
	}
	// pong from NAME (IP) via EP in 2ms
	// pong from NAME (IP) via DERP(headscale) in 20ms
	p := Path{Line: last, Attempts: pongs}
	if i := strings.Index(last, " via "); i >= 0 {
		via := last[i+5:]
		if j := strings.Index(via, " in "); j >= 0 {
			via = via[:j]
		}
		p.Via = via
		p.Direct = !strings.HasPrefix(via, "DERP(")
	}
	if p.Via == "" {
		return Path{}, fmt.Errorf("tailnettest: tailscale ping %s: no path in %q", target, last)
	}
	// Without --until-direct ping exits 0 at the first pong; with it, a
	// relayed-only path is an error exit that still printed pongs.
	return p, nil
}
