// Package testreport turns `go test -json` output into CI's report: the
// `=== RUN` line of each top-level test, the `--- PASS/FAIL/SKIP` line of
// every test (but quick passing subtests, Config.Quick), each package's
// ok/FAIL line, the last lines of a failing
// test's output, everything printed outside a test's result (a timeout's
// "panic: test timed out ... running tests:", a crash's stack traces, build
// errors) and every test that started but never ended ("--- HUNG"); at the
// end, a table of the top-level tests' durations (with the guest CPU time
// of the VMs each one booted, from their exit lines, CPULine) and a check
// of those durations against the budget table of BENCHMARKS.md (budget.go).
//
// It owns no build stage: it is test tooling, run by `make test` through
// cmd/testreport, and by .ci/run to print every tier's table at the end.
//
// What `go test -json` reports, and what this package assumes of it: every
// event names its package; output printed by a test (including the
// "panic: test timed out" a timeout prints, which test2json attributes to
// whichever test it saw last) carries that test's name; a test that was
// running when its binary died gets no pass/fail event. A line starting with
// "panic: ", "fatal error: ", "SIGQUIT: quit" or similar at column 0 means
// the binary is dying, so from there on every line of that package is shown
// as it comes instead of being kept in some test's tail.
package testreport

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults for Config's zero values.
const (
	DefaultTailLines    = 80      // lines of a failing or hung test's output shown
	DefaultPackageLines = 400     // lines shown in full per package
	MaxLineBytes        = 1 << 20 // input lines longer than this keep their first MaxLineBytes
	maxShownLineBytes   = 4096    // longer output lines are cut when shown (the log has them whole)
)

// Event is one line of `go test -json` (cmd/test2json) output. ImportPath
// is set on the build-output and build-fail events that go test -json emits
// for a package that does not compile.
type Event struct {
	Time        time.Time
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string
	FailedBuild string
}

// Config says where a Report writes and how much it shows.
type Config struct {
	// Out receives the live report and the non-JSON lines (nil: discard).
	Out io.Writer
	// Log receives every Output field (and every non-JSON line) in order:
	// what `go test -v 2>&1` would have printed. May be nil.
	Log io.Writer
	// JSON receives a copy of every input line. May be nil.
	JSON io.Writer
	// LogName names the full log in "... N more lines in LOG".
	LogName string
	// Module is the module path; package names are shown relative to it.
	Module string
	// TailLines and PackageLines default to DefaultTailLines and
	// DefaultPackageLines.
	TailLines    int
	PackageLines int
	// Quick: a subtest that passes in less time gets no --- PASS line
	// (table-driven and fuzz seed subtests would drown the report).
	Quick time.Duration
	// Quiet suppresses the live report and the non-JSON pass-through (for
	// re-reading a saved stream, -summary-only): only the state is kept.
	Quiet bool
}

// Result is the outcome of one top-level test.
type Result struct {
	Package string // import path
	Short   string // relative to Config.Module
	Test    string
	Result  string // PASS, FAIL, SKIP or HUNG
	// Seconds is go test's time for it or, if longer, the wall time from
	// its start (a parallel test: its last resume) to its result, which
	// counts its parallel subtests; for a HUNG test, to its package's end.
	Seconds float64
	Started time.Time
	// GuestCPU is the CPU seconds of the VMs whose exit lines (CPULine)
	// the test and its subtests printed, VMs how many lines; both 0 for a
	// test that printed none.
	GuestCPU float64
	VMs      int
}

// Duration is the test's time as a time.Duration.
func (r Result) Duration() time.Duration { return secondsDuration(r.Seconds) }

// PackageResult is the outcome of one package's test binary.
type PackageResult struct {
	Package string
	Short   string
	Result  string // ok, FAIL, or FAIL when the input ended first
	Seconds float64
	Tests   int // top-level tests
}

// Report consumes a `go test -json` stream line by line (Line, or Read for
// a whole stream), prints the live report, and keeps what Finish, Results,
// Packages, WriteSummary and ExitCode need.
type Report struct {
	cfg  Config
	out  *bufio.Writer
	log  *bufio.Writer
	json *bufio.Writer

	pkgs     map[string]*pkgState
	pkgOrder []*pkgState
	build    map[string]*outputCap // build-output per ImportPath

	ran         int      // run events of top-level tests
	failures    []string // "pkg TestX (FAIL)" lines for the closing summary
	badInput    bool     // a non-JSON line looked like a build or go command failure
	buildFailed bool
	writeErr    error
	broken      bool // an internal error: the rest is passed through
	finished    bool
}

