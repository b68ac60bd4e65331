package verify

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/goccy/go-yaml"
	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/firstboot"
)

func TestNewTokenAndKey(t *testing.T) {
	a, _ := NewToken()
	b, _ := NewToken()
	if !ValidToken(a) || !ValidToken(b) || a == b {
		t.Fatalf("tokens %q %q", a, b)
	}
	for _, bad := range []string{"", strings.Repeat("a", 63), strings.Repeat("a", 63) + "-", strings.Repeat("a", 65)} {
		if ValidToken(bad) {
			t.Errorf("ValidToken(%q)", bad)
		}
	}
	k, err := NewKey("bake-verify")
	if err != nil {
		t.Fatal(err)
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(k.AuthorizedKey))
	if err != nil || pub.Type() != "ssh-ed25519" || comment != "bake-verify" {
		t.Fatalf("authorized key %q: %v", k.AuthorizedKey, err)
	}
	if string(pub.Marshal()) != string(k.Signer.PublicKey().Marshal()) {
		t.Error("authorized key is not the signer's")
	}
	if _, err := ssh.ParsePrivateKey(k.PrivatePEM); err != nil {
		t.Errorf("private key PEM: %v", err)
	}
}

// cloud-init knows these top-level keys (its schema); any other key would
// make recent cloud-init report "degraded".
var cloudInitKeys = map[string]bool{"hostname": true, "users": true, "ssh_authorized_keys": true, "ssh_pwauth": true, "disable_root": true}

func TestSeedRendering(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn0kKk0PWQnRkKTuXb7F6vQ6ThW0jU1QZ6g2l3m4n5o bake-verify"
	s := Seed{InstanceID: "iid-bake-verify-0123", Hostname: "bake-verify-0", AdminUser: "admin", AuthorizedKeys: []string{key}, Token: strings.Repeat("T", 64)}

	if got := string(s.MetaData()); got != "instance-id: \"iid-bake-verify-0123\"\nlocal-hostname: \"bake-verify-0\"\n" {
		t.Errorf("meta-data:\n%s", got)
	}
	ud := s.UserData()
	if !strings.HasPrefix(string(ud), "#cloud-config\n") {
		t.Fatalf("user-data does not start with #cloud-config:\n%s", ud)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(ud, &doc); err != nil {
		t.Fatalf("user-data is not YAML: %v\n%s", err, ud)
	}
	for k := range doc {
		if !cloudInitKeys[k] {
			t.Errorf("user-data has top-level key %q, unknown to cloud-init", k)
		}
	}
	if doc["ssh_pwauth"] != false || doc["disable_root"] != true {
		t.Errorf("ssh_pwauth/disable_root: %v %v", doc["ssh_pwauth"], doc["disable_root"])
	}
	if ks, _ := doc["ssh_authorized_keys"].([]any); len(ks) != 1 || ks[0] != key {
		t.Errorf("top-level keys %v", doc["ssh_authorized_keys"])
	}
	users, _ := doc["users"].([]any)
	if len(users) != 2 || users[0] != "default" {
		t.Fatalf("users %v", users)
	}
	admin, _ := users[1].(map[string]any)
	if admin["name"] != "admin" || admin["lock_passwd"] != true {
		t.Errorf("admin user %v", admin)
	}
	if ks, _ := admin["ssh_authorized_keys"].([]any); len(ks) != 1 || ks[0] != key {
		t.Errorf("admin keys %v", admin["ssh_authorized_keys"])
	}
	if g, ok := admin["groups"]; ok {
		t.Errorf("admin given groups %v (never docker)", g)
	}

	files := s.Files()
	if string(files[SeedAdminKeysFile]) != key+"\n" || string(files[SeedTokenFile]) != s.Token+"\n" {
		t.Errorf("bake files %q", files)
	}
	// Without a token, first boot generates one: no token file at all.
	s.Token = ""
	if _, ok := s.Files()[SeedTokenFile]; ok {
		t.Error("token file written without a token")
	}
}

func TestWriteSeed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "seed.iso")
	s := Seed{InstanceID: "iid-x", AdminUser: "ops", AuthorizedKeys: []string{testKey}, Token: strings.Repeat("a", 64)}
	if err := WriteSeed(p, s); err != nil {
		t.Fatal(err)
	}
	d, err := diskfs.Open(p, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(fs.Label()) != "cidata" {
		t.Errorf("label %q", fs.Label())
	}
	ents, err := fs.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "bake.admin_ssh_keys bake.gateway_token meta-data user-data" {
		t.Errorf("seed files %v", names)
	}
	if err := WriteSeed(p, Seed{AdminUser: "ops"}); err == nil {
		t.Error("seed without instance id and keys accepted")
	}
}

