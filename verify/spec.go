package verify

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/builder/recipe"
)

// Defaults of the appliance (recipes/openclaw.yaml, DESIGN.md section 2),
// checked when no recipe is given.
const (
	DefaultAdminUser     = "admin"
	DefaultSSHPort       = 22
	DefaultGatewayPort   = 18789
	DefaultGatewayName   = "openclaw-gateway"
	DefaultGatewayUser   = "openclaw"
	DefaultGatewayConfig = "/home/openclaw/.openclaw/openclaw.json"
	TailscalePort        = 41641
)

// Spec is what an image claims, and so what verify checks: from the recipe
// the image was built from (SpecFromRecipe), or the appliance's defaults
// (DefaultSpec).
type Spec struct {
	Source    string // "recipe PATH" or "defaults"
	AdminUser string
	SSHPort   int
	// Firewall is nil when the recipe has no firewall section.
	Firewall *FirewallSpec
	// Docker: the image runs Docker (containers or a gateway): the
	// isolation checks apply.
	Docker  bool
	Gateway *GatewaySpec
	// Tailscale: tailscaled runs and holds 41641/udp.
	Tailscale bool
	// Needles are secrets the recipe itself wrote literally (a baked
	// token or auth key): the image must not carry them either... unless
	// the recipe said so, in which case they are still reported.
	Needles []Rule
}

// FirewallSpec is the host firewall's expected state.
type FirewallSpec struct {
	Backend         string   // ufw or iptables-persistent
	Allow           []string // PORT/PROTO, the SSH port included
	DockerIsolation bool
	// MetadataBlocked: containers must not reach the cloud metadata
	// services (isolation on and metadata_access false).
	MetadataBlocked bool
}

// GatewaySpec is the gateway's expected state.
type GatewaySpec struct {
	Container string // docker container name
	Port      int
	Mode      string // local or network
	Allowed   []netip.Prefix
	// User owns the config and runs the gateway: a user name, or UID:GID
	// for a container the recipe runs by number.
	User       string
	ConfigPath string // on the host
	// Probe is the health command run in the guest, with {container},
	// {port} and {token} replaced: it must print ProbeOK with the right
	// token and ProbeRefused with a wrong one.
	Probe        []string
	ProbeOK      string
	ProbeRefused string
	// ProbeNoCredentials is what the probe's client prints when it will
	// not even connect without credentials (OpenClaw's CLI: "gateway url
	// override requires explicit credentials"). The no-token case then
	// shows the client's refusal; the wrong-token case is what proves the
	// server checks the token.
	ProbeNoCredentials string
}

// DefaultSpec is the OpenClaw appliance as bake's default recipe makes it.
func DefaultSpec() Spec {
	return Spec{
		Source:    "defaults (the OpenClaw appliance of recipes/openclaw.yaml)",
		AdminUser: DefaultAdminUser,
		SSHPort:   DefaultSSHPort,
		Firewall:  &FirewallSpec{Backend: "ufw", Allow: []string{"22/tcp", "41641/udp"}, DockerIsolation: true, MetadataBlocked: true},
		Docker:    true,
		Gateway:   defaultGateway(DefaultGatewayName, DefaultGatewayPort),
		Tailscale: true,
	}
}

func defaultGateway(container string, port int) *GatewaySpec {
	return &GatewaySpec{
		Container:    container,
		Port:         port,
		Mode:         "local",
		User:         DefaultGatewayUser,
		ConfigPath:   DefaultGatewayConfig,
		Probe:        []string{"docker", "exec", "{container}", "openclaw", "gateway", "health", "--url", "ws://127.0.0.1:{port}", "--token", "{token}"},
		ProbeOK:      "OK",
		ProbeRefused: "unauthorized",
		// OpenClaw 2026.9's CLI with --url and no token.
		ProbeNoCredentials: "requires explicit credentials",
	}
}

