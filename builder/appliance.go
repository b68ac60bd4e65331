package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/internal/dpkg"
	"github.com/bakeimg/bake/internal/safepath"
	"github.com/bakeimg/bake/oci"
	"github.com/bakeimg/bake/rootfs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// addStage appends a stage to the plan.
type addStage func(name string, inputs []string, run func(context.Context, *State) error)

// BuildContainerImage makes the image of a container whose recipe has a
// build: block (package oci, issue 6). Nil until that is wired in; a
// recipe with build: then fails at the containers stage, after planning.
var BuildContainerImage func(ctx context.Context, s *State, c recipe.Container) (v1.Image, error)

// appliancePackages are the packages the recipe's appliance sections (ssh,
// firewall, containers, gateway, first boot) need in the bootstrap.
// Tailscale is not among them: it comes from a repository the recipe adds,
// which the bootstrap does not know, so the tailscale stage installs it.
func (p *Plan) appliancePackages() []string {
	r := p.Recipe
	var pk []string
	if r.SSH != nil || r.Firstboot != nil {
		pk = append(pk, "openssh-server")
	}
	if f := r.Firewall; f != nil {
		switch f.Backend {
		case appliance.BackendUFW:
			pk = append(pk, "ufw", "iptables")
		case appliance.BackendIptables:
			pk = append(pk, "iptables-persistent", "iptables")
		}
	}
	if len(r.Containers) > 0 {
		// apparmor: Debian's kernel has AppArmor on, and dockerd refuses
		// to start containers when it cannot load its docker-default
		// profile (apparmor_parser is only a Recommends of docker.io).
		pk = append(pk, "docker.io", "iptables", "apparmor")
	}
	if r.Firstboot.HasSeed("cloud-init") {
		pk = append(pk, "cloud-init")
	}
	return pk
}

// addApplianceStages appends the stages of the appliance sections; they run
// after files and before units, so units they install can be enabled.
func (p *Plan) addApplianceStages(add addStage) {
	r := p.Recipe
	if r.SSH != nil {
		add("ssh", p.sshInputs(), p.stageSSH)
	}
	if r.Firewall != nil {
		add("firewall", p.firewallInputs(), p.stageFirewall)
	}
	if len(r.Containers) > 0 {
		add("containers", p.containerInputs(), p.stageContainers)
	}
	if r.Gateway != nil {
		add("gateway", p.gatewayInputs(), p.stageGateway)
	}
	if t := r.Tailscale; t != nil && t.Enabled {
		add("tailscale", p.tailscaleInputs(), p.stageTailscale)
	}
	if r.Firstboot != nil {
		add("firstboot", p.firstbootInputs(), p.stageFirstboot)
	}
	if r.State != nil {
		add("state", p.stateInputs(), p.stageState)
	}
	if r.SSH != nil || r.Firewall != nil || len(r.Containers) > 0 || r.Firstboot != nil {
		in := []string{"journald: " + appliance.JournaldDropIn + " (SystemMaxUse=200M)"}
		if len(r.Containers) > 0 {
			in = append(in, "docker: "+appliance.DaemonJSON+" (json-file logs max-size 10m, max-file 3; userland-proxy false)")
		}
		add("log limits", in, p.stageLogLimits)
	}
	if r.AllowsBakedSecrets() && (r.Gateway != nil && r.Gateway.Token != "" || r.Tailscale != nil && r.Tailscale.AuthKey != "" || slices.ContainsFunc(r.Containers, func(c recipe.Container) bool { return len(c.SecretEnv()) > 0 })) {
		p.Notes = append(p.Notes, "warning: the recipe bakes secrets (allow_baked_secrets): every instance of this image shares them, and anyone with the image can read them")
	}
}

// --- ssh ---

func (p *Plan) sshOptions() appliance.SSHOptions {
	r := p.Recipe
	o := appliance.SSHOptions{Port: *r.SSH.Port, CloudInit: r.Firstboot.HasSeed("cloud-init"), CloudInitNetwork: r.Base.Image != nil, CloudInitModules: r.Base.Image == nil}
	if fb := r.Firstboot; fb != nil {
		o.AdminUser = fb.AdminUser
		if u := r.UserByName(fb.AdminUser); u != nil {
			o.AdminGroups = u.Groups
		}
	}
	return o
}

