package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/verify"
)

// --user-data that is not a #cloud-config mapping, or is missing, is a
// usage error (exit 2) found before anything boots.
func TestVerifyUserDataRefused(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	for _, c := range []struct{ name, content, want string }{
		{"script.sh", "#!/bin/sh\necho hi\n", "first line must be #cloud-config"},
		{"list.yaml", "#cloud-config\n- a\n", "not a cloud-config mapping"},
		{"missing.yaml", "", "no such file"},
	} {
		p := filepath.Join(dir, c.name)
		if c.content != "" {
			os.WriteFile(p, []byte(c.content), 0o644)
		}
		_, errs, code := run(t, "verify", img, "--user-data", p)
		if code != 2 || !strings.Contains(errs, "--user-data") || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", c.name, code, errs, c.want)
		}
	}
}

// fakeVerify replaces verify.Run for the test: each run records its
// options and reports what a real run of them would, on an image whose
// every check passes but network.scan, which could not run (no nmap).
// The identity checks pass when they run (--instances 2).
func fakeVerify(t *testing.T) *[]verify.Options {
	t.Helper()
	var runs []verify.Options
	orig := runVerify
	t.Cleanup(func() { runVerify = orig })
	runVerify = func(_ context.Context, o verify.Options) *verify.Report {
		runs = append(runs, o)
		rep := verify.NewReport(o)
		rep.SHA256 = strings.Repeat("ab", 32)
		rep.Started = time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)
		for _, fw := range o.Firmwares {
			for _, id := range verify.Plan(o.Spec, o.Instances) {
				x := verify.Result{ID: id, Title: id, Firmware: fw, Status: verify.Pass, Evidence: "fine"}
				if id == "network.scan" {
					x.Status, x.Evidence = verify.Skip, "not run: nmap is not installed (Debian: apt-get install nmap)"
				}
				rep.Results = append(rep.Results, x)
			}
		}
		rep.Results = append(rep.Results, verify.Result{ID: "secrets.disk", Title: "no secret", Status: verify.Pass, Evidence: "scanned"})
		rep.SortResults()
		rep.Finish(rep.Started.Add(time.Minute))
		return rep
	}
	return &runs
}

