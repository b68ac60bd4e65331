//go:build integration

package aptrepo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/testcache"
)

// cacheRoot is the project's fixture cache ($BAKE_TEST_CACHE, outside the
// checkout): the tailscale build lives in its tailscale/, the bookworm tree in
// aptrepo/.
func cacheRoot(t *testing.T) string {
	t.Helper()
	return filepath.Dir(testcache.Dir("aptrepo"))
}

// TestTailscaleFromLocalRepo builds the tailscale .deb from the tailscale.com
// module, publishes it in a signed repository served on 127.0.0.1, and
// installs it with apt in a chroot of a bookworm tree, as a bake build does
// with the default recipe's repository. A repository signed with another key
// fails apt-get update in the same tree.
func TestTailscaleFromLocalRepo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the integration tier needs root (mmdebstrap --mode=root, chroot): run `make test` as root")
	}
	for _, tool := range []string{"go", "gpg", "gpgconf", "apt-ftparchive", "dpkg-deb", "mmdebstrap", "chroot", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (scripts/install-deps.sh): %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	cache := cacheRoot(t)
	tmp := t.TempDir()

	// 1. The package, built once per version and Go version.
	start := time.Now()
	deb, err := BuildTailscaleDeb(ctx, DefaultTailscaleVersion, filepath.Join(cache, "tailscale"), filepath.Join(tmp, "debs"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("BuildTailscaleDeb %s: %s in %v", DefaultTailscaleVersion, deb, time.Since(start).Round(10*time.Millisecond))
	start = time.Now()
	if _, err := BuildTailscaleDeb(ctx, DefaultTailscaleVersion, filepath.Join(cache, "tailscale"), filepath.Join(tmp, "debs2")); err != nil {
		t.Fatal(err)
	}
	warm := time.Since(start)
	t.Logf("BuildTailscaleDeb warm: %v", warm.Round(time.Millisecond))
	if warm > 10*time.Second {
		t.Errorf("warm BuildTailscaleDeb took %v", warm)
	}

	// 2. Two repositories with the same package, signed by different keys.
	key, err := NewKey(filepath.Join(tmp, "key"))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := NewKey(filepath.Join(tmp, "otherkey"))
	if err != nil {
		t.Fatal(err)
	}
	repo, other := filepath.Join(tmp, "repo"), filepath.Join(tmp, "other")
	if err := Build(ctx, repo, "bookworm", []string{deb}, key); err != nil {
		t.Fatal(err)
	}
	if err := Build(ctx, other, "bookworm", []string{deb}, otherKey); err != nil {
		t.Fatal(err)
	}
	srv, err := Serve(repo)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	otherSrv, err := Serve(other)
	if err != nil {
		t.Fatal(err)
	}
	defer otherSrv.Close()

	// 3. A bookworm tree with apt and systemd (so that deb-systemd-helper
	// enables through `systemctl preset`, as in a bake image).
	tree := filepath.Join(tmp, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	tarball := bookwormTree(t, ctx, filepath.Join(cache, "aptrepo"))
	if err := run(ctx, execx.Cmd{Name: "tar", Args: []string{"--numeric-owner", "-xpf", tarball, "-C", tree}}); err != nil {
		t.Fatal(err)
	}
	write := func(p, content string, mode os.FileMode) {
		t.Helper()
		p = filepath.Join(tree, p)
		os.Remove(p) // resolv.conf may be a dangling symlink
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	write("etc/resolv.conf", string(resolv), 0o644)
	write("usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
	// Pretend systemd runs, so that the postinst takes its restart path and
	// has to be stopped by policy-rc.d.
	if err := os.MkdirAll(filepath.Join(tree, "run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	keyring, _ := os.ReadFile(key.Keyring)
	write("etc/apt/keyrings/tailscale.gpg", string(keyring), 0o644)
	chroot := func(args ...string) (string, error) {
		// Combined output, in order, for the logs.
		cmd := exec.CommandContext(ctx, "chroot", append([]string{tree}, args...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8", "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
		out, err := cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("chroot %s: %w", strings.Join(args, " "), err)
		}
		return string(out), err
	}
	source := func(uri string) string {
		return fmt.Sprintf("Types: deb\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /etc/apt/keyrings/tailscale.gpg\n", uri)
	}

	// 4. Negative: a repository signed with another key fails apt-get update.
	write("etc/apt/sources.list.d/tailscale.sources", source(otherSrv.URL()), 0o644)
	out, err := chroot("apt-get", "update")
	if err == nil {
		t.Fatalf("apt-get update succeeded with a repository signed by another key:\n%s", out)
	}
	if !strings.Contains(out, "NO_PUBKEY") && !strings.Contains(out, "is not signed") {
		t.Errorf("apt-get update failed, but not on the signature:\n%s", out)
	}
	t.Logf("wrong key: %v", err)

	// 5. The real thing.
	write("etc/apt/sources.list.d/tailscale.sources", source(srv.URL()), 0o644)
	if out, err := chroot("apt-get", "update"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err = chroot("apt-get", "install", "--yes", "--no-install-recommends", "tailscale")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("apt-get install tailscale:\n%s", out)
	if !strings.Contains(out, "policy-rc.d returned 101, not running 'restart tailscaled.service'") {
		t.Errorf("postinst did not ask policy-rc.d before restarting tailscaled:\n%s", out)
	}
	if out, err := chroot("apt-cache", "policy", "tailscale"); err != nil || !strings.Contains(out, srv.URL()) {
		t.Errorf("apt-cache policy tailscale: %v\n%s", err, out)
	}

	for _, p := range []string{"usr/sbin/tailscaled", "usr/bin/tailscale", "lib/systemd/system/tailscaled.service", "etc/default/tailscaled"} {
		if _, err := os.Stat(filepath.Join(tree, p)); err != nil {
			t.Error(err)
		}
	}
	for _, cmd := range [][]string{{"tailscaled", "--version"}, {"tailscale", "version"}} {
		out, err := chroot(cmd...)
		if err != nil || !strings.HasPrefix(out, DefaultTailscaleVersion) {
			t.Errorf("%s: %v\n%s", cmd, err, out)
		}
		t.Logf("%s: %s", cmd, strings.SplitN(out, "\n", 2)[0])
	}
	link, err := os.Readlink(filepath.Join(tree, "etc/systemd/system/multi-user.target.wants/tailscaled.service"))
	if err != nil || link != "/lib/systemd/system/tailscaled.service" {
		t.Errorf("tailscaled.service not enabled: %q %v", link, err)
	}
	// Systemd does not really run in the chroot: without the marker,
	// systemctl works offline on the tree.
	if err := os.RemoveAll(filepath.Join(tree, "run/systemd/system")); err != nil {
		t.Fatal(err)
	}
	if out, err := chroot("systemctl", "is-enabled", "tailscaled.service"); err != nil || strings.TrimSpace(out) != "enabled" {
		t.Errorf("systemctl is-enabled tailscaled: %v %q", err, out)
	}
	if _, err := os.Stat(filepath.Join(tree, "var/lib/tailscale")); err == nil {
		t.Error("/var/lib/tailscale exists: tailscaled ran")
	}
}

// bookwormTree returns a tarball of `mmdebstrap --variant=apt
// --include=systemd bookworm` made from the host's Debian sources, cached in
// dir keyed by its inputs.
func bookwormTree(t *testing.T, ctx context.Context, dir string) string {
	t.Helper()
	version, err := execx.Default.Output(ctx, execx.Cmd{Name: "mmdebstrap", Args: []string{"--version"}})
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--mode=root", "--variant=apt", "--include=systemd", "--dpkgopt=force-unsafe-io", "bookworm"}
	// The host's Debian sources (deb822 or one-line), else mmdebstrap's default mirror.
	var mirror string
	for _, f := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		if fi, err := os.Stat(f); err == nil && fi.Size() > 0 {
			mirror = f
			break
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "v1\n%s\n%q\n", version, args)
	if mirror != "" {
		b, _ := os.ReadFile(mirror)
		h.Write(b)
	}
	tarball := filepath.Join(dir, "bookworm-apt-systemd-"+hex.EncodeToString(h.Sum(nil))[:16]+".tar")
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockFile(ctx, tarball+".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	start := time.Now()
	tmp := tarball + ".tmp.tar"
	args = append(args, tmp)
	if mirror != "" {
		args = append(args, mirror)
	}
	if err := run(ctx, execx.Cmd{Name: "mmdebstrap", Args: args}); err != nil {
		os.Remove(tmp)
		t.Fatal(err)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("bootstrapped %s in %v", tarball, time.Since(start).Round(time.Second))
	return tarball
}

// TestTailscaleMirrorScript runs scripts/tailscale-mirror.sh --serve as the
// README's offline path does (the tailscale build comes from the cache the
// test above fills) and checks the served repository with apt.
func TestTailscaleMirrorScript(t *testing.T) {
	for _, tool := range []string{"go", "gpg", "apt-get", "apt-ftparchive", "dpkg-deb", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (scripts/install-deps.sh): %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "mirror")
	start := time.Now()
	cmd := exec.CommandContext(ctx, "sh", "../scripts/tailscale-mirror.sh", "--serve", out, DefaultTailscaleVersion)
	cmd.Env = append(os.Environ(), "BAKE_CACHE="+cacheRoot(t))
	// The background server keeps no pipe open (its output goes to
	// OUT/serve.log), so CombinedOutput returns when the script does.
	log, err := cmd.CombinedOutput()
	// The server runs on in the background: stop it by its PID file.
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(out, "serve.pid")); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
				if p, err := os.FindProcess(pid); err == nil {
					p.Signal(os.Interrupt)
				}
			}
		}
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	t.Logf("tailscale-mirror.sh in %v:\n%s", time.Since(start).Round(time.Millisecond), log)
	url, err := os.ReadFile(filepath.Join(out, "serve.url"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewApt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddSource("tailscale", strings.TrimSpace(string(url)), "bookworm", []string{"main"}, filepath.Join(out, "tailscale.gpg")); err != nil {
		t.Fatal(err)
	}
	if err := a.Update(ctx); err != nil {
		t.Fatal(err)
	}
	pol, err := a.Run(ctx, "apt-cache", "policy", "tailscale")
	if err != nil || !strings.Contains(string(pol), "Candidate: "+DefaultTailscaleVersion) {
		t.Errorf("apt-cache policy tailscale: %v\n%s", err, pol)
	}
	for _, f := range []string{"debian/bookworm.noarmor.gpg", "debian/dists/bookworm/Release.gpg", "debian/dists/bookworm/main/binary-amd64/Packages.gz"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}
