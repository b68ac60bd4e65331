package verify

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/goccy/go-yaml"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn0kKk0PWQnRkKTuXb7F6vQ6ThW0jU1QZ6g2l3m4n5o bake-verify"

func testSeed(extra *UserData) Seed {
	return Seed{InstanceID: "iid-bake-verify-1", Hostname: "bake-verify-bios-0", AdminUser: "admin",
		AuthorizedKeys: []string{testKey}, Token: strings.Repeat("T", 64), Extra: extra}
}

func mustParseUserData(t *testing.T, src string) *UserData {
	t.Helper()
	u, err := ParseUserData("cloud.yaml", []byte(src))
	if err != nil {
		t.Fatalf("ParseUserData: %v\n%s", err, src)
	}
	return u
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, b)
	}
	return m
}

// A cloud's user-data that turns password login on and has users and keys
// of its own: its values win, verify's items come first in the lists, and
// the user's text is copied as written (YAML 1.1 booleans, octal modes and
// block scalars stay exactly as cloud-init would read them in the file).
func TestUserDataMerge(t *testing.T) {
	src := `#cloud-config
# my cloud's user-data
ssh_pwauth: true
disable_root: false
hostname: web-1
users:
    - default
    - name: ops
      lock_passwd: no
      groups: [adm]
    - name: admin
      groups: [sudo, docker]
      lock_passwd: false
ssh_authorized_keys:
- ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 ops@laptop
write_files:
  - path: /etc/motd
    permissions: 0644
    content: |
      hello
        indented
runcmd:
  - [sh, -c, 'echo "x: y" > /dev/ttyS0']
package_update: on
`
	u := mustParseUserData(t, src)
	ud := testSeed(u).UserData()
	if ud == nil {
		t.Fatal("no user-data")
	}
	out := string(ud)
	t.Logf("merged:\n%s", out)
	if !strings.HasPrefix(out, "#cloud-config\n") {
		t.Fatal("merged user-data does not start with #cloud-config")
	}
	m := decode(t, ud)
	// The file's values win where verify has the same key.
	if m["ssh_pwauth"] != true || m["disable_root"] != false || m["hostname"] != "web-1" {
		t.Errorf("ssh_pwauth %v, disable_root %v, hostname %v: want the file's", m["ssh_pwauth"], m["disable_root"], m["hostname"])
	}
	// Verify's items first.
	keys, _ := m["ssh_authorized_keys"].([]any)
	if len(keys) != 2 || keys[0] != testKey || keys[1] != "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 ops@laptop" {
		t.Errorf("ssh_authorized_keys %v", keys)
	}
	users, _ := m["users"].([]any)
	if len(users) != 5 || users[0] != "default" || users[2] != "default" {
		t.Fatalf("users %v", users)
	}
	admin, _ := users[1].(map[string]any)
	if admin["name"] != "admin" || admin["sudo"] != "ALL=(ALL) NOPASSWD:ALL" {
		t.Errorf("verify's admin entry %v", admin)
	}
	if ks, _ := admin["ssh_authorized_keys"].([]any); len(ks) != 1 || ks[0] != testKey {
		t.Errorf("verify's admin keys %v", admin["ssh_authorized_keys"])
	}
	if ops, _ := users[3].(map[string]any); ops["name"] != "ops" {
		t.Errorf("the file's user %v", users[3])
	}
	// Copied as written, line for line (cloud-init reads "no", "on" and
	// 0644 with YAML 1.1's rules).
	for _, l := range []string{"    - name: ops\n      lock_passwd: no\n", "    permissions: 0644\n", "      hello\n        indented\n",
		"package_update: on\n", `  - [sh, -c, 'echo "x: y" > /dev/ttyS0']` + "\n"} {
		if !strings.Contains(out, l) {
			t.Errorf("merged user-data lacks the file's text %q", l)
		}
	}
	// Verify's own lines for keys the file set are gone (one value each).
	if strings.Count(out, "ssh_pwauth:") != 1 || strings.Count(out, "disable_root:") != 1 || strings.Count(out, "\nhostname:") != 1 {
		t.Errorf("a key appears twice:\n%s", out)
	}
	// Only keys cloud-init knows are verify's own; the file's are its own.
	for k := range m {
		if _, ok := u.values[k]; !ok && !cloudInitKeys[k] {
			t.Errorf("key %s from nowhere", k)
		}
	}
}

// Keys the file does not set keep verify's values; lists at the first
// column and flow lists merge too.
func TestUserDataMergeKeepsVerifysValues(t *testing.T) {
	u := mustParseUserData(t, "#cloud-config\ntimezone: Europe/Berlin\nusers:\n- name: ops\nssh_authorized_keys: [\"ssh-ed25519 AAAAC3Nza ops\", other]\n")
	m := decode(t, testSeed(u).UserData())
	if m["ssh_pwauth"] != false || m["disable_root"] != true || m["hostname"] != "bake-verify-bios-0" || m["timezone"] != "Europe/Berlin" {
		t.Errorf("merged %v", m)
	}
	if users, _ := m["users"].([]any); len(users) != 3 || users[0] != "default" {
		t.Errorf("users %v", m["users"])
	}
	if keys, _ := m["ssh_authorized_keys"].([]any); len(keys) != 3 || keys[0] != testKey || keys[2] != "other" {
		t.Errorf("keys %v", m["ssh_authorized_keys"])
	}
}

