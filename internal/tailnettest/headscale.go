package tailnettest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// HeadscaleConfig says where a test's headscale runs.
type HeadscaleConfig struct {
	Bin string // the headscale binary (BuildHeadscale)
	// Netns is the namespace it runs in (made by the test); "" is the
	// test's own, where only loopback addresses are for Addr and every
	// port is a free one (its metrics and gRPC listeners too).
	Netns string
	Addr  netip.Addr // an address of that namespace: HTTPS on :Port, STUN on :3478/udp (a free port without Netns)
	Dir   string     // its config, database, keys, certificates and log (the test's temp dir)
	// Port is the HTTPS port (0: 443, or a free one without Netns).
	Port int
	// URLAddr is the address nodes reach it at, when not Addr: a guest on
	// QEMU's user-mode network reaches the host's 127.0.0.1 as 10.0.2.2.
	// The URL, the certificate and the DERP region name it.
	URLAddr netip.Addr
	// Policy, when set, is the tailnet policy (HuJSON) headscale enforces;
	// empty means headscale's default (every node reaches every node).
	Policy string
}

// Headscale is a running headscale: control server and embedded DERP
// server (region 999, "headscale") on https://Addr, STUN on Addr:3478.
type Headscale struct {
	URL    string  // https://Addr: the login server
	CA     *TestCA // the CA its certificate is from: what nodes must trust
	Config string  // its config file (the CLI's -c)
	daemon         // Log: its stdout and stderr

	cfg                 HeadscaleConfig
	stun, metrics, grpc int // ports
}

