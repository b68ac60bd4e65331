package recipe

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/appliance"
)

// Appliance defaults, filled in by Defaults.
const (
	DefaultSSHPort         = 22
	DefaultFirewallBackend = "ufw"
	DefaultGatewayPort     = 18789
	DefaultGatewayMode     = "local"
	// DefaultTailscaleHTTPPort is gateway.tailscale_http_port's default.
	DefaultTailscaleHTTPPort = 80
	DefaultRestart           = "always"
)

// Values the appliance sections accept.
var (
	FirewallBackends = []string{"ufw", "iptables-persistent"}
	GatewayModes     = []string{"local", "network"}
	GatewayBinds     = []string{"loopback", "lan"}
	TailscaleModes   = []string{"serve", "serve-http", "off", "funnel"}
	SeedSources      = []string{"nocloud", "credentials", "cloud-init"}
	RestartPolicies  = []string{"always", "on-failure", "no"}
	// DefaultSeed is firstboot.seed when the recipe leaves it out.
	DefaultSeed = []string{"nocloud", "credentials"}
)

var (
	// Docker's container name rule, shortened to what a unit name takes.
	containerNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	envNameRe       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	uidGidRe        = regexp.MustCompile(`^([0-9]{1,10}):([0-9]{1,10})$`)
	digestRe        = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)
)

// SecretEnvWords are what the name of an environment variable that holds
// a secret contains (compared in upper case). A false alarm costs a rename
// or an empty value; a missed secret is in every copy of the image.
var SecretEnvWords = []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "PRIVATE_KEY", "ACCESS_KEY", "CREDENTIAL"}

// secretEnvParts are whole _-separated parts of a name that mark a secret
// (AUTH as a part: OPENCLAW_AUTH, OAUTH_..., not GIT_AUTHOR_NAME).
var secretEnvParts = []string{"AUTH", "OAUTH", "AUTHKEY"}

// SecretEnvName reports whether an environment variable's name looks like
// it holds a secret.
func SecretEnvName(name string) bool {
	u := strings.ToUpper(name)
	if slices.ContainsFunc(SecretEnvWords, func(w string) bool { return strings.Contains(u, w) }) {
		return true
	}
	return slices.ContainsFunc(strings.Split(u, "_"), func(p string) bool { return slices.Contains(secretEnvParts, p) })
}

// EnvNames are the container's environment variable names, sorted.
func (c *Container) EnvNames() []string {
	return slices.Sorted(maps.Keys(c.Env))
}

// SecretEnv are the names of the container's environment variables that
// look like secrets and have a value (which the image would carry),
// sorted.
func (c *Container) SecretEnv() []string {
	var out []string
	for _, n := range c.EnvNames() {
		if c.Env[n] != "" && SecretEnvName(n) {
			out = append(out, n)
		}
	}
	return out
}

// AllowsBakedSecrets reports whether the recipe accepts secrets in the
// image (firstboot.allow_baked_secrets).
func (r *Recipe) AllowsBakedSecrets() bool {
	return r.Firstboot != nil && r.Firstboot.AllowBakedSecrets
}

// PortRule is a firewall allow entry: ports Low..High (equal for one port)
// of Proto (tcp or udp).
type PortRule struct {
	Low, High int
	Proto     string
}

// String is the rule as ufw writes a port: 22/tcp, 60000:61000/udp.
func (p PortRule) String() string { return p.Ports() + "/" + p.Proto }

// Ports is "22" or "60000:61000".
func (p PortRule) Ports() string {
	if p.Low == p.High {
		return strconv.Itoa(p.Low)
	}
	return fmt.Sprintf("%d:%d", p.Low, p.High)
}

// ParsePortRule parses PORT/PROTO or LOW:HIGH/PROTO.
func ParsePortRule(s string) (PortRule, error) {
	ports, proto, ok := strings.Cut(s, "/")
	if !ok || (proto != "tcp" && proto != "udp") {
		return PortRule{}, fmt.Errorf("%q is not PORT/tcp or PORT/udp", s)
	}
	lo, hi, isRange := strings.Cut(ports, ":")
	low, err := parsePort(lo)
	if err != nil {
		return PortRule{}, fmt.Errorf("%q: %v", s, err)
	}
	high := low
	if isRange {
		if high, err = parsePort(hi); err != nil {
			return PortRule{}, fmt.Errorf("%q: %v", s, err)
		}
		if high <= low {
			return PortRule{}, fmt.Errorf("%q: the range must go from low to high", s)
		}
	}
	return PortRule{Low: low, High: high, Proto: proto}, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || strings.HasPrefix(s, "0") || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return n, nil
}

// Publish is one published container port.
type Publish struct {
	// Host is the host address; invalid (zero) when the publish names
	// none, which means every interface.
	Host          netip.Addr
	HostPort      int
	ContainerPort int
	Proto         string // tcp or udp
}

