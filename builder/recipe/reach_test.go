package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeTree makes files (path → content; a path ending in / is a folder)
// under dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(dir, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// diagsOf is err's Diagnostics, one line each.
func diagsOf(t *testing.T, err error) []string {
	t.Helper()
	var diags Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("got %v (%T), want Diagnostics", err, err)
	}
	var out []string
	for _, d := range diags {
		if d.Hint == "" {
			t.Errorf("no hint of what to write instead: %s", d)
		}
		out = append(out, d.String())
	}
	return out
}

// checkDiags fails unless got has exactly one line starting with each want
// prefix ("" in want: no diagnostics at all).
func checkDiags(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("want no problem, got:\n%v", err)
		}
		return
	}
	got := diagsOf(t, err)
	if len(got) != len(want) {
		t.Errorf("%d diagnostics, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for _, w := range want {
		n := 0
		for _, g := range got {
			if strings.HasPrefix(g, w) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d diagnostics start with\n  %s\ngot:\n%s", n, w, strings.Join(got, "\n"))
		}
	}
}

// A recipe that names a path inside .git, or one its context's .bakeignore
// lists, directly or through a symlink, is refused at validate time, with
// the place in the recipe; the rules follow gitignore's subset documented
// on ignoreRules.
func TestIgnoredSources(t *testing.T) {
	const head = "apiVersion: bake/v1\nname: ig\nbase: {debian: {suite: bookworm}}\n"
	const ignore = "# secrets stay home\n\n*.pem\n/build\nkeys/\ndeploy/**/token\n!keep.pem\nlogs/*.log\n"
	tests := []struct {
		name  string
		files map[string]string
		body  string
		want  []string
	}{
		{"git config", map[string]string{".git/config": "[remote] token"},
			"files:\n  - {path: /etc/x, source: .git/config}\n",
			[]string{"r.yaml:5:28: files[0].source: .git/config is inside .git, which is never read by bake (name a file outside .git"}},
		{"git folder as overlay", map[string]string{".git/hooks/": ""},
			"overlays:\n  - source: .git\n",
			[]string{"r.yaml:5:13: overlays[0].source: .git is inside .git"}},
		{"git below", map[string]string{"sub/.git/config": "x"},
			"files:\n  - {path: /etc/x, source: sub/.git/config}\n",
			[]string{"r.yaml:5:28: files[0].source: sub/.git/config is inside .git"}},
		{"gitlink file", map[string]string{".git": "gitdir: /elsewhere"},
			"files:\n  - {path: /etc/x, source: .git}\n",
			[]string{"r.yaml:5:28: files[0].source: .git is inside .git"}},
		{"symlink into git", map[string]string{".git/config": "x", "link": "@.git/config"},
			"files:\n  - {path: /etc/x, source: link}\n",
			[]string{"r.yaml:5:28: files[0].source: link is inside .git"}},
		{"ignored name at any depth", map[string]string{".bakeignore": ignore, "a/b/server.pem": "k"},
			"files:\n  - {path: /etc/x, source: a/b/server.pem}\n",
			[]string{"r.yaml:5:28: files[0].source: a/b/server.pem is excluded by ", ".bakeignore:3 (*.pem), and so is never read by bake"}},
		{"anchored", map[string]string{".bakeignore": ignore, "build/out": "x", "src/build/out": "y"},
			"files:\n  - {path: /etc/x, source: build/out}\n  - {path: /etc/y, source: src/build/out}\n",
			[]string{"r.yaml:5:28: files[0].source: build/out is excluded by "}},
		{"folder only", map[string]string{".bakeignore": ignore, "keys/a.key": "k", "o/keys": "a file"},
			"overlays:\n  - source: keys\n  - source: o\nfiles:\n  - {path: /etc/x, source: keys/a.key}\n  - {path: /etc/y, source: o/keys}\n",
			[]string{"r.yaml:5:13: overlays[0].source: keys is excluded by ", "r.yaml:8:28: files[0].source: keys/a.key is excluded by "}},
		{"double star", map[string]string{".bakeignore": ignore, "deploy/a/b/token": "t", "deploy/token": "t"},
			"files:\n  - {path: /etc/x, source: deploy/a/b/token}\n  - {path: /etc/y, source: deploy/token}\n",
			[]string{"r.yaml:5:28: files[0].source: deploy/a/b/token is excluded", "r.yaml:6:28: files[1].source: deploy/token is excluded"}},
		{"negation", map[string]string{".bakeignore": ignore, "keep.pem": "public", "logs/keep.pem": "x"},
			"files:\n  - {path: /etc/x, source: keep.pem}\n",
			nil},
		{"symlink to an ignored file", map[string]string{".bakeignore": ignore, "s.pem": "k", "ok": "@s.pem"},
			"files:\n  - {path: /etc/x, source: ok}\n",
			[]string{"r.yaml:5:28: files[0].source: ok is excluded by "}},
		{"not ignored", map[string]string{".bakeignore": ignore, "logs/a.txt": "x", "pem": "x"},
			"files:\n  - {path: /etc/x, source: logs/a.txt}\n  - {path: /etc/y, source: pem}\n",
			nil},
		{"compile cache list", map[string]string{".bakeignore": "compile-cache.txt\n", "app/package-lock.json": "{}", "app/compile-cache.txt": "x"},
			"users: [{name: app, system: true}]\ncontainers:\n  - {name: gw, user: app, build: {app: openclaw@2026.9.6, lockfile: app/package-lock.json}}\n",
			[]string{"r.yaml:6:69: containers[0].build.lockfile: app/compile-cache.txt is excluded by "}},
		{"key and lockfile", map[string]string{".bakeignore": ignore, "k.pem": "k"},
			"apt:\n  repositories:\n    - {name: r, uri: https://example.org/d, suite: s, key: k.pem}\n",
			[]string{"r.yaml:6:60: apt.repositories[0].key: k.pem is excluded by "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			links := map[string]string{}
			files := map[string]string{}
			for p, c := range tt.files {
				if target, ok := strings.CutPrefix(c, "@"); ok {
					links[p] = target
				} else {
					files[p] = c
				}
			}
			writeTree(t, dir, files)
			for p, target := range links {
				if err := os.Symlink(target, filepath.Join(dir, p)); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(filepath.Join(dir, "r.yaml"), []byte(head+tt.body), 0o644)
			wd, _ := os.Getwd()
			t.Chdir(dir)
			_, err := LoadIn(dir, "r.yaml", nil)
			t.Chdir(wd)
			if len(tt.want) == 2 && !strings.HasPrefix(tt.want[1], "r.yaml") {
				// a prefix and a part further on
				checkDiags(t, err, tt.want[:1])
				if err != nil && !strings.Contains(err.Error(), tt.want[1]) {
					t.Errorf("missing %q in\n%v", tt.want[1], err)
				}
				return
			}
			checkDiags(t, err, tt.want)
		})
	}
}

func TestIgnoreRules(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, IgnoreFile)
	os.WriteFile(f, []byte("secret\n/top/*.txt\ncache/\n!cache/keep\n\\#hash\nx/**/y/z\n"), 0o644)
	rs, err := parseIgnore(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		rel   string
		isDir bool
		want  bool
	}{
		{"secret", false, true}, {"a/secret", true, true}, {"a/secret/b/c", false, true},
		{"secrets", false, false},
		{"top/a.txt", false, true}, {"top/a/b.txt", false, false}, {"sub/top/a.txt", false, false},
		{"cache", true, true}, {"cache", false, false}, {"a/cache/f", false, true},
		{"cache/keep", false, true}, // below an excluded folder: not re-included
		{"#hash", false, true},
		{"x/y/z", false, true}, {"x/1/2/y/z", false, true}, {"x/y/zz", false, false},
		{".git", true, true}, {"a/.git/config", false, true}, {".gitignore", false, false},
		{".", true, false},
	} {
		if got := rs.excluded(tt.rel, tt.isDir) != ""; got != tt.want {
			t.Errorf("excluded(%q, dir %v) = %v, want %v", tt.rel, tt.isDir, got, tt.want)
		}
	}
	os.WriteFile(f, []byte("ok\n[\n"), 0o644)
	if _, err := parseIgnore(f); err == nil || !strings.Contains(err.Error(), ":2: \"[\" is not a pattern") {
		t.Errorf("bad pattern: %v", err)
	}
	os.WriteFile(f, []byte(strings.Repeat("x\n", maxIgnoreFile)), 0o644)
	if _, err := parseIgnore(f); err == nil || !strings.Contains(err.Error(), "bytes, more than") {
		t.Errorf("large file: %v", err)
	}
	os.Remove(f)
	if err := os.Mkdir(f, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := parseIgnore(f); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a folder: %v", err)
	}
	// A FIFO does not hang it.
	os.Remove(f)
	if err := syscall.Mkfifo(f, 0o600); err != nil {
		t.Fatal(err)
	}
	inTime(t, 5*time.Second, func() { _, err = parseIgnore(f) })
	if err == nil || !strings.Contains(err.Error(), "not a regular file (a named pipe)") {
		t.Errorf("a FIFO: %v", err)
	}
}