func (p *Plan) sshInputs() []string {
	o := p.sshOptions()
	in := []string{
		fmt.Sprintf("%s (sorts first): PasswordAuthentication no, KbdInteractiveAuthentication no, PermitRootLogin no, AuthenticationMethods publickey, Port %d", appliance.SSHDropIn, o.Port),
		"host keys: none in the image; " + appliance.HostKeysUnitName + " makes them before sshd at every boot, independent of first boot",
		"check: the tree's sshd -T (any connection, root, the admin) must show those values",
	}
	if o.CloudInit {
		in = append(in, appliance.CloudInitSSH+": ssh_pwauth false, disable_root, default user "+o.AdminUser+", datasources "+strings.Join(appliance.DefaultDatasources, ",")+" (Ec2 only where DMI names its cloud: strict_id)",
			appliance.CloudInitSSHDConfig+": PasswordAuthentication no, as cloud-init writes it for ssh_pwauth false (first boot does not restart sshd)")
		if p.Recipe.Base.Image != nil {
			in = append(in, "cloud image base: cloud-init keeps configuring the image's own network stack; "+appliance.DSIdentifyConfig+": notfound=enabled (no datasource, e.g. SMBIOS credentials only: cloud-init still runs and sets up DHCP)")
		} else {
			in = append(in, "cloud-init modules: only the appliance's (no package installs or apt sources from user-data, no grub-dpkg, no locale)")
		}
	}
	return in
}

func (p *Plan) stageSSH(ctx context.Context, s *State) error {
	o := p.sshOptions()
	if err := writeFiles(s.Tree, appliance.SSHFiles(o)); err != nil {
		return err
	}
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		if err := rootfs.Systemd(ctx, ch, []string{"ssh.service", appliance.HostKeysUnitName}, nil, nil); err != nil {
			return err
		}
		// The matrix bake verify runs in the guest (ssh.effective-config),
		// here in the tree: the recipe's settings must hold for every
		// kind of client and for each Match block of the configuration.
		ctxs, matches, err := sshMatrix(s.Tree, o)
		if err != nil {
			return err
		}
		out, err := ch.Output(ctx, "/bin/sh", "-c", appliance.SSHDTreeMatrixScript(ctxs))
		if err != nil {
			return fmt.Errorf("sshd -T in the tree: %w\n%s", err, out)
		}
		if problems := appliance.JudgeSSHDMatrix(string(out), len(ctxs), o.Port); len(problems) > 0 {
			return fmt.Errorf("effective sshd configuration in the tree differs from the recipe's: %s", strings.Join(problems, "; "))
		}
		fmt.Fprintf(s.Log, "effective sshd configuration checked in %d connection contexts (%d Match blocks)\n", len(ctxs), matches)
		return nil
	})
}

// sshMatrix is the connection contexts of the tree's sshd configuration
// (appliance.SSHContexts): its files read inside the tree, never through a
// symlink out of it; the client addresses stand for a link 10.0.2.2 ->
// 10.0.2.15 (any address not named by a Match block behaves alike).
func sshMatrix(tree string, o appliance.SSHOptions) ([]string, int, error) {
	r, err := safepath.Open(tree)
	if err != nil {
		return nil, 0, err
	}
	defer r.Close()
	var config strings.Builder
	if b, err := r.ReadFile("/etc/ssh/sshd_config"); err == nil {
		config.Write(b)
		config.WriteByte('\n')
	}
	if ents, err := r.ReadDir("/etc/ssh/sshd_config.d"); err == nil {
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".conf") || !e.Type().IsRegular() {
				continue
			}
			b, err := r.ReadFile("/etc/ssh/sshd_config.d/" + e.Name())
			if err != nil {
				return nil, 0, err
			}
			config.Write(b)
			config.WriteByte('\n')
		}
	}
	groups, err := rootfs.ReadGroup(tree)
	if err != nil {
		return nil, 0, err
	}
	member := func(g string) string {
		for _, e := range groups {
			if e.Name == g && len(e.Members) > 0 {
				return e.Members[0]
			}
		}
		return ""
	}
	matches := appliance.ParseSSHDMatch(config.String())
	admin := o.AdminUser
	if admin == "" {
		admin = "nobody"
	}
	port := o.Port
	if port == 0 {
		port = 22
	}
	return appliance.SSHContexts(admin, port, appliance.SSHFroms("10.0.2.2", "10.0.2.15"), matches, member), len(matches), nil
}

// --- firewall ---

