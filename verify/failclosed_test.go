package verify

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"strings"
	"testing"
	"time"
)

// failClosedReport: one firmware, every check passing but network.scan
// and isolation.outside, which could not run (not root).
func failClosedReport(allow ...string) *Report {
	t0 := time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)
	r := &Report{Image: "x.qcow2", SHA256: "00", Firmwares: []string{"bios"}, Instances: 2, AllowSkip: allow, Started: t0}
	for _, id := range Plan(DefaultSpec(), 2) {
		x := Result{ID: id, Title: title(DefaultSpec(), id), Firmware: "bios", Status: Pass, Evidence: "fine"}
		if id == "network.scan" || id == "isolation.outside" {
			x.Status, x.Evidence = Skip, "not run: not root: the outside network namespace needs root"
		}
		r.Results = append(r.Results, x)
	}
	r.Results = append(r.Results, Result{ID: "secrets.disk", Status: Pass, Evidence: "scanned"})
	r.Finish(t0.Add(time.Minute))
	return r
}

// A check that could not run fails the run by default, named in the
// verdict, the summary and junit.xml.
func TestSkipFailsByDefault(t *testing.T) {
	r := failClosedReport()
	if r.ExitCode != ExitFail {
		t.Errorf("exit %d, want %d", r.ExitCode, ExitFail)
	}
	want := "could not run (a failure unless --allow-skip names it): bios/network.scan, bios/isolation.outside"
	if r.Verdict != want {
		t.Errorf("verdict %q, want %q", r.Verdict, want)
	}
	if r.Counts.Skip != 2 || r.Counts.SkipFailing != 2 || r.Counts.SkipAllowed != 0 || r.Counts.Fail != 0 {
		t.Errorf("counts %+v", r.Counts)
	}
	for _, x := range r.Results {
		if x.Accepted != "" {
			t.Errorf("%s accepted %q without --allow-skip", x.Key(), x.Accepted)
		}
	}
	var b bytes.Buffer
	r.WriteSummary(&b)
	for _, want := range []string{
		"SKIP  bios/network.scan",
		"=> a failure: it could not run (--allow-skip bios/network.scan accepts it)",
		"2 skipped (0 accepted by --allow-skip, 0 by request, 2 failing)",
		"(exit 1)",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "accepted skips") {
		t.Errorf("summary lists accepted skips:\n%s", b.String())
	}
	b.Reset()
	r.WriteJUnit(&b)
	var s junitSuites
	if err := xml.Unmarshal(b.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if s.Failures != 2 || s.Skipped != 0 {
		t.Errorf("junit: failures %d skipped %d", s.Failures, s.Skipped)
	}
}

// --allow-skip accepts exactly the skips it names: that one is listed with
// the reason it could not run (summary, report.json, junit.xml), any other
// skip still fails the run.
func TestAllowSkipAcceptsExactlyThatOne(t *testing.T) {
	for _, id := range []string{"network.scan", "bios/network.scan"} {
		r := failClosedReport(id)
		if r.ExitCode != ExitFail || r.Verdict != "could not run (a failure unless --allow-skip names it): bios/isolation.outside" {
			t.Errorf("--allow-skip %s: exit %d, verdict %q: isolation.outside must still fail", id, r.ExitCode, r.Verdict)
		}
		if r.Counts.SkipAllowed != 1 || r.Counts.SkipFailing != 1 {
			t.Errorf("--allow-skip %s: counts %+v", id, r.Counts)
		}
		var b bytes.Buffer
		if err := r.WriteJSON(&b); err != nil {
			t.Fatal(err)
		}
		var back struct {
			AllowSkip []string `json:"allow_skip"`
			Results   []struct {
				ID, Firmware, Status, Accepted, Evidence string
			} `json:"results"`
			Counts map[string]int `json:"counts"`
		}
		if err := json.Unmarshal(b.Bytes(), &back); err != nil {
			t.Fatal(err)
		}
		if len(back.AllowSkip) != 1 || back.AllowSkip[0] != id {
			t.Errorf("report.json allow_skip %v", back.AllowSkip)
		}
		accepted := 0
		for _, x := range back.Results {
			if x.Accepted == "" {
				continue
			}
			accepted++
			if x.ID != "network.scan" || x.Status != "skip" || x.Accepted != "allow-skip" || !strings.Contains(x.Evidence, "not root") {
				t.Errorf("report.json: accepted %+v", x)
			}
		}
		if accepted != 1 || back.Counts["skip_allowed"] != 1 || back.Counts["skip_failing"] != 1 {
			t.Errorf("report.json: %d accepted, counts %v", accepted, back.Counts)
		}
		b.Reset()
		r.WriteSummary(&b)
		for _, want := range []string{
			"--allow-skip " + id + "\n",
			"=> accepted: --allow-skip names it",
			"accepted skips (not proven, not failures):\n  bios/network.scan (--allow-skip): not run: not root",
			"=> a failure: it could not run (--allow-skip bios/isolation.outside accepts it)",
			"2 skipped (1 accepted by --allow-skip, 0 by request, 1 failing)",
		} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("--allow-skip %s: summary lacks %q:\n%s", id, want, b.String())
			}
		}
		b.Reset()
		r.WriteJUnit(&b)
		var s junitSuites
		if err := xml.Unmarshal(b.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
		if s.Failures != 1 || s.Skipped != 1 {
			t.Errorf("--allow-skip %s: junit failures %d skipped %d", id, s.Failures, s.Skipped)
		}
		for _, c := range s.Suites[0].Cases {
			if strings.HasPrefix(c.Name, "network.scan:") && (c.Skipped == nil || !strings.Contains(c.Skipped.Message, "accepted by --allow-skip: not run: not root")) {
				t.Errorf("junit case %+v", c)
			}
		}
	}
	// Both accepted: the run passes, saying what was not proven.
	r := failClosedReport("network.scan", "bios/isolation.outside")
	if r.ExitCode != ExitPass || r.Verdict != "every check that ran passed; skipped, accepted by --allow-skip: bios/network.scan, bios/isolation.outside" {
		t.Errorf("exit %d, verdict %q", r.ExitCode, r.Verdict)
	}
}

