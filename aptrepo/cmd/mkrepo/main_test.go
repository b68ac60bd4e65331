package main

import (
	"bytes"
	"context"
	"github.com/bakeimg/bake/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/aptrepo"
)

func TestMkrepoServe(t *testing.T) {
	testenv.NeedTools(t, "gpg", "gpgconf", "apt-get", "apt-ftparchive", "dpkg-deb")
	tmp := t.TempDir()
	root := filepath.Join(tmp, "pkg")
	os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755)
	os.WriteFile(filepath.Join(root, "DEBIAN/control"), []byte("Package: bake-mkrepo-test\nVersion: 1\nArchitecture: all\nMaintainer: t <t@bake.invalid>\nDescription: test\n"), 0o644)
	deb := filepath.Join(tmp, "t.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out := filepath.Join(tmp, "out")
	args := []string{"-out", out, "-tailscale", "none", "-deb", deb}
	var stdout bytes.Buffer
	if err := run(context.Background(), args, &stdout); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tailscale.gpg", "tailscale.asc", "debian/dists/bookworm/InRelease", "debian/pool/bake-mkrepo-test_1_all.deb", "debian/bookworm.noarmor.gpg"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	first, _ := os.ReadFile(filepath.Join(out, "tailscale.gpg"))

	// -serve-only serves the earlier build with the same key until cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, append(args, "-serve", "127.0.0.1:0", "-serve-only"), &stdout) }()
	var url string
	for i := 0; i < 100 && url == ""; i++ {
		b, _ := os.ReadFile(filepath.Join(out, "serve.url"))
		url = strings.TrimSpace(string(b))
		time.Sleep(50 * time.Millisecond)
	}
	if url == "" {
		cancel()
		t.Fatalf("no serve.url; err %v\n%s", <-done, stdout.String())
	}
	if err := aptrepo.Verify(context.Background(), url, "bookworm", nil, filepath.Join(out, "tailscale.gpg")); err != nil {
		t.Error(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(out, "serve.pid")); err == nil {
		t.Error("serve.pid left behind")
	}
	if !strings.Contains(stdout.String(), "uri: "+url) {
		t.Errorf("output lacks the recipe snippet:\n%s", stdout.String())
	}

	// A rebuild reuses the key: the keyring users have stays valid.
	if err := run(context.Background(), args, &stdout); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(out, "tailscale.gpg"))
	if !bytes.Equal(first, again) {
		t.Error("rebuild changed the key")
	}
	// The private key is not under the served directory.
	if _, err := os.Stat(filepath.Join(out, "debian", "key")); err == nil {
		t.Error("private key under the served directory")
	}
}
