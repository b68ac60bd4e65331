package oci

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/execx"
)

func TestSatisfies(t *testing.T) {
	const openclaw = ">=24.16.0 <25 || >=26.1.0"
	for _, c := range []struct {
		v, r string
		ok   bool
	}{
		{"24.21.0", openclaw, true},
		{"24.16.0", openclaw, true},
		{"24.15.9", openclaw, false},
		{"25.0.0", openclaw, false},
		{"26.0.5", openclaw, false},
		{"26.1.0", openclaw, true},
		{"30.0.0", openclaw, true},
		{"20.20.2", openclaw, false},
		{"18.0.0", ">=18", true},
		{"17.9.9", ">=18", false},
		{"18.5.0", "^18.2.0", true},
		{"19.0.0", "^18.2.0", false},
		{"0.2.5", "^0.2.3", true},
		{"0.3.0", "^0.2.3", false},
		{"14.17.9", "~14.17.0", true},
		{"14.18.0", "~14.17.0", false},
		{"16.3.1", "16.x", true},
		{"17.0.0", "16.x", false},
		{"16.3.1", "14 - 16", true},
		{"17.0.0", "14 - 16", false},
		{"16.3.1", "14.0.0 - 16.3.0", false},
		{"20.0.0", "*", true},
		{"20.0.0", "", true},
		{"20.0.0", ">= 18.0.0", true},
		{"20.0.0", ">18", true},
		{"18.9.0", ">18", false},
		{"18.0.0", "<=18", true},
		{"19.0.0", "<=18", false},
		{"12.22.0", "^12.22.0 || ^14.17.0 || >=16.0.0", true},
		{"13.0.0", "^12.22.0 || ^14.17.0 || >=16.0.0", false},
		{"22.1.0", ">=20.0.0-rc.1", true},
	} {
		got, err := satisfies(c.v, c.r)
		if err != nil || got != c.ok {
			t.Errorf("satisfies(%q, %q) = %v, %v; want %v", c.v, c.r, got, err, c.ok)
		}
	}
	if _, err := satisfies("24", ">=1"); err == nil {
		t.Error("partial version accepted as a Node version")
	}
	if _, err := satisfies("24.0.0", ">=abc"); err == nil {
		t.Error("bad range accepted")
	}
	// A part above node-semver's limit is an error, not a wrapped-around
	// bound (every version satisfied ">9223372036854775807").
	for _, r := range []string{">9223372036854775807", "<=9223372036854775807", "^9007199254740992.0.0"} {
		if ok, err := satisfies("24.0.0", r); err == nil {
			t.Errorf("range %q accepted (satisfied: %v)", r, ok)
		}
	}
	if ok, err := satisfies("24.0.0", "<9007199254740991"); !ok || err != nil {
		t.Errorf("range up to node-semver's largest part: %v %v", ok, err)
	}
}

