// Package claims is what an image built by bake claims about itself (the
// admin user, the SSH port, the firewall's allows, Docker isolation, the
// gateway's port, mode, owner and paths, Tailscale), derived once from the
// resolved recipe. The build writes it into the image (RecordPath, in the
// sysprep stage); bake verify checks an image against it: the recipe's
// claims with --recipe (and a record that disagrees fails the run), else
// the image's own record, else the appliance's defaults.
package claims

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"

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
// the image was built from (FromRecipe), the image's record (ParseRecord),
// or the appliance's defaults (Default).
type Spec struct {
	// Source says where the claims came from: "recipe PATH", "the image's
	// record" or "defaults". Not in the record.
	Source    string `json:"-"`
	AdminUser string `json:"admin_user"`
	SSHPort   int    `json:"ssh_port"`
	// Firewall is nil when the recipe has no firewall section.
	Firewall *FirewallSpec `json:"firewall,omitempty"`
	// Docker: the image runs Docker (containers or a gateway): the
	// isolation checks apply.
	Docker  bool         `json:"docker"`
	Gateway *GatewaySpec `json:"gateway,omitempty"`
	// Tailscale: tailscaled runs and holds 41641/udp.
	Tailscale bool `json:"tailscale"`
	// TailscaleLoginServer is the control server first boot joins
	// (tailscale.login_server); "" is Tailscale's own.
	TailscaleLoginServer string `json:"tailscale_login_server,omitempty"`
	// TailscaleCA: tailscaled trusts the recipe's CA bundle
	// (tailscale.ca) besides the system's.
	TailscaleCA bool `json:"tailscale_ca,omitempty"`
	// TailscaleServeHTTP is the tailnet port the gateway is served on in
	// plain HTTP (gateway.tailscale_mode: serve-http, the tailnet only:
	// serve status must show it and no funnel); 0 otherwise.
	TailscaleServeHTTP int `json:"tailscale_serve_http,omitempty"`
	// StateVolume is the volume the image keeps its instance state on
	// (state: {volume: ...}); nil without a state section or with a state
	// partition. A run that attaches none (every run but an upgrade run)
	// sees first boot's warning and the root disk's state (state.no-volume).
	StateVolume *StateVolumeSpec `json:"state_volume,omitempty"`
	// Needles are secrets the recipe itself wrote literally (a baked
	// token or auth key): the image must not carry them either... unless
	// the recipe said so, in which case they are still reported. Never in
	// the record.
	Needles []Needle `json:"-"`
}

// StateVolumeSpec is how first boot looks for the state volume: by its
// file system label, and by its virtio serial when one is set.
type StateVolumeSpec struct {
	Label  string `json:"label"`
	Serial string `json:"serial,omitempty"`
}

// Needle is a secret the recipe wrote literally, by name.
type Needle struct {
	Name, Secret string
}

// FirewallSpec is the host firewall's expected state.
type FirewallSpec struct {
	Backend         string   `json:"backend"` // ufw or iptables-persistent
	Allow           []string `json:"allow"`   // PORT/PROTO, the SSH port included
	DockerIsolation bool     `json:"docker_isolation"`
	// MetadataBlocked: containers must not reach the cloud metadata
	// services (isolation on and metadata_access false).
	MetadataBlocked bool `json:"metadata_blocked"`
}

// GatewaySpec is the gateway's expected state.
type GatewaySpec struct {
	Container string         `json:"container"` // docker container name
	Port      int            `json:"port"`
	Mode      string         `json:"mode"` // local or network
	Allowed   []netip.Prefix `json:"allowed,omitempty"`
	// User owns the config and runs the gateway: a user name, or UID:GID
	// for a container the recipe runs by number.
	User       string `json:"user"`
	ConfigPath string `json:"config_path"` // on the host
	// Probe is the gateway's own health command, with {container},
	// {port} and {token} replaced, as an operator runs it in the guest:
	// it prints ProbeOK with the right token. bake verify's gateway.auth
	// does not run it: it speaks the gateway's WebSocket protocol itself
	// (internal/gwprobe; under software emulation each run of the Node
	// CLI cost a minute of guest CPU) and reads only ProbeRefused, the
	// word of the gateway's refusal of a wrong token.
	// The fields stay in the record (version 1) as they were written.
	Probe        []string `json:"probe"`
	ProbeOK      string   `json:"probe_ok"`
	ProbeRefused string   `json:"probe_refused"`
	// ProbeNoCredentials is what the probe's client prints when it will
	// not even connect without credentials (OpenClaw's CLI: "gateway url
	// override requires explicit credentials"): the CLI's refusal, not the
	// server's, which is why bake verify no longer judges by the CLI.
	ProbeNoCredentials string `json:"probe_no_credentials,omitempty"`
}

