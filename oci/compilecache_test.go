package oci

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSandboxCmd(t *testing.T) {
	s := sandbox{
		Root: "/var/cache/bake/oci/tmp/compile-cache-1/root", UID: 65534, GID: 65534,
		Env: []string{"PATH=/usr/bin:/bin", "HOME=/home/node", "ODD=it's"}, Dir: "/home/node",
		Tmpfs:   []string{"/home/node"},
		Binds:   []bind{{Host: "/w/in", Guest: "/tmp/bake-in"}, {Host: "/w/out dir", Guest: "/tmp/bake-out", Writable: true}},
		Timeout: 90 * time.Second,
		Argv:    []string{"/bin/sh", "-c", "exec node x.cjs"},
	}
	cmd, err := s.Cmd()
	if err != nil {
		t.Fatal(err)
	}
	// bake runs sh (which SIGKILLs unshare when it is told to stop),
	// unshare makes the namespaces, and the inner script the mounts.
	if cmd.Name != "sh" || len(cmd.Args) != 15 || cmd.Args[1] != sandboxOuter || cmd.Args[13] != "-c" {
		t.Fatalf("command %q", cmd.Args)
	}
	if got := strings.Join(cmd.Args[2:12], " "); got !=
		"bake-sandbox --mount --net --pid --ipc --uts --fork --kill-child=SIGKILL --propagation private" {
		t.Errorf("unshare: %s", got)
	}
	want := `set -eu
r=/var/cache/bake/oci/tmp/compile-cache-1/root
mount --bind "$r" "$r"
mount -o remount,bind,ro,nosuid,nodev "$r"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t tmpfs -o mode=0755,size=64k,nosuid,noexec tmpfs "$r/dev"
for d in null zero full random urandom; do : >"$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r"/tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r"/home/node
mkdir -p "$r"/tmp/bake-in
mount --bind -o nosuid,nodev,ro /w/in "$r"/tmp/bake-in
mkdir -p "$r"/tmp/bake-out
mount --bind -o nosuid,nodev '/w/out dir' "$r"/tmp/bake-out
timeout -s KILL 90 setpriv --no-new-privs chroot --userspec=65534:65534 --groups=65534 /var/cache/bake/oci/tmp/compile-cache-1/root /usr/bin/env -i -C /home/node PATH=/usr/bin:/bin HOME=/home/node 'ODD=it'\''s' /bin/sh -c 'exec node x.cjs' &
wait $!
`
	if got := cmd.Args[14]; got != want {
		t.Errorf("inner script:\n%s\nwant:\n%s", got, want)
	}

	s.Loopback = true
	cmd, _ = s.Cmd()
	if inner := cmd.Args[14]; !strings.Contains(inner, "\nip link set lo up\n") {
		t.Errorf("loopback: %s", inner)
	}

	for name, bad := range map[string]sandbox{
		"root uid":      {Root: "/r", UID: 0, GID: 1, Timeout: time.Second, Argv: []string{"x"}},
		"relative root": {Root: "r", UID: 1, GID: 1, Timeout: time.Second, Argv: []string{"x"}},
		"no limit":      {Root: "/r", UID: 1, GID: 1, Argv: []string{"x"}},
		"no command":    {Root: "/r", UID: 1, GID: 1, Timeout: time.Second},
		"bind to /":     {Root: "/r", UID: 1, GID: 1, Timeout: time.Second, Argv: []string{"x"}, Binds: []bind{{Host: "/h", Guest: "/"}}},
		"bind up":       {Root: "/r", UID: 1, GID: 1, Timeout: time.Second, Argv: []string{"x"}, Binds: []bind{{Host: "/h", Guest: "/tmp/../../x"}}},
		"relative host": {Root: "/r", UID: 1, GID: 1, Timeout: time.Second, Argv: []string{"x"}, Binds: []bind{{Host: "h", Guest: "/tmp/x"}}},
		"tmpfs on /":    {Root: "/r", UID: 1, GID: 1, Timeout: time.Second, Argv: []string{"x"}, Tmpfs: []string{"/"}},
	} {
		if _, err := bad.Cmd(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestCacheModuleKey(t *testing.T) {
	// Node's own file names, from a cache Node 24.21.0 wrote for the
	// gateway (NODE_DEBUG_NATIVE=COMPILE_CACHE).
	for m, want := range map[cacheModule]string{
		{ESM: true, Name: "file:///app/node_modules/zod/v4/locales/ne.js"}: "05bcb8c2",
		{Name: "/app/node_modules/undici/index.js"}:                        "50bd5372",
	} {
		if got := m.key(); got != want {
			t.Errorf("%s: key %s, Node's %s", m, got, want)
		}
	}
}

func TestCompileCacheList(t *testing.T) {
	app := NpmApp{Package: "openclaw", Version: "2026.9.6"}
	mods := []cacheModule{{ESM: true, Name: "file:///app/node_modules/openclaw/openclaw.mjs"},
		{Name: "/app/node_modules/ws/index.js"}, {ESM: true, Name: "file:///app/node_modules/@s/p/a%20b.js"}}
	b := formatCompileCacheList(app, mods)
	l, err := parseCompileCacheList(b, app)
	if err != nil || l.App != "openclaw@2026.9.6" || !slices.Equal(l.Modules, mods) {
		t.Fatalf("round trip: %+v %v\n%s", l, err, b)
	}
	if p, _ := mods[2].path(); p != "/app/node_modules/@s/p/a b.js" {
		t.Errorf("path %q", p)
	}
	if _, err := parseCompileCacheList(b, NpmApp{Package: "openclaw", Version: "2026.9.7"}); err == nil ||
		!strings.Contains(err.Error(), "record it again") {
		t.Errorf("another version: %v", err)
	}
	for _, bad := range []string{
		"esm file:///a.js\n",                          // no app line
		"app openclaw@2026.9.6\n",                     // no module
		"app openclaw@2026.9.6\nmjs /a.js\n",          // kind
		"app openclaw@2026.9.6\nesm /a.js\n",          // not a URL
		"app openclaw@2026.9.6\ncjs a.js\n",           // relative
		"app openclaw@2026.9.6\ncjs /a/../b.js\n",     // not clean
		"app openclaw@2026.9.6\ncjs /a.js\ncjs /a.js", // twice
		"app openclaw@2026.9.6\nesm http://x/a.js\n",  // not a file
	} {
		if _, err := parseCompileCacheList([]byte(bad), app); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestCompileCacheListShipped(t *testing.T) {
	// The shipped list parses, belongs to the shipped version and names
	// the gateway's entry point.
	spec := OpenClawGatewaySpec(filepath.Join("..", "recipes", "openclaw-gateway"), testEpoch)
	b, err := os.ReadFile(spec.CompileCache.List)
	if err != nil {
		t.Fatal(err)
	}
	l, err := parseCompileCacheList(b, spec.App)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(l.Modules, cacheModule{ESM: true, Name: "file:///app/node_modules/openclaw/openclaw.mjs"}) || len(l.Modules) < 1000 {
		t.Errorf("%d modules, openclaw.mjs among them: %v", len(l.Modules),
			slices.Contains(l.Modules, cacheModule{ESM: true, Name: "file:///app/node_modules/openclaw/openclaw.mjs"}))
	}
}

func TestLimitWriter(t *testing.T) {
	var b bytes.Buffer
	w := &limitWriter{w: &b, n: 5}
	for _, s := range []string{"abc", "defg", "hij"} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("write %q: %d %v", s, n, err)
		}
	}
	if b.String() != "abcde\n[output cut]\n" {
		t.Errorf("%q", b.String())
	}
}

func TestRecordedModules(t *testing.T) {
	tree, out := t.TempDir(), t.TempDir()
	write(t, tree, "app/node_modules/openclaw/openclaw.mjs", "", 0o644)
	write(t, tree, "app/node_modules/openclaw/dist/a b.js", "", 0o644)
	write(t, tree, "app/node_modules/ws/index.js", "", 0o644)
	os.Symlink("index.js", filepath.Join(tree, "app/node_modules/ws/link.js"))
	// Node's lines, as two processes interleave them in one file.
	write(t, out, "gateway.log", `[compile cache] resolved path /tmp/bake-rec + v24.21.0-x64-964aae3f-65534 -> /tmp/bake-rec/v24.21.0-x64-964aae3f-65534
[compile cache] reading cache from /tmp/bake-rec/v24.21.0-x64-964aae3f-65534/1a2b3c4d for ESM file:///app/node_modules/openclaw/openclaw.mjs...[compile cache] reading cache from /tmp/bake-rec/v24/00000001 for CommonJS /app/node_modules/ws/index.js... no such file or directory
 no such file or directory
[compile cache] reading cache from /tmp/x/00000002 for ESM file:///app/node_modules/openclaw/dist/a%20b.js... no such file or directory
[compile cache] reading cache from /tmp/x/00000003 for CommonJS [worker eval]... no such file or directory
[compile cache] reading cache from /tmp/x/00000004 for ESM file:///tmp/elsewhere.mjs... no such file or directory
[compile cache] reading cache from /tmp/x/00000005 for CommonJS /app/node_modules/ws/link.js... no such file or directory
[compile cache] reading cache from /tmp/x/00000006 for CommonJS /app/node_modules/gone.js... no such file or directory
`, 0o644)
	write(t, out, "health.log", "[compile cache] reading cache from /tmp/y/1a2b3c4d for ESM file:///app/node_modules/openclaw/openclaw.mjs... success\n", 0o644)
	write(t, out, "health.out", "[compile cache] reading cache from /tmp/y/1 for ESM file:///app/node_modules/not-a-log.mjs...\n", 0o644)
	mods, err := recordedModules(tree, out, "/app/")
	if err != nil {
		t.Fatal(err)
	}
	want := []cacheModule{{Name: "/app/node_modules/ws/index.js"},
		{ESM: true, Name: "file:///app/node_modules/openclaw/dist/a%20b.js"},
		{ESM: true, Name: "file:///app/node_modules/openclaw/openclaw.mjs"}}
	if !slices.Equal(mods, want) {
		t.Errorf("got %v\nwant %v", mods, want)
	}
}

func TestAddModules(t *testing.T) {
	tree := t.TempDir()
	write(t, tree, "app/node_modules/openclaw/package.json", `{"name":"openclaw","type":"module"}`, 0o644)
	write(t, tree, "app/node_modules/openclaw/dist/state/a.worker.js", "", 0o644)
	write(t, tree, "app/node_modules/openclaw/dist/state/b.worker.js", "", 0o644)
	write(t, tree, "app/node_modules/openclaw/dist/state/c.js", "", 0o644)
	write(t, tree, "app/node_modules/cjs/package.json", `{"name":"cjs"}`, 0o644)
	write(t, tree, "app/node_modules/cjs/x.worker.js", "", 0o644)
	have := []cacheModule{{ESM: true, Name: "file:///app/node_modules/openclaw/dist/state/b.worker.js"}, {Name: "/app/node_modules/z.js"}}
	got, err := addModules(tree, have, "/app/node_modules", []string{"openclaw/dist/state/*.worker.js"})
	if err != nil {
		t.Fatal(err)
	}
	want := []cacheModule{{Name: "/app/node_modules/z.js"},
		{ESM: true, Name: "file:///app/node_modules/openclaw/dist/state/a.worker.js"},
		{ESM: true, Name: "file:///app/node_modules/openclaw/dist/state/b.worker.js"}}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	for _, bad := range []string{"cjs/*.worker.js", "openclaw/dist/none/*.js"} {
		if _, err := addModules(tree, nil, "/app/node_modules", []string{bad}); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