func verifyImage(t *testing.T) string {
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// An --allow-skip ID that names no check of verify's catalog is a usage
// error (exit 2), found before anything runs.
func TestVerifyAllowSkipUnknownID(t *testing.T) {
	runs := fakeVerify(t)
	img := verifyImage(t)
	for id, want := range map[string]string{
		"network-scan":      `--allow-skip "network-scan" names no check of bake verify; the checks: ssh.key-login,`,
		"arm/network.scan":  `"arm" is no firmware`,
		"bios/secrets.disk": "image/secrets.disk",
		"image.format":      "never skips",
	} {
		_, errs, code := run(t, "verify", img, "--allow-skip", "network.scan", "--allow-skip", id)
		if code != 2 || !strings.Contains(errs, want) {
			t.Errorf("--allow-skip %s: exit %d, stderr %q; want 2 and %q", id, code, errs, want)
		}
	}
	if len(*runs) != 0 {
		t.Errorf("verify ran %d times with a bad --allow-skip", len(*runs))
	}
}

// Fail closed: a skip fails the run unless --allow-skip names it, and then
// exactly that one is accepted and listed; --strict changes nothing; with
// one instance (the default) the identity checks are skipped by request
// and fail nothing.
func TestVerifyFailClosed(t *testing.T) {
	runs := fakeVerify(t)
	img := verifyImage(t)
	verdictFail := "verdict: could not run (a failure unless --allow-skip names it): bios/network.scan (exit 1)"
	for _, c := range []struct {
		name  string
		args  []string
		code  int
		allow []string
		want  []string
	}{
		{"a skip fails", nil, 1, nil, []string{verdictFail, "=> a failure: it could not run (--allow-skip bios/network.scan accepts it)"}},
		{"--strict: the same", []string{"--strict"}, 1, nil, []string{verdictFail}},
		{"another firmware's", []string{"--allow-skip", "uefi/network.scan"}, 1, []string{"uefi/network.scan"}, []string{verdictFail}},
		{"another check's", []string{"--allow-skip", "isolation.outside"}, 1, []string{"isolation.outside"}, []string{verdictFail}},
		{"allowed", []string{"--allow-skip", "network.scan", "--instances", "1"}, 0, []string{"network.scan"}, []string{
			"accepted skips (not proven, not failures):\n  bios/network.scan (--allow-skip): not run: nmap is not installed",
			"verdict: every check that ran passed; skipped, accepted by --allow-skip: bios/network.scan; skipped by request: bios/identity.unique, bios/identity.reboot (exit 0)"}},
		{"allowed by key, twice, --strict", []string{"--allow-skip", "bios/network.scan", "--strict", "--allow-skip", "bios/network.scan"}, 0, []string{"bios/network.scan"}, []string{
			"  bios/network.scan (--allow-skip): not run: nmap is not installed"}},
		{"one instance", []string{"--allow-skip", "network.scan", "--instances", "1"}, 0, []string{"network.scan"}, []string{
			"SKIP  bios/identity.unique",
			"  bios/identity.reboot (by request): not run: needs --instances 2 (skipped by request)",
			"3 skipped (1 accepted by --allow-skip, 2 by request, 0 failing)"}},
		{"two instances, the default", []string{"--allow-skip", "network.scan"}, 0, []string{"network.scan"}, []string{
			"PASS  bios/identity.unique", "1 skipped (1 accepted by --allow-skip, 0 by request, 0 failing)"}},
	} {
		n := len(*runs)
		out, errs, code := run(t, append([]string{"verify", img}, c.args...)...)
		if code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s%s", c.name, code, c.code, out, errs)
		}
		if len(*runs) != n+1 {
			t.Fatalf("%s: verify ran %d times", c.name, len(*runs)-n)
		}
		if o := (*runs)[n]; !slices.Equal(o.AllowSkip, c.allow) {
			t.Errorf("%s: Options.AllowSkip %q, want %q", c.name, o.AllowSkip, c.allow)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out)
			}
		}
	}
	// --strict is a no-op: same options, same report, same exit.
	plain, _, c1 := run(t, "verify", img, "--allow-skip", "network.scan")
	strict, _, c2 := run(t, "verify", img, "--allow-skip", "network.scan", "--strict")
	a, b := (*runs)[len(*runs)-2], (*runs)[len(*runs)-1]
	a.Log, b.Log = nil, nil
	if plain != strict || c1 != c2 || !reflect.DeepEqual(a, b) {
		t.Errorf("--strict changed something: exit %d vs %d\n%s\nvs\n%s", c1, c2, plain, strict)
	}
}

