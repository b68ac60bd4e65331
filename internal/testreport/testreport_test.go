package testreport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/vm"
)

const mod = "github.com/bakeimg/bake"

var t0 = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

// stream builds a go test -json stream.
type stream struct {
	lines []string
	now   time.Time
}

func newStream() *stream { return &stream{now: t0} }

// wait advances the stream's clock.
func (s *stream) wait(d time.Duration) *stream { s.now = s.now.Add(d); return s }

func (s *stream) ev(action, pkg, test string, elapsed float64, output string) *stream {
	s.now = s.now.Add(time.Millisecond)
	e := map[string]any{"Time": s.now, "Action": action, "Package": pkg}
	if test != "" {
		e["Test"] = test
	}
	if action == "pass" || action == "fail" {
		e["Elapsed"] = elapsed
	}
	if output != "" {
		e["Output"] = output
	}
	b, err := json.Marshal(e)
	if err != nil {
		panic(err)
	}
	s.lines = append(s.lines, string(b))
	return s
}

func (s *stream) raw(line string) *stream { s.lines = append(s.lines, line); return s }

func (s *stream) start(pkg string) *stream { return s.ev("start", pkg, "", 0, "") }

func (s *stream) out(pkg, test string, lines ...string) *stream {
	for _, l := range lines {
		s.ev("output", pkg, test, 0, l+"\n")
	}
	return s
}

// run starts a test as go test -json does: a run event, then its === RUN line.
func (s *stream) run(pkg, test string) *stream {
	return s.ev("run", pkg, test, 0, "").out(pkg, test, "=== RUN   "+test)
}

// end ends a test: its --- line, then the pass/fail/skip event.
func (s *stream) end(pkg, test, action string, elapsed float64) *stream {
	return s.out(pkg, test, fmt.Sprintf("--- %s: %s (%.2fs)", strings.ToUpper(action), test, elapsed)).ev(action, pkg, test, elapsed, "")
}

// pkgEnd ends a package as go test does: PASS/FAIL, the ok/FAIL line, the event.
func (s *stream) pkgEnd(pkg, action string, elapsed float64) *stream {
	if action == "pass" {
		s.out(pkg, "", "PASS", fmt.Sprintf("ok  \t%s\t%.3fs", pkg, elapsed))
	} else {
		s.out(pkg, "", "FAIL", fmt.Sprintf("FAIL\t%s\t%.3fs", pkg, elapsed))
	}
	return s.ev(action, pkg, "", elapsed, "")
}

func (s *stream) String() string { return strings.Join(s.lines, "\n") + "\n" }

type result struct {
	r              *Report
	out, log, json string
}

func feed(t *testing.T, input string) result {
	t.Helper()
	var out, log, js bytes.Buffer
	r := New(Config{Out: &out, Log: &log, JSON: &js, LogName: "LOG", Module: mod})
	if err := r.Read(strings.NewReader(input)); err != nil {
		t.Fatal(err)
	}
	r.Finish()
	return result{r, out.String(), log.String(), js.String()}
}

func wantLines(t *testing.T, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("output lacks %q; output:\n%s", w, got)
		}
	}
}

func dontWant(t *testing.T, got string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(got, b) {
			t.Errorf("output has %q; output:\n%s", b, got)
		}
	}
}

const pkgA = mod + "/builder/recipe"
const pkgVM = mod + "/test/vm"

