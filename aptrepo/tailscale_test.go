package aptrepo

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// TestPackageTailscale packages stand-in binaries with the module's unit
// files and scripts (testdata, copied from tailscale.com v1.102.5) and checks
// the .deb against the official layout. The real build is tested by the
// integration test.
func TestPackageTailscale(t *testing.T) {
	need(t, "dpkg-deb")
	ctx := context.Background()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	os.MkdirAll(bin, 0o755)
	for _, b := range []string{"tailscale", "tailscaled"} {
		os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\necho "+b+"\n"), 0o700)
	}
	when := time.Date(2026, 9, 24, 21, 38, 37, 0, time.UTC)
	deb := filepath.Join(tmp, "out", "tailscale_1.102.5_amd64.deb")
	if err := packageTailscale(ctx, "1.102.5", bin, "testdata/tailscale-module", when, deb); err != nil {
		t.Fatal(err)
	}
	deb2 := filepath.Join(tmp, "out2", "tailscale_1.102.5_amd64.deb")
	if err := packageTailscale(ctx, "1.102.5", bin, "testdata/tailscale-module", when, deb2); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(deb)
	b, _ := os.ReadFile(deb2)
	if string(a) != string(b) {
		t.Error("two builds from the same inputs differ")
	}

	f, err := debFields(ctx, deb, "Package", "Version", "Architecture", "Depends", "Section", "Maintainer")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"tailscale", "1.102.5", "amd64", "iptables", "net"}; strings.Join(f[:5], " ") != strings.Join(want, " ") {
		t.Errorf("control fields %q, want %q", f, want)
	}

	out, err := execx.Default.Output(ctx, execx.Cmd{Name: "dpkg-deb", Args: []string{"--contents", deb}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{} // path -> "mode owner"
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fs := strings.Fields(line)
		got[strings.TrimPrefix(fs[len(fs)-1], ".")] = fs[0] + " " + fs[1]
	}
	for path, want := range map[string]string{
		"/usr/bin/tailscale":                                "-rwxr-xr-x root/root",
		"/usr/sbin/tailscaled":                              "-rwxr-xr-x root/root",
		"/lib/systemd/system/tailscaled.service":            "-rw-r--r-- root/root",
		"/lib/systemd/system/tailscale-online.target":       "-rw-r--r-- root/root",
		"/lib/systemd/system/tailscale-wait-online.service": "-rw-r--r-- root/root",
		"/etc/default/tailscaled":                           "-rw-r--r-- root/root",
	} {
		if got[path] != want {
			t.Errorf("%s: %q, want %q\n%s", path, got[path], want, out)
		}
	}

	x := filepath.Join(tmp, "x")
	if err := run(ctx, execx.Cmd{Name: "dpkg-deb", Args: []string{"--raw-extract", deb, x}}); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(x, p))
		if err != nil {
			t.Error(err)
		}
		return string(b)
	}
	if s := read("etc/default/tailscaled"); !strings.Contains(s, `PORT="41641"`) || !strings.Contains(s, `FLAGS=""`) {
		t.Errorf("/etc/default/tailscaled:\n%s", s)
	}
	if s := read("lib/systemd/system/tailscaled.service"); !strings.Contains(s, "ExecStart=/usr/sbin/tailscaled --state=/var/lib/tailscale/tailscaled.state --socket=/run/tailscale/tailscaled.sock --port=${PORT} $FLAGS") ||
		!strings.Contains(s, "WantedBy=multi-user.target") {
		t.Errorf("tailscaled.service:\n%s", s)
	}
	if s := read("DEBIAN/conffiles"); s != "/etc/default/tailscaled\n" {
		t.Errorf("conffiles %q", s)
	}
	post := read("DEBIAN/postinst")
	for _, want := range []string{"deb-systemd-helper enable 'tailscaled.service'", "deb-systemd-invoke restart 'tailscaled.service'", "[ -d /run/systemd/system ]"} {
		if !strings.Contains(post, want) {
			t.Errorf("postinst lacks %q:\n%s", want, post)
		}
	}
	if fi, err := os.Stat(filepath.Join(x, "DEBIAN/postinst")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("postinst mode: %v %v", fi.Mode(), err)
	}
}

func TestBuildTailscaleDebRejectsBadVersion(t *testing.T) {
	for _, v := range []string{"", "latest", "1.102", "v1.102.5-pre", "1.102.5; rm -rf /"} {
		if _, err := BuildTailscaleDeb(context.Background(), v, t.TempDir(), t.TempDir()); err == nil {
			t.Errorf("version %q: no error", v)
		}
	}
}