// SpecFromRecipe derives the claims from a recipe with its defaults
// applied (recipe.Load does that), reading the values the build reads
// (the gateway's paths and networks, the firewall's rules and backend, the
// SSH port), never working them out anew: a section the recipe does not
// have makes no claim. A recipe built in Go gets its defaults here; an
// error is a value that validation refuses.
func SpecFromRecipe(r *recipe.Recipe) (Spec, error) {
	if !r.HasDefaults() {
		if err := r.Defaults(); err != nil {
			return Spec{}, fmt.Errorf("verify: %w", err)
		}
	}
	s := Spec{Source: "recipe " + r.Path, SSHPort: DefaultSSHPort}
	if r.SSH != nil {
		s.SSHPort = *r.SSH.Port
	}
	s.AdminUser = adminUser(r)
	if fw := r.Firewall; fw != nil {
		f := &FirewallSpec{Backend: fw.Backend, DockerIsolation: fw.DockerIsolationOn(), MetadataBlocked: fw.DockerIsolationOn() && !fw.MetadataAccess}
		allow := map[string]bool{fmt.Sprintf("%d/tcp", s.SSHPort): true}
		for _, a := range fw.Rules {
			allow[a.String()] = true
		}
		for a := range allow {
			f.Allow = append(f.Allow, a)
		}
		sort.Strings(f.Allow)
		s.Firewall = f
	}
	s.Docker = len(r.Containers) > 0 || r.Gateway != nil
	if g := r.Gateway; g != nil {
		gs := defaultGateway(g.Container, *g.Port)
		gs.Mode = g.Mode
		for _, n := range r.GatewayNetworks() {
			gs.Allowed = append(gs.Allowed, n.Prefix)
		}
		// Where the build put the gateway's state dir and config, and
		// whose they are: the recipe's resolved values (a mounted state
		// dir, the user's home, or /var/lib/bake/NAME for a UID:GID).
		gs.User, gs.ConfigPath = g.Owner, g.ConfigPath
		s.Gateway = gs
		if g.Token != "" {
			s.Needles = append(s.Needles, NeedleRule("recipe-gateway-token", g.Token))
		}
	}
	if t := r.Tailscale; t != nil {
		s.Tailscale = t.Enabled
		if t.AuthKey != "" {
			s.Needles = append(s.Needles, NeedleRule("recipe-tailscale-auth-key", t.AuthKey))
		}
	}
	return s, nil
}

// adminUser is the recipe's admin login user: firstboot.admin_user, else
// the first login user with passwordless sudo, else the first login user.
func adminUser(r *recipe.Recipe) string {
	if r.Firstboot != nil && r.Firstboot.AdminUser != "" {
		return r.Firstboot.AdminUser
	}
	var first string
	for _, u := range r.Users {
		if u.System {
			continue
		}
		if u.Sudo == "nopasswd" {
			return u.Name
		}
		if first == "" {
			first = u.Name
		}
	}
	if first != "" {
		return first
	}
	return DefaultAdminUser
}

// ExpectedOpenTCP is the set of TCP ports a scan from the outside link
// (from, e.g. 10.77.0.1 or fd77::1) must find open: SSH, and the gateway
// port in network mode when one of its allowed networks holds from.
func (s Spec) ExpectedOpenTCP(from netip.Addr) []int {
	ports := []int{s.SSHPort}
	if g := s.Gateway; g != nil && g.Mode == "network" {
		for _, p := range g.Allowed {
			if p.Contains(from) {
				ports = append(ports, g.Port)
				break
			}
		}
	}
	sort.Ints(ports)
	return ports
}

// ProbeArgv fills in the gateway probe's placeholders.
func (g *GatewaySpec) ProbeArgv(container, token string) []string {
	out := make([]string, len(g.Probe))
	r := strings.NewReplacer("{container}", container, "{port}", strconv.Itoa(g.Port), "{token}", token)
	for i, a := range g.Probe {
		out[i] = r.Replace(a)
	}
	return out
}