func TestPass(t *testing.T) {
	s := newStream().start(pkgA).
		run(pkgA, "TestA").out(pkgA, "TestA", "    a_test.go:5: chatter").
		run(pkgA, "TestA/sub").end(pkgA, "TestA/sub", "pass", 0.5).
		end(pkgA, "TestA", "pass", 1.5).
		run(pkgA, "TestB").out(pkgA, "TestB", "    b_test.go:9: skipping").end(pkgA, "TestB", "skip", 0).
		pkgEnd(pkgA, "pass", 1.6)
	res := feed(t, s.String())
	wantLines(t, res.out,
		"=== RUN   TestA\n",
		"    --- PASS: TestA/sub (0.50s)\n",
		"--- PASS: TestA (1.50s)\n",
		"--- SKIP: TestB (0.00s)\n    |     b_test.go:9: skipping\n", // t.Skip's reason
		"ok  \t"+pkgA+"\t1.600s\n")
	dontWant(t, res.out, "=== RUN   TestA/sub", "chatter", "\nPASS\n")
	if got := res.r.ExitCode(); got != 0 {
		t.Errorf("exit code %d, want 0; failed: %q", got, res.r.Failed())
	}
	got := res.r.Results()
	if len(got) != 2 || got[0] != (Result{Package: pkgA, Short: "builder/recipe", Test: "TestA", Result: "PASS", Seconds: 1.5, Started: t0.Add(2 * time.Millisecond)}) ||
		got[1].Test != "TestB" || got[1].Result != "SKIP" || got[1].Seconds > 0.01 {
		t.Errorf("results %+v", got)
	}
	if p := res.r.Packages(); len(p) != 1 || p[0].Result != "ok" || p[0].Seconds != 1.6 || p[0].Tests != 2 {
		t.Errorf("packages %+v", p)
	}
	// -log is the plain output, -json the input.
	if !strings.HasPrefix(res.log, "=== RUN   TestA\n    a_test.go:5: chatter\n=== RUN   TestA/sub\n") || !strings.HasSuffix(res.log, "PASS\nok  \t"+pkgA+"\t1.600s\n") {
		t.Errorf("log:\n%s", res.log)
	}
	if res.json != s.String() {
		t.Errorf("json copy differs from the input")
	}
}

// A test's parallel subtests run after its function returned: go test's
// time for it leaves them out, the table does not.
func TestParallelSubtestsWallTime(t *testing.T) {
	s := newStream().start(pkgVM).run(pkgVM, "TestBoot").
		run(pkgVM, "TestBoot/bios").ev("pause", pkgVM, "TestBoot/bios", 0, "").
		run(pkgVM, "TestBoot/uefi").ev("pause", pkgVM, "TestBoot/uefi", 0, "").
		ev("cont", pkgVM, "TestBoot/bios", 0, "").ev("cont", pkgVM, "TestBoot/uefi", 0, "").wait(300*time.Second).
		end(pkgVM, "TestBoot/bios", "pass", 300).wait(12*time.Second).end(pkgVM, "TestBoot/uefi", "pass", 312).
		end(pkgVM, "TestBoot", "pass", 0).
		// A parallel top-level test counts from its resume, not its start.
		run(pkgVM, "TestPar").ev("pause", pkgVM, "TestPar", 0, "").wait(600*time.Second).ev("cont", pkgVM, "TestPar", 0, "").
		wait(40*time.Second).end(pkgVM, "TestPar", "pass", 40).
		// go test may print a parallel test's result long after it
		// ended (TestVerifyInterrupted in the CI after session 17: 170 s,
		// its PASS 11 minutes later): without subtests, its own time.
		run(pkgVM, "TestLate").ev("pause", pkgVM, "TestLate", 0, "").ev("cont", pkgVM, "TestLate", 0, "").
		wait(170*time.Second).out(pkgVM, "TestLate", "    late_test.go:9: done").wait(490*time.Second).
		end(pkgVM, "TestLate", "pass", 170).
		pkgEnd(pkgVM, "pass", 952)
	res := feed(t, s.String())
	wantLines(t, res.out, "--- PASS: TestBoot (0.00s; wall 312.01s)\n", "--- PASS: TestPar (40.00s)\n", "--- PASS: TestLate (170.00s)\n")
	got := res.r.Results()
	if len(got) != 3 || got[0].Seconds < 312 || got[0].Seconds > 312.1 || got[1].Seconds < 40 || got[1].Seconds > 40.1 || got[2].Seconds != 170 {
		t.Errorf("results %+v", got)
	}
}

