package aptrepo

import (
	"context"
	"github.com/bakeimg/bake/internal/testenv"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedTools(t, tools...)
}

// tinyDeb builds a minimal package with dpkg-deb.
func tinyDeb(t *testing.T, dir, name, version string) string {
	t.Helper()
	root := filepath.Join(dir, name+"-root")
	for path, content := range map[string]string{
		"DEBIAN/control": "Package: " + name + "\nVersion: " + version + "\nArchitecture: all\n" +
			"Maintainer: bake tests <tests@bake.invalid>\nDescription: bake aptrepo test package\n",
		"usr/share/doc/" + name + "/hello": "hello\n",
	} {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(dir, name+".deb")
	if err := run(context.Background(), execx.Cmd{
		Name: "dpkg-deb", Args: []string{"--root-owner-group", "--build", root, deb},
	}); err != nil {
		t.Fatal(err)
	}
	return deb
}

func TestRepoSignedAndVerifiedByApt(t *testing.T) {
	need(t, "gpg", "gpgconf", "gpgv", "apt-get", "apt-cache", "apt-ftparchive", "dpkg-deb")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tmp := t.TempDir()

	key, err := NewKey(filepath.Join(tmp, "key"))
	if err != nil {
		t.Fatal(err)
	}
	if len(key.Fingerprint) < 40 {
		t.Fatalf("fingerprint %q", key.Fingerprint)
	}
	if _, err := NewKey(filepath.Join(tmp, "key")); err == nil {
		t.Error("NewKey over an existing key: no error")
	}
	wrong, err := NewKey(filepath.Join(tmp, "wrongkey"))
	if err != nil {
		t.Fatal(err)
	}

	deb := tinyDeb(t, tmp, "bake-hello", "1.2.3")
	repo := filepath.Join(tmp, "repo")
	if err := Build(ctx, repo, "bookworm", []string{deb}, key); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{
		"dists/bookworm/InRelease", "dists/bookworm/Release", "dists/bookworm/Release.gpg",
		"dists/bookworm/main/binary-amd64/Packages", "dists/bookworm/main/binary-amd64/Packages.gz",
		"pool/bake-hello_1.2.3_all.deb", "bookworm.noarmor.gpg", "bookworm.gpg",
	} {
		if _, err := os.Stat(filepath.Join(repo, f)); err != nil {
			t.Error(err)
		}
	}
	release, _ := os.ReadFile(filepath.Join(repo, "dists/bookworm/Release"))
	for _, want := range []string{"Origin: bake", "Suite: bookworm", "Codename: bookworm",
		"Architectures: amd64", "Components: main", "SHA256:", "main/binary-amd64/Packages.gz"} {
		if !strings.Contains(string(release), want) {
			t.Errorf("Release lacks %q:\n%s", want, release)
		}
	}
	pkgs, _ := os.ReadFile(filepath.Join(repo, "dists/bookworm/main/binary-amd64/Packages"))
	if !strings.Contains(string(pkgs), "Filename: pool/bake-hello_1.2.3_all.deb") {
		t.Errorf("Packages:\n%s", pkgs)
	}
	// The signatures verify with the exported keyring alone.
	for _, args := range [][]string{
		{"--keyring", key.Keyring, filepath.Join(repo, "dists/bookworm/InRelease")},
		{"--keyring", key.Keyring, filepath.Join(repo, "dists/bookworm/Release.gpg"), filepath.Join(repo, "dists/bookworm/Release")},
	} {
		if err := run(ctx, execx.Cmd{Name: "gpgv", Args: args}); err != nil {
			t.Error(err)
		}
	}

	srv, err := Serve(repo)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.HasPrefix(srv.URL(), "http://127.0.0.1:") {
		t.Errorf("URL() = %q", srv.URL())
	}

	t.Run("right key", func(t *testing.T) {
		a, err := NewApt(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		// The served keyring, as a user would fetch bookworm.noarmor.gpg.
		if err := a.AddSource("local", srv.URL(), "bookworm", []string{"main"}, filepath.Join(repo, "bookworm.noarmor.gpg")); err != nil {
			t.Fatal(err)
		}
		if err := a.Update(ctx); err != nil {
			t.Fatal(err)
		}
		out, err := a.Run(ctx, "apt-cache", "policy", "bake-hello")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "Candidate: 1.2.3") || !strings.Contains(string(out), srv.URL()) {
			t.Errorf("apt-cache policy bake-hello:\n%s", out)
		}
		// The .deb downloads and matches the Packages hashes.
		if _, err := a.Run(ctx, "apt-get", "--download-only", "--yes", "install", "bake-hello"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(a.Root, "var/cache/apt/archives/bake-hello_1.2.3_all.deb")); err != nil {
			t.Error(err)
		}
		// The armored key works as Signed-By as well.
		if err := Verify(ctx, srv.URL(), "bookworm", nil, key.Armored); err != nil {
			t.Error(err)
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		err := Verify(ctx, srv.URL(), "bookworm", []string{"main"}, wrong.Keyring)
		if err == nil {
			t.Fatal("apt-get update succeeded with a key that did not sign the repository")
		}
		if !strings.Contains(err.Error(), "NO_PUBKEY") && !strings.Contains(err.Error(), "not signed") {
			t.Errorf("unexpected error: %v", err)
		}
		t.Log(err)
		plainUpdateFails(t, ctx, srv.URL(), wrong.Keyring)
	})

	t.Run("unreachable", func(t *testing.T) {
		dead, err := Serve(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		url := dead.URL()
		dead.Close()
		if err := Verify(ctx, url, "bookworm", nil, key.Keyring); err == nil {
			t.Fatal("apt-get update succeeded against a closed port")
		}
	})

	// Tampering after signing: a changed InRelease no longer verifies, and a
	// changed Packages no longer matches its signed hash.
	t.Run("tampered", func(t *testing.T) {
		for _, tc := range []struct{ name, file, old, new string }{
			{"InRelease", "dists/bookworm/InRelease", "Origin: bake", "Origin: evil"},
			{"Packages", "dists/bookworm/main/binary-amd64/Packages", "Version: 1.2.3", "Version: 1.2.4"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				bad := filepath.Join(t.TempDir(), "repo")
				if err := os.CopyFS(bad, os.DirFS(repo)); err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(bad, tc.file)
				b, _ := os.ReadFile(p)
				if !strings.Contains(string(b), tc.old) {
					t.Fatalf("%s lacks %q", tc.file, tc.old)
				}
				os.WriteFile(p, []byte(strings.Replace(string(b), tc.old, tc.new, 1)), 0o644)
				os.Remove(p + ".gz")
				// Only InRelease is offered, so apt cannot fall back to Release.gpg.
				os.Remove(filepath.Join(bad, "dists/bookworm/Release"))
				os.Remove(filepath.Join(bad, "dists/bookworm/Release.gpg"))
				s, err := Serve(bad)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				err = Verify(ctx, s.URL(), "bookworm", nil, key.Keyring)
				if err == nil {
					t.Fatal("apt-get update accepted a tampered repository")
				}
				t.Log(err)
				plainUpdateFails(t, ctx, s.URL(), key.Keyring)
			})
		}
	})

	t.Run("reopen key", func(t *testing.T) {
		k2, err := OpenKey(filepath.Join(tmp, "key"))
		if err != nil {
			t.Fatal(err)
		}
		if k2.Fingerprint != key.Fingerprint {
			t.Errorf("OpenKey fingerprint %s, want %s", k2.Fingerprint, key.Fingerprint)
		}
	})

	// No gpg-agent outlives the calls (it may take a moment to exit after
	// its socket closed; an unreaped zombie is gone already).
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := agentsUnder(tmp)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("gpg-agent left running: %q", left)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agentsUnder lists live (not zombie) gpg-agent processes whose command line
// names dir.
func agentsUnder(dir string) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), "gpg-agent") || !strings.Contains(string(cmdline), dir) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(p, "stat"))
		if _, rest, ok := strings.Cut(string(stat), ") "); ok && strings.HasPrefix(rest, "Z") {
			continue
		}
		found = append(found, p+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return found
}

// plainUpdateFails checks that apt-get update without --error-on=any, as a
// build runs it, exits non-zero too and leaves no package index behind.
func plainUpdateFails(t *testing.T, ctx context.Context, uri, keyring string) {
	t.Helper()
	a, err := NewApt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddSource("local", uri, "bookworm", nil, keyring); err != nil {
		t.Fatal(err)
	}
	if out, err := a.Run(ctx, "apt-get", "update"); err == nil {
		t.Errorf("plain apt-get update succeeded:\n%s", out)
	}
	if out, err := a.Run(ctx, "apt-cache", "policy", "bake-hello"); err != nil || strings.Contains(string(out), "Candidate") {
		t.Errorf("apt-cache policy bake-hello after a failed update: %v\n%s", err, out)
	}
}

func TestServeRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:80"} {
		if s, err := ServeAddr(t.TempDir(), addr); err == nil {
			s.Close()
			t.Errorf("ServeAddr(%q): no error", addr)
		}
	}
}