type pkgState struct {
	name, short string
	started     bool
	done        bool
	result      string // "ok", "FAIL", or "skip" (no test files)
	elapsed     float64
	resultLine  string
	failedBuild string
	end         time.Time
	first, last time.Time // times of its first and latest events

	crashed   bool // a panic/fatal error/signal dump began: show everything
	shown     outputCap
	explained bool // a test failure, hang or in-full output explains a FAIL
	all       ring // last lines of any output, for an unexplained FAIL

	tests    map[string]*testState
	top      []*testState
	partial  map[string][]byte
	hadTests bool
}

// outputCap counts lines shown in full and those left out past the cap.
type outputCap struct{ shown, hidden int }

type testState struct {
	name    string
	depth   int // 0 for a top-level test
	start   time.Time
	ended   bool
	resumed time.Time // its last === CONT (a parallel test waited until then)
	subEnd  time.Time // the latest end of one of its subtests
	queued  float64   // seconds it said it waited for a slot (QueuedLine)
	result  string
	elapsed float64 // as go test reports it
	seconds float64 // for the table: see endTest
	tail    *ring   // its own and its subtests' lines
	// A top-level test's VM exit lines (CPULine), its subtests' included:
	// their CPU seconds, and the lines seen (a line printed twice, e.g.
	// bake verify's output logged again by a failing test, counts once).
	cpu     float64
	cpuSeen map[string]bool
}

// line is one output line; the same *line sits in the tails of a test and
// of its parents, so that a line shown under a failing subtest is not shown
// again under its failing parent.
type line struct {
	text  string
	test  string // the test that printed it, "" for none
	shown bool
}

// ring keeps the last max lines pushed, oldest first.
type ring struct {
	max     int
	lines   []*line
	dropped int // lines pushed out
}

func (r *ring) push(l *line) {
	if r.max <= 0 {
		return
	}
	if len(r.lines) == r.max {
		copy(r.lines, r.lines[1:])
		r.lines = r.lines[:r.max-1]
		r.dropped++
	}
	r.lines = append(r.lines, l)
}

func (r *ring) slice() []*line { return r.lines }

// forget removes the lines of test and its subtests.
func (r *ring) forget(test string) {
	kept := r.lines[:0]
	for _, l := range r.lines {
		if l.test != test && !strings.HasPrefix(l.test, test+"/") {
			kept = append(kept, l)
		}
	}
	clear(r.lines[len(kept):])
	r.lines = kept
}

// New returns a Report writing to cfg's writers.
func New(cfg Config) *Report {
	if cfg.TailLines <= 0 {
		cfg.TailLines = DefaultTailLines
	}
	if cfg.PackageLines <= 0 {
		cfg.PackageLines = DefaultPackageLines
	}
	if cfg.LogName == "" {
		cfg.LogName = "the full log"
	}
	out := cfg.Out
	if out == nil || cfg.Quiet {
		out = io.Discard
	}
	r := &Report{
		cfg:   cfg,
		out:   bufio.NewWriterSize(out, 64<<10),
		pkgs:  map[string]*pkgState{},
		build: map[string]*outputCap{},
	}
	if cfg.Log != nil {
		r.log = bufio.NewWriterSize(cfg.Log, 64<<10)
	}
	if cfg.JSON != nil {
		r.json = bufio.NewWriterSize(cfg.JSON, 64<<10)
	}
	return r
}