func TestQuickSubtests(t *testing.T) {
	s := newStream().start(pkgA).run(pkgA, "FuzzX")
	for i := 0; i < 50; i++ {
		name := fmt.Sprintf("FuzzX/seed#%d", i)
		s.run(pkgA, name).end(pkgA, name, "pass", 0)
	}
	s.run(pkgA, "FuzzX/slow").end(pkgA, "FuzzX/slow", "pass", 2)
	s.run(pkgA, "FuzzX/bad").end(pkgA, "FuzzX/bad", "fail", 0)
	s.run(pkgA, "FuzzX/skipped").end(pkgA, "FuzzX/skipped", "skip", 0)
	s.end(pkgA, "FuzzX", "fail", 2.1).pkgEnd(pkgA, "fail", 2.2)
	var out bytes.Buffer
	r := New(Config{Out: &out, Module: mod, Quick: time.Second})
	if err := r.Read(strings.NewReader(s.String())); err != nil {
		t.Fatal(err)
	}
	r.Finish()
	wantLines(t, out.String(), "    --- PASS: FuzzX/slow (2.00s)\n", "    --- FAIL: FuzzX/bad (0.00s)\n", "    --- SKIP: FuzzX/skipped (0.00s)\n", "--- FAIL: FuzzX (2.10s)\n")
	dontWant(t, out.String(), "seed#")
}

func TestFailShowsTail(t *testing.T) {
	s := newStream().start(pkgA).run(pkgA, "TestF")
	for i := 1; i <= 100; i++ {
		s.out(pkgA, "TestF", fmt.Sprintf("    f_test.go:%d: step %d", i, i))
	}
	s.run(pkgA, "TestF/inner").out(pkgA, "TestF/inner", "    f_test.go:200: inner broke").end(pkgA, "TestF/inner", "fail", 0.25)
	s.end(pkgA, "TestF", "fail", 3).pkgEnd(pkgA, "fail", 3.1)
	res := feed(t, s.String())
	wantLines(t, res.out,
		"    --- FAIL: TestF/inner (0.25s)\n        | === RUN   TestF/inner\n        |     f_test.go:200: inner broke\n",
		"--- FAIL: TestF (3.00s)\n    | ... 25 earlier lines in LOG\n    |     f_test.go:25: step 25\n",
		"    |     f_test.go:100: step 100\nFAIL\t"+pkgA+"\t3.100s\n")
	// The subtest's lines are shown once; step 24 is outside the last 80
	// lines (=== RUN, 100 steps, inner's 3 lines, the --- FAIL line).
	if n := strings.Count(res.out, "inner broke"); n != 1 {
		t.Errorf("inner's line shown %d times", n)
	}
	dontWant(t, res.out, "step 24\n", "| --- FAIL: TestF/inner", "| --- FAIL: TestF ")
	if res.r.ExitCode() != 1 {
		t.Error("exit code 0 for a failed test")
	}
	wantLines(t, strings.Join(res.r.Failed(), "\n"), "--- FAIL: TestF (builder/recipe)", "FAIL builder/recipe")
}

func TestTimeoutPanic(t *testing.T) {
	s := newStream().start(pkgVM).
		run(pkgVM, "TestQuick").end(pkgVM, "TestQuick", "pass", 2).
		run(pkgVM, "TestSlow").out(pkgVM, "TestSlow", "    slow_test.go:10: booting").
		run(pkgVM, "TestSlow/bios").ev("pause", pkgVM, "TestSlow/bios", 0, "").wait(5000*time.Second).
		// test2json attributes the alarm's panic to the last test it saw.
		out(pkgVM, "TestSlow/bios", "panic: test timed out after 85m0s", "\trunning tests:", "\t\tTestSlow (84m58s)", "\t\tTestSlow/bios (84m50s)", "",
			"goroutine 17 [running]:", "testing.(*M).startAlarm.func1()").
		out(pkgVM, "", "FAIL\t"+pkgVM+"\t5100.123s").ev("fail", pkgVM, "", 5100.123, "")
	res := feed(t, s.String())
	wantLines(t, res.out,
		"panic: test timed out after 85m0s\n\trunning tests:\n\t\tTestSlow (84m58s)\n\t\tTestSlow/bios (84m50s)\n\ngoroutine 17 [running]:\ntesting.(*M).startAlarm.func1()\n",
		"--- HUNG: TestSlow (started "+t0.Local().Format("15:04:05")+", no result; unfinished subtests: TestSlow/bios)\n    | === RUN   TestSlow\n    |     slow_test.go:10: booting\n    | === RUN   TestSlow/bios\n",
		"FAIL\t"+pkgVM+"\t5100.123s\n")
	// The panic is shown once, in full, not again in the tail.
	if n := strings.Count(res.out, "panic: test timed out"); n != 1 {
		t.Errorf("panic shown %d times", n)
	}
	if res.r.ExitCode() != 1 {
		t.Error("exit code 0 after a timeout")
	}
	var slow Result
	for _, r := range res.r.Results() {
		if r.Test == "TestSlow" {
			slow = r
		}
	}
	if slow.Result != "HUNG" || slow.Seconds < 5000 || slow.Seconds > 5001 {
		t.Errorf("TestSlow: %+v, want HUNG with the seconds from its start to the package's end", slow)
	}
}

