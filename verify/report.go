package verify

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Status is the outcome of one check.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "fail"
	Skip Status = "skip" // not run or not decided, with the reason in the evidence
)

// Why a Skip is accepted (Result.Accepted). A skip that is not accepted is
// a failure: verify fails closed, a claim that was not proven is not taken
// as holding.
const (
	// AcceptedAllowSkip: --allow-skip named the check (Report.AllowSkip).
	AcceptedAllowSkip = "allow-skip"
	// AcceptedByRequest: the run's options left the check out (identity.*
	// with --instances 1); it was never attempted.
	AcceptedByRequest = "by-request"
)

// Exit statuses of a verification.
const (
	ExitPass        = 0   // every check passed, or was skipped and accepted (--allow-skip, by request)
	ExitFail        = 1   // a check failed, or could not run and was not accepted: the image is not proven
	ExitHost        = 2   // the host could not run the VM (or bad usage)
	ExitInterrupted = 130 // Ctrl-C or SIGTERM: nothing was decided
)

// Result is one check on one firmware (and instance, for checks about
// several instances). ID names the claim (e.g. ssh.password-refused);
// Firmware is empty for checks of the image file itself.
type Result struct {
	ID       string `json:"id"`
	Title    string `json:"title"`
	Firmware string `json:"firmware,omitempty"`
	Status   Status `json:"status"`
	// Accepted is set on a Skip that does not fail the run:
	// AcceptedAllowSkip or AcceptedByRequest. A skip without it is a
	// failure (Report.Exit).
	Accepted string        `json:"accepted,omitempty"`
	Evidence string        `json:"evidence"`
	Duration time.Duration `json:"-"`
	Seconds  float64       `json:"seconds"`
}

// Key is the check's unique name in a report: "bios/ssh.key-login" or
// "image/secrets.disk".
func (r Result) Key() string {
	if r.Firmware == "" {
		return "image/" + r.ID
	}
	return r.Firmware + "/" + r.ID
}

// Report is the outcome of one verification.
type Report struct {
	Image        string `json:"image"`
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
	Format       string `json:"format,omitempty"`
	Recipe       string `json:"recipe,omitempty"`
	RecipeDigest string `json:"recipe_sha256,omitempty"`
	// Claims says where the claims checked came from: the recipe, the
	// image's record (image.claims) or the appliance's defaults.
	Claims      string         `json:"claims,omitempty"`
	BakeVersion string         `json:"bake_version,omitempty"`
	Firmwares   []string       `json:"firmwares"`
	Instances   int            `json:"instances"`
	CPUs        map[string]int `json:"cpus,omitempty"` // vCPUs of each VM, by firmware
	Accel       string         `json:"accel,omitempty"`
	Outside     string         `json:"outside,omitempty"` // how "outside" was reached
	Started     time.Time      `json:"started"`
	Finished    time.Time      `json:"finished"`
	Seconds     float64        `json:"seconds"`
	// UserData is the --user-data file merged into the seeds' user-data.
	UserData       string `json:"user_data,omitempty"`
	UserDataSHA256 string `json:"user_data_sha256,omitempty"`
	// Tailnet is the login server the last instance of each firmware
	// joined (--tailnet-login-server); never the auth key.
	Tailnet string `json:"tailnet,omitempty"`
	// Seeds says how each instance got its seed (SeedNoCloud, SeedSMBIOS),
	// by instance name ("bios-0").
	Seeds map[string]string `json:"seeds,omitempty"`
	// GuestCPU is the CPU time (user + system, seconds) each instance's
	// QEMU used from its start to its exit, by instance name (vm.VM's
	// CPUTime): what the run cost the host, which unlike its wall time
	// hardly depends on what else ran beside it.
	GuestCPU map[string]float64 `json:"guest_cpu_seconds,omitempty"`
	// UpgradeFrom is the old image of an upgrade run (--upgrade-from).
	UpgradeFrom string `json:"upgrade_from,omitempty"`
	// HostError says why the host could not run the VM (exit status 2).
	HostError string `json:"host_error,omitempty"`
	// Interrupted says what stopped the run early (a signal).
	Interrupted string `json:"interrupted,omitempty"`
	// AllowSkip are the --allow-skip IDs: network.scan (every firmware)
	// or a key, "bios/network.scan". A skip they name is accepted; any
	// other skip fails the run.
	AllowSkip []string `json:"allow_skip,omitempty"`
	Results   []Result `json:"results"`
	// Evidence files written beside the report (serial console logs).
	Files    []string `json:"files,omitempty"`
	Counts   Counts   `json:"counts"`
	ExitCode int      `json:"exit_code"`
	Verdict  string   `json:"verdict"`
}

