package recipe

import (
	"fmt"
	"net/netip"
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
		{fmt.Sprint(r.Containers[2].Build), "map[app:openclaw@2026.9.6 nested:map[list:[1 two]]]"},
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