func TestHungAtEndOfInput(t *testing.T) {
	s := newStream().start(pkgVM).run(pkgVM, "TestStuck").wait(90*time.Second).out(pkgVM, "TestStuck", "    stuck_test.go:3: waiting for login:")
	res := feed(t, s.String())
	wantLines(t, res.out,
		"--- HUNG: TestStuck (started "+t0.Local().Format("15:04:05")+", no result, the input ended)\n    | === RUN   TestStuck\n    |     stuck_test.go:3: waiting for login:\n",
		"FAIL\t"+pkgVM+"\t(no result: the input ended)\n")
	if res.r.ExitCode() != 1 {
		t.Error("exit code 0 with a hung test")
	}
	if r := res.r.Results(); len(r) != 1 || r[0].Result != "HUNG" || r[0].Seconds < 90 || r[0].Seconds > 90.01 {
		t.Errorf("results %+v", r)
	}
	wantLines(t, strings.Join(res.r.Failed(), "\n"), "--- HUNG: TestStuck (test/vm)")
}

func TestPackageOutputCapped(t *testing.T) {
	s := newStream().start(pkgA)
	for i := 0; i < 450; i++ {
		s.out(pkgA, "", fmt.Sprintf("TestMain says %d", i))
	}
	s.run(pkgA, "TestA").end(pkgA, "TestA", "pass", 0).pkgEnd(pkgA, "pass", 0.1)
	res := feed(t, s.String())
	wantLines(t, res.out, "TestMain says 0\n", "TestMain says 399\n", "... 50 more lines in LOG\nok  \t")
	dontWant(t, res.out, "TestMain says 400")
	if !strings.Contains(res.log, "TestMain says 449\n") {
		t.Error("log lacks a capped line")
	}
}

func TestCrashInTest(t *testing.T) {
	s := newStream().start(pkgA).run(pkgA, "TestP").out(pkgA, "TestP", "    p_test.go:5: before").
		out(pkgA, "TestP", "--- FAIL: TestP (0.00s)", "panic: assignment to entry in nil map [recovered]", "", "goroutine 7 [running]:").
		ev("fail", pkgA, "TestP", 0, "").out(pkgA, "", "FAIL\t"+pkgA+"\t0.005s").ev("fail", pkgA, "", 0.005, "")
	res := feed(t, s.String())
	wantLines(t, res.out, "panic: assignment to entry in nil map [recovered]\n\ngoroutine 7 [running]:\n",
		"--- FAIL: TestP (0.00s)\n    | === RUN   TestP\n    |     p_test.go:5: before\nFAIL\t")
	if n := strings.Count(res.out, "goroutine 7"); n != 1 {
		t.Errorf("stack shown %d times", n)
	}
}

func TestUnexplainedPackageFailure(t *testing.T) {
	s := newStream().start(pkgA).run(pkgA, "TestA").end(pkgA, "TestA", "pass", 0).
		out(pkgA, "TestA", "goleak: found unexpected goroutines").pkgEnd(pkgA, "fail", 0.2)
	res := feed(t, s.String())
	wantLines(t, res.out, "--- builder/recipe failed outside any test; its last output lines:\n", "    | goleak: found unexpected goroutines\n", "FAIL\t"+pkgA)
	if res.r.ExitCode() != 1 {
		t.Error("exit code 0 for a failed package")
	}
}

