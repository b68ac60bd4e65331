package verify

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleReport() *Report {
	t0 := time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)
	r := &Report{Image: "/out/openclaw.qcow2", SHA256: strings.Repeat("ab", 32), Size: 123, Format: "qcow2",
		Firmwares: []string{"bios", "uefi"}, Instances: 2, Accel: "tcg", Outside: "network namespace", Started: t0}
	r.Results = []Result{
		{ID: "ssh.key-login", Title: "SSH key login as admin", Firmware: "bios", Status: Pass, Evidence: "logged in\nuid=1000(admin)", Duration: 2 * time.Second},
		{ID: "ssh.password-refused", Title: "password refused", Firmware: "bios", Status: Fail, Evidence: "admin logged in with the right password\n<xml & \"quotes\">", Duration: time.Second},
		{ID: "network.scan", Title: "only 22/tcp open", Firmware: "uefi", Status: Skip, Evidence: "not run: nmap is not installed"},
		{ID: "secrets.disk", Title: "no secret", Status: Pass, Evidence: "scanned 800 MiB"},
	}
	r.Finish(t0.Add(90 * time.Second))
	return r
}

func TestExitCodes(t *testing.T) {
	pass := Result{ID: "a", Status: Pass}
	fail := Result{ID: "b", Status: Fail}
	skip := Result{ID: "c", Status: Skip}
	for _, c := range []struct {
		name    string
		r       Report
		want    int
		verdict string
	}{
		{"all pass", Report{Results: []Result{pass, pass}}, 0, "every check passed"},
		// Fail closed: a check that could not run is a failure.
		{"a skip fails", Report{Results: []Result{pass, skip}}, 1, "could not run (a failure unless --allow-skip names it): bios/c"},
		{"a skip allowed", Report{AllowSkip: []string{"c"}, Results: []Result{pass, skip}}, 0, "every check that ran passed; skipped, accepted by --allow-skip: bios/c"},
		{"a skip allowed by key", Report{AllowSkip: []string{"bios/c"}, Results: []Result{pass, skip}}, 0, "every check that ran passed; skipped, accepted by --allow-skip: bios/c"},
		{"another firmware's skip allowed", Report{AllowSkip: []string{"uefi/c"}, Results: []Result{pass, skip}}, 1, "could not run (a failure unless --allow-skip names it): bios/c"},
		{"another check's skip allowed", Report{AllowSkip: []string{"a"}, Results: []Result{pass, skip}}, 1, "could not run (a failure unless --allow-skip names it): bios/c"},
		{"a failure", Report{Results: []Result{pass, fail, skip}}, 1, "the image failed: bios/b; could not run (a failure unless --allow-skip names it): bios/c"},
		{"a failure, its skip allowed", Report{AllowSkip: []string{"c"}, Results: []Result{pass, fail, skip}}, 1, "the image failed: bios/b"},
		// --allow-skip accepts a skip, never a failure.
		{"a failure allowed", Report{AllowSkip: []string{"b"}, Results: []Result{pass, fail}}, 1, "the image failed: bios/b"},
		{"host", Report{HostError: "qemu-system-x86_64 is not installed", Results: []Result{fail}}, 2, "host cannot run the VM: qemu-system-x86_64 is not installed"},
		{"interrupted", Report{Interrupted: "stopped by a signal", Results: []Result{fail}}, 130, "interrupted: stopped by a signal"},
		{"nothing ran", Report{}, 0, "every check passed"},
	} {
		for i := range c.r.Results {
			c.r.Results[i].Firmware = "bios"
		}
		c.r.Finish(time.Now())
		if c.r.ExitCode != c.want || c.r.Verdict != c.verdict {
			t.Errorf("%s: exit %d %q, want %d %q", c.name, c.r.ExitCode, c.r.Verdict, c.want, c.verdict)
		}
	}
}

func TestReportJSON(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back["sha256"] != r.SHA256 || back["exit_code"] != float64(1) || back["seconds"] != float64(90) {
		t.Errorf("json: %s", b.String())
	}
	counts := back["counts"].(map[string]any)
	if counts["pass"] != float64(2) || counts["fail"] != float64(1) || counts["skip"] != float64(1) {
		t.Errorf("counts %v", counts)
	}
	res := back["results"].([]any)[1].(map[string]any)
	if res["id"] != "ssh.password-refused" || res["status"] != "fail" || res["firmware"] != "bios" || res["seconds"] != float64(1) {
		t.Errorf("result %v", res)
	}
}