// The overlay walk asks Sources.Skip of every entry: check the answers for
// a tree, and that HostPaths lists the .bakeignore.
func TestSourcesSkip(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		".bakeignore": "*.key\nprivate/\n", "r.yaml": "apiVersion: bake/v1\nname: s\nbase: {debian: {suite: bookworm}}\noverlays: [{source: o}]\n",
		"o/etc/motd": "hi", "o/etc/host.key": "k", "o/private/x": "p", "o/.git/config": "c",
	})
	r, err := LoadIn(dir, filepath.Join(dir, "r.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Sources()
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(dir)
	for p, want := range map[string]bool{
		"o": false, "o/etc": false, "o/etc/motd": false, "o/etc/host.key": true, "o/private": true, "o/.git": true, "o/.git/config": true,
	} {
		fi, _ := os.Stat(filepath.Join(real, p))
		if got := s.Skip(filepath.Join(real, p), fi.IsDir()); got != want {
			t.Errorf("Skip(%s) = %v, want %v", p, got, want)
		}
	}
	var got []string
	for _, hp := range r.HostPaths() {
		got = append(got, hp.What+" "+hp.Path)
	}
	if want := "ignore file " + filepath.Join(real, IgnoreFile); !strings.Contains(strings.Join(got, "\n"), want) {
		t.Errorf("HostPaths lacks %q:\n%s", want, strings.Join(got, "\n"))
	}
}

// --context bounds the context instead of the working directory, and a
// context above the repository root is refused without it.
func TestContextBound(t *testing.T) {
	work := t.TempDir()
	writeTree(t, work, map[string]string{
		"mono/.git/HEAD":            "ref",
		"mono/proj/recipes/":        "",
		"mono/proj/overlays/o/":     "",
		"shared/o/":                 "",
		"elsewhere/":                "",
		"mono/proj/recipes/in.yaml": "apiVersion: bake/v1\nname: c\ncontext: ..\nbase: {debian: {suite: bookworm}}\noverlays: [{source: ../overlays/o}]\n",
	})
	// Above the repository root: "context: ../../.." from mono/proj/recipes is work.
	up := filepath.Join(work, "mono/proj/recipes/up.yaml")
	os.WriteFile(up, []byte("apiVersion: bake/v1\nname: c\ncontext: ../../..\nbase: {debian: {suite: bookworm}}\noverlays: [{source: ../../../shared/o}]\n"), 0o644)
	in := filepath.Join(work, "mono/proj/recipes/in.yaml")
	real := func(p string) string { s, _ := filepath.EvalSymlinks(p); return s }
	rwork, rmono := real(work), real(filepath.Join(work, "mono"))

	tests := []struct {
		name, recipe, wd, bound string
		want                    string // "" for valid
	}{
		{"inside the repository", in, work, "", ""},
		{"above the repository root", up, work, "",
			up + ":3:10: context: context ../../.. resolves to " + rwork + ", above the repository root " + rmono +
				" (keep the context inside the repository (at most " + rmono + "), or pass --context " + rwork + " to allow it)"},
		{"--context allows it", up, work, work, ""},
		{"--context allows it from anywhere", up, filepath.Join(work, "elsewhere"), work, ""},
		{"--context too narrow", up, work, filepath.Join(work, "mono"),
			up + ":3:10: context: context ../../.. resolves to " + rwork + ", outside --context " + rmono},
		{"--context replaces the working directory", in, work, filepath.Join(work, "mono/proj/recipes"),
			in + ":3:10: context: context .. resolves to " + real(filepath.Join(work, "mono/proj")) + ", outside --context"},
		{"recipe folder outside --context", filepath.Join(work, "mono/proj/recipes/own.yaml"), work, filepath.Join(work, "elsewhere"),
			filepath.Join(work, "mono/proj/recipes/own.yaml") + ":1:1: the recipe folder " + real(filepath.Join(work, "mono/proj/recipes")) + " is outside --context"},
		{"--context /", in, work, "/", in + ": --context / is / (the whole build host)"},
		{"--context missing", in, work, filepath.Join(work, "nope"), in + ": --context " + filepath.Join(work, "nope") + ": "},
		{"--context a file", in, work, filepath.Join(work, "mono/.git/HEAD"), in + ": --context " + filepath.Join(work, "mono/.git/HEAD") + " is not a folder"},
	}
	os.WriteFile(filepath.Join(work, "mono/proj/recipes/own.yaml"), []byte("apiVersion: bake/v1\nname: c\nbase: {debian: {suite: bookworm}}\n"), 0o644)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadWith(tt.recipe, nil, LoadOptions{WorkDir: tt.wd, ContextDir: tt.bound})
			if tt.want == "" {
				checkDiags(t, err, nil)
				return
			}
			checkDiags(t, err, []string{tt.want})
		})
	}
}