func TestBuildFailure(t *testing.T) {
	in := `{"ImportPath":"` + pkgA + ` [` + pkgA + `.test]","Action":"build-output","Output":"# ` + pkgA + ` [` + pkgA + `.test]\n"}
{"ImportPath":"` + pkgA + ` [` + pkgA + `.test]","Action":"build-output","Output":"builder/recipe/x_test.go:5:33: undefined: nope\n"}
{"ImportPath":"` + pkgA + ` [` + pkgA + `.test]","Action":"build-fail"}
{"Time":"2026-12-04T10:00:00Z","Action":"start","Package":"` + pkgA + `"}
{"Time":"2026-12-04T10:00:00Z","Action":"output","Package":"` + pkgA + `","Output":"FAIL\t` + pkgA + ` [build failed]\n"}
{"Time":"2026-12-04T10:00:00Z","Action":"fail","Package":"` + pkgA + `","Elapsed":0,"FailedBuild":"` + pkgA + ` [` + pkgA + `.test]"}
`
	res := feed(t, in)
	wantLines(t, res.out, "# "+pkgA+" ["+pkgA+".test]\nbuilder/recipe/x_test.go:5:33: undefined: nope\nFAIL\t"+pkgA+" [build failed]\n")
	dontWant(t, res.out, "failed outside any test")
	wantLines(t, strings.Join(res.r.Failed(), "\n"), "FAIL builder/recipe [build failed]", "testreport: no test ran")
}

func TestNonJSONPassThrough(t *testing.T) {
	s := newStream().raw("go: downloading example.com/x v1.0.0").start(pkgA).run(pkgA, "TestA").end(pkgA, "TestA", "pass", 0).pkgEnd(pkgA, "pass", 0.1)
	res := feed(t, s.String())
	wantLines(t, res.out, "go: downloading example.com/x v1.0.0\n")
	wantLines(t, res.log, "go: downloading example.com/x v1.0.0\n")
	if res.r.ExitCode() != 0 {
		t.Errorf("a go: downloading line failed the run: %q", res.r.Failed())
	}

	s.raw("# " + pkgA).raw("builder/recipe/recipe.go:12:2: undefined: foo").raw("{not json")
	res = feed(t, s.String())
	wantLines(t, res.out, "# "+pkgA+"\nbuilder/recipe/recipe.go:12:2: undefined: foo\n{not json\n")
	if res.r.ExitCode() != 1 {
		t.Error("exit code 0 after a compiler error outside the JSON stream")
	}
}

func TestNoTests(t *testing.T) {
	for _, in := range []string{"", "go: cannot find main module\n",
		`{"Action":"start","Package":"x"}` + "\n" + `{"Action":"output","Package":"x","Output":"?   \tx\t[no test files]\n"}` + "\n" + `{"Action":"skip","Package":"x","Elapsed":0}` + "\n"} {
		res := feed(t, in)
		if res.r.ExitCode() != 1 || !strings.Contains(strings.Join(res.r.Failed(), "\n"), "testreport: no test ran") {
			t.Errorf("input %q: exit %d, failed %q", in, res.r.ExitCode(), res.r.Failed())
		}
	}
}

func TestLongLines(t *testing.T) {
	long := strings.Repeat("x", 2*MaxLineBytes)
	res := feed(t, long+"\nshort\n")
	if res.json != long[:MaxLineBytes]+"\nshort\n" {
		t.Errorf("json copy: %d bytes, want the first %d of the long line, then short", len(res.json), MaxLineBytes)
	}
	wantLines(t, res.out, "\nshort\n")
	// A test's output line split by test2json into parts is one line.
	s := newStream().start(pkgA).run(pkgA, "TestA")
	s.ev("output", pkgA, "TestA", 0, "    part one ").ev("output", pkgA, "TestA", 0, "part two\n")
	s.end(pkgA, "TestA", "fail", 0).pkgEnd(pkgA, "fail", 0)
	wantLines(t, feed(t, s.String()).out, "    |     part one part two\n")
}

func TestQuietKeepsState(t *testing.T) {
	s := newStream().raw("noise").start(pkgA).run(pkgA, "TestA").end(pkgA, "TestA", "fail", 4).pkgEnd(pkgA, "fail", 4.2)
	var out bytes.Buffer
	r := New(Config{Out: &out, Module: mod, Quiet: true})
	if err := r.Read(strings.NewReader(s.String())); err != nil {
		t.Fatal(err)
	}
	r.Finish()
	if out.Len() != 0 {
		t.Errorf("quiet report printed %q", out.String())
	}
	if res := r.Results(); len(res) != 1 || res[0].Result != "FAIL" || res[0].Seconds != 4 {
		t.Errorf("results %+v", res)
	}
}

