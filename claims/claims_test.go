package claims

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/internal/tailnettest"
)

// Every recipe of the repository: its record reads back as the same
// claims (Source and Needles aside), the same bytes every time, and the
// flagship's record is the appliance's defaults.
func TestRecordRoundTrip(t *testing.T) {
	for _, p := range []string{"../recipes/openclaw.yaml", "../recipes/minimal.yaml",
		"../test/vm/testdata/openclaw-test.yaml", "../test/vm/testdata/openclaw-cloud-test.yaml"} {
		var sets map[string]string
		if strings.Contains(p, "/testdata/") {
			sets = map[string]string{"gateway_image": "127.0.0.1:5000/bake/testgateway@sha256:" + strings.Repeat("0", 64)}
		}
		if strings.Contains(p, "cloud-test") {
			// As cli's plan goldens: any file stands in for the base.
			sets["base_image"], sets["base_sha256"] = "openclaw-test.yaml", strings.Repeat("0", 64)
		}
		r, err := recipe.LoadIn("..", p, sets)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		s, err := FromRecipe(r)
		if err != nil {
			t.Fatal(err)
		}
		rec := s.Record()
		if string(rec) != string(s.Record()) {
			t.Errorf("%s: two records differ", p)
		}
		back, err := ParseRecord(rec)
		if err != nil {
			t.Fatalf("%s: %v\n%s", p, err, rec)
		}
		if !strings.Contains(back.Source, RecordPath) {
			t.Errorf("source %q", back.Source)
		}
		back.Source, s.Source, s.Needles = "", "", nil
		if !reflect.DeepEqual(back, s) {
			t.Errorf("%s: record reads back as\n%+v\nwant\n%+v", p, back, s)
		}
		if d := Diff(s, back, "a", "b"); len(d) != 0 {
			t.Errorf("%s: diff of equal claims: %v", p, d)
		}
	}
	r, _ := recipe.LoadIn("..", "../recipes/openclaw.yaml", nil)
	s, _ := FromRecipe(r)
	d := Default()
	s.Source, d.Source = "", ""
	if !reflect.DeepEqual(s, d) {
		t.Errorf("the flagship's claims\n%+v\nare not the defaults\n%+v", s, d)
	}
}

// A recipe's literal secrets are claims (the scan looks for them) but
// never reach the record.
func TestRecordHasNoSecret(t *testing.T) {
	s := Default()
	s.Needles = []Needle{{"recipe-gateway-token", "tok-0123456789abcdef0123"}}
	if rec := string(s.Record()); strings.Contains(rec, "tok-0123456789abcdef0123") || strings.Contains(rec, "recipe-gateway-token") {
		t.Errorf("a secret in the record:\n%s", rec)
	}
}

func TestParseRecordRefuses(t *testing.T) {
	good := string(Default().Record())
	for name, c := range map[string]struct{ in, want string }{
		"unknown field": {strings.Replace(good, `"version": 1,`, `"version": 1, "extra": true,`, 1), "unknown field"},
		"other version": {strings.Replace(good, `"version": 1,`, `"version": 2,`, 1), "version 2"},
		"no admin":      {strings.Replace(good, `"admin_user": "admin"`, `"admin_user": ""`, 1), "no admin user"},
		"port 0":        {strings.Replace(good, `"port": 18789`, `"port": 0`, 1), "the gateway has no"},
		"too big":       {good + strings.Repeat(" ", MaxRecord), "over"},
		"not json":      {"#!/bin/sh", "claims record"},
		"bad prefix":    {strings.Replace(good, `"mode": "local"`, `"mode": "local", "allowed": ["10.0.0.0/33"]`, 1), "claims record"},
	} {
		if _, err := ParseRecord([]byte(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}

func TestDiff(t *testing.T) {
	a := Default()
	b := Default()
	b.Gateway.Port = 18790
	b.Firewall.Allow = append(b.Firewall.Allow, "80/tcp")
	b.Tailscale = false
	d := Diff(a, b, "the recipe", "the image's record")
	want := []string{
		`firewall.allow: ["22/tcp","41641/udp"] in the recipe, ["22/tcp","41641/udp","80/tcp"] in the image's record`,
		`gateway.port: 18789 in the recipe, 18790 in the image's record`,
		`tailscale: true in the recipe, false in the image's record`,
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("diff\n%s\nwant\n%s", strings.Join(d, "\n"), strings.Join(want, "\n"))
	}
	b.Gateway = nil
	if d := Diff(a, b, "r", "i"); !strings.Contains(strings.Join(d, "\n"), "gateway: {") {
		t.Errorf("a gateway missing from the record: %v", d)
	}
}

// FuzzParseRecord: the record comes from an image bake did not build.
// Nothing panics; what is accepted writes back to a record that parses to
// the same claims.
func FuzzParseRecord(f *testing.F) {
	f.Add(Default().Record())
	f.Add([]byte(`{"version":1,"admin_user":"a","ssh_port":22,"docker":false,"tailscale":false}`))
	f.Add([]byte(`{"version":1,"admin_user":"a","ssh_port":22,"gateway":{"container":"c","port":1,"probe":["x"],"allowed":["::/0"]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseRecord(b)
		if err != nil {
			return
		}
		again, err := ParseRecord(s.Record())
		if err != nil {
			t.Fatalf("a record that parsed does not parse again: %v", err)
		}
		x, _ := json.Marshal(s)
		y, _ := json.Marshal(again)
		if string(x) != string(y) {
			t.Fatalf("round trip: %s != %s", x, y)
		}
	})
}

// A recipe that joins a control server of its own (headscale) with a
// private CA and serves the gateway over plain HTTP on the tailnet: the
// claims record all three, and read back from the record.
func TestTailscaleLoginServerClaims(t *testing.T) {
	dir := t.TempDir()
	ca, err := tailnettest.NewTestCA(dir, []netip.Addr{netip.MustParseAddr("10.77.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := `apiVersion: bake/v1
name: hs
base: {debian: {suite: bookworm}}
users:
  - {name: admin}
  - {name: openclaw, system: true}
containers:
  - name: gw
    image: "r.example/gw@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    user: openclaw
gateway:
  container: gw
  tailscale_mode: serve-http
tailscale:
  enabled: true
  login_server: https://10.77.0.1
  ca: ` + filepath.Base(ca.CertFile) + `
firstboot: {admin_user: admin}
`
	r, err := recipe.Parse(filepath.Join(dir, "hs.yaml"), []byte(src), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := FromRecipe(r)
	if err != nil {
		t.Fatal(err)
	}
	if s.TailscaleLoginServer != "https://10.77.0.1" || !s.TailscaleCA || s.TailscaleServeHTTP != 80 {
		t.Errorf("claims: login server %q, CA %v, serve http %d", s.TailscaleLoginServer, s.TailscaleCA, s.TailscaleServeHTTP)
	}
	back, err := ParseRecord(s.Record())
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(s, back, "recipe", "record"); len(d) != 0 {
		t.Errorf("record round trip: %v", d)
	}
	// Without the new settings nothing new is claimed (records of
	// earlier images read the same).
	def := Default()
	if def.TailscaleLoginServer != "" || def.TailscaleCA || def.TailscaleServeHTTP != 0 {
		t.Errorf("defaults claim a login server: %+v", def)
	}
}