// Default is the OpenClaw appliance as bake's default recipe makes it.
func Default() Spec {
	return Spec{
		Source:    "defaults (the OpenClaw appliance of recipes/openclaw.yaml)",
		AdminUser: DefaultAdminUser,
		SSHPort:   DefaultSSHPort,
		Firewall:  &FirewallSpec{Backend: "ufw", Allow: []string{"22/tcp", "41641/udp"}, DockerIsolation: true, MetadataBlocked: true},
		Docker:    true,
		Gateway:   defaultGateway(DefaultGatewayName, DefaultGatewayPort),
		Tailscale: true,
		// state: {volume: {label: bake-state}}
		StateVolume: &StateVolumeSpec{Label: "bake-state"},
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

// FromRecipe derives the claims from a recipe with its defaults
// applied (recipe.Load does that), reading the values the build reads
// (the gateway's paths and networks, the firewall's rules and backend, the
// SSH port), never working them out anew: a section the recipe does not
// have makes no claim. A recipe built in Go gets its defaults here; an
// error is a value that validation refuses.
func FromRecipe(r *recipe.Recipe) (Spec, error) {
	if !r.HasDefaults() {
		if err := r.Defaults(); err != nil {
			return Spec{}, fmt.Errorf("claims: %w", err)
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
			s.Needles = append(s.Needles, Needle{"recipe-gateway-token", g.Token})
		}
	}
	if t := r.Tailscale; t != nil {
		s.Tailscale = t.Enabled
		if t.Enabled {
			s.TailscaleLoginServer = t.LoginServer
			s.TailscaleCA = t.CA != ""
			if g := r.Gateway; g != nil && g.TailscaleMode == "serve-http" && g.TailscaleHTTPPort != nil {
				s.TailscaleServeHTTP = *g.TailscaleHTTPPort
			}
		}
		if t.AuthKey != "" {
			s.Needles = append(s.Needles, Needle{"recipe-tailscale-auth-key", t.AuthKey})
		}
	}
	if st := r.State; st != nil && st.Partition == nil {
		s.StateVolume = &StateVolumeSpec{Label: st.Label(), Serial: st.Volume.Serial}
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

// RecordPath is where the build writes an image's claims (Record), for
// bake verify to read from the disk before it boots it.
const RecordPath = "/usr/share/bake/claims.json"

// recordVersion is the record's format; a reader refuses another.
const recordVersion = 1

// MaxRecord bounds a record read from an image (a hostile image's).
const MaxRecord = 1 << 20

type record struct {
	Version int `json:"version"`
	Spec
}

// Record is the claims as the build writes them into the image: JSON, no
// source and no secret (Needles are never written), the same bytes for
// the same recipe.
func (s Spec) Record() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(record{Version: recordVersion, Spec: s}) // plain values: cannot fail
	return b.Bytes()
}

// ParseRecord reads a record written by Record. Unknown fields and
// another version are refused: a record bake cannot read fully is no
// basis for a verdict.
func ParseRecord(b []byte) (Spec, error) {
	if len(b) > MaxRecord {
		return Spec{}, fmt.Errorf("claims record: %d bytes, over %d", len(b), MaxRecord)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r record
	if err := dec.Decode(&r); err != nil {
		return Spec{}, fmt.Errorf("claims record: %w", err)
	}
	if r.Version != recordVersion {
		return Spec{}, fmt.Errorf("claims record: version %d, this bake reads %d", r.Version, recordVersion)
	}
	if r.AdminUser == "" || r.SSHPort < 1 || r.SSHPort > 65535 {
		return Spec{}, fmt.Errorf("claims record: no admin user or SSH port")
	}
	if g := r.Gateway; g != nil && (g.Container == "" || g.Port < 1 || g.Port > 65535 || len(g.Probe) == 0) {
		return Spec{}, fmt.Errorf("claims record: the gateway has no container, port or probe")
	}
	if v := r.StateVolume; v != nil && v.Label == "" && v.Serial == "" {
		return Spec{}, fmt.Errorf("claims record: the state volume has neither label nor serial")
	}
	s := r.Spec
	s.Source = "the image's record (" + RecordPath + ")"
	return s, nil
}

// Diff lists where two claims differ, field by field ("gateway.port: 18789
// in the recipe, 18790 in the image's record"), by their record form:
// Source and Needles are not compared.
func Diff(recipe, image Spec, recipeName, imageName string) []string {
	var a, b map[string]any
	json.Unmarshal(recipe.Record(), &a)
	json.Unmarshal(image.Record(), &b)
	var out []string
	diffValues("", a, b, recipeName, imageName, &out)
	sort.Strings(out)
	return out
}

func diffValues(path string, a, b any, an, bn string, out *[]string) {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		for k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			diffValues(p, am[k], bm[k], an, bn, out)
		}
		return
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		*out = append(*out, fmt.Sprintf("%s: %s in %s, %s in %s", path, ja, an, jb, bn))
	}
}
