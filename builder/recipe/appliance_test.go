package recipe

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestGoodAppliance(t *testing.T) {
	r, err := Load("testdata/good/appliance.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ got, want any }{
		{*r.SSH.Port, 22},
		{r.Firewall.Backend, "ufw"},
		{r.Firewall.DockerIsolationOn(), true},
		{r.Firewall.MetadataAccess, false},
		{r.Containers[0].Restart, "always"},
		{r.Containers[1].Restart, "on-failure"},
		{r.Containers[0].Env["NODE_ENV"], "production"},
		{*r.Containers[2].Build, ContainerBuild{App: "openclaw@2026.9.6", Lockfile: "appliance.yaml"}},
		{*r.Gateway.Port, 18789},
		{r.Gateway.Mode, "network"},
		{r.Gateway.Bind, "lan"},
		{r.Gateway.TailscaleMode, "serve"},
		{r.Gateway.GatewayPublish().String(), "0.0.0.0:18789:18789"},
		{len(r.GatewayNetworks()), 3},
		{r.Tailscale.Operator, "admin"},
		{r.Firstboot.Seed, []string{"nocloud", "credentials"}},
		{r.UserByName("openclaw").HomeDir(), "/home/openclaw"},
		{r.UserByName("admin").HomeDir(), "/home/admin"},
		{r.UserByName("admin").IsLogin(), true},
		{r.UserByName("openclaw").IsLogin(), false},
	}
	for i, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("check %d: got %v, want %v", i, c.got, c.want)
		}
	}
	// Defaults is idempotent on appliance sections too.
	before := fmt.Sprintf("%+v %+v %+v", *r.Gateway, *r.Firewall, *r.Firstboot)
	r.Defaults()
	if after := fmt.Sprintf("%+v %+v %+v", *r.Gateway, *r.Firewall, *r.Firstboot); after != before {
		t.Errorf("Defaults changed:\n%s\n%s", before, after)
	}
}

// docker_isolation: false is kept (a *bool tells it from "not written").
func TestDockerIsolationFalse(t *testing.T) {
	src := "apiVersion: bake/v1\nname: x\nbase: {debian: {suite: bookworm}}\nfirewall: {docker_isolation: false}\n"
	r, err := Parse("x.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Firewall.DockerIsolationOn() {
		t.Error("docker_isolation: false ignored")
	}
}