// Counts of results by status. Skip counts every skip; SkipAllowed and
// SkipByRequest are the accepted ones, SkipFailing the rest (failures).
type Counts struct {
	Pass          int `json:"pass"`
	Fail          int `json:"fail"`
	Skip          int `json:"skip"`
	SkipAllowed   int `json:"skip_allowed"`    // accepted by --allow-skip
	SkipByRequest int `json:"skip_by_request"` // left out by the run's options
	SkipFailing   int `json:"skip_failing"`    // could not run, not accepted: failures
}

// Tally returns the counts of r's results.
func (r *Report) Tally() Counts {
	var c Counts
	for _, x := range r.Results {
		switch x.Status {
		case Pass:
			c.Pass++
		case Fail:
			c.Fail++
		default:
			c.Skip++
			switch r.accepted(x) {
			case AcceptedAllowSkip:
				c.SkipAllowed++
			case AcceptedByRequest:
				c.SkipByRequest++
			default:
				c.SkipFailing++
			}
		}
	}
	return c
}

// accepted says why x, a skip, does not fail the run ("" when it does, or
// when x is no skip): by request when the run left it out, allowed when
// an --allow-skip ID names it.
func (r *Report) accepted(x Result) string {
	if x.Status != Skip {
		return ""
	}
	if x.Accepted == AcceptedByRequest {
		return AcceptedByRequest
	}
	for _, id := range r.AllowSkip {
		if AllowSkipMatches(id, x) {
			return AcceptedAllowSkip
		}
	}
	return ""
}

// AllowSkipMatches: the --allow-skip ID names x. A bare check ID
// (network.scan) names the check on every firmware, a key
// ("bios/network.scan", "image/secrets.disk") that one result.
func AllowSkipMatches(id string, x Result) bool {
	if strings.Contains(id, "/") {
		return id == x.Key()
	}
	return id == x.ID
}

// Exit is the exit status the report calls for: 2 when the host could not
// run the VM, 130 when interrupted, 1 when a check failed or was skipped
// without being accepted (--allow-skip, by request), else 0.
func (r *Report) Exit() int {
	c := r.Tally()
	switch {
	case r.HostError != "":
		return ExitHost
	case r.Interrupted != "":
		return ExitInterrupted
	case c.Fail > 0 || c.SkipFailing > 0:
		return ExitFail
	}
	return ExitPass
}

// Finish lists the checks the run's options left out (ListByRequest),
// marks the accepted skips, and fills in the counts, exit code, verdict
// and durations. It sorts nothing: results keep the order the checks ran
// in.
func (r *Report) Finish(now time.Time) {
	r.ListByRequest()
	r.Finished = now
	r.Seconds = round(now.Sub(r.Started).Seconds())
	for i := range r.Results {
		r.Results[i].Seconds = round(r.Results[i].Duration.Seconds())
		r.Results[i].Accepted = r.accepted(r.Results[i])
	}
	r.Counts = r.Tally()
	r.ExitCode = r.Exit()
	r.Verdict = r.verdict()
}

// ByRequestReason is the evidence of a check the run's options left out.
const ByRequestReason = "not run: needs --instances 2 (skipped by request)"