// The seed says what first boot reads (package firstboot defines the
// format, docs/seed.md describes it): the same files with the same bytes.
func TestSeedMatchesFirstboot(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn0kKk0PWQnRkKTuXb7F6vQ6ThW0jU1QZ6g2l3m4n5o bake-verify"
	tok := strings.Repeat("Ab1", 21) + "x"
	mine := Seed{InstanceID: "iid-x", AdminUser: "admin", AuthorizedKeys: []string{key}, Token: tok}.BakeFiles()
	theirs := firstboot.Seed{InstanceID: "iid-x", AdminKeys: []string{key}, GatewayToken: tok}.NoCloudFiles()
	if len(mine) != len(theirs) {
		t.Fatalf("files %v, first boot's %v", keys(mine), keys(theirs))
	}
	for n, b := range theirs {
		if string(mine[n]) != string(b) {
			t.Errorf("%s: %q, first boot's %q", n, mine[n], b)
		}
	}
	if err := (firstboot.Seed{AdminKeys: []string{key}, GatewayToken: tok}).Check(); err != nil {
		t.Errorf("first boot refuses verify's token: %v", err)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Values that YAML 1.1 (cloud-init's PyYAML) would read as a date, an
// int, a float, a bool, null, an alias, an anchor or a tag when written
// plain come back as the same strings from every seed document, verify's
// and first boot's (one writer, package cloudconfig).
func TestSeedHostileValues(t *testing.T) {
	for _, v := range []string{"2024-01-01", "0x1F", "0644", ".inf", "yes", "off", "~", "null", "a: b", "*x", "&y", "!z", "#c", "- d", "[e]"} {
		s := Seed{InstanceID: v, Hostname: v, AdminUser: v, AuthorizedKeys: []string{v}}
		var md map[string]any
		if err := yaml.Unmarshal(s.MetaData(), &md); err != nil || md["instance-id"] != v || md["local-hostname"] != v {
			t.Errorf("%q: meta-data %#v (%v)\n%s", v, md, err, s.MetaData())
		}
		u := mustParseUserData(t, "#cloud-config\ntimezone: UTC\n")
		for name, ud := range map[string][]byte{"verify's": s.UserData(), "merged": testSeedWith(s, u).UserData()} {
			var m map[string]any
			if err := yaml.Unmarshal(ud, &m); err != nil {
				t.Errorf("%q: %s user-data: %v\n%s", v, name, err, ud)
				continue
			}
			users, _ := m["users"].([]any)
			admin, _ := func() (map[string]any, bool) {
				if len(users) < 2 {
					return nil, false
				}
				a, ok := users[1].(map[string]any)
				return a, ok
			}()
			if m["hostname"] != v || len(users) < 2 || admin["name"] != v {
				t.Errorf("%q: %s user-data %#v\n%s", v, name, m, ud)
			}
			if ks, _ := m["ssh_authorized_keys"].([]any); len(ks) != 1 || ks[0] != v {
				t.Errorf("%q: %s keys %#v", v, name, m["ssh_authorized_keys"])
			}
		}
		fb := firstboot.Seed{InstanceID: v, Hostname: v, AdminKeys: []string{v}, GatewayToken: strings.Repeat("a", 16)}
		for name, ud := range map[string][]byte{"first boot's": fb.UserData(), "cloud": fb.CloudUserData()} {
			var m map[string]any
			if err := yaml.Unmarshal(ud, &m); err != nil {
				t.Errorf("%q: %s user-data: %v\n%s", v, name, err, ud)
			} else if ks, _ := m["ssh_authorized_keys"].([]any); len(ks) != 1 || ks[0] != v {
				t.Errorf("%q: %s keys %#v\n%s", v, name, m["ssh_authorized_keys"], ud)
			}
		}
		if err := yaml.Unmarshal(fb.MetaData(), &md); err != nil || md["local-hostname"] != v {
			t.Errorf("%q: first boot's meta-data %#v (%v)", v, md, err)
		}
	}
}

func testSeedWith(s Seed, u *UserData) Seed {
	s.Extra = u
	return s
}

// The SMBIOS path: one file per credential (mode 0600, read by QEMU with
// path=, so no secret is on its command line), holding what systemd reads
// as the credential of firstboot's name.
func TestWriteSMBIOSCredentials(t *testing.T) {
	dir := t.TempDir()
	key, err := NewKey("bake-verify test")
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := NewToken()
	s := Seed{InstanceID: "iid-x", AdminUser: "admin", AuthorizedKeys: []string{key.AuthorizedKey}, Token: tok}
	args, err := writeSMBIOSCredentials(dir, "bios-1", s)
	if err != nil {
		t.Fatal(err)
	}
	if len(args) != 4 || args[0] != "-smbios" || args[2] != "-smbios" {
		t.Fatalf("args %q: want two -smbios type=11,path=FILE", args)
	}
	got := map[string]string{}
	for _, a := range []string{args[1], args[3]} {
		p, ok := strings.CutPrefix(a, "type=11,path=")
		if !ok || strings.Contains(a, tok) {
			t.Fatalf("%q: want type=11,path=FILE and no secret", a)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v; want mode 0600", p, fi, err)
		}
		b, _ := os.ReadFile(p)
		name, val, ok := strings.Cut(strings.TrimPrefix(string(b), "io.systemd.credential.binary:"), "=")
		if !ok {
			t.Fatalf("%s: %q", p, b)
		}
		dec, err := base64.StdEncoding.DecodeString(val)
		if err != nil {
			t.Fatal(err)
		}
		got[name] = string(dec)
	}
	if strings.TrimSpace(got[SeedTokenFile]) != tok || !strings.Contains(got[SeedAdminKeysFile], key.AuthorizedKey) {
		t.Errorf("credentials %q: want the token and the admin key", got)
	}
	if _, err := ParseSeedVia("nocloud,smbios"); err != nil {
		t.Error(err)
	}
	if _, err := ParseSeedVia("iso"); err == nil {
		t.Error("ParseSeedVia(iso): no error")
	}
}
