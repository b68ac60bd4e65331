package recipe

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Each file in testdata/bad states the diagnostics it must produce, in
// comments, so that the expectation sits beside the line it is about:
//
//	key: value  # want COL: substring      (a diagnostic at this line, COL)
//	# want LINE:COL: substring             (anywhere, for an explicit place)
//	# set: NAME=VALUE                      (passed as --set)
//
// The test asserts the exact FILE:LINE:COL prefix, that the message or hint
// contains the substring, and that there are no other diagnostics.
var (
	wantRe = regexp.MustCompile(`#\s*want\s+(?:(\d+):)?(\d+):\s?(.*)$`)
	setRe  = regexp.MustCompile(`^#\s*set:\s*([^=\s]+)=(.*)$`)
)

type want struct {
	line, col int
	substr    string
}

func readWants(t *testing.T, path string) ([]want, map[string]string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var wants []want
	sets := map[string]string{}
	for i, text := range strings.Split(string(data), "\n") {
		if m := setRe.FindStringSubmatch(text); m != nil {
			sets[m[1]] = m[2]
			continue
		}
		m := wantRe.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		line := i + 1
		if m[1] != "" {
			line, _ = strconv.Atoi(m[1])
		}
		col, _ := strconv.Atoi(m[2])
		wants = append(wants, want{line, col, strings.TrimSpace(m[3])})
	}
	return wants, sets
}

func TestBadRecipes(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 30 {
		t.Fatalf("only %d bad recipes; the suite promises at least 30", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			wants, sets := readWants(t, file)
			if len(wants) == 0 {
				t.Fatalf("%s states no # want", file)
			}
			_, err := Load(file, sets)
			var diags Diagnostics
			if !errors.As(err, &diags) {
				t.Fatalf("Load(%s) = %v, want Diagnostics", file, err)
			}
			lines := strings.Split(diags.Error(), "\n")
			if len(lines) != len(diags) {
				t.Errorf("Error() has %d lines for %d diagnostics", len(lines), len(diags))
			}
			used := make([]bool, len(diags))
			for _, w := range wants {
				prefix := fmt.Sprintf("%s:%d:%d: ", file, w.line, w.col)
				found := false
				for i, d := range diags {
					if !used[i] && strings.HasPrefix(d.String(), prefix) && strings.Contains(d.String(), w.substr) {
						used[i], found = true, true
						break
					}
				}
				if !found {
					t.Errorf("missing %s...%s\ngot:\n%s", prefix, w.substr, diags.Error())
				}
			}
			for i, d := range diags {
				if !used[i] {
					t.Errorf("unexpected diagnostic: %s", d)
				}
				if d.Hint == "" && !strings.Contains(d.Msg, "YAML:") {
					t.Errorf("diagnostic without a hint of what to write: %s", d)
				}
			}
		})
	}
}

// A recipe with three unrelated mistakes, one found while decoding and two
// while validating, reports all three in one go.
func TestAllErrorsAtOnce(t *testing.T) {
	_, err := Load("testdata/bad/three_errors.yaml", nil)
	var diags Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("got %v", err)
	}
	if len(diags) != 3 {
		t.Fatalf("got %d diagnostics, want 3:\n%v", len(diags), err)
	}
	for i, want := range []string{
		`testdata/bad/three_errors.yaml:7:3: unknown field "pakages" in apt (did you mean "packages"?)`,
		`testdata/bad/three_errors.yaml:10:10: users[0].uid: uid 0 is root's`,
		`testdata/bad/three_errors.yaml:12:9: disk.size: size "4 gigs": unknown unit "gigs"`,
	} {
		if !strings.HasPrefix(diags[i].String(), want) {
			t.Errorf("diagnostic %d = %s\nwant prefix %s", i, diags[i], want)
		}
	}
	// Every kind of decode error at once, with validation on what decoded.
	src := `apiVersion: bake/v1
name: many
base: {debian: {suite: bookworm}}
apt: {pakages: [a], packges: [b]}
users:
  - {name: a, uid: "1", system: "no"}
  - {name: b, uid: 0}
disk: {size: [4GiB]}
outputs: [qcow2, qcow2]
`
	_, err = Parse("many.yaml", []byte(src), t.TempDir(), nil)
	got := err.Error()
	for _, want := range []string{
		`many.yaml:4:7: unknown field "pakages"`,
		`many.yaml:4:21: unknown field "packges"`,
		`many.yaml:6:20: users[0].uid: must be a whole number`,
		`many.yaml:6:33: users[0].system: must be true or false`,
		`many.yaml:7:20: users[1].uid: uid 0`,
		`many.yaml:8:14: disk.size: must be text, found a list`,
		`many.yaml:9:18: outputs[1]: qcow2 is listed twice`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %s in\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n") + 1; n != 7 {
		t.Errorf("got %d diagnostics, want 7:\n%s", n, got)
	}
}

