package testreport

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"5m10s":          5*time.Minute + 10*time.Second,
		"310 s":          310 * time.Second,
		"310s":           310 * time.Second,
		"310":            310 * time.Second,
		"5 min 10 s":     5*time.Minute + 10*time.Second,
		"5 min":          5 * time.Minute,
		"1h 2min":        time.Hour + 2*time.Minute,
		"98.5 s":         98500 * time.Millisecond,
		"2 min 51 s":     2*time.Minute + 51*time.Second,
		"~4 min":         4 * time.Minute,
		"6 min (load 4)": 6 * time.Minute,
		" 90 sec ":       90 * time.Second,
		"-":              0,
		"":               0,
		"—":              0,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"fast", "5 min 10", "63-139 s", "5 parsecs"} {
		if d, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, d)
		}
	}
}

const benchmarks = "# Benchmarks\n\n" +
	"| recipe | run | time |\n|---|---|---|\n| `TestNotABudget` | cold | 5 s |\n\n" +
	"## VM test budget\n\n" +
	"| Test | what it proves | cold | warm |\n" +
	"|:-----|----------------|-----:|-----:|\n" +
	"| `TestBoot` | boots, BIOS and UEFI | 7m | 5m0s |\n" +
	"| `test/vm.TestVerify` | verify passes \\| fails | 400 s | 310 s |\n" +
	"| `vm.TestVerify` | the other package's | - | 10s |\n" +
	"| `TestDefaultRecipe` | the real gateway | 20 min 5 s | 12 min |\n" +
	"| `TestNoWarm` | only cold | 3m | - |\n" +
	"| `TestOdd` | a bad cell | soon | 1m |\n" +
	"| notes | not a test | | |\n"

func TestParseBudget(t *testing.T) {
	b := ParseBudget("BENCHMARKS.md", []byte(benchmarks))
	if b.Tables != 1 {
		t.Errorf("%d budget tables, want 1", b.Tables)
	}
	want := []BudgetRow{
		{Line: 11, Test: "TestBoot", Cold: 7 * time.Minute, Warm: 5 * time.Minute},
		{Line: 12, Package: "test/vm", Test: "TestVerify", Cold: 400 * time.Second, Warm: 310 * time.Second},
		{Line: 13, Package: "vm", Test: "TestVerify", Warm: 10 * time.Second},
		{Line: 14, Test: "TestDefaultRecipe", Cold: 20*time.Minute + 5*time.Second, Warm: 12 * time.Minute},
		{Line: 15, Test: "TestNoWarm", Cold: 3 * time.Minute},
		{Line: 16, Test: "TestOdd", Warm: time.Minute},
	}
	if len(b.Rows) != len(want) {
		t.Fatalf("rows %+v", b.Rows)
	}
	for i := range want {
		if b.Rows[i] != want[i] {
			t.Errorf("row %d: %+v, want %+v", i, b.Rows[i], want[i])
		}
	}
	probs := strings.Join(b.Problems, "\n")
	if !strings.Contains(probs, `BENCHMARKS.md:16: cannot read the duration "soon"`) || !strings.Contains(probs, `BENCHMARKS.md:17: no `+"`TestName`"+` in the test cell "notes"`) {
		t.Errorf("problems:\n%s", probs)
	}
}

func TestBudgetCheck(t *testing.T) {
	b := ParseBudget("BENCHMARKS.md", []byte(benchmarks))
	res := []Result{
		{Package: pkgVM, Test: "TestBoot", Result: "PASS", Seconds: 400},          // 6m40s: 33% over 5m
		{Package: pkgVM, Test: "TestVerify", Result: "PASS", Seconds: 380},        // under 1.25 x 310 s
		{Package: mod + "/vm", Test: "TestVerify", Result: "PASS", Seconds: 13},   // 30% over vm's 10s
		{Package: pkgVM, Test: "TestDefaultRecipe", Result: "HUNG", Seconds: 960}, // HUNG counts too
		{Package: pkgVM, Test: "TestNoWarm", Result: "PASS", Seconds: 9999},       // no warm entry
		{Package: pkgVM, Test: "TestNew", Result: "FAIL", Seconds: 60},            // no row
		{Package: mod + "/vm", Test: "TestUnit", Result: "PASS", Seconds: 0.01},   // no row, too short
		{Package: pkgA, Test: "TestElsewhere", Result: "PASS", Seconds: 120},      // not a budget package
	}
	got := strings.Join(b.Check(res, BudgetCheck{Packages: []string{"test/vm", "vm"}, MinTime: time.Second}), "\n")
	want := strings.Join([]string{
		`WARN budget: BENCHMARKS.md:16: cannot read the duration "soon"`,
		"WARN budget: BENCHMARKS.md:17: no `TestName` in the test cell \"notes\"",
		"WARN budget: TestBoot took 6m40s, 33% over its warm budget of 5m0s (BENCHMARKS.md)",
		"WARN budget: TestVerify took 13s, 30% over its warm budget of 10s (BENCHMARKS.md)",
		"WARN budget: TestDefaultRecipe took 16m0s, 33% over its warm budget of 12m0s (BENCHMARKS.md)",
		"WARN budget: TestNew has no line in BENCHMARKS.md's budget table",
	}, "\n")
	if got != want {
		t.Errorf("warnings:\n%s\nwant:\n%s", got, want)
	}
	// Without a minimum time every test of a budget package needs a line.
	got = strings.Join(b.Check(res[6:7], BudgetCheck{Packages: []string{"test/vm", "vm"}}), "\n")
	if !strings.Contains(got, "WARN budget: TestUnit has no line in BENCHMARKS.md's budget table") {
		t.Errorf("warnings:\n%s", got)
	}
	// No budget table at all.
	got = strings.Join(ParseBudget("B.md", []byte("# nothing\n")).Check(res[:1], BudgetCheck{Packages: []string{"test/vm"}}), "\n")
	if got != "WARN budget: B.md has no table with test, cold and warm columns\nWARN budget: TestBoot has no line in B.md's budget table" {
		t.Errorf("warnings:\n%s", got)
	}
}