// With one instance the identity checks are listed as skipped by request,
// after the firmware's other checks, and do not fail the run.
func TestOneInstanceIdentitySkippedByRequest(t *testing.T) {
	t0 := time.Now()
	r := &Report{Image: "x.qcow2", Firmwares: []string{"bios", "uefi"}, Instances: 1, Started: t0}
	for _, fw := range r.Firmwares {
		for _, id := range Plan(DefaultSpec(), 1) {
			r.Results = append(r.Results, Result{ID: id, Firmware: fw, Status: Pass})
		}
	}
	r.Results = append(r.Results, Result{ID: "secrets.disk", Status: Pass})
	r.Finish(t0)
	r.Finish(t0) // twice: nothing is listed twice
	if r.ExitCode != ExitPass {
		t.Errorf("exit %d (%s), want 0", r.ExitCode, r.Verdict)
	}
	if want := "every check that ran passed; skipped by request: bios/identity.unique, bios/identity.reboot, uefi/identity.unique, uefi/identity.reboot"; r.Verdict != want {
		t.Errorf("verdict %q, want %q", r.Verdict, want)
	}
	n := len(Plan(DefaultSpec(), 1))
	var keys []string
	for _, x := range r.Results {
		keys = append(keys, x.Key())
		if strings.HasPrefix(x.ID, "identity.") && (x.Status != Skip || x.Accepted != AcceptedByRequest || x.Evidence != "not run: needs --instances 2 (skipped by request)") {
			t.Errorf("%s: %+v", x.Key(), x)
		}
	}
	if len(keys) != 2*n+5 || keys[n] != "bios/identity.unique" || keys[n+1] != "bios/identity.reboot" ||
		keys[2*n+2] != "uefi/identity.unique" || keys[2*n+3] != "uefi/identity.reboot" || keys[2*n+4] != "image/secrets.disk" {
		t.Errorf("results %v", keys)
	}
	if r.Counts.SkipByRequest != 4 || r.Counts.SkipFailing != 0 {
		t.Errorf("counts %+v", r.Counts)
	}
	var b bytes.Buffer
	r.WriteJSON(&b)
	if !strings.Contains(b.String(), `"id": "identity.reboot",`) || !strings.Contains(b.String(), `"accepted": "by-request",`) ||
		!strings.Contains(b.String(), `"evidence": "not run: needs --instances 2 (skipped by request)"`) {
		t.Errorf("report.json does not list identity as skipped by request:\n%s", b.String())
	}
	b.Reset()
	r.WriteSummary(&b)
	for _, want := range []string{
		"identity checks (two instances differ, a reboot keeps them) skipped by request: they need --instances 2",
		"SKIP  bios/identity.unique",
		"  uefi/identity.reboot (by request): not run: needs --instances 2 (skipped by request)",
		"4 skipped (0 accepted by --allow-skip, 4 by request, 0 failing)",
		"(exit 0)",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "=> a failure") {
		t.Errorf("summary calls a skip by request a failure:\n%s", b.String())
	}
	b.Reset()
	r.WriteJUnit(&b)
	var s junitSuites
	xml.Unmarshal(b.Bytes(), &s)
	if s.Failures != 0 || s.Skipped != 4 {
		t.Errorf("junit: failures %d skipped %d", s.Failures, s.Skipped)
	}

	// Two instances: nothing by request; a host error: nothing ran.
	two := &Report{Firmwares: []string{"bios"}, Instances: 2, Results: []Result{{ID: "ssh.key-login", Firmware: "bios", Status: Pass}}}
	two.Finish(t0)
	host := &Report{Firmwares: []string{"bios"}, Instances: 1, HostError: "no QEMU"}
	host.Finish(t0)
	if len(two.Results) != 1 || len(host.Results) != 0 {
		t.Errorf("listed by request: two instances %+v, host error %+v", two.Results, host.Results)
	}
}