// Without --user-data the seed is verify's own, unchanged.
func TestUserDataNoneIsOwn(t *testing.T) {
	s := testSeed(nil)
	if string(s.UserData()) != string(s.ownUserData()) {
		t.Error("UserData without Extra differs from verify's own")
	}
}

// What is not a #cloud-config mapping is refused, with a reason.
func TestUserDataRefused(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"script", "#!/bin/sh\necho hi\n", "first line must be #cloud-config"},
		{"multipart", "Content-Type: multipart/mixed; boundary=\"x\"\nMIME-Version: 1.0\n", "first line must be #cloud-config"},
		{"jinja", "## template: jinja\n#cloud-config\nhostname: x\n", "first line must be #cloud-config"},
		{"include", "#include\nhttp://example.com/x\n", "first line must be #cloud-config"},
		{"empty", "#cloud-config\n", "no cloud-config keys"},
		{"comment only", "#cloud-config\n# nothing\n", "no cloud-config keys"},
		{"list", "#cloud-config\n- a\n- b\n", "not a cloud-config mapping"},
		{"scalar", "#cloud-config\nhello\n", "not a cloud-config mapping"},
		{"flow", "#cloud-config\n{ssh_pwauth: true}\n", "block style"},
		{"not yaml", "#cloud-config\nssh_pwauth: [true\n", "not YAML"},
		{"two documents", "#cloud-config\nssh_pwauth: true\n---\nhostname: x\n", "document marker"},
		{"duplicate", "#cloud-config\nssh_pwauth: true\nssh_pwauth: false\n", "already defined"},
		{"users not a list", "#cloud-config\nusers: default\n", "users must be a list"},
		{"keys not strings", "#cloud-config\nssh_authorized_keys:\n  - {a: b}\n", "list of keys"},
		{"tab", "#cloud-config\nusers:\n\t- default\n", "tab"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseUserData("cloud.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one saying %q", err, c.want)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "cloud.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// CRLF files and a document start are read too.
func TestUserDataCRLF(t *testing.T) {
	u := mustParseUserData(t, "#cloud-config\r\nssh_pwauth: true\r\n")
	if m := decode(t, testSeed(u).UserData()); m["ssh_pwauth"] != true {
		t.Errorf("ssh_pwauth %v", m["ssh_pwauth"])
	}
}

// The merged user-data is what the seed volume holds, and bake's own seed
// files are as without --user-data.
func TestWriteSeedWithUserData(t *testing.T) {
	u := mustParseUserData(t, "#cloud-config\nssh_pwauth: true\n")
	s := testSeed(u)
	p := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteSeed(p, s); err != nil {
		t.Fatal(err)
	}
	d, err := diskfs.Open(p, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenFile("/user-data", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64<<10)
	n, _ := f.Read(b)
	if string(b[:n]) != string(s.UserData()) {
		t.Errorf("seed's user-data:\n%s\nwant:\n%s", b[:n], s.UserData())
	}
	files := s.Files()
	own := testSeed(nil).Files()
	for _, name := range []string{SeedAdminKeysFile, SeedTokenFile, "meta-data"} {
		if string(files[name]) != string(own[name]) {
			t.Errorf("%s changed with --user-data", name)
		}
	}
}

// The report names the user-data file and its digest; with one instance
// the summary says the identity checks were skipped by request.
func TestReportNamesUserData(t *testing.T) {
	u := mustParseUserData(t, "#cloud-config\nssh_pwauth: true\n")
	r := &Report{Image: "x.qcow2", Firmwares: []string{"uefi"}, Instances: 1, UserData: u.Name, UserDataSHA256: u.SHA256,
		Results: []Result{{ID: "ssh.key-login", Firmware: "uefi", Status: Pass}}}
	var b strings.Builder
	r.WriteSummary(&b)
	if !strings.Contains(b.String(), "user-data merged from cloud.yaml (sha256:"+u.SHA256+")") {
		t.Errorf("summary:\n%s", b.String())
	}
	if !strings.Contains(b.String(), "identity checks (two instances differ, a reboot keeps them) skipped by request: they need --instances 2") {
		t.Errorf("summary does not say the identity checks were not run:\n%s", b.String())
	}
	var j strings.Builder
	if err := r.WriteJUnit(&j); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(j.String(), `name="user_data.sha256" value="`+u.SHA256+`"`) {
		t.Errorf("junit:\n%s", j.String())
	}
	for _, id := range Plan(DefaultSpec(), 1) {
		if strings.HasPrefix(id, "identity.") {
			t.Errorf("plan with one instance has %s", id)
		}
	}
}