// allows are layer 1's allow rules: the recipe's, the SSH port (always:
// an instance must never lock its admin out), and the gateway port from
// the allowed networks.
func (p *Plan) allows() []appliance.Allow {
	r := p.Recipe
	var out []appliance.Allow
	seen := map[string]bool{}
	addPort := func(rule recipe.PortRule) {
		if !seen[rule.String()] {
			seen[rule.String()] = true
			out = append(out, appliance.Allow{Proto: rule.Proto, Ports: rule.Ports()})
		}
	}
	if r.SSH != nil || r.Firstboot != nil {
		// An appliance with first boot and no ssh section still runs
		// sshd on the default port (the admin logs in).
		port := recipe.DefaultSSHPort
		if r.SSH != nil {
			port = *r.SSH.Port
		}
		addPort(recipe.PortRule{Low: port, High: port, Proto: "tcp"})
	}
	for _, rule := range r.Firewall.Rules {
		addPort(rule)
	}
	if g := r.Gateway; g != nil {
		port := g.GatewayPublish().HostPort
		for _, n := range r.GatewayNetworks() {
			out = append(out, appliance.Allow{Proto: "tcp", Ports: fmt.Sprint(port), Source: n.Prefix, Comment: n.Comment})
		}
	}
	return out
}

func (p *Plan) isolation() (appliance.IsolationOptions, bool) {
	r := p.Recipe
	if !r.Firewall.DockerIsolationOn() || len(r.Containers) == 0 {
		return appliance.IsolationOptions{}, false
	}
	o := appliance.IsolationOptions{MetadataAccess: r.Firewall.MetadataAccess}
	switch r.Firewall.Backend {
	case appliance.BackendUFW:
		o.After = []string{"ufw.service"}
	case appliance.BackendIptables:
		o.After = []string{"netfilter-persistent.service"}
	}
	if g := r.Gateway; g != nil && g.Mode == "network" {
		port := g.GatewayPublish().HostPort
		for _, n := range r.GatewayNetworks() {
			o.Exceptions = append(o.Exceptions, appliance.Exception{Source: n.Prefix, Port: port, Comment: n.Comment})
		}
	}
	return o, true
}

func (p *Plan) firewallInputs() []string {
	var allows, from []string
	for _, a := range p.allows() {
		if a.Source.IsValid() {
			s := fmt.Sprintf("%s/%s from %s", a.Ports, a.Proto, a.Source)
			if a.Comment != "" {
				s += " (" + a.Comment + ")"
			}
			from = append(from, s)
		} else {
			allows = append(allows, a.Ports+"/"+a.Proto)
		}
	}
	in := []string{
		"backend " + p.Recipe.Firewall.Backend + ": incoming deny, outgoing allow, routed deny; IPv4 and IPv6; active at first boot",
		"allow: " + list(allows),
	}
	if len(from) > 0 {
		in = append(in, "allow: "+strings.Join(from, ", "))
	}
	if o, ok := p.isolation(); ok {
		var blocked, dns []string
		for _, m := range slices.Concat(appliance.MetadataV4, appliance.MetadataV6) {
			blocked = append(blocked, m.String())
		}
		for _, a := range appliance.MetadataDNS {
			dns = append(dns, a.String())
		}
		meta := "containers cannot reach the cloud metadata endpoints (" + strings.Join(blocked, ", ") + ") except DNS (53/udp, 53/tcp) to " + strings.Join(dns, ", ")
		if o.MetadataAccess {
			meta = "containers may reach the metadata service"
		}
		in = append(in, "DOCKER-USER ("+appliance.DockerUserUnitName+", IPv4+IPv6, any NIC name): replies accepted, container traffic to Docker's rules, "+meta+", everything else dropped")
		for _, e := range o.Exceptions {
			in = append(in, fmt.Sprintf("DOCKER-USER exception: %s to original port %d/tcp", e.Source, e.Port))
		}
		in = append(in, "raw PREROUTING: packets to 127.0.0.0/8 and ::1 from any interface but lo dropped (moby#45610, userland-proxy off)")
	} else if len(p.Recipe.Containers) > 0 {
		in = append(in, "DOCKER-USER: not managed (docker_isolation: false): published ports are reachable from outside")
	}
	return in
}

func (p *Plan) stageFirewall(ctx context.Context, s *State) error {
	var files []appliance.File
	var enable []string
	switch p.Recipe.Firewall.Backend {
	case appliance.BackendUFW:
		root, err := safeRead(s.Tree, appliance.UFWDefaults)
		if err != nil {
			return fmt.Errorf("%s (from the ufw package): %w", appliance.UFWDefaults, err)
		}
		files = appliance.UFWFiles(p.allows(), root)
		enable = append(enable, "ufw.service")
	case appliance.BackendIptables:
		files = appliance.IptablesFiles(p.allows())
		enable = append(enable, "netfilter-persistent.service")
	}
	if o, ok := p.isolation(); ok {
		files = append(files, appliance.IsolationFiles(o)...)
		enable = append(enable, appliance.DockerUserUnitName)
	}
	if err := writeFiles(s.Tree, files); err != nil {
		return err
	}
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.Systemd(ctx, ch, enable, nil, nil)
	})
}