// Read feeds every line of in to Line, keeping the first MaxLineBytes of
// longer lines, and flushes the writers whenever it is about to wait for
// more input, so the report is as current as the stream.
func (r *Report) Read(in io.Reader) error {
	br := bufio.NewReaderSize(in, 64<<10)
	var buf []byte
	for {
		if br.Buffered() == 0 {
			r.Flush()
		}
		chunk, err := br.ReadSlice('\n')
		if room := MaxLineBytes - len(buf); room > 0 {
			buf = append(buf, chunk[:min(room, len(chunk))]...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if len(buf) > 0 {
			r.Line(bytes.TrimRight(buf, "\r\n"))
		}
		buf = buf[:0]
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Flush writes out what the report has buffered.
func (r *Report) Flush() {
	for _, w := range []*bufio.Writer{r.out, r.log, r.json} {
		if w != nil {
			if err := w.Flush(); err != nil && r.writeErr == nil {
				r.writeErr = err
			}
		}
	}
}

// Line processes one input line (without its newline).
func (r *Report) Line(raw []byte) {
	if r.json != nil {
		r.json.Write(raw)
		r.json.WriteByte('\n')
	}
	if r.broken {
		r.passThrough(raw)
		return
	}
	defer func() {
		// A bug here must not cost the test run: go test writes into our
		// stdin, and a dead reader kills it. Report and pass the rest through.
		if e := recover(); e != nil {
			r.broken = true
			fmt.Fprintf(r.out, "testreport: internal error: %v; passing the rest of the output through\n", e)
		}
	}()
	var ev Event
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &ev) != nil || ev.Action == "" {
		r.passThrough(raw)
		if LooksLikeFailure(string(raw)) {
			r.badInput = true
		}
		return
	}
	r.event(&ev)
}

func (r *Report) passThrough(raw []byte) {
	if !r.cfg.Quiet {
		r.out.Write(raw)
		r.out.WriteByte('\n')
	}
	if r.log != nil {
		r.log.Write(raw)
		r.log.WriteByte('\n')
	}
}

var failurePrefixes = []string{"# ", "FAIL", "panic: ", "fatal error: ", "cannot find package", "no required module provides", "pattern ", "package "}

var benignGo = []string{"go: downloading ", "go: finding ", "go: extracting ", "go: found ", "go: added ", "go: upgraded ", "go: warning: "}

var goFileError = regexp.MustCompile(`^\S+\.go:\d+(:\d+)?: `)

// LooksLikeFailure reports whether a line that go test printed outside its
// JSON stream suggests a build or go command failure: a "# pkg" header, a
// compiler error, a FAIL line, an error from the go command.
func LooksLikeFailure(s string) bool {
	if strings.HasPrefix(s, "go: ") {
		for _, p := range benignGo {
			if strings.HasPrefix(s, p) {
				return false
			}
		}
		return true
	}
	for _, p := range failurePrefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return goFileError.MatchString(s)
}

func (r *Report) pkg(name string) *pkgState {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgState{
			name:    name,
			short:   ShortPackage(r.cfg.Module, name),
			tests:   map[string]*testState{},
			partial: map[string][]byte{},
			all:     ring{max: r.cfg.TailLines},
		}
		r.pkgs[name] = p
		r.pkgOrder = append(r.pkgOrder, p)
	}
	return p
}

func (r *Report) event(ev *Event) {
	if ev.Output != "" && r.log != nil {
		r.log.WriteString(ev.Output)
	}
	switch ev.Action {
	case "build-output":
		r.buildOutput(ev)
		return
	case "build-fail":
		r.buildFailed = true
		return
	}
	if ev.Package == "" {
		return
	}
	p := r.pkg(ev.Package)
	if !ev.Time.IsZero() {
		if p.first.IsZero() {
			p.first = ev.Time
		}
		p.last = ev.Time
	}
	if ev.Test == "" {
		switch ev.Action {
		case "start":
			p.started = true
		case "output":
			r.output(p, "", ev.Output)
		case "pass", "fail", "skip":
			r.endPackage(p, ev)
		}
		return
	}
	switch ev.Action {
	case "run":
		r.run(p, ev)
	case "output":
		r.output(p, ev.Test, ev.Output)
	case "cont":
		if t := p.tests[ev.Test]; t != nil {
			t.resumed = ev.Time
		}
	case "pass", "fail", "skip":
		r.endTest(p, ev)
	}
}

func (r *Report) buildOutput(ev *Event) {
	key, _, _ := strings.Cut(ev.ImportPath, " ")
	c := r.build[key]
	if c == nil {
		c = &outputCap{}
		r.build[key] = c
	}
	for _, l := range splitLines(ev.Output) {
		r.showCapped(c, l)
	}
}

// showCapped prints l in full unless c has shown PackageLines lines already.
func (r *Report) showCapped(c *outputCap, l string) {
	if c.shown >= r.cfg.PackageLines {
		c.hidden++
		return
	}
	c.shown++
	r.println(clip(l))
}

func (r *Report) run(p *pkgState, ev *Event) {
	p.hadTests = true
	t := &testState{name: ev.Test, depth: strings.Count(ev.Test, "/"), start: ev.Time, tail: &ring{max: r.cfg.TailLines}}
	p.tests[ev.Test] = t
	if t.depth == 0 {
		p.top = append(p.top, t)
		r.ran++
		r.println("=== RUN   " + ev.Test)
	}
}

// output assembles ev.Output into whole lines (test2json splits long lines
// into several events) and routes each one.
func (r *Report) output(p *pkgState, test, out string) {
	buf := append(p.partial[test], out...)
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 {
		if len(buf) > MaxLineBytes {
			buf = buf[:MaxLineBytes]
		}
		p.partial[test] = buf
		return
	}
	delete(p.partial, test)
	for _, l := range splitLines(string(buf[:i+1])) {
		r.outputLine(p, test, l)
	}
	if rest := buf[i+1:]; len(rest) > 0 {
		p.partial[test] = append([]byte(nil), rest...)
	}
}

// splitLines splits output into lines; "a\n\nb\n" is "a", "", "b".
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// QueuedLine is what a test logs after waiting for a slot of a scheduler of
// its own ("waited 7m59.3s for a VM slot", test/vm): that time is taken out
// of its line in the table and in the budget check.
var QueuedLine = regexp.MustCompile(`waited ([0-9][0-9hmsµun.]*) for a [A-Za-z]+ slot$`)

// CPULine is the line package vm formats when a VM has ended
// (vm.FormatExitSummary), as bake verify logs it ("verify: bios-0: QEMU
// (pid 1234) exited after 3m12s, 95.3 s of CPU (1 vCPU)") and test/vm does
// for the VMs it boots itself: its first submatch is the CPU seconds.
var CPULine = regexp.MustCompile(`QEMU \(pid \d+\) exited after [0-9hmsµun.]+, ([0-9]+(?:\.[0-9]+)?) s of CPU \([0-9]+ vCPUs?\)`)

var crashStart = regexp.MustCompile(`^(panic: |fatal error: |SIG[A-Z]+: |\*\*\* Test killed|unexpected fault address)`)

func (r *Report) outputLine(p *pkgState, test, text string) {
	text = strings.TrimSuffix(text, "\r")
	if test == "" && r.routine(p, text) {
		return
	}
	l := &line{text: text, test: test}
	p.all.push(l)
	if test != "" {
		r.guestCPU(p, test, text)
	}
	if !p.crashed && crashStart.MatchString(text) {
		p.crashed = true
	}
	if p.crashed || test == "" {
		p.explained = true
		l.shown = true
		r.showCapped(&p.shown, text)
		return
	}
	// The line belongs to test and to each of its running parents.
	if t := p.tests[test]; t != nil && !t.ended {
		t.tail.push(l)
		if m := QueuedLine.FindStringSubmatch(text); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				t.queued += d.Seconds()
			}
		}
	}
	r.forEachParent(p, test, func(parent *testState) { parent.tail.push(l) })
}