// The report files list the accepted skip with its reason.
func TestVerifyAllowSkipReportFiles(t *testing.T) {
	fakeVerify(t)
	img := verifyImage(t)
	dir := filepath.Join(t.TempDir(), "report")
	if _, errs, code := run(t, "verify", img, "--allow-skip", "bios/network.scan", "--instances", "1", "--report", dir); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		AllowSkip []string `json:"allow_skip"`
		ExitCode  int      `json:"exit_code"`
		Results   []struct {
			ID, Firmware, Status, Accepted, Evidence string
		} `json:"results"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	accepted := map[string]string{}
	for _, x := range rep.Results {
		if x.Accepted != "" {
			accepted[x.Firmware+"/"+x.ID] = x.Accepted + ": " + x.Evidence
		}
	}
	want := map[string]string{
		"bios/network.scan":    "allow-skip: not run: nmap is not installed (Debian: apt-get install nmap)",
		"bios/identity.unique": "by-request: not run: needs --instances 2 (skipped by request)",
		"bios/identity.reboot": "by-request: not run: needs --instances 2 (skipped by request)",
	}
	if !reflect.DeepEqual(accepted, want) || rep.ExitCode != 0 || !slices.Equal(rep.AllowSkip, []string{"bios/network.scan"}) {
		t.Errorf("report.json: accepted %v, exit %d, allow_skip %v", accepted, rep.ExitCode, rep.AllowSkip)
	}
	j, err := os.ReadFile(filepath.Join(dir, "junit.xml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		`<skipped message="accepted by --allow-skip: not run: nmap is not installed (Debian: apt-get install nmap)">`,
		`<skipped message="not run: needs --instances 2 (skipped by request)">`,
	} {
		if !strings.Contains(string(j), w) {
			t.Errorf("junit.xml lacks %s:\n%s", w, j)
		}
	}
	if strings.Contains(string(j), "<failure") {
		t.Errorf("junit.xml has a failure:\n%s", j)
	}
}

// The help describes the fail-closed rule, --allow-skip and --strict.
func TestVerifyHelp(t *testing.T) {
	out, _, code := run(t, "verify", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, w := range []string{
		"Verify fails closed: a check that could not run",
		"--allow-skip ID (repeatable)",
		"--allow-skip ID ",
		"no-op, kept for old scripts",
		"not run: needs --instances 2 (skipped by",
		"the\ndefault is 2",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("help lacks %q:\n%s", w, out)
		}
	}
}

// --seed-via: a bad path or user-data no instance would get is a usage
// error (exit 2) before anything boots; a good list reaches verify.
func TestVerifySeedVia(t *testing.T) {
	runs := fakeVerify(t)
	img := verifyImage(t)
	ud := filepath.Join(t.TempDir(), "ud.yaml")
	if err := os.WriteFile(ud, []byte("#cloud-config\nssh_pwauth: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--seed-via", "cdrom"}, `--seed-via: "cdrom" is not a seed path; write one or more of nocloud, smbios`},
		{[]string{"--seed-via", "nocloud,"}, `--seed-via: "" is not a seed path`},
		{[]string{"--seed-via", "smbios", "--user-data", ud}, "add nocloud to --seed-via"},
	} {
		_, errs, code := run(t, append([]string{"verify", img}, c.args...)...)
		if code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errs, c.want)
		}
	}
	if len(*runs) != 0 {
		t.Fatalf("verify ran %d times with a bad --seed-via", len(*runs))
	}
	run(t, "verify", img, "--allow-skip", "network.scan", "--seed-via", "nocloud, smbios", "--user-data", ud)
	if len(*runs) != 1 || strings.Join((*runs)[0].SeedVia, ",") != "nocloud,smbios" {
		t.Errorf("runs %d, SeedVia %q; want one run with nocloud,smbios", len(*runs), (*runs)[0].SeedVia)
	}
}

// --upgrade-from: its usage errors come before anything runs; a good
// run passes OLD, the volume's path and one instance to verify.
func TestVerifyUpgradeFrom(t *testing.T) {
	runs := fakeVerify(t)
	img, old := verifyImage(t), verifyImage(t)
	exists := verifyImage(t)
	vol := filepath.Join(t.TempDir(), "state.raw")
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--upgrade-from", old, "--firmware", "both"}, "--upgrade-from boots one firmware"},
		{[]string{"--upgrade-from", filepath.Join(t.TempDir(), "none.qcow2")}, "--upgrade-from: "},
		{[]string{"--upgrade-from", t.TempDir()}, "--upgrade-from: "},
		{[]string{"--state-volume", vol}, "--state-volume needs --upgrade-from"},
		{[]string{"--upgrade-from", old, "--state-volume", exists}, "exists: name a new file"},
		{[]string{"--upgrade-from", old, "--tailnet-login-server", "https://hs.example.net", "--tailnet-authkey-file", key, "--user-net"}, "--user-net"},
		{[]string{"--upgrade-from", old, "--tailnet-login-server", "http://hs.example.net", "--tailnet-authkey-file", key}, "is not https"},
	} {
		_, errs, code := run(t, append([]string{"verify", img}, c.args...)...)
		if code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errs, c.want)
		}
	}
	if len(*runs) != 0 {
		t.Fatalf("verify ran %d times with bad --upgrade-from usage", len(*runs))
	}
	run(t, "verify", img, "--upgrade-from", old, "--state-volume", vol, "--instances", "2")
	if len(*runs) != 1 {
		t.Fatalf("runs %d, want 1", len(*runs))
	}
	if o := (*runs)[0]; o.UpgradeFrom != old || o.StateVolume != vol || o.Instances != 1 {
		t.Errorf("options: upgrade from %q, volume %q, instances %d", o.UpgradeFrom, o.StateVolume, o.Instances)
	}
	// With --tailnet-*: one instance is enough (the upgrade run's boots
	// are the node), the tailnet reaches verify.
	run(t, "verify", img, "--upgrade-from", old, "--tailnet-login-server", "https://hs.example.net", "--tailnet-authkey-file", key)
	if len(*runs) != 2 {
		t.Fatalf("runs %d, want 2 (--upgrade-from with --tailnet-*)", len(*runs))
	}
	if o := (*runs)[1]; o.UpgradeFrom != old || o.Instances != 1 || o.Tailnet == nil || o.Tailnet.LoginServer != "https://hs.example.net" || o.Tailnet.AuthKey != "0123456789abcdef0123456789abcdef" {
		t.Errorf("options with --tailnet-*: upgrade from %q, instances %d, tailnet %+v", o.UpgradeFrom, o.Instances, o.Tailnet)
	}
}

// TestVerifyTailnetFlags: --tailnet-* go together, are checked as first
// boot checks them, need --instances 2 and no --user-net; a good set
// reaches verify with the key read from its file (trimmed).
func TestVerifyTailnetFlags(t *testing.T) {
	runs := fakeVerify(t)
	img := verifyImage(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	os.WriteFile(key, []byte("  0123456789abcdef0123456789abcdef\n"), 0o600)
	badCA := filepath.Join(dir, "ca.pem")
	os.WriteFile(badCA, []byte("not a certificate\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tailnet-login-server", "https://hs.example.net"}, "go together"},
		{[]string{"--tailnet-authkey-file", key}, "go together"},
		{[]string{"--tailnet-login-server", "http://hs.example.net", "--tailnet-authkey-file", key}, "is not https"},
		{[]string{"--tailnet-login-server", "https://hs.example.net", "--tailnet-authkey-file", filepath.Join(dir, "none")}, "--tailnet-authkey-file"},
		{[]string{"--tailnet-login-server", "https://hs.example.net", "--tailnet-authkey-file", key, "--tailnet-ca", badCA}, "no PEM CERTIFICATE"},
		{[]string{"--tailnet-login-server", "https://hs.example.net", "--tailnet-authkey-file", key, "--instances", "1"}, "--instances 2"},
		{[]string{"--tailnet-login-server", "https://hs.example.net", "--tailnet-authkey-file", key, "--user-net"}, "--user-net"},
	} {
		_, errs, code := run(t, append([]string{"verify", img}, c.args...)...)
		if code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errs, c.want)
		}
	}
	if len(*runs) != 0 {
		t.Fatalf("verify ran %d times with bad --tailnet-*", len(*runs))
	}
	out, _, _ := run(t, "verify", img, "--allow-skip", "network.scan", "--tailnet-login-server", "https://10.0.2.2:8443", "--tailnet-authkey-file", key)
	if len(*runs) != 1 || (*runs)[0].Tailnet == nil || *(*runs)[0].Tailnet != (verify.Tailnet{LoginServer: "https://10.0.2.2:8443", AuthKey: "0123456789abcdef0123456789abcdef"}) {
		t.Fatalf("runs %+v", *runs)
	}
	if strings.Contains(out, "0123456789abcdef0123456789abcdef") {
		t.Error("the output shows the auth key")
	}
}