// A run cut short with one instance (fillSkipped) lists the identity
// checks by request, the others as failures that could not run.
func TestFillSkippedOneInstance(t *testing.T) {
	o := Options{Spec: DefaultSpec(), Firmwares: []string{"bios"}, Instances: 1}
	r := &runner{o: o, rep: NewReport(o)}
	r.record("bios", "ssh.key-login", Pass, "logged in", 0)
	r.fillSkipped("not run: the verification's time limit ran out")
	r.rep.SortResults()
	r.rep.Finish(time.Now())
	if r.rep.ExitCode != ExitFail {
		t.Errorf("exit %d, want 1", r.rep.ExitCode)
	}
	for _, x := range r.rep.Results {
		byRequest := strings.HasPrefix(x.ID, "identity.")
		if byRequest != (x.Accepted == AcceptedByRequest) {
			t.Errorf("%s: accepted %q", x.Key(), x.Accepted)
		}
		if !byRequest && x.ID != "ssh.key-login" && !strings.Contains(r.rep.Verdict, x.Key()) {
			t.Errorf("verdict %q does not name %s", r.rep.Verdict, x.Key())
		}
	}
	if !r.has("bios", "identity.reboot") || strings.Contains(r.rep.Verdict, "identity") {
		t.Errorf("identity: verdict %q", r.rep.Verdict)
	}
}

// --allow-skip IDs are checked against the catalog: a check ID, or a key
// as the report names it; anything else is refused, naming the checks.
func TestResolveAllowSkip(t *testing.T) {
	for _, id := range []string{"network.scan", "bios/network.scan", "uefi/identity.reboot", "identity.unique",
		"secrets.disk", "image/secrets.disk", " isolation.outside "} {
		got, err := ResolveAllowSkip(id)
		if err != nil || got != strings.TrimSpace(id) {
			t.Errorf("%q: %q, %v", id, got, err)
		}
	}
	for id, want := range map[string]string{
		"network-scan":         "names no check of bake verify",
		"":                     "names no check",
		"bios/":                "names no check",
		"bios/nope":            "names no check",
		"arm/network.scan":     `"arm" is no firmware`,
		"bios/secrets.disk":    "image/secrets.disk",
		"image/network.scan":   "prefix it with bios/ or uefi/",
		"image.format":         "never skips",
		"image/verify.timeout": "never skips",
		"BIOS/network.scan":    "is no firmware",
	} {
		_, err := ResolveAllowSkip(id)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "network.scan, network.udp, isolation.loopback") {
			t.Errorf("%q: %v, want an error saying %q and listing the checks", id, err, want)
		}
	}
	// The catalog is every check a run can record as skipped, each with
	// a title.
	fw, img := Catalog()
	for _, id := range append(fw, img...) {
		if title(DefaultSpec(), id) == id {
			t.Errorf("catalog check %s has no title", id)
		}
	}
	for _, id := range append(ByRequest(1), Plan(Spec{AdminUser: "admin", SSHPort: 22, Docker: true}, 2)...) {
		if _, err := ResolveAllowSkip(id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
}