// guestCPU adds the CPU seconds of a VM exit line (CPULine) that test
// printed to its top-level test, once per distinct line.
func (r *Report) guestCPU(p *pkgState, test, text string) {
	loc := CPULine.FindStringSubmatchIndex(text)
	if loc == nil {
		return
	}
	top, _, _ := strings.Cut(test, "/")
	t := p.tests[top]
	if t == nil {
		return
	}
	// What names the VM (its pid), how long it ran and what it used:
	// the same VM's line however it was indented or prefixed.
	key := text[loc[0]:loc[1]]
	if t.cpuSeen[key] {
		return
	}
	secs, err := strconv.ParseFloat(text[loc[2]:loc[3]], 64)
	if err != nil {
		return
	}
	if t.cpuSeen == nil {
		t.cpuSeen = map[string]bool{}
	}
	t.cpuSeen[key] = true
	t.cpu += secs
}

// forEachParent calls f for each running parent of test, innermost first.
func (r *Report) forEachParent(p *pkgState, test string, f func(*testState)) {
	for {
		i := strings.LastIndexByte(test, '/')
		if i < 0 {
			return
		}
		test = test[:i]
		if t := p.tests[test]; t != nil && !t.ended {
			f(t)
		}
	}
}

// routine reports whether a package-level line is one the report prints in
// its own way or not at all: PASS, FAIL, the package's ok/FAIL line.
func (r *Report) routine(p *pkgState, text string) bool {
	switch {
	case text == "PASS", text == "FAIL", strings.HasPrefix(text, "=== "), text == "testing: warning: no tests to run":
		return true
	case strings.HasPrefix(text, "ok  \t"), strings.HasPrefix(text, "FAIL\t"):
		p.resultLine = text
		return true
	case strings.HasPrefix(text, "?   \t"):
		return true
	}
	return false
}

