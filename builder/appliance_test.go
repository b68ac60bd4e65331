package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/oci"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

const applianceRecipe = `apiVersion: bake/v1
name: gw
base: {debian: {suite: bookworm}}
users:
  - {name: admin, groups: [sudo], sudo: nopasswd}
  - {name: openclaw, system: true, home: /home/openclaw}
ssh: {port: 2222}
firewall:
  allow: [41641/udp]
  allowed_networks: [{cidr: 192.168.1.0/24, comment: home}]
containers:
  - name: openclaw-gateway
    image: "127.0.0.1:5000/gw@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    user: openclaw
gateway:
  container: openclaw-gateway
  mode: MODE
  allowed_networks: NETS
firstboot:
  admin_user: admin
  seed: [nocloud, cloud-init]
`

func compileAppliance(t *testing.T, mode, nets string) *Plan {
	t.Helper()
	src := strings.NewReplacer("MODE", mode, "NETS", nets).Replace(applianceRecipe)
	r, err := recipe.Parse("gw.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCompileAppliance(t *testing.T) {
	p := compileAppliance(t, "local", "[]")
	var names []string
	for _, s := range p.Stages {
		names = append(names, s.Name)
	}
	want := []string{"bootstrap", "system", "users", "ssh", "firewall", "containers", "gateway", "firstboot", "log limits", "sysprep", "assemble", "outputs"}
	if !slices.Equal(names, want) {
		t.Errorf("stages %v, want %v", names, want)
	}
	for _, pk := range []string{"openssh-server", "ufw", "iptables", "docker.io", "cloud-init"} {
		if !slices.Contains(p.bootstrapPackages, pk) {
			t.Errorf("bootstrap lacks %s: %v", pk, p.bootstrapPackages)
		}
	}
	// Layer 1: the SSH port is always allowed, even when firewall.allow
	// forgets it; the gateway port only from the allowed networks.
	var allows []string
	for _, a := range p.allows() {
		allows = append(allows, a.Ports+"/"+a.Proto+" "+a.Source.String())
	}
	if !slices.Equal(allows, []string{"2222/tcp invalid Prefix", "41641/udp invalid Prefix", "18789/tcp 192.168.1.0/24"}) {
		t.Errorf("allows %q", allows)
	}
	// Local mode: 127.0.0.1 only, no DOCKER-USER exception.
	o, ok := p.isolation()
	if !ok || len(o.Exceptions) != 0 || o.After[0] != "ufw.service" {
		t.Errorf("isolation %+v %v", o, ok)
	}
	spec := p.containerSpec(p.Recipe.Containers[0])
	if !slices.Equal(spec.Publish, []string{"127.0.0.1:18789:18789"}) ||
		!slices.Equal(spec.Volumes, []string{"/home/openclaw/.openclaw:/home/node/.openclaw"}) ||
		!slices.Contains(spec.After, "bake-firstboot.service") || !slices.Contains(spec.Requires, appliance.DockerUserUnitName) {
		t.Errorf("gateway container %+v", spec)
	}
	fb := p.firstbootOptions()
	if fb.GatewayConfig != "/home/openclaw/.openclaw/openclaw.json" || fb.GatewayOwner != "openclaw" ||
		fb.GatewayUnit != "bake-container-openclaw-gateway.service" || !slices.Equal(fb.Seeds, []string{"nocloud", "cloud-init"}) {
		t.Errorf("firstboot %+v", fb)
	}
	if so := p.sshOptions(); so.Port != 2222 || !so.CloudInit || so.AdminUser != "admin" {
		t.Errorf("ssh %+v", so)
	}
}

// DESIGN.md 2.6: network mode publishes on every address and lets the
// allowed networks (firewall's and gateway's) through DOCKER-USER.
func TestCompileApplianceNetworkMode(t *testing.T) {
	p := compileAppliance(t, "network", "[{cidr: 10.100.0.0/16}, {cidr: 192.168.1.0/24}]")
	spec := p.containerSpec(p.Recipe.Containers[0])
	if !slices.Equal(spec.Publish, []string{"0.0.0.0:18789:18789"}) {
		t.Errorf("publish %v", spec.Publish)
	}
	o, _ := p.isolation()
	var ex []string
	for _, e := range o.Exceptions {
		ex = append(ex, e.Source.String())
		if e.Port != 18789 {
			t.Errorf("exception port %d", e.Port)
		}
	}
	if !slices.Equal(ex, []string{"192.168.1.0/24", "10.100.0.0/16"}) {
		t.Errorf("exceptions %v", ex)
	}
	rules := appliance.DockerUserRules(o, false)
	if !strings.Contains(rules, "-s 10.100.0.0/16 -p tcp -m conntrack --ctstate NEW --ctorigdstport 18789") {
		t.Errorf("rules:\n%s", rules)
	}
}

func TestContainerUser(t *testing.T) {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc/passwd"), []byte(`root:x:0:0:root:/root:/bin/bash
openclaw:x:999:996::/home/openclaw:/usr/sbin/nologin
admin:x:1000:1000::/home/admin:/bin/bash
clash:x:1000:1000::/home/clash:/usr/sbin/nologin
loginsvc:x:1001:1001::/home/x:/bin/sh
`), 0o644)
	os.WriteFile(filepath.Join(tree, "etc/group"), []byte("root:x:0:\nopenclaw:x:996:\nadmin:x:1000:\n"), 0o644)
	if uid, gid, err := containerUser(tree, "openclaw"); err != nil || uid != 999 || gid != 996 {
		t.Errorf("openclaw: %d %d %v", uid, gid, err)
	}
	if uid, gid, err := containerUser(tree, "2000:2000"); err != nil || uid != 2000 || gid != 2000 {
		t.Errorf("2000:2000: %d %d %v", uid, gid, err)
	}
	for user, want := range map[string]string{
		"clash":     "login user admin",
		"1000:1000": "login user admin",
		"loginsvc":  "login shell",
		"root":      "root",
		"0:0":       "root",
		"ghost":     "no user",
	} {
		if _, _, err := containerUser(tree, user); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", user, err, want)
		}
	}
}

func TestBakeLabels(t *testing.T) {
	img, err := mutate.Config(empty.Image, v1.Config{Labels: map[string]string{
		oci.LabelPrefix + "npm.version": "2026.9.6", oci.LabelPrefix + "node.version": "24.21.0",
		"org.opencontainers.image.version": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	got := bakeLabels(img)
	if len(got) != 2 || got["npm.version"] != "2026.9.6" || got["node.version"] != "24.21.0" {
		t.Errorf("bakeLabels: %v", got)
	}
	if bakeLabels(empty.Image) != nil {
		t.Error("an image without bake labels has versions")
	}
}

// The plan names every variable of a container's environment (it is in
// the image) and redacts the value of one that looks like a secret, which
// only allow_baked_secrets lets in, and warns about it.
func TestPlanContainerEnv(t *testing.T) {
	src := strings.Replace(strings.NewReplacer("MODE", "local", "NETS", "[]").Replace(applianceRecipe),
		"    user: openclaw\n", "    user: openclaw\n    env: {OPENCLAW_GATEWAY_TOKEN: Tok3nValue0123456789, NODE_ENV: production, EMPTY_SECRET: \"\"}\n", 1)
	src = strings.Replace(src, "  seed: [nocloud, cloud-init]\n", "  seed: [nocloud, cloud-init]\n  allow_baked_secrets: true\n", 1)
	r, err := recipe.Parse("gw.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	p.Print(&b)
	out := b.String()
	want := `openclaw-gateway: env (/etc/bake/containers/openclaw-gateway.env, 0600, in the image): EMPTY_SECRET="" NODE_ENV="production" OPENCLAW_GATEWAY_TOKEN=(redacted)`
	if !strings.Contains(out, want) {
		t.Errorf("plan lacks %s:\n%s", want, out)
	}
	if strings.Contains(out, "Tok3nValue") {
		t.Errorf("the plan shows the secret:\n%s", out)
	}
	if !strings.Contains(out, "warning: the recipe bakes secrets (allow_baked_secrets)") {
		t.Errorf("no warning about the baked secret:\n%s", out)
	}
}