// ListByRequest adds, for each firmware of the run, a Skip accepted by
// request for every check the run's options leave out (ByRequest): with
// one instance, identity.unique and identity.reboot. Each goes after the
// last result of its firmware. Nothing is added after a host error
// (nothing ran), nor for a check that already has a result.
func (r *Report) ListByRequest() {
	if r.HostError != "" || r.UpgradeFrom != "" {
		return
	}
	for _, fw := range r.Firmwares {
		for _, id := range ByRequest(r.Instances) {
			at, seen := len(r.Results), false
			for i, x := range r.Results {
				if x.Firmware == fw {
					at = i + 1
					seen = seen || x.ID == id
				}
			}
			if seen {
				continue
			}
			x := Result{ID: id, Title: title(DefaultSpec(), id), Firmware: fw, Status: Skip, Accepted: AcceptedByRequest, Evidence: ByRequestReason}
			r.Results = append(r.Results[:at], append([]Result{x}, r.Results[at:]...)...)
		}
	}
}

func round(s float64) float64 { return float64(int64(s*10+0.5)) / 10 }

func (r *Report) verdict() string {
	switch r.Exit() {
	case ExitHost:
		return "host cannot run the VM: " + firstLine(r.HostError)
	case ExitInterrupted:
		return "interrupted: " + r.Interrupted
	}
	var failed, unrun, allowed, byRequest []string
	for _, x := range r.Results {
		switch {
		case x.Status == Fail:
			failed = append(failed, x.Key())
		case x.Status == Pass:
		case r.accepted(x) == AcceptedAllowSkip:
			allowed = append(allowed, x.Key())
		case r.accepted(x) == AcceptedByRequest:
			byRequest = append(byRequest, x.Key())
		default:
			unrun = append(unrun, x.Key())
		}
	}
	var parts []string
	if len(failed) > 0 {
		parts = append(parts, "the image failed: "+strings.Join(failed, ", "))
	}
	if len(unrun) > 0 {
		parts = append(parts, "could not run (a failure unless --allow-skip names it): "+strings.Join(unrun, ", "))
	}
	if len(parts) > 0 {
		return strings.Join(parts, "; ")
	}
	if len(allowed) == 0 && len(byRequest) == 0 {
		return "every check passed"
	}
	parts = []string{"every check that ran passed"}
	if len(allowed) > 0 {
		parts = append(parts, "skipped, accepted by --allow-skip: "+strings.Join(allowed, ", "))
	}
	if len(byRequest) > 0 {
		parts = append(parts, "skipped by request: "+strings.Join(byRequest, ", "))
	}
	return strings.Join(parts, "; ")
}