func (r *Report) endTest(p *pkgState, ev *Event) {
	r.flushPartial(p, ev.Test)
	t := p.tests[ev.Test]
	if t == nil { // an end without a run: still report it
		t = &testState{name: ev.Test, depth: strings.Count(ev.Test, "/"), start: ev.Time, tail: &ring{max: r.cfg.TailLines}}
		p.tests[ev.Test] = t
		if t.depth == 0 {
			p.top = append(p.top, t)
			r.ran++
		}
	}
	t.ended = true
	t.result = strings.ToUpper(ev.Action)
	t.elapsed = ev.Elapsed
	t.seconds = t.elapsed
	if t.depth > 0 && !ev.Time.IsZero() {
		r.forEachParent(p, ev.Test, func(parent *testState) {
			if ev.Time.After(parent.subEnd) {
				parent.subEnd = ev.Time
			}
		})
	}
	indent := strings.Repeat("    ", t.depth)
	goLine := fmt.Sprintf("%s--- %s: %s (%.2fs)", indent, t.result, t.name, t.elapsed)
	report := goLine
	// go test's time for a test leaves out its parallel subtests (they run
	// after its function returned); the table wants the wall time from its
	// start (or, for a parallel test, its last resume) to its last
	// subtest's end. Not to its own end event: go test may print a
	// parallel test's result long after it ended (the CI after session 17
	// saw TestVerifyInterrupted's 170 s reported 11 minutes late, when a
	// test of its phase ended).
	if wall := t.wall(t.subEnd); wall > t.seconds {
		t.seconds = wall
		if wall-t.elapsed >= 1 && t.depth == 0 {
			report = fmt.Sprintf("%s--- %s: %s (%.2fs; wall %.2fs)", indent, t.result, t.name, t.elapsed, wall)
		}
	}
	// Time spent queued for a slot of the test's own scheduler (test/vm)
	// is not the test's: the table and the budget get what it ran.
	if t.queued > 0 && t.seconds > t.queued {
		t.seconds -= t.queued
		report = fmt.Sprintf("%s (%.0fs of it queued for a slot)", report, t.queued)
	}
	if t.result != "PASS" || t.depth == 0 || secondsDuration(t.elapsed) >= r.cfg.Quick {
		r.println(report)
	}
	if t.result == "SKIP" && t.depth == 0 {
		r.showSkipReason(t.tail)
	}
	if t.result == "FAIL" {
		p.explained = true
		r.showTail(indent+"    ", t.tail, goLine)
		if t.depth == 0 {
			r.failures = append(r.failures, fmt.Sprintf("--- FAIL: %s (%s)", t.name, p.short))
		}
	}
	if t.depth > 0 {
		delete(p.tests, ev.Test) // its lines live on in its parents' tails
		if t.result == "PASS" {
			// ... unless it passed: then they would only crowd out the
			// lines that tell why a parent fails.
			r.forEachParent(p, t.name, func(parent *testState) { parent.tail.forget(t.name) })
		}
	} else {
		t.tail = nil
	}
}

// wall is the time from t's start, or last resume, to end (0 if unknown).
func (t *testState) wall(end time.Time) float64 {
	from := t.start
	if !t.resumed.IsZero() {
		from = t.resumed
	}
	if from.IsZero() || end.IsZero() || end.Before(from) {
		return 0
	}
	return end.Sub(from).Seconds()
}

// showSkipReason prints the last line a skipped test logged (t.Skip's
// message), if any.
func (r *Report) showSkipReason(tl *ring) {
	lines := tl.slice()
	for i := len(lines) - 1; i >= 0; i-- {
		text := strings.TrimSpace(lines[i].text)
		if text != "" && !strings.HasPrefix(text, "--- ") && !strings.HasPrefix(text, "=== ") {
			lines[i].shown = true
			r.println("    | " + clip(lines[i].text))
			return
		}
	}
}

// showTail prints the lines of tl not shown yet, each after indent+"| ",
// leaving out self (the report line just printed).
func (r *Report) showTail(indent string, tl *ring, self string) {
	lines := tl.slice()
	if tl.dropped > 0 {
		r.println(fmt.Sprintf("%s| ... %d earlier lines in %s", indent, tl.dropped, r.cfg.LogName))
	}
	for _, l := range lines {
		if l.shown {
			continue
		}
		l.shown = true
		if self != "" && strings.TrimSpace(l.text) == strings.TrimSpace(self) {
			continue
		}
		r.println(indent + "| " + clip(l.text))
	}
}