// AllInterfaces reports whether the port is published on every address.
func (p Publish) AllInterfaces() bool { return !p.Host.IsValid() || p.Host.IsUnspecified() }

// String is the publish as `docker run -p` takes it.
func (p Publish) String() string {
	s := fmt.Sprintf("%d:%d", p.HostPort, p.ContainerPort)
	if p.Host.IsValid() {
		h := p.Host.String()
		if p.Host.Is6() {
			h = "[" + h + "]"
		}
		s = h + ":" + s
	}
	if p.Proto != "tcp" {
		s += "/" + p.Proto
	}
	return s
}

// ParsePublish parses [HOSTADDR:]HOSTPORT:CONTAINERPORT[/PROTO]; an IPv6
// host address is written in brackets: [::1]:8080:80.
func ParsePublish(s string) (Publish, error) {
	p := Publish{Proto: "tcp"}
	rest := s
	if i := strings.LastIndex(rest, "/"); i >= 0 {
		p.Proto = rest[i+1:]
		rest = rest[:i]
		if p.Proto != "tcp" && p.Proto != "udp" {
			return p, fmt.Errorf("%q: protocol %q is not tcp or udp", s, p.Proto)
		}
	}
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return p, fmt.Errorf("%q: an IPv6 address is written [ADDR]:HOSTPORT:PORT", s)
		}
		a, err := netip.ParseAddr(rest[1:end])
		if err != nil || !a.Is6() {
			return p, fmt.Errorf("%q: %q is not an IPv6 address", s, rest[1:end])
		}
		p.Host = a
		rest = rest[end+2:]
	}
	parts := strings.Split(rest, ":")
	switch {
	case len(parts) == 3 && !p.Host.IsValid():
		a, err := netip.ParseAddr(parts[0])
		if err != nil || !a.Is4() {
			return p, fmt.Errorf("%q: %q is not an IPv4 address (write IPv6 in brackets)", s, parts[0])
		}
		p.Host = a
		parts = parts[1:]
	case len(parts) == 2:
	default:
		return p, fmt.Errorf("%q is not HOSTADDR:HOSTPORT:CONTAINERPORT", s)
	}
	var err error
	if p.HostPort, err = parsePort(parts[0]); err != nil {
		return p, fmt.Errorf("%q: host port: %v", s, err)
	}
	if p.ContainerPort, err = parsePort(parts[1]); err != nil {
		return p, fmt.Errorf("%q: container port: %v", s, err)
	}
	return p, nil
}

// Volume is a bind mount into a container.
type Volume struct {
	Host, Container string
	ReadOnly        bool
}

// String is the volume as `docker run -v` takes it.
func (v Volume) String() string {
	s := v.Host + ":" + v.Container
	if v.ReadOnly {
		s += ":ro"
	}
	return s
}

// ParseVolume parses HOSTPATH:CONTAINERPATH[:ro|:rw].
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	var v Volume
	switch {
	case len(parts) == 3 && (parts[2] == "ro" || parts[2] == "rw"):
		v.ReadOnly = parts[2] == "ro"
	case len(parts) != 2:
		return v, fmt.Errorf("%q is not HOSTPATH:CONTAINERPATH[:ro]", s)
	}
	v.Host, v.Container = parts[0], parts[1]
	for _, p := range []string{v.Host, v.Container} {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return v, fmt.Errorf("%q: %q is not an absolute, clean path", s, p)
		}
	}
	if v.Container == "/" {
		return v, fmt.Errorf("%q: cannot mount over the container's /", s)
	}
	return v, nil
}

// ParseUIDGID parses "UID:GID".
func ParseUIDGID(s string) (uid, gid int, ok bool) {
	m := uidGidRe.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, false
	}
	u, err1 := strconv.Atoi(m[1])
	g, err2 := strconv.Atoi(m[2])
	return u, g, err1 == nil && err2 == nil
}

// ContainerByName returns the container called name, or nil.
func (r *Recipe) ContainerByName(name string) *Container {
	for i := range r.Containers {
		if r.Containers[i].Name == name {
			return &r.Containers[i]
		}
	}
	return nil
}

// UserByName returns the user called name, or nil.
func (r *Recipe) UserByName(name string) *User {
	for i := range r.Users {
		if r.Users[i].Name == name {
			return &r.Users[i]
		}
	}
	return nil
}

// IsLogin reports whether u can log in: not a system account and a real
// shell. Such an account must never share the gateway's uid.
func (u *User) IsLogin() bool {
	if u.System {
		return false
	}
	switch path.Base(u.Shell) {
	case "nologin", "false":
		return false
	}
	return true
}

// HomeDir is the user's home in the image (useradd's default /home/NAME).
func (u *User) HomeDir() string {
	if u.Home != "" {
		return u.Home
	}
	return "/home/" + u.Name
}