func TestGoodFull(t *testing.T) {
	r, err := Load("testdata/good/full.yaml", map[string]string{"admin": "ops", "disk_size": "8GiB"})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile("testdata/good/full.yaml")
	if r.Path != "testdata/good/full.yaml" || !filepath.IsAbs(r.Dir) || filepath.Base(r.Dir) != "good" {
		t.Errorf("Path %q Dir %q", r.Path, r.Dir)
	}
	if want := sha256hex(data); r.Digest != want {
		t.Errorf("Digest %s, want %s", r.Digest, want)
	}
	checks := []struct{ got, want any }{
		{r.Name, "demo-appliance"},
		{r.Base.Debian.Mirror, "http://deb.debian.org/debian"},
		{r.Base.Debian.Variant, "minbase"},
		{r.Base.Debian.Components, []string{"main"}},
		{r.Users[0].Name, "ops"},
		{*r.Users[0].UID, 1000},
		{r.Users[0].Shell, "/bin/bash"},
		{r.Users[1].Shell, "/usr/sbin/nologin"},
		{r.Users[0].SSHAuthorizedKeys[0][:11], "ssh-ed25519"},
		{r.Apt.Repositories[0].Components, []string{"main"}},
		{r.Files[0].Mode, "0644"},
		{r.Files[1].Content, ""},
		{r.Files[2].Owner, "ops:ops"},
		{r.Files[2].Mode, "0755"},
		{r.Files[2].Content, "#!/bin/sh\necho \"hello from demo; literal: ${HOME}\"\n"},
		{r.Overlays[0].Target, "/"},
		{r.Overlays[0].Owner, "root:root"},
		{r.Overlays[0].Modes["etc/*"], "0644"},
		{r.Kernel.Cmdline, "console=ttyS0,115200n8 quiet"},
		{r.Disk.Size, "8GiB"},
		{r.Disk.Firmware, []string{"uefi"}},
		{r.Disk.ESPSize, "64MiB"},
		{r.Outputs, []string{"qcow2"}},
		{r.Variables["admin"], "admin"},
		{r.Vars["admin"], "ops"},
		{r.Vars["name"], "demo"},
	}
	for i, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("check %d: got %v, want %v", i, c.got, c.want)
		}
	}
}