func (r *Report) flushPartial(p *pkgState, test string) {
	if b, ok := p.partial[test]; ok {
		delete(p.partial, test)
		r.outputLine(p, test, string(b))
	}
}

func (r *Report) endPackage(p *pkgState, ev *Event) {
	if p.done {
		return
	}
	for test := range p.partial {
		r.flushPartial(p, test)
	}
	p.done = true
	p.end = ev.Time
	p.elapsed = ev.Elapsed
	p.failedBuild = ev.FailedBuild
	if p.failedBuild != "" {
		p.explained = true // its build output was shown as it came
	}
	switch ev.Action {
	case "fail":
		p.result = "FAIL"
	case "pass":
		p.result = "ok"
	default: // skip: no test files
		p.result = "skip"
		return
	}
	if r.reportHung(p, "no result") {
		p.result = "FAIL"
	}
	r.closePackage(p)
	line := p.resultLine
	if line == "" || (p.result == "FAIL") != strings.HasPrefix(line, "FAIL") {
		line = fmt.Sprintf("%-4s\t%s\t%.3fs", p.result, p.name, p.elapsed)
	}
	r.println(line)
}

// reportHung prints a "--- HUNG" report for every top-level test of p that
// started and never ended, and reports whether there was one.
func (r *Report) reportHung(p *pkgState, why string) bool {
	hung := false
	for _, t := range p.top {
		if t.ended {
			continue
		}
		hung = true
		p.explained = true
		t.ended = true
		t.result = "HUNG"
		end := p.end
		if end.IsZero() {
			end = p.last
		}
		t.seconds = t.wall(end)
		var subs []string
		for name, s := range p.tests {
			if s.depth > 0 && !s.ended && strings.HasPrefix(name, t.name+"/") {
				subs = append(subs, name)
			}
		}
		sort.Strings(subs)
		if len(subs) > 10 {
			subs = append(subs[:10], fmt.Sprintf("and %d more", len(subs)-10))
		}
		extra := ""
		if len(subs) > 0 {
			extra = "; unfinished subtests: " + strings.Join(subs, ", ")
		}
		started := "?"
		if !t.start.IsZero() {
			started = t.start.Local().Format("15:04:05")
		}
		r.println(fmt.Sprintf("--- HUNG: %s (started %s, %s%s)", t.name, started, why, extra))
		r.showTail("    ", t.tail, "")
		t.tail = nil
		r.failures = append(r.failures, fmt.Sprintf("--- HUNG: %s (%s)", t.name, p.short))
	}
	return hung
}

// closePackage prints what is still owed for p before its result line.
func (r *Report) closePackage(p *pkgState) {
	if p.result == "FAIL" && !p.explained {
		// A FAIL that no failing test or in-full output explains (TestMain
		// exited non-zero, a leak check...): show the package's last lines.
		r.println(fmt.Sprintf("--- %s failed outside any test; its last output lines:", p.short))
		r.showTail("    ", &p.all, "")
	}
	if p.shown.hidden > 0 {
		r.println(fmt.Sprintf("... %d more lines in %s", p.shown.hidden, r.cfg.LogName))
	}
	if c := r.build[p.name]; c != nil && c.hidden > 0 {
		r.println(fmt.Sprintf("... %d more lines in %s", c.hidden, r.cfg.LogName))
		c.hidden = 0
	}
}

// Finish ends the input: a package that started and has no result (its
// binary was killed, or go test was) is reported as failed with its hung
// tests. Finish is idempotent.
func (r *Report) Finish() {
	if r.finished {
		return
	}
	r.finished = true
	for _, p := range r.pkgOrder {
		if p.done {
			continue
		}
		for test := range p.partial {
			r.flushPartial(p, test)
		}
		p.done = true
		p.result = "FAIL"
		p.end = p.last
		if !p.first.IsZero() {
			p.elapsed = p.last.Sub(p.first).Seconds()
		}
		if !p.started && !p.hadTests {
			p.result = "skip" // only ever mentioned, e.g. build output
			continue
		}
		r.reportHung(p, "no result, the input ended")
		r.closePackage(p)
		r.println(fmt.Sprintf("FAIL\t%s\t(no result: the input ended)", p.name))
	}
	for key, c := range r.build {
		if c.hidden > 0 {
			r.println(fmt.Sprintf("... %d more lines of %s's build output in %s", c.hidden, key, r.cfg.LogName))
		}
	}
	r.Flush()
}