// --- containers ---

// containerSpec is what a container runs with, before its image is
// resolved (ImageID, Digest) and its user looked up (UID, GID).
func (p *Plan) containerSpec(c recipe.Container) appliance.ContainerSpec {
	r := p.Recipe
	spec := appliance.ContainerSpec{
		Name: c.Name, Ref: c.Image, Env: c.Env, Command: c.Command, Restart: c.Restart,
	}
	if c.Image == "" {
		spec.Ref = "build"
	}
	for _, pb := range c.Ports {
		spec.Publish = append(spec.Publish, pb.String())
	}
	for _, v := range c.Mounts {
		spec.Volumes = append(spec.Volumes, v.String())
	}
	if _, ok := p.isolation(); ok {
		spec.Requires = append(spec.Requires, appliance.DockerUserUnitName)
	}
	if g := r.Gateway; g != nil && g.Container == c.Name {
		gw := p.gatewayOptions()
		pub := g.GatewayPublish().String()
		if !slices.Contains(spec.Publish, pub) {
			spec.Publish = append(spec.Publish, pub)
		}
		if !slices.ContainsFunc(c.Mounts, func(v recipe.Volume) bool { return v.Container == appliance.GatewayContainerStateDir }) {
			spec.Volumes = append(spec.Volumes, gw.Volume())
		}
		if r.Firstboot != nil {
			spec.After = append(spec.After, firstboot.UnitName)
		}
	}
	return spec
}

func (p *Plan) containerInputs() []string {
	var in []string
	for _, c := range p.Recipe.Containers {
		spec := p.containerSpec(c)
		src := c.Image + " (resolved and pinned by digest at build)"
		if c.Image == "" {
			src = "built by bake (build:)"
		}
		src += ", " + dockerStoreNote
		in = append(in, fmt.Sprintf("%s: %s", c.Name, src))
		in = append(in, fmt.Sprintf("%s: %s: docker run --user %s --security-opt no-new-privileges --cap-drop ALL, publish %s, volumes %s, restart %s",
			c.Name, appliance.ContainerUnitName(c.Name), c.User, list(spec.Publish), list(spec.Volumes), c.Restart))
		if len(c.Env) > 0 {
			in = append(in, fmt.Sprintf("%s: env (%s, 0600, in the image): %s", c.Name, appliance.ContainerEnvFile(c.Name), strings.Join(envShown(c), " ")))
		}
	}
	if len(in) > 0 {
		in = append(in, "/tmp: a tmpfs ("+appliance.TmpMount+", enabled): what docker exec writes there (each exec's command line and environment) never reaches a disk")
	}
	return in
}

// envShown is a container's environment as the plan shows it: NAME=VALUE,
// with the value of a variable whose name looks like a secret redacted
// (only allow_baked_secrets lets such a value into a recipe; the plan is
// printed in CI logs).
func envShown(c recipe.Container) []string {
	var out []string
	for _, n := range c.EnvNames() {
		if v := c.Env[n]; v != "" && recipe.SecretEnvName(n) {
			out = append(out, n+"=(redacted)")
		} else {
			out = append(out, n+"="+strconv.Quote(v))
		}
	}
	return out
}

// containerUser resolves a container's user to ids in the tree and
// refuses a uid that a login account of the image has.
func containerUser(tree, user string) (uid, gid int, err error) {
	if u, g, ok := recipe.ParseUIDGID(user); ok {
		uid, gid = u, g
	} else if uid, gid, err = rootfs.LookupOwner(tree, user); err != nil {
		return 0, 0, err
	}
	if uid == 0 {
		return 0, 0, errors.New("runs as root")
	}
	pw, err := rootfs.ReadPasswd(tree)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range pw {
		if e.UID == uid && canLogin(e.Shell) && e.Name != user {
			return 0, 0, fmt.Errorf("uid %d is also login user %s's", uid, e.Name)
		}
		if e.UID == uid && e.Name == user && canLogin(e.Shell) {
			return 0, 0, fmt.Errorf("user %s has a login shell (%s)", user, e.Shell)
		}
	}
	return uid, gid, nil
}

func canLogin(shell string) bool {
	switch filepath.Base(shell) {
	case "nologin", "false", "sync", "":
		return false
	}
	return true
}