func TestWriteTable(t *testing.T) {
	res := []Result{
		{Short: "vm", Test: "TestFast", Result: "PASS", Seconds: 0.01},
		{Short: "test/vm", Test: "TestBoot", Result: "PASS", Seconds: 312.4},
		{Short: "test/vm", Test: "TestHang", Result: "HUNG", Seconds: 900},
		{Short: "vm", Test: "TestBroken", Result: "FAIL", Seconds: 0.2},
	}
	pkgs := []PackageResult{{Short: "test/vm", Result: "FAIL", Seconds: 1300, Tests: 2}, {Short: "vm", Result: "FAIL", Seconds: 1, Tests: 2}}
	var b bytes.Buffer
	WriteTable(&b, res, pkgs, time.Second)
	got := b.String()
	want := `per-test durations (top-level tests, slowest first):
  package  test                      result     seconds
  test/vm  TestHang                  HUNG       900.0
  test/vm  TestBoot                  PASS       312.4
  vm       TestBroken                FAIL       0.2
           (1 more under 1s)         PASS/SKIP  0.0
  test/vm  (package total, 2 tests)  FAIL       1300.0
  vm       (package total, 2 tests)  FAIL       1.0
  (all)    (2 packages)                         1301.0
`
	if got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	WriteTable(&b, nil, nil, 0)
	if !strings.Contains(b.String(), "(no test ran)") {
		t.Errorf("empty table: %q", b.String())
	}
}