// Failed lists the keys of failed results.
func (r *Report) Failed() []string {
	var out []string
	for _, x := range r.Results {
		if x.Status == Fail {
			out = append(out, x.Key())
		}
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// JUnit XML (the schema Jenkins, GitLab and GitHub reporters read).
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML: a test suite per firmware (and
// one, "image", for the checks of the image file), a test case per check.
// A host error is an <error> test case; a skip that is not accepted is a
// <failure> (type "skip"), an accepted one <skipped> saying why.
func (r *Report) WriteJUnit(w io.Writer) error {
	groups := map[string][]Result{}
	var order []string
	for _, x := range r.Results {
		g := x.Firmware
		if g == "" {
			g = "image"
		}
		if _, ok := groups[g]; !ok {
			order = append(order, g)
		}
		groups[g] = append(groups[g], x)
	}
	props := []junitProperty{
		{"image", r.Image},
		{"image.sha256", r.SHA256},
	}
	if r.Recipe != "" {
		props = append(props, junitProperty{"recipe", r.Recipe}, junitProperty{"recipe.sha256", r.RecipeDigest})
	}
	if r.Claims != "" {
		props = append(props, junitProperty{"claims", r.Claims})
	}
	if r.UserData != "" {
		props = append(props, junitProperty{"user_data", r.UserData}, junitProperty{"user_data.sha256", r.UserDataSHA256})
	}
	if len(r.AllowSkip) > 0 {
		props = append(props, junitProperty{"allow_skip", strings.Join(r.AllowSkip, " ")})
	}
	props = append(props,
		junitProperty{"instances", fmt.Sprint(r.Instances)},
		junitProperty{"accel", r.Accel},
		junitProperty{"outside", r.Outside},
		junitProperty{"exit_code", fmt.Sprint(r.Exit())},
		junitProperty{"verdict", r.verdict()})
	all := junitSuites{Name: "bake verify " + filepath.Base(r.Image) + " sha256:" + r.SHA256, Time: secs(r.Finished.Sub(r.Started))}
	if r.HostError != "" || r.Interrupted != "" {
		msg, kind := r.HostError, "host"
		if msg == "" {
			msg, kind = r.Interrupted, "interrupted"
		}
		s := junitSuite{Name: "host", Tests: 1, Errors: 1, Timestamp: r.Started.UTC().Format(time.RFC3339), Properties: props,
			Cases: []junitCase{{Name: "host can run the VM", Classname: "bake.verify." + kind, Time: "0",
				Error: &junitMessage{Message: firstLine(msg), Type: kind, Text: msg}}}}
		all.Suites = append(all.Suites, s)
		all.Tests++
		all.Errors++
	}
	for _, g := range order {
		s := junitSuite{Name: g, Timestamp: r.Started.UTC().Format(time.RFC3339), Properties: props}
		var total time.Duration
		for _, x := range groups[g] {
			c := junitCase{Name: x.ID + ": " + x.Title, Classname: "bake.verify." + g, Time: secs(x.Duration), SystemOut: x.Evidence}
			switch {
			case x.Status == Fail:
				c.Failure = &junitMessage{Message: firstLine(x.Evidence), Type: "fail", Text: x.Evidence}
				s.Failures++
			case x.Status == Skip && r.accepted(x) == AcceptedAllowSkip:
				c.Skipped = &junitMessage{Message: "accepted by --allow-skip: " + firstLine(x.Evidence), Text: x.Evidence}
				s.Skipped++
			case x.Status == Skip && r.accepted(x) == AcceptedByRequest:
				c.Skipped = &junitMessage{Message: firstLine(x.Evidence), Text: x.Evidence}
				s.Skipped++
			case x.Status == Skip:
				c.Failure = &junitMessage{Message: "could not run (a failure unless --allow-skip names it): " + firstLine(x.Evidence), Type: "skip", Text: x.Evidence}
				s.Failures++
			}
			total += x.Duration
			s.Cases = append(s.Cases, c)
			s.Tests++
		}
		s.Time = secs(total)
		all.Tests += s.Tests
		all.Failures += s.Failures
		all.Skipped += s.Skipped
		all.Suites = append(all.Suites, s)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(all); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// WriteSummary writes the human summary: a line per check (with the first
// line of evidence for a pass, and the evidence for a failure or skip), and
// the verdict.
func (r *Report) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "bake verify %s\n", r.Image)
	fmt.Fprintf(w, "  sha256:%s  (%d bytes%s)\n", r.SHA256, r.Size, suffix(", ", r.Format))
	if r.Recipe != "" {
		fmt.Fprintf(w, "  recipe %s (sha256:%s)\n", r.Recipe, r.RecipeDigest)
	}
	if r.Claims != "" {
		fmt.Fprintf(w, "  claims from %s\n", r.Claims)
	}
	if r.UserData != "" {
		fmt.Fprintf(w, "  user-data merged from %s (sha256:%s)\n", r.UserData, r.UserDataSHA256)
	}
	var cpus []string
	for _, fw := range r.Firmwares {
		if n := r.CPUs[fw]; n > 0 {
			cpus = append(cpus, fmt.Sprintf("%s %d", fw, n))
		}
	}
	fmt.Fprintf(w, "  firmware %s, %d instance(s), vCPUs each: %s, accel %s, outside: %s\n",
		strings.Join(r.Firmwares, "+"), r.Instances, orDash(strings.Join(cpus, ", ")), orDash(r.Accel), orDash(r.Outside))
	if r.UpgradeFrom != "" {
		fmt.Fprintf(w, "  upgrade from %s: it boots with a seed on a new state volume, this image on that volume with no seed, then it again (rollback)\n", r.UpgradeFrom)
	} else if len(ByRequest(r.Instances)) > 0 && r.HostError == "" {
		fmt.Fprintf(w, "  identity checks (two instances differ, a reboot keeps them) skipped by request: they need --instances 2\n")
	}
	if len(r.AllowSkip) > 0 {
		fmt.Fprintf(w, "  --allow-skip %s\n", strings.Join(r.AllowSkip, " --allow-skip "))
	}
	if r.HostError != "" {
		fmt.Fprintf(w, "\nHOST ERROR: %s\n", indentRest(r.HostError, "  "))
	}
	width := 0
	for _, x := range r.Results {
		if n := len(x.Key()); n > width {
			width = n
		}
	}
	if len(r.Results) > 0 {
		fmt.Fprintln(w)
	}
	for _, x := range r.Results {
		fmt.Fprintf(w, "%-4s  %-*s  %s (%s)\n", strings.ToUpper(string(x.Status)), width, x.Key(), x.Title, x.Duration.Round(100*time.Millisecond))
		ev := strings.TrimSpace(x.Evidence)
		if ev == "" {
			continue
		}
		if x.Status == Pass {
			fmt.Fprintf(w, "      %s\n", truncate(firstLine(ev), 160))
			continue
		}
		lines := strings.Split(ev, "\n")
		if len(lines) > 30 {
			lines = append(lines[:30], fmt.Sprintf("... (%d more lines in report.json)", len(lines)-30))
		}
		for _, l := range lines {
			fmt.Fprintf(w, "      %s\n", truncate(l, 240))
		}
		if x.Status == Skip {
			switch r.accepted(x) {
			case AcceptedAllowSkip:
				fmt.Fprintf(w, "      => accepted: --allow-skip names it\n")
			case AcceptedByRequest:
			default:
				fmt.Fprintf(w, "      => a failure: it could not run (--allow-skip %s accepts it)\n", x.Key())
			}
		}
	}
	c := r.Tally()
	var accepted []string
	for _, x := range r.Results {
		switch r.accepted(x) {
		case AcceptedAllowSkip:
			accepted = append(accepted, fmt.Sprintf("  %s (--allow-skip): %s", x.Key(), truncate(firstLine(x.Evidence), 200)))
		case AcceptedByRequest:
			accepted = append(accepted, fmt.Sprintf("  %s (by request): %s", x.Key(), truncate(firstLine(x.Evidence), 200)))
		}
	}
	if len(accepted) > 0 {
		fmt.Fprintf(w, "\naccepted skips (not proven, not failures):\n%s\n", strings.Join(accepted, "\n"))
	}
	skipped := fmt.Sprintf("%d skipped", c.Skip)
	if c.Skip > 0 {
		skipped += fmt.Sprintf(" (%d accepted by --allow-skip, %d by request, %d failing)", c.SkipAllowed, c.SkipByRequest, c.SkipFailing)
	}
	fmt.Fprintf(w, "\n%d passed, %d failed, %s in %s; image sha256:%s\n", c.Pass, c.Fail, skipped,
		r.Finished.Sub(r.Started).Round(time.Second), r.SHA256)
	fmt.Fprintf(w, "verdict: %s (exit %d)\n", r.verdict(), r.Exit())
}

// WriteFiles writes report.json and junit.xml into dir (created if needed).
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name  string
		write func(io.Writer) error
	}{{"report.json", r.WriteJSON}, {"junit.xml", r.WriteJUnit}} {
		tmp, err := os.CreateTemp(dir, "."+f.name+".*")
		if err != nil {
			return err
		}
		if err := f.write(tmp); err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			return err
		}
		if err := tmp.Close(); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Chmod(tmp.Name(), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, f.name)); err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}

// SortResults orders results by firmware (image checks last), keeping the
// order checks ran in within a firmware.
func (r *Report) SortResults() {
	rank := map[string]int{}
	for _, f := range r.Firmwares {
		if _, ok := rank[f]; !ok {
			rank[f] = len(rank)
		}
	}
	sort.SliceStable(r.Results, func(i, j int) bool {
		ri, ok := rank[r.Results[i].Firmware]
		if !ok {
			ri = len(rank)
		}
		rj, ok := rank[r.Results[j].Firmware]
		if !ok {
			rj = len(rank)
		}
		return ri < rj
	})
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func suffix(sep, s string) string {
	if s == "" {
		return ""
	}
	return sep + s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func indentRest(s, prefix string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}

func itoa(i int) string { return fmt.Sprint(i) }