// Validate-time checks that would otherwise fail only after a bootstrap:
// kernel arguments GRUB would read as script, owners nobody defines, an
// admin named root or docker. Every problem is reported at once.
func TestValidateAccountsAndCmdline(t *testing.T) {
	const head = "apiVersion: bake/v1\nname: v\nbase: {debian: {suite: bookworm}}\n"
	tests := []struct {
		name string
		body string
		want []string
	}{
		{"safe cmdline", `kernel: {cmdline: "console=ttyS0,115200n8 quiet systemd.unit=multi-user.target ipv6.disable=1 isolcpus=1-3 -- single"}` + "\n", nil},
		{"unsafe cmdline", `kernel: {cmdline: "quiet foo=\"a b\" x;reboot $(id) ` + "`id`" + ` a\\b c|d e&f g<h #x y'z ok\tt é=1"}` + "\n",
			[]string{
				`v.yaml:4:19: kernel.cmdline: argument "foo=\"a b\"" contains a space inside quotes, which is not safe on a kernel command line (write each argument as NAME or NAME=VALUE`,
				`v.yaml:4:19: kernel.cmdline: argument "x;reboot" contains ';'`,
				`v.yaml:4:19: kernel.cmdline: argument "$(id)" contains '$'`,
				"v.yaml:4:19: kernel.cmdline: argument \"`id`\" contains '`'",
				`v.yaml:4:19: kernel.cmdline: argument "a\\b" contains '\\'`,
				`v.yaml:4:19: kernel.cmdline: argument "c|d" contains '|'`,
				`v.yaml:4:19: kernel.cmdline: argument "e&f" contains '&'`,
				`v.yaml:4:19: kernel.cmdline: argument "g<h" contains '<'`,
				`v.yaml:4:19: kernel.cmdline: argument "#x" contains '#'`,
				`v.yaml:4:19: kernel.cmdline: argument "y'z" contains '\''`,
				`v.yaml:4:19: kernel.cmdline: argument "ok\tt" contains the control character U+0009`,
				`v.yaml:4:19: kernel.cmdline: argument "é=1" contains the non-ASCII character U+00E9`,
			}},
		{"newline in cmdline", "kernel: {cmdline: \"quiet\\ninit=/bin/sh\"}\n",
			[]string{"v.yaml:4:19: kernel.cmdline: spans several lines"}},
		{"control char", "kernel: {cmdline: \"quiet\\x1b[2J\"}\n",
			[]string{`v.yaml:4:19: kernel.cmdline: argument "quiet\x1b[2J" contains the control character U+001B`}},
		{"owners defined", `groups: [{name: ops}]
users: [{name: app, system: true}]
overlays: [{source: o, owner: "app:ops"}, {source: o, owner: "www-data:adm"}]
files:
  - {path: /a, content: x, owner: "app:app"}
  - {path: /b, content: x, owner: "systemd-network:systemd-journal"}
  - {path: /c, content: x, owner: "_apt:nogroup"}
  - {path: /d, content: x, owner: nobody}
  - {path: /e, content: x, owner: "root:docker"}
`, []string{`v.yaml:12:35: files[4].owner: group "docker" is neither declared in groups (nor a user's own group) nor one of Debian's base system groups (declare it under groups:`}},
		{"docker with containers", `users: [{name: app, system: true}]
containers: [{name: c, user: app, image: "r.example/a@sha256:` + strings.Repeat("a", 64) + `"}]
files: [{path: /e, content: x, owner: "root:docker"}]
`, nil},
		{"owners undefined", `users: [{name: app, system: true}]
overlays: [{source: o, owner: "ghost:ops"}]
files:
  - {path: /a, content: x, owner: "app:wheel"}
  - {path: /b, content: x, owner: postgres}
  - {path: /c, content: x, owner: "systemd-:root"}
`, []string{
			`v.yaml:5:31: overlays[0].owner: user "ghost" is neither declared in users nor one of Debian's base system users (declare it under users:, e.g. {name: ghost, system: true}`,
			`v.yaml:5:31: overlays[0].owner: group "ops" is neither declared`,
			`v.yaml:7:35: files[0].owner: group "wheel" is neither declared`,
			`v.yaml:8:35: files[1].owner: user "postgres" is neither declared`,
			`v.yaml:9:35: files[2].owner: user "systemd-" is neither declared`,
		}},
		{"admin root", "users: [{name: admin}]\nfirstboot: {admin_user: root}\n",
			[]string{"v.yaml:5:25: firstboot.admin_user: the admin user must not be root (name a user of its own"}},
		{"admin docker", "users: [{name: docker}]\nfirstboot: {admin_user: docker}\n",
			[]string{"v.yaml:5:25: firstboot.admin_user: the admin user must not be docker: its primary group (a user's own group) would be docker"}},
		{"admin in docker group", "users: [{name: admin, groups: [docker]}]\nfirstboot: {admin_user: admin}\n",
			[]string{"v.yaml:4:32: users[0].groups[0]: the admin user must not be in the docker group"}},
		{"admin fine", "users: [{name: admin, groups: [sudo], sudo: nopasswd}]\nfirstboot: {admin_user: admin}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"o/": ""})
			_, err := Parse("v.yaml", []byte(head+tt.body), dir, nil)
			checkDiags(t, err, tt.want)
		})
	}
}