func (p *Plan) stageContainers(ctx context.Context, s *State) error {
	var specs []appliance.ContainerSpec
	var versions []map[string]string
	imgDir := filepath.Join(s.WorkDir, "images")
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(imgDir)
	var archives, ids []string
	for _, c := range p.Recipe.Containers {
		spec := p.containerSpec(c)
		var err error
		if spec.UID, spec.GID, err = containerUser(s.Tree, c.User); err != nil {
			return fmt.Errorf("container %s: user %s: %w", c.Name, c.User, err)
		}
		img, digest, err := p.containerImage(ctx, s, c)
		if err != nil {
			return fmt.Errorf("container %s: %w", c.Name, err)
		}
		id, err := img.ConfigName()
		if err != nil {
			return fmt.Errorf("container %s: image config: %w", c.Name, err)
		}
		spec.ImageID, spec.Digest = id.String(), digest
		versions = append(versions, bakeLabels(img))
		tmp := filepath.Join(imgDir, c.Name+".tar")
		fmt.Fprintf(s.Opts.Stdout, "      %s: %s (image %s)\n", c.Name, digest, spec.ImageID)
		if err := oci.WriteDockerArchive(img, "bake/"+c.Name+":pinned", tmp); err != nil {
			return fmt.Errorf("container %s: %w", c.Name, err)
		}
		archives, ids = append(archives, tmp), append(ids, spec.ImageID)
		specs = append(specs, spec)
	}
	if len(archives) > 0 {
		t0 := time.Now()
		if err := preloadDockerImages(ctx, s, imgDir, archives, ids); err != nil {
			return err
		}
		fmt.Fprintf(s.Opts.Stdout, "      loaded into Docker's store in %s\n", time.Since(t0).Round(100*time.Millisecond))
	}
	if err := writeFiles(s.Tree, appliance.ContainerFiles(specs)); err != nil {
		return err
	}
	var recs []appliance.ContainerRecord
	enable := []string{"docker.service", appliance.TmpMountName}
	for i, sp := range specs {
		rec := sp.Record()
		rec.Versions = versions[i]
		recs = append(recs, rec)
		enable = append(enable, appliance.ContainerUnitName(sp.Name))
	}
	s.Containers = recs
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.Systemd(ctx, ch, enable, nil, nil)
	})
}

// bakeLabels are the image's labels under oci.LabelPrefix (what an image
// bake built says it holds), without the prefix; nil for other images.
func bakeLabels(img v1.Image) map[string]string {
	cf, err := img.ConfigFile()
	if err != nil || cf == nil {
		return nil
	}
	var out map[string]string
	for k, v := range cf.Config.Labels {
		if rest, ok := strings.CutPrefix(k, oci.LabelPrefix); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[rest] = v
		}
	}
	return out
}

// containerImage resolves (or builds) a container's image. Local
// references (docker-archive:, oci-layout:) are relative to the recipe.
func (p *Plan) containerImage(ctx context.Context, s *State, c recipe.Container) (v1.Image, string, error) {
	if c.Image == "" {
		if BuildContainerImage == nil {
			return nil, "", errors.New("build: is not supported by this bake yet (issue 6); write image: REF@sha256:... instead")
		}
		img, err := BuildContainerImage(ctx, s, c)
		if err != nil {
			return nil, "", err
		}
		d, err := img.Digest()
		return img, d.String(), err
	}
	ref := c.Image
	for _, prefix := range []string{oci.DockerArchivePrefix, oci.OCILayoutPrefix} {
		if rest, ok := strings.CutPrefix(ref, prefix); ok {
			pin := ""
			if i := strings.LastIndex(rest, "@"); i >= 0 {
				rest, pin = rest[:i], rest[i:]
			}
			file, tag := rest, ""
			if _, err := p.Recipe.Resolve(file); err != nil {
				if i := strings.LastIndex(rest, ":"); i > 0 {
					file, tag = rest[:i], rest[i:]
				}
			}
			abs, err := p.Recipe.Resolve(file)
			if err != nil {
				return nil, "", err
			}
			ref = prefix + abs + tag + pin
		}
	}
	return oci.Resolve(ctx, ref)
}

// --- gateway ---

// gatewayOptions are the gateway's files as the recipe resolved them
// (recipe.Gateway.StateDir, Owner; verify expects the same).
func (p *Plan) gatewayOptions() appliance.GatewayOptions {
	g := p.Recipe.Gateway
	return appliance.GatewayOptions{Port: g.GatewayPublish().HostPort, StateDir: g.StateDir, Owner: g.Owner, Settings: g.Settings}
}