// freePort is a port of addr free at the moment.
func freePort(network string, addr netip.Addr) (int, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartHeadscale writes a config and a test CA into cfg.Dir and starts
// headscale in cfg.Netns. It is ready when its HTTPS health endpoint
// answers through the CA. Close stops it.
func StartHeadscale(ctx context.Context, cfg HeadscaleConfig) (_ *Headscale, err error) {
	if cfg.Bin == "" || !cfg.Addr.Is4() || cfg.Dir == "" || (cfg.Netns == "" && !cfg.Addr.IsLoopback()) {
		return nil, fmt.Errorf("tailnettest: headscale needs Bin, an IPv4 Addr (a loopback one without Netns) and Dir")
	}
	h := &Headscale{cfg: cfg}
	h.stun, h.metrics, h.grpc = 3478, 9090, 50443
	if cfg.Netns == "" {
		var err error
		if h.cfg.Port == 0 {
			if h.cfg.Port, err = freePort("tcp", cfg.Addr); err != nil {
				return nil, err
			}
		}
		for _, p := range []*int{&h.metrics, &h.grpc} {
			if *p, err = freePort("tcp", cfg.Addr); err != nil {
				return nil, err
			}
		}
		if h.stun, err = freePort("udp", cfg.Addr); err != nil {
			return nil, err
		}
	}
	if h.cfg.Port == 0 {
		h.cfg.Port = 443
	}
	if !h.cfg.URLAddr.IsValid() {
		h.cfg.URLAddr = cfg.Addr
	}
	cfg = h.cfg
	ca, err := NewTestCA(cfg.Dir, []netip.Addr{cfg.Addr, cfg.URLAddr}, nil)
	if err != nil {
		return nil, err
	}
	url := "https://" + cfg.URLAddr.String()
	if cfg.Port != 443 {
		url += ":" + strconv.Itoa(cfg.Port)
	}
	*h = Headscale{
		URL:    url,
		CA:     ca,
		Config: filepath.Join(cfg.Dir, "headscale.yaml"),
		daemon: daemon{Log: filepath.Join(cfg.Dir, "headscale.log")},
		cfg:    cfg,
		stun:   h.stun, metrics: h.metrics, grpc: h.grpc,
	}
	policyPath := ""
	if cfg.Policy != "" {
		policyPath = filepath.Join(cfg.Dir, "policy.hujson")
		if err := os.WriteFile(policyPath, []byte(cfg.Policy), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(h.Config, []byte(h.config(policyPath)), 0o600); err != nil {
		return nil, err
	}
	out, err := os.Create(h.Log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(cfg.Bin, "-c", h.Config, "serve")
	if cfg.Netns != "" {
		cmd = exec.Command("ip", "netns", "exec", cfg.Netns, cfg.Bin, "-c", h.Config, "serve")
	}
	cmd.Stdout, cmd.Stderr = out, out
	if h.child, err = execx.StartPinned(cmd); err != nil {
		return nil, fmt.Errorf("tailnettest: starting headscale: %w", err)
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	return h, h.waitReady(ctx)
}

func (h *Headscale) config(policyPath string) string {
	d, a := h.cfg.Dir, h.cfg.Addr.String()
	return fmt.Sprintf(`server_url: %[2]s
listen_addr: %[3]s:%[7]d
metrics_listen_addr: 127.0.0.1:%[8]d
grpc_listen_addr: 127.0.0.1:%[9]d
grpc_allow_insecure: false
noise:
  private_key_path: %[1]s/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: headscale
    region_name: bake test embedded DERP
    verify_clients: true
    stun_listen_addr: %[3]s:%[10]d
    private_key_path: %[1]s/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: %[11]s
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: %[1]s/db.sqlite
    write_ahead_log: true
tls_cert_path: %[4]s
tls_key_path: %[5]s
log:
  level: info
  format: text
policy:
  mode: file
  path: "%[6]s"
dns:
  magic_dns: true
  base_domain: tailnet.test
  override_local_dns: false
  nameservers:
    global: []
unix_socket: %[1]s/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
taildrop:
  enabled: false
`, d, h.URL, a, h.CA.ServerCertFile, h.CA.ServerKeyFile, policyPath, h.cfg.Port, h.metrics, h.grpc, h.stun, h.cfg.URLAddr)
}

// waitReady polls https://Addr/health from inside the namespace, trusting
// only the test CA, for up to a minute.
func (h *Headscale) waitReady(ctx context.Context) error {
	pem, err := os.ReadFile(h.CA.CertFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-h.child.Done():
			return fmt.Errorf("tailnettest: headscale exited (%v):\n%s", h.child.Cmd.ProcessState, h.LogTail(30))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		last = h.health(ctx, pool)
		if last == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("tailnettest: headscale not ready after a minute: %v\n%s", last, h.LogTail(30))
}

// health GETs /health once. http.Transport dials on goroutines of its
// own, so the dial is made inside the namespace by DialIn: a dial from the
// root namespace would go wherever the machine routes 10.78.0.0/16.
func (h *Headscale) health(ctx context.Context, pool *x509.CertPool) error {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		Proxy:           nil,
		// The listen address, whatever address the URL names.
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			addr := netip.AddrPortFrom(h.cfg.Addr, uint16(h.cfg.Port)).String()
			if h.cfg.Netns == "" {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", addr)
			}
			return DialIn(ctx, h.cfg.Netns, addr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	resp, err := c.Get(h.URL + "/health")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /health: %s", resp.Status)
	}
	return nil
}

// CLI runs the headscale CLI against this server (through its unix socket)
// and returns stdout.
func (h *Headscale) CLI(ctx context.Context, args ...string) ([]byte, error) {
	return execx.Default.Output(ctx, execx.Cmd{Name: h.cfg.Bin, Args: append([]string{"-c", h.Config}, args...)})
}

// CreateUser makes a user and returns its ID.
func (h *Headscale) CreateUser(ctx context.Context, name string) (uint64, error) {
	out, err := h.CLI(ctx, "users", "create", name, "-o", "json")
	if err != nil {
		return 0, err
	}
	var u struct {
		ID json.Number `json:"id"`
	}
	if err := json.Unmarshal(out, &u); err != nil {
		return 0, fmt.Errorf("tailnettest: headscale users create: %w in %q", err, out)
	}
	var id uint64
	if _, err := fmt.Sscan(strings.Trim(u.ID.String(), `"`), &id); err != nil || id == 0 {
		return 0, fmt.Errorf("tailnettest: headscale users create: no id in %q", out)
	}
	return id, nil
}

// PreAuthKey makes a pre-auth key for the user, valid for an hour.
func (h *Headscale) PreAuthKey(ctx context.Context, user uint64, reusable bool) (string, error) {
	args := []string{"preauthkeys", "create", "--user", fmt.Sprint(user), "--expiration", "1h"}
	if reusable {
		args = append(args, "--reusable")
	}
	out, err := h.CLI(ctx, args...)
	if err != nil {
		return "", err
	}
	key := strings.TrimSpace(string(out))
	if key == "" || strings.ContainsAny(key, " \n") {
		return "", fmt.Errorf("tailnettest: headscale preauthkeys create: unexpected output %q", out)
	}
	return key, nil
}

// HSNode is one node as headscale lists it.
type HSNode struct {
	ID          json.Number `json:"id"`
	Name        string      `json:"name"`
	GivenName   string      `json:"given_name"`
	IPAddresses []string    `json:"ip_addresses"`
	Online      bool        `json:"online"`
}

// Nodes lists the nodes headscale knows.
func (h *Headscale) Nodes(ctx context.Context) ([]HSNode, error) {
	out, err := h.CLI(ctx, "nodes", "list", "-o", "json")
	if err != nil {
		return nil, err
	}
	var ns []HSNode
	if err := json.Unmarshal(out, &ns); err != nil {
		return nil, fmt.Errorf("tailnettest: headscale nodes list: %w in %q", err, out)
	}
	return ns, nil
}