// An unusable .bakeignore is one problem, at the context, however many
// paths the recipe names.
func TestBadIgnoreFile(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{".bakeignore": "ok\n[\n", "a": "x", "b": "y"})
	_, err := Parse("r.yaml", []byte("apiVersion: bake/v1\nname: b\nbase: {debian: {suite: bookworm}}\nfiles: [{path: /a, source: a}, {path: /b, source: b}]\n"), dir, nil)
	checkDiags(t, err, []string{"r.yaml:1:1: " + filepath.Join(dir, ".bakeignore") + `:2: "[" is not a pattern`})
}

// A home directory as context needs --context naming exactly it; a
// --context above it does not make it deliberate.
func TestContextBoundHome(t *testing.T) {
	base := t.TempDir()
	home := filepath.Join(base, "user")
	t.Setenv("HOME", home)
	writeTree(t, base, map[string]string{"user/proj/r.yaml": "apiVersion: bake/v1\nname: h\ncontext: ..\nbase: {debian: {suite: bookworm}}\n"})
	rp := filepath.Join(home, "proj/r.yaml")
	realHome, _ := filepath.EvalSymlinks(home)
	_, err := LoadWith(rp, nil, LoadOptions{ContextDir: base})
	checkDiags(t, err, []string{rp + ":3:10: context: context .. is " + realHome + ", a home directory (move the recipe and its files into a project folder and name that, pass --context " + realHome + " if you mean it"})
	_, err = LoadWith(rp, nil, LoadOptions{ContextDir: home})
	checkDiags(t, err, nil)
}