func TestParsePublish(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:18789:18789": "127.0.0.1:18789:18789",
		"0.0.0.0:80:8080/udp":   "0.0.0.0:80:8080/udp",
		"[::1]:80:80":           "[::1]:80:80",
		"80:80":                 "80:80",
	} {
		p, err := ParsePublish(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePublish(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	if p, _ := ParsePublish("80:80"); !p.AllInterfaces() {
		t.Error("80:80 is on every interface")
	}
	if p, _ := ParsePublish("127.0.0.1:1:1"); p.AllInterfaces() || p.Host != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("127.0.0.1: %v", p)
	}
	for _, bad := range []string{"", "80", "a:b:c", "1.2.3.4:0:1", "::1:80:80", "[1.2.3.4]:1:1", "1.2.3.4:1:1/icmp", "1:2:3:4"} {
		if _, err := ParsePublish(bad); err == nil {
			t.Errorf("ParsePublish(%q) accepted", bad)
		}
	}
}

func TestParsePortRule(t *testing.T) {
	for in, want := range map[string]string{"22/tcp": "22/tcp", "41641/udp": "41641/udp", "1:2/udp": "1:2/udp"} {
		r, err := ParsePortRule(in)
		if err != nil || r.String() != want {
			t.Errorf("%q: %v %v", in, r, err)
		}
	}
	for _, bad := range []string{"22", "22/", "/tcp", "65536/tcp", "022/tcp", "+1/tcp", "2:1/tcp", "a/tcp", "22/TCP"} {
		if _, err := ParsePortRule(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseVolume(t *testing.T) {
	v, err := ParseVolume("/a/b:/c:ro")
	if err != nil || v.Host != "/a/b" || v.Container != "/c" || !v.ReadOnly || v.String() != "/a/b:/c:ro" {
		t.Errorf("%+v %v", v, err)
	}
	for _, bad := range []string{"/a", "a:/b", "/a:b", "/a:/", "/a/../b:/c", "/a:/b:rx", "/a:/b:ro:x"} {
		if _, err := ParseVolume(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Recipes built in Go get the same checks (without positions).
func TestValidateApplianceInGo(t *testing.T) {
	port := 18789
	r := &Recipe{
		APIVersion: APIVersion, Name: "x", Base: Base{Debian: &DebianBase{Suite: "bookworm"}},
		Users:      []User{{Name: "admin", Groups: []string{"docker"}}, {Name: "gw"}},
		Containers: []Container{{Name: "gw", Image: "r/x:latest", User: "gw", Publish: []string{"80:80"}}},
		Gateway:    &Gateway{Container: "gw", Port: &port, TailscaleMode: "funnel", Token: "x"},
		Firstboot:  &Firstboot{AdminUser: "admin"},
	}
	err := r.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"not pinned", "every interface", "funnel is refused", "literal token", "docker group", `user "gw" can log in`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in:\n%v", want, err)
		}
	}
}

func TestSecretEnvName(t *testing.T) {
	for name, want := range map[string]bool{
		"OPENCLAW_GATEWAY_TOKEN": true, "token": true, "ANTHROPIC_API_KEY": true, "OpenAI_ApiKey": true,
		"AWS_SECRET_ACCESS_KEY": true, "AWS_ACCESS_KEY_ID": true, "DB_PASSWORD": true, "LDAP_PASSWD": true,
		"SSH_PRIVATE_KEY": true, "OAUTH_CLIENT_ID": true, "BASIC_AUTH": true, "GOOGLE_APPLICATION_CREDENTIALS": true,
		"NODE_ENV": false, "NODE_COMPILE_CACHE": false, "GIT_AUTHOR_NAME": false, "OPENCLAW_AUTH": true, "TAILSCALE_AUTHKEY": true, "HOME": false, "PORT": false, "TZ": false, "KEYBOARD": false,
	} {
		if got := SecretEnvName(name); got != want {
			t.Errorf("SecretEnvName(%q) = %v, want %v", name, got, want)
		}
	}
}

// A secret in containers[].env would be in every copy of the image: it is
// refused, with where and what to do instead, and without echoing the
// value; allow_baked_secrets lets it through; an empty value is no secret.
func TestContainerEnvSecrets(t *testing.T) {
	const head = `apiVersion: bake/v1
name: x
base: {debian: {suite: bookworm}}
users:
  - {name: admin, groups: [sudo]}
  - {name: svc, system: true}
containers:
  - name: web
    image: "r.example/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    user: svc
    env:
      OPENCLAW_GATEWAY_TOKEN: Tok3nValue0123456789
      ANTHROPIC_API_KEY: sk-ant-secretvalue
      EMPTY_PASSWORD: ""
      NODE_ENV: production
`
	_, err := Parse("x.yaml", []byte(head), t.TempDir(), nil)
	var diags Diagnostics
	if !errors.As(err, &diags) || len(diags) != 2 {
		t.Fatalf("got %v, want two diagnostics", err)
	}
	for i, want := range []string{"x.yaml:12:31: containers[0].env.OPENCLAW_GATEWAY_TOKEN: OPENCLAW_GATEWAY_TOKEN looks like a secret",
		"x.yaml:13:26: containers[0].env.ANTHROPIC_API_KEY: ANTHROPIC_API_KEY looks like a secret"} {
		if !strings.HasPrefix(diags[i].String(), want) {
			t.Errorf("diagnostic %d = %s\nwant prefix %s", i, diags[i], want)
		}
		for _, hint := range []string{"docs/seed.md", "bake.gateway_token", "firstboot.allow_baked_secrets: true"} {
			if !strings.Contains(diags[i].Hint, hint) {
				t.Errorf("diagnostic %d's hint lacks %q: %s", i, hint, diags[i].Hint)
			}
		}
	}
	if s := diags.Error(); strings.Contains(s, "Tok3nValue") || strings.Contains(s, "secretvalue") {
		t.Errorf("the diagnostics show the secret:\n%s", s)
	}
	r, err := Parse("x.yaml", []byte(head+"firstboot: {admin_user: admin, allow_baked_secrets: true}\n"), t.TempDir(), nil)
	if err != nil {
		t.Fatalf("with allow_baked_secrets: %v", err)
	}
	if got := r.Containers[0].SecretEnv(); !slices.Equal(got, []string{"ANTHROPIC_API_KEY", "OPENCLAW_GATEWAY_TOKEN"}) {
		t.Errorf("SecretEnv = %q", got)
	}
}