func (p *Plan) gatewayInputs() []string {
	r := p.Recipe
	g := r.Gateway
	o := p.gatewayOptions()
	pub := g.GatewayPublish()
	in := []string{
		fmt.Sprintf("mode %s, bind %s: container %s publishes %s", g.Mode, g.Bind, g.Container, pub),
	}
	if g.Mode == "network" {
		var ns []string
		for _, n := range r.GatewayNetworks() {
			ns = append(ns, n.CIDR)
		}
		in = append(in, fmt.Sprintf("DOCKER-USER: accept %s to original port %d, drop the rest", strings.Join(ns, ", "), pub.HostPort))
	} else {
		in = append(in, "DOCKER-USER: no exception (the port is on 127.0.0.1 only)")
	}
	in = append(in,
		fmt.Sprintf("%s (first boot, 0600, owner %s): gateway.mode local, gateway.bind lan, gateway.port %d, gateway.auth.mode token, gateway.auth.token from the seed or 64 random characters, gateway.tailscale.mode off", o.ConfigPath(), o.Owner, o.Port),
		fmt.Sprintf("state dir %s (0700 %s) mounted at %s", o.StateDir, o.Owner, appliance.GatewayContainerStateDir),
	)
	if len(o.Settings) > 0 {
		b, _ := json.Marshal(o.Settings)
		in = append(in, fmt.Sprintf("openclaw.json settings (gateway.settings, the image's: rendered again on an old instance's volume): %s", b))
	}
	switch g.TailscaleMode {
	case "serve":
		in = append(in, fmt.Sprintf("tailscale serve --bg http://127.0.0.1:%d (HTTPS on the tailnet, from the host)", pub.HostPort))
	case "serve-http":
		in = append(in, fmt.Sprintf("tailscale serve --bg --http=%d http://127.0.0.1:%d (plain HTTP on the tailnet only, from the host)", *g.TailscaleHTTPPort, pub.HostPort))
	case "funnel":
		in = append(in, fmt.Sprintf("tailscale funnel --bg http://127.0.0.1:%d (PUBLIC: allow_public_exposure)", pub.HostPort))
	}
	return in
}

func (p *Plan) stageGateway(ctx context.Context, s *State) error {
	return writeFiles(s.Tree, appliance.GatewayFiles(p.gatewayOptions()))
}

// --- tailscale ---

func (p *Plan) tailscaleOptions() appliance.TailscaleOptions {
	r := p.Recipe
	o := appliance.TailscaleOptions{Operator: r.Tailscale.Operator, Mode: "off", LoginServer: r.Tailscale.LoginServer}
	if g := r.Gateway; g != nil {
		o.Mode = g.TailscaleMode
		o.GatewayPort = g.GatewayPublish().HostPort
		if g.TailscaleHTTPPort != nil {
			o.HTTPPort = *g.TailscaleHTTPPort
		}
	}
	return o
}

// tailscaleCA reads tailscale.ca (validation has parsed it already).
func (p *Plan) tailscaleCA() ([]byte, error) {
	t := p.Recipe.Tailscale
	if t == nil || t.CA == "" {
		return nil, nil
	}
	src, err := p.Recipe.Resolve(t.CA)
	if err != nil {
		return nil, fmt.Errorf("tailscale.ca: %w", err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("tailscale.ca: %w", err)
	}
	if _, err := recipe.ParseCABundle(b); err != nil {
		return nil, fmt.Errorf("tailscale.ca: %s: %w", t.CA, err)
	}
	return b, nil
}

func (p *Plan) tailscaleInputs() []string {
	o := p.tailscaleOptions()
	in := []string{
		"package tailscale (from the recipe's apt repositories), tailscaled.service enabled, 41641/udp",
		appliance.TailscaleUpUnitName + " (after network-online, only with an auth key in the seed): tailscale up, set --operator=" + o.Operator,
	}
	if o.LoginServer != "" {
		in = append(in, "tailscale up --login-server="+o.LoginServer)
	}
	if t := p.Recipe.Tailscale; t.CA != "" {
		in = append(in, fmt.Sprintf("CA %s (from %s) trusted by tailscaled besides the system's: %s sets SSL_CERT_DIR=%s",
			appliance.TailscaleCAFile, t.CA, appliance.TailscaledCADropIn, appliance.TailscaleCertDirs))
	}
	switch o.Mode {
	case "serve", "funnel":
		in = append(in, fmt.Sprintf("tailscale %s --bg http://127.0.0.1:%d", o.Mode, o.GatewayPort))
	case "serve-http":
		in = append(in, fmt.Sprintf("tailscale serve --bg --http=%d http://127.0.0.1:%d", o.HTTPPort, o.GatewayPort))
	}
	return in
}

func (p *Plan) stageTailscale(ctx context.Context, s *State) error {
	r := p.Recipe
	o := p.tailscaleOptions()
	ca, err := p.tailscaleCA()
	if err != nil {
		return err
	}
	o.CA = ca
	if err := writeFiles(s.Tree, appliance.TailscaleFiles(o)); err != nil {
		return err
	}
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		pkgs, err := dpkg.InstalledPackages(s.Tree)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(pkgs, func(pk dpkg.Package) bool { return pk.Name == "tailscale" }) {
			cache := ""
			if s.Opts.CacheDir != "" {
				suite := "image" // a cloud-image base, as stagePackages names it
				if r.Base.Debian != nil {
					suite = r.Base.Debian.Suite
				}
				cache = filepath.Join(s.Opts.CacheDir, "apt", suite)
			}
			if err := rootfs.InstallPackages(ctx, ch, []string{"tailscale"}, cache); err != nil {
				return fmt.Errorf("tailscale: %w (is Tailscale's repository in apt.repositories?)", err)
			}
		}
		return rootfs.Systemd(ctx, ch, []string{"tailscaled.service", appliance.TailscaleUpUnitName}, nil, nil)
	})
}