func TestGoodMinimalDefaults(t *testing.T) {
	r, err := Load("testdata/good/minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := r.Base.Debian
	if d.Variant != "minbase" || !slices.Equal(d.Components, []string{"main"}) ||
		!slices.Equal(r.Disk.Firmware, []string{"bios", "uefi"}) || r.Disk.ESPSize != "64MiB" ||
		!slices.Equal(r.Outputs, []string{"qcow2"}) || r.Kernel.Cmdline != DefaultCmdline ||
		r.Disk.Size != "" || r.Vars == nil {
		t.Errorf("defaults not filled: %+v %+v", d, r)
	}
	// Defaults is idempotent.
	before := fmt.Sprintf("%+v", *r)
	r.Defaults()
	if after := fmt.Sprintf("%+v", *r); after != before {
		t.Errorf("Defaults changed a defaulted recipe:\n%s\n%s", before, after)
	}
}

func TestGoodImage(t *testing.T) {
	r, err := Load("testdata/good/image.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Base.Image.SHA256 != strings.ToLower(r.Base.Image.SHA256) || len(r.Base.Image.SHA256) != 64 {
		t.Errorf("sha256 not normalised: %q", r.Base.Image.SHA256)
	}
	if !slices.Equal(r.Outputs, []string{"raw", "qcow2"}) {
		t.Errorf("outputs %v", r.Outputs)
	}
}

func TestAnchorsAndMerge(t *testing.T) {
	src := `apiVersion: bake/v1
name: anchors
base:
  debian:
    suite: bookworm
    packages: &pkgs [curl, jq]
apt:
  packages: *pkgs
users:
  - &u {name: a, groups: [adm], sudo: nopasswd}
  - <<: *u
    name: b
    uid: !!str 7
`
	_, err := Parse("a.yaml", []byte(src), t.TempDir(), nil)
	// uid: !!str 7 is text, not a number: the tag is honoured.
	if err == nil || !strings.Contains(err.Error(), "a.yaml:13:10: users[1].uid: must be a whole number") {
		t.Fatalf("got %v", err)
	}
	src = strings.Replace(src, "uid: !!str 7", "uid: 1001", 1)
	r, err := Parse("a.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Apt.Packages, []string{"curl", "jq"}) || r.Users[1].Name != "b" ||
		r.Users[1].Sudo != "nopasswd" || !slices.Equal(r.Users[1].Groups, []string{"adm"}) || *r.Users[1].UID != 1001 {
		t.Errorf("anchors/merge: %+v %+v", r.Apt, r.Users)
	}
}

func TestVariables(t *testing.T) {
	src := `apiVersion: bake/v1
name: ${n}
variables: {n: vars, port: 8080, on: true}
base: {debian: {suite: bookworm}}
files:
  - {path: /etc/x, content: "${n}:${port}:${on}:$${n}:$$:${n}${n}"}
`
	r, err := Parse("v.yaml", []byte(src), ".", map[string]string{"n": "set"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Files[0].Content, "set:8080:true:${n}:$$:setset"; got != want {
		t.Errorf("content %q, want %q", got, want)
	}
	if r.Name != "set" || r.Vars["n"] != "set" || r.Variables["n"] != "vars" || r.Vars["port"] != "8080" {
		t.Errorf("vars: name %q Vars %v Variables %v", r.Name, r.Vars, r.Variables)
	}
	// A value from --set is text: it cannot inject YAML structure.
	r, err = Parse("v.yaml", []byte(src), ".", map[string]string{"n": "x\nusers: [{name: evil}]"})
	if err == nil || r != nil || !strings.Contains(err.Error(), "v.yaml:2:7: name: ") {
		t.Errorf("got %v", err)
	}
}

func TestUndeclaredSetWithoutVariables(t *testing.T) {
	_, err := Load("testdata/good/minimal.yaml", map[string]string{"mirror": "http://x"})
	want := `testdata/good/minimal.yaml: --set mirror=http://x: the recipe declares no variable "mirror" (declare it in the recipe, e.g. variables: {mirror: default})`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/nope.yaml", nil)
	var diags Diagnostics
	if !errors.As(err, &diags) || len(diags) != 1 || !strings.HasPrefix(err.Error(), "testdata/nope.yaml: cannot read recipe") {
		t.Errorf("got %v", err)
	}
}

// Escapes through symlinks are set up at run time: a checked-in symlink to
// a path outside the repository would not survive every checkout.
func TestSymlinkEscape(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "recipe")
	outside := filepath.Join(root, "secrets")
	for _, d := range []string{dir, outside, filepath.Join(dir, "overlays", "real")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(outside, "id_ed25519"), filepath.Join(dir, "motd")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		filepath.Join(dir, "overlays", "out"): outside,                              // dir link leaving
		filepath.Join(dir, "key"):             filepath.Join(outside, "id_ed25519"), // file link leaving
		filepath.Join(dir, "overlays", "in"):  "real",                               // link staying inside
		filepath.Join(dir, "motd-link"):       "motd",
	}
	for link, target := range links {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	src := `apiVersion: bake/v1
name: links
base: {debian: {suite: bookworm}}
overlays:
  - source: overlays/out
  - source: overlays/in
files:
  - {path: /root/.ssh/id_ed25519, source: key}
  - {path: /etc/motd, source: motd-link}
`
	_, err := Parse("links.yaml", []byte(src), dir, nil)
	var diags Diagnostics
	if !errors.As(err, &diags) || len(diags) != 2 {
		t.Fatalf("want 2 diagnostics, got %v", err)
	}
	for i, want := range []string{
		"links.yaml:5:13: overlays[0].source: overlays/out leaves the recipe folder (through a symlink",
		"links.yaml:8:43: files[0].source: key leaves the recipe folder (through a symlink",
	} {
		if !strings.HasPrefix(diags[i].String(), want) {
			t.Errorf("got  %s\nwant %s...", diags[i], want)
		}
	}

	r := &Recipe{Dir: dir}
	for rel, want := range map[string]string{"overlays/in": "overlays/real", "motd-link": "motd", ".": ""} {
		got, err := r.Resolve(rel)
		real, _ := filepath.EvalSymlinks(filepath.Join(dir, want))
		if err != nil || got != real {
			t.Errorf("Resolve(%q) = %q, %v; want %q", rel, got, err, real)
		}
	}
	for rel, wantErr := range map[string]error{
		"overlays/out": ErrEscapes, "key": ErrEscapes, "../secrets": ErrEscapes, "a/../../x": ErrEscapes,
		"missing": fs.ErrNotExist,
	} {
		if _, err := r.Resolve(rel); !errors.Is(err, wantErr) {
			t.Errorf("Resolve(%q) error %v, want %v", rel, err, wantErr)
		}
	}
	if _, err := r.Resolve("/etc/passwd"); err == nil {
		t.Error("Resolve accepted an absolute path")
	}
}

func TestValidateBuiltInGo(t *testing.T) {
	uid := 0
	r := &Recipe{APIVersion: APIVersion, Name: "go", Path: "go-built",
		Base:  Base{Debian: &DebianBase{Suite: "bookworm"}},
		Users: []User{{Name: "a", UID: &uid}},
		Files: []File{{Path: "/etc/a", Content: "x", Mode: "644"}},
	}
	err := r.Validate()
	if err == nil || err.Error() != "go-built: users[0].uid: uid 0 is root's and cannot be given to another account (leave uid out to let the system choose, or pick 1000 or above)" {
		t.Errorf("got %v", err)
	}
	uid = 1000
	if err := r.Validate(); err != nil {
		t.Errorf("got %v", err)
	}
	r.Defaults()
	if r.Files[0].Owner != "root:root" || r.Outputs[0] != "qcow2" {
		t.Errorf("Defaults: %+v", r)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"512MiB": 512 << 20, "4GiB": 4 << 30, "4G": 4 << 30, "1.5GiB": 3 << 29, "1 TiB": 1 << 40,
		"100B": 100, "64K": 64 << 10, "0.5KiB": 512, " 2M ": 2 << 20, "8388607T": 8388607 << 40,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"4GB": "write 4GiB", "4gib": "write 4GiB", "4": "no unit", "GiB": "does not start with a number",
		"1.2.3G": "does not start", "0.3B": "whole number", "-1G": "does not start", "9999999T": "too large",
		"4 parsecs": "unknown unit", ".5G": "does not start", "": "does not start", "1e3M": "unknown unit",
	} {
		if _, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q) error %v, want %q", in, err, want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]fs.FileMode{
		"0644": 0o644, "755": 0o755, "0000": 0, "4755": fs.ModeSetuid | 0o755, "1777": fs.ModeSticky | 0o777,
		"2750": fs.ModeSetgid | 0o750, "0o750": 0o750,
	} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "64", "0o64", "0x1f", "8000", "07777", "rwx", "+644", "-644"} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) accepted", in)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"packages", "repositories", "esp_size", "size", "name"}
	for in, want := range map[string]string{
		"pakages": "packages", "pakcages": "packages", "esp-size": "esp_size", "Size": "size",
		"nmae": "name", "colour": "", "x": "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Every format the outputs stage makes (package convert) is an output.
func TestEveryOutputFormat(t *testing.T) {
	src := `apiVersion: bake/v1
name: formats
base:
  debian:
    suite: bookworm
outputs: [raw, qcow2, vmdk, ova, vhd, vhdx, gce]
`
	r, err := Parse("f.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Outputs) != 7 {
		t.Errorf("outputs %v", r.Outputs)
	}
}

// gateway.settings decode into plain values (numbers as numbers, ${var}
// substituted) that openclaw.json's template then holds.
func TestGatewaySettings(t *testing.T) {
	src := `apiVersion: bake/v1
name: s
base: {debian: {suite: bookworm}}
variables: {level: debug}
users:
  - {name: admin}
  - {name: openclaw, system: true}
containers:
  - name: gw
    image: "r.example/gw@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    user: openclaw
gateway:
  container: gw
  settings:
    logging: {level: "${level}"}
    gateway: {controlUi: {enabled: false}}
    session: {idleMinutes: 30, ratio: 0.5, names: [a, b]}
firstboot: {admin_user: admin}
`
	r, err := Parse("s.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(r.Gateway.Settings)
	if want := `{"gateway":{"controlUi":{"enabled":false}},"logging":{"level":"debug"},"session":{"idleMinutes":30,"names":["a","b"],"ratio":0.5}}`; string(got) != want {
		t.Errorf("settings %s\nwant     %s", got, want)
	}
}