func (r *Report) println(s string) {
	r.out.WriteString(s)
	r.out.WriteByte('\n')
}

func clip(s string) string {
	if len(s) <= maxShownLineBytes {
		return s
	}
	return fmt.Sprintf("%s [... %d more bytes]", s[:maxShownLineBytes], len(s)-maxShownLineBytes)
}

// Results returns the top-level tests in the order they started.
func (r *Report) Results() []Result {
	var res []Result
	for _, p := range r.pkgOrder {
		for _, t := range p.top {
			result := t.result
			if result == "" {
				result = "HUNG"
			}
			res = append(res, Result{Package: p.name, Short: p.short, Test: t.name, Result: result, Seconds: t.seconds, Started: t.start,
				GuestCPU: t.cpu, VMs: len(t.cpuSeen)})
		}
	}
	return res
}

// Packages returns the packages that ran tests (or failed to build).
func (r *Report) Packages() []PackageResult {
	var res []PackageResult
	for _, p := range r.pkgOrder {
		if p.result == "skip" || p.result == "" && !p.hadTests {
			continue
		}
		result := p.result
		if result == "" {
			result = "FAIL"
		}
		res = append(res, PackageResult{Package: p.name, Short: p.short, Result: result, Seconds: p.elapsed, Tests: len(p.top)})
	}
	return res
}

// Failed lists why the run failed, one reason a line; empty when it passed.
func (r *Report) Failed() []string {
	var why []string
	why = append(why, r.failures...)
	for _, p := range r.pkgOrder {
		if p.result == "FAIL" {
			s := "FAIL " + p.short
			if i := strings.LastIndex(p.resultLine, " ["); i > 0 && strings.HasSuffix(p.resultLine, "]") {
				s += p.resultLine[i:] // [build failed], [setup failed]
			} else if b, _, _ := strings.Cut(p.failedBuild, " "); b == p.name {
				s += " [build failed]"
			} else if b != "" {
				s += " [build failed: " + ShortPackage(r.cfg.Module, b) + "]"
			}
			why = append(why, s)
		}
	}
	if r.buildFailed && len(why) == 0 {
		why = append(why, "a package failed to build")
	}
	if r.badInput {
		why = append(why, "go test printed an error outside its JSON stream (above)")
	}
	if r.broken {
		why = append(why, "testreport failed to read the stream (above)")
	}
	if r.ran == 0 {
		why = append(why, "testreport: no test ran")
	}
	return why
}

// ExitCode is 1 when Failed has a reason, else 0.
func (r *Report) ExitCode() int {
	if len(r.Failed()) > 0 || r.writeErr != nil {
		return 1
	}
	return 0
}

// WriteErr is the first error writing to the report's writers, if any.
func (r *Report) WriteErr() error { return r.writeErr }

// WriteSummary prints the closing lines: counts and what failed.
func (r *Report) WriteSummary(w io.Writer) {
	counts := map[string]int{}
	res := r.Results()
	for _, t := range res {
		counts[t.Result]++
	}
	var parts []string
	for _, k := range []string{"PASS", "FAIL", "SKIP", "HUNG"} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	if len(res) > 0 {
		fmt.Fprintf(w, "testreport: %d top-level tests: %s\n", len(res), strings.Join(parts, ", "))
	}
	for _, s := range r.Failed() {
		if strings.HasPrefix(s, "testreport: ") {
			fmt.Fprintln(w, s)
		} else {
			fmt.Fprintln(w, "testreport: "+s)
		}
	}
}

// ShortPackage is pkg relative to module ("." for the module itself), or
// pkg when it is outside module.
func ShortPackage(module, pkg string) string {
	if module == "" {
		return pkg
	}
	if pkg == module {
		return "."
	}
	if rest, ok := strings.CutPrefix(pkg, module+"/"); ok {
		return rest
	}
	return pkg
}

// FindModule returns the module path of the go.mod in dir or its nearest
// parent, or "" if there is none.
func FindModule(dir string) string {
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			for _, l := range strings.Split(string(data), "\n") {
				if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
					return strings.Trim(strings.TrimSpace(rest), `"`)
				}
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func secondsDuration(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}