// --- first boot ---

func (p *Plan) firstbootOptions() firstboot.Options {
	r := p.Recipe
	fb := r.Firstboot
	o := firstboot.Options{AdminUser: fb.AdminUser, Seeds: fb.Seed}
	if g := r.Gateway; g != nil {
		gw := p.gatewayOptions()
		o.GatewayConfig = gw.ConfigPath()
		o.GatewayOwner = gw.Owner
		o.GatewayUnit = appliance.ContainerUnitName(g.Container)
	}
	o.Tailscale = r.Tailscale != nil && r.Tailscale.Enabled
	return o
}

func (p *Plan) firstbootInputs() []string {
	o := p.firstbootOptions()
	in := []string{
		firstboot.UnitName + ": once per instance (machine-id), before ssh, ssh.socket" + map[bool]string{true: ", " + o.GatewayUnit, false: ""}[o.GatewayUnit != ""],
		"seed sources (first wins): " + strings.Join(o.Seeds, ", ") + " (docs/seed.md: " + strings.Join(firstboot.SeedNames, ", ") + ")",
		"admin " + o.AdminUser + ": authorized_keys from the seed",
	}
	if o.GatewayConfig != "" {
		in = append(in, "gateway token: from the seed or 64 random [A-Za-z0-9] -> "+o.GatewayConfig)
	}
	if o.Tailscale {
		in = append(in, "tailscale auth key from the seed -> "+appliance.TailscaleAuthKeyFile+" (used once by "+appliance.TailscaleUpUnitName+")")
	}
	if baked := p.bakedSecrets(); len(baked) > 0 {
		var names []string
		for n := range baked {
			names = append(names, n)
		}
		slices.Sort(names)
		in = append(in, "BAKED SECRETS (shared by every instance): "+strings.Join(names, ", "))
	}
	return in
}

func (p *Plan) bakedSecrets() map[string]string {
	r := p.Recipe
	v := map[string]string{}
	if r.Firstboot == nil || !r.Firstboot.AllowBakedSecrets {
		return v
	}
	if r.Gateway != nil && r.Gateway.Token != "" {
		v[firstboot.GatewayToken] = r.Gateway.Token
	}
	if r.Tailscale != nil && r.Tailscale.AuthKey != "" {
		v[firstboot.TailscaleAuthKey] = r.Tailscale.AuthKey
	}
	return v
}

func (p *Plan) stageFirstboot(ctx context.Context, s *State) error {
	files := append(firstboot.Files(p.firstbootOptions()), firstboot.BakedSeedFiles(p.bakedSecrets())...)
	if err := writeFiles(s.Tree, files); err != nil {
		return err
	}
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.Systemd(ctx, ch, firstboot.Units(), nil, nil)
	})
}

// --- state volume ---

func (p *Plan) stateOptions() firstboot.StateOptions {
	r := p.Recipe
	st := r.State
	o := firstboot.StateOptions{Label: st.Label(), Serial: st.Volume.Serial, Paths: st.Paths,
		ImageName: r.Name, ImageVersion: "bake " + Version, ImageDigest: "recipe sha256:" + r.Digest}
	if pt := st.Partition; pt != nil {
		o.PartitionSize = pt.SizeBytes
	}
	if len(r.Containers) > 0 {
		o.Guarded = append(o.Guarded, "docker.service")
	}
	if t := r.Tailscale; t != nil && t.Enabled {
		o.Guarded = append(o.Guarded, "tailscaled.service")
	}
	if g := r.Gateway; g != nil {
		u := appliance.ContainerUnitName(g.Container)
		o.Guarded = append(o.Guarded, u)
		o.Before = append(o.Before, u)
	}
	return o
}