func TestShortPackage(t *testing.T) {
	for _, c := range [][3]string{{mod, mod, "."}, {mod, mod + "/test/vm", "test/vm"}, {mod, "example.com/x", "example.com/x"}, {"", mod + "/vm", mod + "/vm"}, {mod, mod + "x/y", mod + "x/y"}} {
		if got := ShortPackage(c[0], c[1]); got != c[2] {
			t.Errorf("ShortPackage(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

func TestLooksLikeFailure(t *testing.T) {
	for s, want := range map[string]bool{
		"go: downloading golang.org/x/sys v0.50.0":        false,
		"go: updates to go.mod needed":                    true,
		"# github.com/bakeimg/bake/vm":                    true,
		"vm/vm.go:12:3: undefined: x":                     true,
		"FAIL\tgithub.com/bakeimg/bake/vm [setup failed]": true,
		"some chatter": false,
	} {
		if got := LooksLikeFailure(s); got != want {
			t.Errorf("LooksLikeFailure(%q) = %v, want %v", s, got, want)
		}
	}
}

// A test that waited for a slot of test/vm's own scheduler: that time is
// not its own, in the table and the budget.
func TestQueuedForSlot(t *testing.T) {
	s := newStream().start(pkgVM).
		run(pkgVM, "TestQueued").ev("pause", pkgVM, "TestQueued", 0, "").ev("cont", pkgVM, "TestQueued", 0, "").
		wait(480*time.Second).out(pkgVM, "TestQueued", "    helpers_test.go:117: waited 8m0s for a VM slot").
		wait(300*time.Second).end(pkgVM, "TestQueued", "pass", 780).
		pkgEnd(pkgVM, "pass", 781)
	res := feed(t, s.String())
	wantLines(t, res.out, "--- PASS: TestQueued (780.00s) (480s of it queued for a slot)\n")
	got := res.r.Results()
	if len(got) != 1 || got[0].Seconds < 300 || got[0].Seconds > 300.1 {
		t.Errorf("results %+v, want 300 s", got)
	}
}

// The VM exit lines a test prints (bake verify's in the output a test
// logs, test/vm's own for the VMs it boots) add up per top-level test,
// its subtests' included; a line printed twice counts once.
func TestGuestCPU(t *testing.T) {
	verifyLine := "        verify: bios-0: QEMU (pid 4242) exited after 3m12s, 95.3 s of CPU (1 vCPU)"
	s := newStream().start(pkgVM).
		run(pkgVM, "TestVerify").
		out(pkgVM, "TestVerify", "    verify_test.go:158: output:",
			"        verify: bios-0: QEMU pid 4242 (accel tcg), MAC 52:54:00:be:00:00",
			verifyLine,
			"        verify: bios-1: QEMU (pid 4250) exited after 3m40s, 101.25 s of CPU (1 vCPU)").
		run(pkgVM, "TestVerify/reboot").
		out(pkgVM, "TestVerify/reboot", "    appliance_test.go:468: bios: QEMU (pid 5000) exited after 1m2s, 30.0 s of CPU (2 vCPUs)").
		end(pkgVM, "TestVerify/reboot", "pass", 62).
		// The same run's output again (a failing check logs it): not twice.
		out(pkgVM, "TestVerify", "    verify_test.go:170: exit 1:", verifyLine).
		end(pkgVM, "TestVerify", "fail", 300).
		run(pkgVM, "TestNoVM").out(pkgVM, "TestNoVM", "    x_test.go:1: QEMU exited (signal: killed) before admin could log in").end(pkgVM, "TestNoVM", "pass", 2).
		pkgEnd(pkgVM, "fail", 303)
	res := feed(t, s.String())
	got := map[string]Result{}
	for _, r := range res.r.Results() {
		got[r.Test] = r
	}
	if v := got["TestVerify"]; v.VMs != 3 || v.GuestCPU < 226.549 || v.GuestCPU > 226.551 {
		t.Errorf("TestVerify: %d VMs, %v s of guest CPU; want 3 and 95.3+101.25+30.0 = 226.55", v.VMs, v.GuestCPU)
	}
	if v := got["TestNoVM"]; v.VMs != 0 || v.GuestCPU != 0 {
		t.Errorf("TestNoVM: %d VMs, %v s; want none", v.VMs, v.GuestCPU)
	}
	// The live report is as before.
	dontWant(t, res.out, "guest CPU")
}

// CPULine reads the line package vm writes, whatever its numbers.
func TestCPULineReadsVM(t *testing.T) {
	for _, c := range []struct {
		wall, cpu time.Duration
		vcpus     int
		want      string
	}{
		{3*time.Minute + 12*time.Second, 95340 * time.Millisecond, 1, "95.3"},
		{2 * time.Hour, 7200 * time.Second, 2, "7200.0"},
		{800 * time.Millisecond, 0, 2, "0.0"},
	} {
		l := "verify: uefi-1: " + vm.FormatExitSummary(123, c.wall, c.cpu, c.vcpus)
		m := CPULine.FindStringSubmatch(l)
		if m == nil || m[1] != c.want {
			t.Errorf("CPULine on %q: %q, want %s", l, m, c.want)
		}
	}
}

func TestWriteTableGuestCPU(t *testing.T) {
	res := []Result{
		{Short: "vm", Test: "TestFast", Result: "PASS", Seconds: 0.01},
		{Short: "test/vm", Test: "TestVerifyPlainImage", Result: "PASS", Seconds: 312.4, GuestCPU: 180.2, VMs: 1},
		{Short: "test/vm", Test: "TestApplianceBIOS", Result: "PASS", Seconds: 290, GuestCPU: 250.5, VMs: 1},
		{Short: "test/vm", Test: "TestBuild", Result: "PASS", Seconds: 120},
	}
	pkgs := []PackageResult{{Short: "test/vm", Result: "ok", Seconds: 700, Tests: 3}, {Short: "vm", Result: "ok", Seconds: 1, Tests: 1}}
	var b bytes.Buffer
	WriteTable(&b, res, pkgs, time.Second)
	want := `per-test durations (top-level tests, slowest first):
  package  test                      result     seconds  guest CPU
  test/vm  TestVerifyPlainImage      PASS       312.4    180.2 (1 VM)
  test/vm  TestApplianceBIOS         PASS       290.0    250.5 (1 VM)
  test/vm  TestBuild                 PASS       120.0
           (1 more under 1s)         PASS/SKIP  0.0
  test/vm  (package total, 3 tests)  ok         700.0    430.7 (2 VMs)
  vm       (package total, 1 test)   ok         1.0
  (all)    (2 packages)                         701.0    430.7 (2 VMs)
`
	if got := b.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}