func TestParseLockfile(t *testing.T) {
	b, err := os.ReadFile("testdata/package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	app := NpmApp{Package: "openclaw", Version: "2026.9.6"}
	al, err := parseLockfile(b, app)
	if err != nil {
		t.Fatal(err)
	}
	if al.Engine != ">=24.16.0 <25 || >=26.1.0" || al.Bin["openclaw"] != "openclaw.mjs" || al.Packages != 2 {
		t.Errorf("got %+v", al)
	}
	_, err = parseLockfile(b, NpmApp{Package: "openclaw", Version: "2026.9.7"})
	if err == nil || !strings.Contains(err.Error(), "pins openclaw@2026.9.6") || !strings.Contains(err.Error(), "regenerate") {
		t.Errorf("version mismatch: %v", err)
	}
	if _, err := parseLockfile(b, NpmApp{Package: "other", Version: "1.0.0"}); err == nil {
		t.Error("lockfile of another package accepted")
	}
	if _, err := parseLockfile([]byte(`{"lockfileVersion":1}`), app); err == nil {
		t.Error("lockfile v1 accepted")
	}
}

func TestCheckEngine(t *testing.T) {
	app := NpmApp{Package: "openclaw", Version: "2026.9.6"}
	err := checkEngine(app, ">=24.16.0 <25 || >=26.1.0", "22.12.0")
	var ee *EngineError
	if !errors.As(err, &ee) {
		t.Fatalf("got %v", err)
	}
	want := `npm package openclaw@2026.9.6 requires node ">=24.16.0 <25 || >=26.1.0" (engines.node in its package.json), but the image's Node runtime is 22.12.0`
	if err.Error() != want {
		t.Errorf("message:\n%s\nwant\n%s", err, want)
	}
	if err := checkEngine(app, "", "1.0.0"); err != nil {
		t.Error(err)
	}
}

func TestNpmNotFound(t *testing.T) {
	for _, out := range []string{
		"npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/nope",
		"npm error code ETARGET\nnpm error notarget No matching version found for openclaw@1999.1.1.",
		`{"error": {"code": "E404", "summary": "No match found for version 24.99.0"}}`,
	} {
		if !npmNotFound(&execx.Error{Cmd: "npm", Err: errors.New("exit status 1"), Output: out}) {
			t.Errorf("not recognised: %q", out)
		}
	}
	if npmNotFound(&execx.Error{Cmd: "npm", Err: errors.New("exit status 1"), Output: "npm error code ECONNRESET"}) {
		t.Error("network error taken for not found")
	}
}

// scriptRunner answers commands with functions, for tests of the code that
// drives npm and mmdebstrap.
type scriptRunner struct {
	run    func(c execx.Cmd) error
	output func(c execx.Cmd) ([]byte, error)
	cmds   []string
}

func (s *scriptRunner) Run(_ context.Context, c execx.Cmd) error {
	s.cmds = append(s.cmds, c.String())
	if s.run == nil {
		return nil
	}
	return s.run(c)
}

func (s *scriptRunner) Output(_ context.Context, c execx.Cmd) ([]byte, error) {
	s.cmds = append(s.cmds, c.String())
	if s.output == nil {
		return nil, nil
	}
	return s.output(c)
}

func TestLock(t *testing.T) {
	fixture, _ := os.ReadFile("testdata/package-lock.json")
	r := &scriptRunner{run: func(c execx.Cmd) error {
		pj, err := os.ReadFile(filepath.Join(c.Dir, "package.json"))
		if err != nil || !strings.Contains(string(pj), `"openclaw": "2026.9.6"`) {
			t.Errorf("package.json: %s %v", pj, err)
		}
		return os.WriteFile(filepath.Join(c.Dir, "package-lock.json"), fixture, 0o644)
	}}
	dir := filepath.Join(t.TempDir(), "recipe")
	app := NpmApp{Package: "openclaw", Version: "2026.9.6"}
	if err := lock(context.Background(), r, app, dir, ""); err != nil {
		t.Fatal(err)
	}
	if len(r.cmds) != 1 || !strings.Contains(r.cmds[0], "npm install --package-lock-only --ignore-scripts") {
		t.Errorf("commands: %q", r.cmds)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	pj, _ := os.ReadFile(filepath.Join(dir, "package.json"))
	if string(got) != string(fixture) || string(pj) != string(appPackageJSON(app)) {
		t.Error("lock did not write package.json and package-lock.json")
	}
}

func TestLockNotFound(t *testing.T) {
	r := &scriptRunner{run: func(c execx.Cmd) error {
		return &execx.Error{Cmd: c.String(), Err: errors.New("exit status 1"),
			Output: "npm error code ETARGET\nnpm error notarget No matching version found for openclaw@1999.1.1."}
	}}
	dir := t.TempDir()
	err := lock(context.Background(), r, NpmApp{Package: "openclaw", Version: "1999.1.1"}, dir, "")
	var nf *NotFoundError
	if !errors.As(err, &nf) || err.Error() != "npm package openclaw@1999.1.1 not found" {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "package.json")); err == nil {
		t.Error("a failed lock left a package.json")
	}
	if err := lock(context.Background(), r, NpmApp{Package: "openclaw", Version: "^1"}, dir, ""); err == nil {
		t.Error("a range accepted as the app version")
	}
}

// Every package of a lockfile comes from the npm registry pinned by its
// integrity, or inside its parent (inBundle); a link or another host is
// refused before npm runs.
func TestLockEntriesFromTheRegistryOnly(t *testing.T) {
	good := lockPackage{Version: "1.0.0", Integrity: "sha512-abc"}
	for _, tc := range []struct {
		name string
		p    lockPackage
		ok   bool
	}{
		{"registry, no resolved", good, true},
		{"registry URL", lockPackage{Integrity: "sha512-abc", Resolved: "https://registry.npmjs.org/ws/-/ws-8.0.0.tgz"}, true},
		{"bundled", lockPackage{InBundle: true}, true},
		{"other host", lockPackage{Integrity: "sha512-abc", Resolved: "https://evil.example/ws.tgz"}, false},
		{"registry lookalike", lockPackage{Integrity: "sha512-abc", Resolved: "https://registry.npmjs.org.evil.example/ws.tgz"}, false},
		{"git", lockPackage{Integrity: "sha512-abc", Resolved: "git+ssh://git@github.com/x/y.git"}, false},
		{"no integrity", lockPackage{Version: "1.0.0"}, false},
		{"sha1 only", lockPackage{Integrity: "sha1-abc"}, false},
		{"link to a host folder", lockPackage{Link: true, Resolved: "../../../../root"}, false},
	} {
		err := checkLockEntry("node_modules/x", tc.p)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	// The committed lockfile passes.
	b, err := os.ReadFile("../recipes/openclaw-gateway/package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseLockfile(b, NpmApp{Package: "openclaw", Version: "2026.9.6"}); err != nil {
		t.Errorf("the committed lockfile: %v", err)
	}
}