func (p *Plan) stateInputs() []string {
	o := p.stateOptions()
	find := "the file system labelled " + o.Label + " (never formatted: a label alone cannot tell a blank disk)"
	if o.Serial != "" {
		find = "/dev/disk/by-id/virtio-" + o.Serial + ", formatted ext4 (label " + o.Label + ") only when blank (no partition table, no signature)"
	}
	vol := "volume: " + find + "; missing: the instance runs from the root disk, said on the console"
	var in []string
	if o.PartitionSize > 0 {
		in = append(in, fmt.Sprintf("%s: every boot, before %s: a partition of the root disk named %s of %d MiB, made at first boot at the disk's end (free space after the last partition only; no room: refused, the services that keep state do not start), ext4 labelled %s; `bake upgrade DISK NEW` keeps it",
			firstboot.StatePartitionUnitName, firstboot.GrowrootUnitName, o.Label, o.PartitionSize>>20, o.Label))
		vol = "partition: the file system labelled " + o.Label + "; missing: refused, the services that keep state do not start"
	}
	in = append(in,
		firstboot.StateUnitName+": every boot, before sysinit.target, "+strings.Join(append(append([]string{}, firstboot.StateBefore[1:]...), o.Before...), ", "),
		vol,
		"paths (copied on first use, then bound over the root disk's): "+strings.Join(o.Paths, " "),
		fmt.Sprintf("state format %d; the volume records the image that last wrote it; a newer format is refused", firstboot.StateFormat),
	)
	tree := "docker.service, tailscaled.service and bake-container-*.service the image has"
	if len(o.Guarded) > 0 {
		tree = strings.Join(o.Guarded, ", ") + " (and any other " + tree + ")"
	}
	in = append(in, "not started without their state: "+tree)
	return in
}

func (p *Plan) stageState(ctx context.Context, s *State) error {
	o, err := treeStateGuards(s.Tree, p.stateOptions())
	if err != nil {
		return err
	}
	if err := writeFiles(s.Tree, firstboot.StateFiles(o)); err != nil {
		return err
	}
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.Systemd(ctx, ch, firstboot.StateUnits(o), nil, nil)
	})
}

// stateServiceUnits are the units that keep instance state and must not
// start without it, whoever installed them.
var stateServiceUnits = []string{"docker.service", "tailscaled.service"}

// treeStateGuards adds to o the state-keeping units the tree already has:
// a recipe built on an image that holds Docker, tailscaled or bake's
// container units (a re-bake of an appliance) has no section naming them,
// yet they must not start on a volume bake-state refused (a newer format, a
// foreign disk), nor before the binds. Unit files are looked for where
// systemd loads them; the tree is read through safepath.
func treeStateGuards(tree string, o firstboot.StateOptions) (firstboot.StateOptions, error) {
	r, err := openTree(tree)
	if err != nil {
		return o, err
	}
	defer r.Close()
	dirs := []string{appliance.UnitDir, "/usr/lib/systemd/system", "/lib/systemd/system"}
	has := func(unit string) (bool, error) {
		for _, d := range dirs {
			ok, err := r.Exists(d + "/" + unit)
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	}
	add := func(list []string, u string) []string {
		if slices.Contains(list, u) {
			return list
		}
		return append(list, u)
	}
	for _, u := range stateServiceUnits {
		ok, err := has(u)
		if err != nil {
			return o, err
		}
		if ok {
			o.Guarded = add(o.Guarded, u)
		}
	}
	if r.IsDir(appliance.UnitDir) {
		ents, err := r.ReadDir(appliance.UnitDir)
		if err != nil {
			return o, err
		}
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, "bake-container-") && strings.HasSuffix(n, ".service") && e.Type().IsRegular() {
				o.Guarded = add(o.Guarded, n)
				o.Before = add(o.Before, n)
			}
		}
	}
	return o, nil
}

// --- logs ---

func (p *Plan) stageLogLimits(ctx context.Context, s *State) error {
	return writeFiles(s.Tree, appliance.LogLimitFiles(len(p.Recipe.Containers) > 0))
}

// --- helpers ---

func writeFiles(tree string, files []appliance.File) error {
	return appliance.Write(tree, files, func(owner string) (int, int, error) {
		return rootfs.LookupOwner(tree, owner)
	})
}

func safeRead(tree, name string) (string, error) {
	r, err := openTree(tree)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := r.ReadFile(name)
	return string(b), err
}

func openTree(tree string) (*safepath.Root, error) { return safepath.Open(tree) }