func TestReportJUnit(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := r.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	var s junitSuites
	if err := xml.Unmarshal(b.Bytes(), &s); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	// The skip of uefi/network.scan is not accepted: a failure.
	if s.Tests != 4 || s.Failures != 2 || s.Skipped != 0 || !strings.Contains(s.Name, r.SHA256) {
		t.Errorf("suites: tests %d failures %d skipped %d name %q", s.Tests, s.Failures, s.Skipped, s.Name)
	}
	if len(s.Suites) != 3 || s.Suites[0].Name != "bios" || s.Suites[1].Name != "uefi" || s.Suites[2].Name != "image" {
		t.Fatalf("suites %+v", s.Suites)
	}
	props := map[string]string{}
	for _, p := range s.Suites[0].Properties {
		props[p.Name] = p.Value
	}
	if props["image.sha256"] != r.SHA256 || props["exit_code"] != "1" {
		t.Errorf("properties %v", props)
	}
	f := s.Suites[0].Cases[1]
	if f.Failure == nil || f.Failure.Message != "admin logged in with the right password" || !strings.Contains(f.Failure.Text, `<xml & "quotes">`) {
		t.Errorf("failure case %+v", f)
	}
	if sk := s.Suites[1].Cases[0]; sk.Failure == nil || sk.Skipped != nil || sk.Failure.Type != "skip" ||
		sk.Failure.Message != "could not run (a failure unless --allow-skip names it): not run: nmap is not installed" {
		t.Errorf("skipped case %+v", sk)
	}
	// Accepted with --allow-skip: <skipped>, saying so.
	r.AllowSkip = []string{"network.scan"}
	r.Finish(r.Finished)
	b.Reset()
	r.WriteJUnit(&b)
	s = junitSuites{}
	xml.Unmarshal(b.Bytes(), &s)
	if s.Failures != 1 || s.Skipped != 1 {
		t.Errorf("--allow-skip: failures %d skipped %d", s.Failures, s.Skipped)
	}
	if sk := s.Suites[1].Cases[0]; sk.Skipped == nil || sk.Failure != nil || sk.Skipped.Message != "accepted by --allow-skip: not run: nmap is not installed" {
		t.Errorf("allowed skip case %+v", sk)
	}
	if !strings.Contains(b.String(), `<property name="allow_skip" value="network.scan">`) {
		t.Errorf("junit does not name --allow-skip:\n%s", b.String())
	}
	// A host error is an <error>.
	h := &Report{Image: "x.qcow2", SHA256: "00", HostError: "OVMF missing", Started: r.Started}
	h.Finish(r.Started)
	b.Reset()
	h.WriteJUnit(&b)
	if !strings.Contains(b.String(), `<error message="OVMF missing" type="host">`) {
		t.Errorf("host error junit:\n%s", b.String())
	}
}

func TestReportSummaryAndFiles(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	r.WriteSummary(&b)
	out := b.String()
	for _, want := range []string{
		"sha256:" + r.SHA256,
		"PASS  bios/ssh.key-login",
		"FAIL  bios/ssh.password-refused",
		"      admin logged in with the right password",
		"SKIP  uefi/network.scan",
		"      => a failure: it could not run (--allow-skip uefi/network.scan accepts it)",
		"PASS  image/secrets.disk",
		"2 passed, 1 failed, 1 skipped (0 accepted by --allow-skip, 0 by request, 1 failing)",
		"verdict: the image failed: bios/ssh.password-refused; could not run (a failure unless --allow-skip names it): uefi/network.scan (exit 1)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	// A pass shows one line of evidence only.
	if strings.Contains(out, "uid=1000(admin)") {
		t.Errorf("summary shows a pass's whole evidence:\n%s", out)
	}
	dir := filepath.Join(t.TempDir(), "report")
	if err := r.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.json", "junit.xml"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Contains(b, []byte(r.SHA256)) {
			t.Errorf("%s: %v (names the sha256: %v)", name, err, bytes.Contains(b, []byte(r.SHA256)))
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("report dir holds %d files", len(ents))
	}
}

func TestSortResultsKeepsOrderWithinFirmware(t *testing.T) {
	r := &Report{Firmwares: []string{"bios", "uefi"}, Results: []Result{
		{ID: "secrets.disk"}, {ID: "b", Firmware: "uefi"}, {ID: "z", Firmware: "bios"}, {ID: "a", Firmware: "bios"},
	}}
	r.SortResults()
	var keys []string
	for _, x := range r.Results {
		keys = append(keys, x.Key())
	}
	if got := strings.Join(keys, " "); got != "bios/z bios/a uefi/b image/secrets.disk" {
		t.Errorf("order %s", got)
	}
}

// Every planned check has a title, and the plan follows the spec: no
// gateway section, no gateway checks.
func TestPlanAndTitles(t *testing.T) {
	full := Plan(DefaultSpec(), 2)
	for _, id := range append(full, "secrets.disk") {
		if title(DefaultSpec(), id) == id {
			t.Errorf("no title for %s", id)
		}
	}
	if len(full) != 23 {
		t.Errorf("default plan has %d checks: %v", len(full), full)
	}
	bare := Spec{AdminUser: "admin", SSHPort: 22}
	for _, id := range Plan(bare, 1) {
		if strings.HasPrefix(id, "gateway.") || strings.HasPrefix(id, "isolation.") || id == "firewall.rules" || id == "tailscale.daemon" {
			t.Errorf("plan of a spec without those sections has %s", id)
		}
	}
}

// A host without QEMU cannot run the VM: exit 2, saying why.
func TestRunWithoutQEMUIsAHostError(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir())
	// Run first sweeps $TMPDIR for work dirs of killed runs: not the
	// host's /tmp from a unit test (it once removed the dir a VM test had
	// just left there on purpose, TestVerifyKilled).
	t.Setenv("TMPDIR", t.TempDir())
	r := Run(t.Context(), Options{Image: img, Spec: DefaultSpec(), Firmwares: []string{"bios", "uefi"}})
	if r.ExitCode != ExitHost || !strings.Contains(r.HostError, "qemu-system-x86_64 is not installed") {
		t.Fatalf("exit %d, host error %q", r.ExitCode, r.HostError)
	}
	if r.SHA256 != "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58" {
		t.Errorf("sha256 %s", r.SHA256)
	}
	var b bytes.Buffer
	r.WriteSummary(&b)
	if !strings.Contains(b.String(), "HOST ERROR: qemu-system-x86_64 is not installed") || !strings.Contains(b.String(), "(exit 2)") {
		t.Errorf("summary:\n%s", b.String())
	}
}