// GatewayPublish is how the gateway port is published on the host, from
// gateway.mode (DESIGN 2.6): 127.0.0.1:PORT:PORT in local mode,
// 0.0.0.0:PORT:PORT (with the DOCKER-USER exception) in network mode.
func (g *Gateway) GatewayPublish() Publish {
	port := DefaultGatewayPort
	if g.Port != nil {
		port = *g.Port
	}
	host := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if g.Mode == "network" {
		host = netip.IPv4Unspecified()
	}
	return Publish{Host: host, HostPort: port, ContainerPort: port, Proto: "tcp"}
}

// GatewayNetworks are the networks that may reach the gateway port:
// firewall.allowed_networks and gateway.allowed_networks together, each
// once.
func (r *Recipe) GatewayNetworks() []Network {
	var out []Network
	seen := map[string]bool{}
	var lists [][]Network
	if r.Firewall != nil {
		lists = append(lists, r.Firewall.AllowedNetworks)
	}
	if r.Gateway != nil {
		lists = append(lists, r.Gateway.AllowedNetworks)
	}
	for _, l := range lists {
		for _, n := range l {
			p, err := netip.ParsePrefix(n.CIDR)
			key := n.CIDR
			if err == nil {
				key = p.Masked().String()
			}
			if !seen[key] {
				seen[key] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// HasSeed reports whether firstboot reads the given seed source.
func (f *Firstboot) HasSeed(src string) bool {
	if f == nil {
		return false
	}
	return slices.Contains(f.Seed, src)
}

// DockerIsolationOn is firewall.docker_isolation with its default (true).
func (f *Firewall) DockerIsolationOn() bool {
	return f != nil && (f.DockerIsolation == nil || *f.DockerIsolation)
}

// applianceDefaults fills the appliance sections' defaults.
func (r *Recipe) applianceDefaults() {
	if r.SSH != nil && r.SSH.Port == nil {
		p := DefaultSSHPort
		r.SSH.Port = &p
	}
	if f := r.Firewall; f != nil {
		if f.Backend == "" {
			f.Backend = DefaultFirewallBackend
		}
		if f.DockerIsolation == nil {
			t := true
			f.DockerIsolation = &t
		}
	}
	for i := range r.Containers {
		if r.Containers[i].Restart == "" {
			r.Containers[i].Restart = DefaultRestart
		}
	}
	if fb := r.Firstboot; fb != nil && len(fb.Seed) == 0 {
		fb.Seed = slices.Clone(DefaultSeed)
	}
	if t := r.Tailscale; t != nil && t.Operator == "" && r.Firstboot != nil {
		t.Operator = r.Firstboot.AdminUser
	}
	if g := r.Gateway; g != nil {
		if g.Port == nil {
			p := DefaultGatewayPort
			g.Port = &p
		}
		if g.Mode == "" {
			g.Mode = DefaultGatewayMode
		}
		if g.Bind == "" {
			g.Bind = map[string]string{"local": "loopback", "network": "lan"}[g.Mode]
		}
		if g.TailscaleMode == "" {
			g.TailscaleMode = "off"
			if r.Tailscale != nil && r.Tailscale.Enabled {
				g.TailscaleMode = "serve"
			}
		}
		if g.TailscaleMode == "serve-http" && g.TailscaleHTTPPort == nil {
			hp := DefaultTailscaleHTTPPort
			g.TailscaleHTTPPort = &hp
		}
	}
}

// appliance validates the appliance sections.
func (v *validator) appliance() {
	v.sshSection()
	v.firewallSection()
	v.containersSection()
	v.gatewaySection()
	v.tailscaleSection()
	v.firstbootSection()
	v.stateSection()
}

func (v *validator) port(p string, n *int, example string) {
	if n != nil && (*n < 1 || *n > 65535) {
		v.errorf(p, "write a port from 1 to 65535, e.g. "+example, "%d is not a port", *n)
	}
}

func (v *validator) sshSection() {
	if s := v.r.SSH; s != nil {
		v.port("ssh.port", s.Port, "port: 22")
	}
}

func (v *validator) firewallSection() {
	f := v.r.Firewall
	if f == nil {
		return
	}
	if f.Backend != "" && !slices.Contains(FirewallBackends, f.Backend) {
		hint := "write ufw (the default) or iptables-persistent"
		if s := suggest(f.Backend, FirewallBackends); s != "" {
			hint = fmt.Sprintf("did you mean %q?", s)
		}
		v.errorf("firewall.backend", hint, "%q is not a firewall backend", f.Backend)
	}
	seen := map[string]string{}
	for i, a := range f.Allow {
		p := indexPath("firewall.allow", i)
		rule, err := ParsePortRule(a)
		if err != nil {
			hint := "write PORT/tcp or PORT/udp, e.g. 22/tcp, 41641/udp, or a range 60000:61000/udp"
			if _, perr := strconv.Atoi(a); perr == nil {
				hint = fmt.Sprintf("name the protocol: %s/tcp or %s/udp", a, a)
			}
			v.errorf(p, hint, "%v", err)
			continue
		}
		if first, dup := seen[rule.String()]; dup {
			v.errorf(p, "remove the repeat", "%s is listed twice (first at %s)", rule, first)
		}
		seen[rule.String()] = p
	}
	v.networks("firewall.allowed_networks", f.AllowedNetworks)
	if len(f.AllowedNetworks) > 0 && v.r.Gateway == nil {
		v.errorf("firewall.allowed_networks", "add a gateway: section, or remove allowed_networks; to open a port to everyone use allow:",
			"allowed_networks open the gateway port, and the recipe has no gateway")
	}
	if f.MetadataAccess && !f.DockerIsolationOn() {
		v.errorf("firewall.metadata_access", "remove metadata_access: without docker_isolation nothing blocks the metadata service",
			"has no effect with docker_isolation: false")
	}
}

// networks checks a list of {cidr, comment}.
func (v *validator) networks(p string, ns []Network) {
	seen := map[string]string{}
	for i, n := range ns {
		ip := indexPath(p, i)
		if n.CIDR == "" {
			v.errorf(ip+".cidr", "add cidr: 192.168.1.0/24", "is missing")
			continue
		}
		pf, err := netip.ParsePrefix(n.CIDR)
		switch {
		case err != nil:
			hint := "write an address with its prefix length, e.g. 192.168.1.0/24 or fd00::/64"
			if a, aerr := netip.ParseAddr(n.CIDR); aerr == nil {
				hint = fmt.Sprintf("for one address write %s/%d", a, a.BitLen())
			}
			v.errorf(ip+".cidr", hint, "%q is not a CIDR", n.CIDR)
			continue
		case pf.Masked() != pf:
			v.errorf(ip+".cidr", fmt.Sprintf("write %s: host bits must be zero (or %s/%d for the one address)", pf.Masked(), pf.Addr(), pf.Addr().BitLen()),
				"%s has host bits set", n.CIDR)
			continue
		case pf.Bits() == 0:
			v.errorf(ip+".cidr", "name the networks that may connect; the gateway is not meant for the whole internet",
				"%s is every address", n.CIDR)
			continue
		}
		if first, dup := seen[pf.String()]; dup {
			v.errorf(ip+".cidr", "remove the repeat", "%s is listed twice (first at %s)", pf, first)
		}
		seen[pf.String()] = ip
		if strings.ContainsAny(n.Comment, "\n\r\x00") || len(n.Comment) > 200 {
			v.errorf(ip+".comment", "write a one-line comment of at most 200 characters", "is not a one-line comment")
		}
	}
}

func (v *validator) containersSection() {
	seen := map[string]string{}
	for i := range v.r.Containers {
		c := &v.r.Containers[i]
		p := indexPath("containers", i)
		switch {
		case c.Name == "":
			v.errorf(p+".name", "add name: openclaw-gateway (lower-case letters, digits, ., _ and -)", "is missing")
		case !containerNameRe.MatchString(c.Name):
			v.errorf(p+".name", "use lower-case letters, digits, ., _ and -, starting with a letter or digit, e.g. "+sanitizeName(c.Name),
				"%q is not a valid container name", c.Name)
		default:
			if first, dup := seen[c.Name]; dup {
				v.errorf(p+".name", "give each container its own name", "container %q is declared twice (first at %s%s)", c.Name, first, v.line(first))
			}
			seen[c.Name] = p
		}
		hasImage, hasBuild := v.present(p+".image", c.Image), c.Build != nil
		if v.src != nil {
			hasBuild = v.src.has(p + ".build")
		}
		switch {
		case hasImage && hasBuild:
			v.errorf(p, "keep one: image for a pulled image, build to make one", "has both image and build")
		case !hasImage && !hasBuild:
			v.errorf(p, "add image: REGISTRY/REPO@sha256:..., or image: docker-archive:images/NAME.tar", "has neither image nor build")
		case hasImage:
			v.imageRef(p+".image", c.Image)
		}
		if c.Build != nil && hasBuild && !hasImage {
			if name, _ := c.Build.Package(); name == "" {
				v.errorf(p+".build.app", "write PACKAGE@VERSION, e.g. app: openclaw@2026.9.6", "build.app %q is not PACKAGE@VERSION", c.Build.App)
			}
			if c.Build.Lockfile == "" {
				v.errorf(p+".build", "add lockfile: the package-lock.json that pins the app's packages, beside the recipe", "build has no lockfile")
			} else {
				// Read from the build host at build time: it must be a
				// file inside the recipe's context.
				v.local(p+".build.lockfile", c.Build.Lockfile, false)
				// The compile cache list beside it (oci.CompileCacheListName)
				// is read too: not from .git or a .bakeignore'd path.
				list := filepath.Join(filepath.Dir(c.Build.Lockfile), "compile-cache.txt")
				if _, err := v.r.Resolve(c.Build.Lockfile); err != nil {
					// reported above
				} else if _, err := v.r.Resolve(list); errors.Is(err, ErrIgnored) {
					v.errorf(p+".build.lockfile", "keep the lockfile and compile-cache.txt beside it outside .git and outside what "+IgnoreFile+" lists", "%v", err)
				}
			}
		}
		v.containerUser(p+".user", c.User)
		for j, pub := range c.Publish {
			pp := indexPath(p+".publish", j)
			pb, err := ParsePublish(pub)
			if err != nil {
				v.errorf(pp, "write HOSTADDR:HOSTPORT:CONTAINERPORT, e.g. 127.0.0.1:18789:18789", "%v", err)
				continue
			}
			if !pb.Host.IsValid() && !c.AllowAllInterfaces {
				v.errorf(pp, fmt.Sprintf("write 127.0.0.1:%s to keep it on the host, or set allow_all_interfaces: true on this container", pub),
					"%q names no host address: it would listen on every interface", pub)
			}
		}
		for _, name := range c.EnvNames() {
			val := c.Env[name]
			ep := childPath(p+".env", name)
			if !envNameRe.MatchString(name) {
				v.errorf(ep, "an environment variable name is letters, digits and _, not starting with a digit", "%q is not a variable name", name)
			}
			if strings.ContainsAny(val, "\n\r\x00") {
				v.errorf(ep, "write the value on one line", "spans several lines")
			}
			// The value would sit in /etc/bake/containers/NAME.env of
			// every copy of the image. Never echo it.
			if val != "" && SecretEnvName(name) && !v.r.AllowsBakedSecrets() {
				v.errorf(ep, "remove the value: secrets come with each instance, not the image (docs/seed.md); the gateway's token, for one, comes from the seed (bake.gateway_token), which first boot writes into openclaw.json; to bake it into every instance anyway set firstboot.allow_baked_secrets: true",
					"%s looks like a secret: its value would be baked into the image (/etc/bake/containers/%s.env), shared by every instance and readable by anyone with the image", name, c.Name)
			}
		}
		targets := map[string]string{}
		for j, vol := range c.Volumes {
			vp := indexPath(p+".volumes", j)
			if !v.plainPath(vp, vol) {
				continue
			}
			vv, err := ParseVolume(vol)
			if err != nil {
				v.errorf(vp, "write HOSTPATH:CONTAINERPATH or HOSTPATH:CONTAINERPATH:ro with absolute paths, e.g. /srv/data:/data", "%v", err)
				continue
			}
			if first, dup := targets[vv.Container]; dup {
				v.errorf(vp, "mount each container path once", "%s is mounted twice (first at %s)", vv.Container, first)
			}
			targets[vv.Container] = vp
		}
		for j, arg := range c.Command {
			if strings.ContainsRune(arg, 0) {
				v.errorf(indexPath(p+".command", j), "remove the NUL byte", "is not a valid argument")
			}
		}
		if c.Restart != "" && !slices.Contains(RestartPolicies, c.Restart) {
			v.errorf(p+".restart", "write always (the default), on-failure or no", "%q is not a restart policy", c.Restart)
		}
	}
}

// imageRef checks a container image reference.
func (v *validator) imageRef(p, ref string) {
	for _, prefix := range []string{"docker-archive:", "oci-layout:"} {
		if !strings.HasPrefix(ref, prefix) {
			continue
		}
		rest := strings.TrimPrefix(ref, prefix)
		if i := strings.LastIndex(rest, "@"); i >= 0 {
			if !digestRe.MatchString(rest[i:]) {
				v.errorf(p, "a pin is @sha256: and 64 lower-case hex digits", "%q has a malformed digest", ref)
				return
			}
			rest = rest[:i]
		}
		file := rest
		if _, err := v.r.Resolve(file); err != nil {
			// FILE:TAG or DIR:TAG
			if i := strings.LastIndex(rest, ":"); i > 0 {
				if _, err2 := v.r.Resolve(rest[:i]); err2 == nil {
					file = rest[:i]
				}
			}
		}
		v.local(p, file, prefix == "oci-layout:")
		return
	}
	switch {
	case strings.ContainsAny(ref, " \t\n"):
		v.errorf(p, "write a reference such as registry.example.com/openclaw/gateway@sha256:...", "%q is not an image reference", ref)
	case !strings.Contains(ref, "@"):
		v.errorf(p, "pin the image: append @sha256:<digest> (`crane digest "+ref+"` prints it); a tag can change under the same name",
			"%q is not pinned by a digest", ref)
	case !digestRe.MatchString(ref):
		v.errorf(p, "a pin is @sha256: and 64 lower-case hex digits", "%q has a malformed digest", ref)
	}
}

// containerUser checks containers[].user.
func (v *validator) containerUser(p, user string) {
	switch {
	case user == "":
		v.errorf(p, "add user: NAME, a system user of the recipe that runs this container (or UID:GID)", "is missing: a container never runs as root")
		return
	case user == "root" || user == "0" || strings.HasPrefix(user, "0:"):
		v.errorf(p, "run the container as a system user of its own, e.g. add users: [{name: openclaw, system: true}] and write user: openclaw", "a container must not run as root")
		return
	}
	if uid, _, ok := ParseUIDGID(user); ok {
		if uid == 0 || uid > maxID {
			v.errorf(p, "write a uid from 1 to 65533", "uid %d is not allowed", uid)
		}
		return
	}
	if !accountRe.MatchString(user) {
		v.errorf(p, "write the name of a user in users:, or UID:GID", "%q is neither a user name nor UID:GID", user)
		return
	}
	if v.r.UserByName(user) == nil {
		v.errorf(p, "declare it under users:, e.g. {name: "+user+", system: true}", "user %q is not declared in users", user)
	}
}

func (v *validator) gatewaySection() {
	g := v.r.Gateway
	if g == nil {
		return
	}
	const p = "gateway"
	var c *Container
	switch {
	case g.Container == "":
		v.errorf(p+".container", "add container: NAME, the container in containers: that runs the gateway", "is missing")
	default:
		if c = v.r.ContainerByName(g.Container); c == nil {
			var names []string
			for _, x := range v.r.Containers {
				names = append(names, x.Name)
			}
			hint := "declare it under containers:"
			if s := suggest(g.Container, names); s != "" {
				hint = fmt.Sprintf("did you mean %q?", s)
			}
			v.errorf(p+".container", hint, "%q is not a container of this recipe", g.Container)
		}
	}
	v.port(p+".port", g.Port, "port: 18789")
	if g.Mode != "" && !slices.Contains(GatewayModes, g.Mode) {
		v.errorf(p+".mode", "write local (the gateway on 127.0.0.1 only) or network (reachable from allowed_networks)", "%q is not a gateway mode", g.Mode)
	}
	if g.Bind != "" && !slices.Contains(GatewayBinds, g.Bind) {
		v.errorf(p+".bind", "write loopback (127.0.0.1 only); the gateway's host address follows from mode", "%q is not a gateway bind", g.Bind)
	} else if g.Bind != "" {
		mode := g.Mode
		if mode == "" {
			mode = DefaultGatewayMode
		}
		if (mode == "local") != (g.Bind == "loopback") {
			v.errorf(p+".bind", "mode local publishes on loopback, mode network on every address (lan); change one of them or leave bind out",
				"bind %s contradicts mode %s", g.Bind, mode)
		}
	}
	tsOn := v.r.Tailscale != nil && v.r.Tailscale.Enabled
	switch {
	case g.TailscaleMode != "" && !slices.Contains(TailscaleModes, g.TailscaleMode):
		v.errorf(p+".tailscale_mode", "write serve (HTTPS on the tailnet), serve-http (plain HTTP on the tailnet, e.g. with headscale), off, or funnel (public, with allow_public_exposure: true)", "%q is not a tailscale mode", g.TailscaleMode)
	case g.TailscaleMode == "funnel" && !g.AllowPublicExposure:
		v.errorf(p+".tailscale_mode", "funnel puts the gateway on the public internet; write serve for the tailnet only, or set allow_public_exposure: true if that is really meant",
			"funnel is refused without allow_public_exposure: true")
	case g.TailscaleMode == "funnel" && tsOn && v.r.Tailscale.LoginServer != "":
		v.errorf(p+".tailscale_mode", "write serve-http (the tailnet only); funnel is Tailscale's service and other control servers (headscale) have none",
			"funnel is refused with tailscale.login_server")
	case g.TailscaleMode != "off" && g.TailscaleMode != "" && !tsOn:
		v.errorf(p+".tailscale_mode", "add tailscale: {enabled: true}, or write tailscale_mode: off", "%s needs tailscale enabled", g.TailscaleMode)
	}
	if hp := g.TailscaleHTTPPort; hp != nil {
		switch {
		case g.TailscaleMode != "serve-http":
			v.errorf(p+".tailscale_http_port", "write tailscale_mode: serve-http, or remove it", "has no effect without tailscale_mode: serve-http")
		case *hp < 1 || *hp > 65535:
			v.errorf(p+".tailscale_http_port", "write a port from 1 to 65535, e.g. 80", "%d is not a port", *hp)
		}
	}
	if g.AllowPublicExposure && g.TailscaleMode != "funnel" && g.Mode != "network" {
		v.errorf(p+".allow_public_exposure", "remove it: nothing in this gateway is public", "has no effect without tailscale_mode: funnel")
	}
	v.networks(p+".allowed_networks", g.AllowedNetworks)
	if g.Mode == "network" && len(v.r.GatewayNetworks()) == 0 {
		v.errorf(p+".mode", "add allowed_networks: [{cidr: 192.168.1.0/24, comment: home}] naming who may connect", "network mode needs allowed_networks")
	}
	if g.Mode != "network" && len(g.AllowedNetworks) > 0 {
		v.errorf(p+".allowed_networks", "write mode: network to let these networks reach the gateway, or remove them", "has no effect in mode local: the gateway listens on 127.0.0.1 only")
	}
	v.gatewaySettings(p+".settings", g.Settings)
	if g.Token != "" && !v.r.AllowsBakedSecrets() {
		v.errorf(p+".token", "remove it: give each instance its token in its seed (bake.gateway_token), or let first boot generate one; to bake it anyway set firstboot.allow_baked_secrets: true",
			"a literal token would be shared by every instance of the image")
	}
	if c == nil {
		return
	}
	want := g.GatewayPublish()
	for j, pub := range c.Publish {
		pb, err := ParsePublish(pub)
		if err == nil && pb.ContainerPort == want.ContainerPort && pb.Proto == "tcp" && pb != want {
			i := slices.IndexFunc(v.r.Containers, func(x Container) bool { return x.Name == c.Name })
			v.errorf(indexPath(indexPath("containers", i)+".publish", j),
				fmt.Sprintf("remove it: gateway.mode decides how the gateway port is published (%s)", want),
				"publishes the gateway port differently from gateway.mode %s", orText(g.Mode, DefaultGatewayMode))
		}
	}
	// The gateway's uid runs a network service and owns the token: no one
	// who logs in may share it.
	i := slices.IndexFunc(v.r.Containers, func(x Container) bool { return x.Name == c.Name })
	up := indexPath("containers", i) + ".user"
	if u := v.r.UserByName(c.User); u != nil {
		if u.IsLogin() {
			v.errorf(up, "run the gateway as a system user (system: true) that nobody logs in as", "user %q can log in, and the gateway runs as it", u.Name)
		}
		if u.UID != nil {
			for _, o := range v.r.Users {
				if o.Name != u.Name && o.UID != nil && *o.UID == *u.UID && o.IsLogin() {
					v.errorf(up, "give the gateway's user a uid of its own", "login user %q shares uid %d with the gateway", o.Name, *u.UID)
				}
			}
		}
	} else if uid, _, ok := ParseUIDGID(c.User); ok {
		for _, o := range v.r.Users {
			if o.UID != nil && *o.UID == uid && o.IsLogin() {
				v.errorf(up, "give the gateway a uid of its own", "login user %q has uid %d, which runs the gateway", o.Name, uid)
			}
		}
	}
}

func orText(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// loginServerRe: the characters a login server URL may have (it is
// written into the join script).
var loginServerRe = regexp.MustCompile(`^https://[A-Za-z0-9.\-_~:/\[\]%]+$`)

// loginServer checks a Tailscale control server URL: https, a host, no
// credentials, query or fragment.
// gatewaySettings checks gateway.settings: no key bake writes itself in
// openclaw.json's "gateway" object, which must be a mapping, and the
// token's placeholder nowhere (first boot would put the token there).
func (v *validator) gatewaySettings(p string, settings map[string]any) {
	if gw, ok := settings["gateway"]; ok {
		m, isMap := gw.(map[string]any)
		if !isMap {
			v.errorf(p+".gateway", "write gateway: {KEY: VALUE} with OpenClaw's gateway settings, or leave it out",
				"must be a mapping: bake writes openclaw.json's gateway object")
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if slices.Contains(appliance.GatewayOwnedKeys, k) {
				v.keyErrorf(p+".gateway."+k, "remove it: bake writes gateway.mode, bind, port, auth and tailscale in openclaw.json itself, from gateway.port, mode and tailscale_mode and the instance's token",
					"gateway.%s is bake's to write", k)
			}
		}
	}
	var walk func(string, any)
	walk = func(at string, x any) {
		switch y := x.(type) {
		case map[string]any:
			for _, k := range slices.Sorted(maps.Keys(y)) {
				if strings.Contains(k, appliance.TokenPlaceholder) {
					v.keyErrorf(childPath(at, k), "remove it: first boot puts the instance's token in place of "+appliance.TokenPlaceholder, "a key holds the token's placeholder")
				}
				walk(childPath(at, k), y[k])
			}
		case []any:
			for i, e := range y {
				walk(indexPath(at, i), e)
			}
		case string:
			if strings.Contains(y, appliance.TokenPlaceholder) {
				v.errorf(at, "remove it: first boot puts the instance's token in place of "+appliance.TokenPlaceholder+" in gateway.auth.token only", "holds the token's placeholder")
			}
		}
	}
	walk(p, settings)
}

func (v *validator) loginServer(path, s string) {
	const hint = "write the control server's https URL, e.g. https://headscale.example.net (headscale's server_url)"
	u, err := url.Parse(s)
	switch {
	case err != nil:
		v.errorf(path, hint, "%q is not a URL", s)
	case u.Scheme != "https":
		v.errorf(path, hint+"; Tailscale clients reach the control server's DERP relay over HTTPS only", "%q is not an https URL", s)
	case u.Host == "" || u.Hostname() == "":
		v.errorf(path, hint, "%q has no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		v.errorf(path, hint, "%q has credentials, a query or a fragment", s)
	case !loginServerRe.MatchString(s):
		v.errorf(path, hint, "%q has characters outside A-Z a-z 0-9 . - _ ~ : / [ ] %%", s)
	}
}

// ParseCABundle returns the certificates of a PEM bundle: at least one,
// every block a CA certificate.
func ParseCABundle(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("holds a %s block; only CERTIFICATE blocks belong in a CA bundle", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", len(certs)+1, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("certificate %d (%s) is not a CA certificate", len(certs)+1, c.Subject)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("holds no PEM certificate")
	}
	if len(strings.TrimSpace(string(b))) > 0 {
		return nil, fmt.Errorf("has data that is not PEM after certificate %d", len(certs))
	}
	return certs, nil
}

func (v *validator) tailscaleSection() {
	t := v.r.Tailscale
	if t == nil {
		return
	}
	if t.Operator != "" {
		if u := v.r.UserByName(t.Operator); u == nil {
			v.errorf("tailscale.operator", "name a user declared in users:, usually the admin user", "user %q is not declared in users", t.Operator)
		}
	} else if t.Enabled && (v.r.Firstboot == nil || v.r.Firstboot.AdminUser == "") {
		v.errorf("tailscale.operator", "write operator: ADMIN, or add firstboot: {admin_user: ADMIN}", "is missing")
	}
	if t.AuthKey != "" && !v.r.AllowsBakedSecrets() {
		v.errorf("tailscale.auth_key", "remove it: give each instance its key in its seed (bake.tailscale_authkey); to bake it anyway set firstboot.allow_baked_secrets: true",
			"a literal auth key would be shared by every instance of the image")
	}
	if t.LoginServer != "" {
		v.loginServer("tailscale.login_server", t.LoginServer)
	}
	if t.CA != "" {
		v.local("tailscale.ca", t.CA, false)
		if real, err := v.r.Resolve(t.CA); err == nil {
			if b, err := os.ReadFile(real); err == nil {
				if _, err := ParseCABundle(b); err != nil {
					v.errorf("tailscale.ca", "give a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)", "%s: %v", t.CA, err)
				}
			}
		}
	}
	if !t.Enabled && (t.Operator != "" || t.AuthKey != "" || t.LoginServer != "" || t.CA != "") {
		v.errorf("tailscale.enabled", "write enabled: true, or remove the tailscale section", "is false, but the section sets up Tailscale")
	}
}

func (v *validator) firstbootSection() {
	f := v.r.Firstboot
	if f == nil {
		if v.r.Gateway != nil {
			v.errorf("gateway", "add firstboot: {admin_user: admin}: first boot writes the gateway's token and config", "needs a firstboot section")
		}
		return
	}
	const p = "firstboot"
	switch {
	case f.AdminUser == "":
		v.errorf(p+".admin_user", "add admin_user: NAME, the login user whose SSH keys come from the seed", "is missing")
	case f.AdminUser == "root":
		v.errorf(p+".admin_user", "name a user of its own, e.g. admin_user: admin with users: [{name: admin, groups: [sudo], sudo: nopasswd}]; root never logs in over SSH",
			"the admin user must not be root")
	case f.AdminUser == "docker":
		v.errorf(p+".admin_user", "name the admin otherwise, e.g. admin; use sudo docker",
			"the admin user must not be docker: its primary group (a user's own group) would be docker, and the docker group is root without a password")
	default:
		u := v.r.UserByName(f.AdminUser)
		switch {
		case u == nil:
			v.errorf(p+".admin_user", "declare it under users:, e.g. {name: "+f.AdminUser+", groups: [sudo], sudo: nopasswd}", "user %q is not declared in users", f.AdminUser)
		case !u.IsLogin():
			v.errorf(p+".admin_user", "the admin logs in over SSH: make it a normal user with a shell", "user %q cannot log in", f.AdminUser)
		case slices.Contains(u.Groups, "docker"):
			i := slices.IndexFunc(v.r.Users, func(x User) bool { return x.Name == u.Name })
			j := slices.Index(u.Groups, "docker")
			v.errorf(indexPath(indexPath("users", i)+".groups", j), "remove docker: membership of the docker group is root without a password; use sudo docker",
				"the admin user must not be in the docker group")
		}
	}
	v.set(p+".seed", f.Seed, SeedSources, "seed source")
	if v.present(p+".seed", strings.Join(f.Seed, "")) && len(f.Seed) == 0 {
		v.errorf(p+".seed", "list nocloud, credentials, cloud-init, or leave seed out for [nocloud, credentials]", "is empty")
	}
}
