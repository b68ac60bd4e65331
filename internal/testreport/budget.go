package testreport

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Budget is the budget table of BENCHMARKS.md: every Markdown table whose
// header row has cells named test, cold and warm (other columns allowed).
type Budget struct {
	File     string // as named in warnings
	Rows     []BudgetRow
	Tables   int      // budget tables found
	Problems []string // cells that could not be read, as warnings
}

// BudgetRow is one test's line. Package is the qualifier of
// `test/vm.TestX` ("" for a bare `TestX`); Cold and Warm are 0 when the
// cell is empty or "-".
type BudgetRow struct {
	Line       int
	Package    string
	Test       string
	Cold, Warm time.Duration
}

// Overrun is how far over its warm budget a test may go before a warning.
const Overrun = 1.25

var testRef = regexp.MustCompile("`\\s*(?:([A-Za-z0-9_./-]+)\\.)?(Test[A-Za-z0-9_]*)\\s*`")

// ParseBudget reads the budget tables of a Markdown document named file.
func ParseBudget(file string, data []byte) *Budget {
	b := &Budget{File: file}
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		if !isTableRow(lines[i]) {
			continue
		}
		header := splitRow(lines[i])
		testCol, coldCol, warmCol := -1, -1, -1
		for j, c := range header {
			switch strings.ToLower(strings.Trim(c, " *_`")) {
			case "test":
				testCol = j
			case "cold":
				coldCol = j
			case "warm":
				warmCol = j
			}
		}
		// Skip the rest of this table, reading it if it is a budget table.
		budget := testCol >= 0 && coldCol >= 0 && warmCol >= 0
		if budget {
			b.Tables++
		}
		for i+1 < len(lines) && isTableRow(lines[i+1]) {
			i++
			if !budget || isSeparator(lines[i]) {
				continue
			}
			cells := splitRow(lines[i])
			cell := func(j int) string {
				if j < len(cells) {
					return cells[j]
				}
				return ""
			}
			refs := testRef.FindAllStringSubmatch(cell(testCol), -1)
			if len(refs) == 0 {
				if strings.TrimSpace(cell(testCol)) != "" {
					b.Problems = append(b.Problems, fmt.Sprintf("%s:%d: no `TestName` in the test cell %q", file, i+1, strings.TrimSpace(cell(testCol))))
				}
				continue
			}
			var durs [2]time.Duration
			for k, col := range []int{coldCol, warmCol} {
				d, err := ParseDuration(cell(col))
				if err != nil {
					b.Problems = append(b.Problems, fmt.Sprintf("%s:%d: %v", file, i+1, err))
				}
				durs[k] = d
			}
			for _, m := range refs {
				b.Rows = append(b.Rows, BudgetRow{Line: i + 1, Package: m[1], Test: m[2], Cold: durs[0], Warm: durs[1]})
			}
		}
	}
	return b
}

func isTableRow(s string) bool { return strings.HasPrefix(strings.TrimSpace(s), "|") }

func isSeparator(s string) bool {
	return strings.Trim(strings.TrimSpace(s), "|-: \t") == "" && strings.Contains(s, "-")
}

// splitRow splits a Markdown table row into trimmed cells; a | inside
// backticks or escaped as \| does not split.
func splitRow(s string) []string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "|")
	var cells []string
	var cur strings.Builder
	code := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '|':
			cur.WriteByte('|')
			i++
		case c == '`':
			code = !code
			cur.WriteByte(c)
		case c == '|' && !code:
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if rest := strings.TrimSpace(cur.String()); rest != "" {
		cells = append(cells, rest)
	}
	return cells
}

var durToken = regexp.MustCompile(`(\d+(?:\.\d+)?)\s*(hours|hour|hrs|hr|h|minutes|minute|mins|min|ms|m|seconds|second|secs|sec|s)?`)

// ParseDuration reads a budget cell: "5m10s", "310 s", "310s", "310",
// "5 min 10 s", "1h 2 min", "98.5 s", optionally with a leading "~" and a
// trailing "(remark)". An empty cell or a dash means no entry: 0, nil.
func ParseDuration(cell string) (time.Duration, error) {
	s := strings.ToLower(strings.TrimSpace(cell))
	if i := strings.IndexByte(s, '('); i > 0 {
		s = strings.TrimSpace(s[:i])
	}
	s = strings.TrimSpace(strings.TrimLeft(s, "~≈ "))
	switch s {
	case "", "-", "--", "–", "—", "n/a", "none":
		return 0, nil
	}
	idx := durToken.FindAllStringSubmatchIndex(s, -1)
	var d float64
	pos := 0
	for _, m := range idx {
		if strings.Trim(s[pos:m[0]], " ,") != "" {
			return 0, fmt.Errorf("cannot read the duration %q", cell)
		}
		pos = m[1]
		n, err := strconv.ParseFloat(s[m[2]:m[3]], 64)
		if err != nil {
			return 0, fmt.Errorf("cannot read the duration %q", cell)
		}
		unit := ""
		if m[4] >= 0 {
			unit = s[m[4]:m[5]]
		}
		switch {
		case unit == "" && len(idx) == 1:
			d += n // a bare number is seconds
		case unit == "":
			return 0, fmt.Errorf("cannot read the duration %q: a number without a unit", cell)
		case unit == "ms":
			d += n / 1000
		case unit[0] == 'h':
			d += n * 3600
		case unit[0] == 'm':
			d += n * 60
		default:
			d += n
		}
	}
	if len(idx) == 0 || strings.Trim(s[pos:], " ,") != "" {
		return 0, fmt.Errorf("cannot read the duration %q", cell)
	}
	return secondsDuration(d), nil
}

// Find returns the row for test in package pkg (an import path), as find.
func (b *Budget) Find(pkg, test string) (BudgetRow, bool) { return b.find(pkg, test) }

// find returns the row for test in package pkg (an import path): a row
// whose qualifier is a path suffix of pkg wins over a bare one.
func (b *Budget) find(pkg, test string) (BudgetRow, bool) {
	var bare *BudgetRow
	for i := range b.Rows {
		row := &b.Rows[i]
		if row.Test != test {
			continue
		}
		if row.Package == "" {
			if bare == nil {
				bare = row
			}
			continue
		}
		if pathSuffix(pkg, row.Package) {
			return *row, true
		}
	}
	if bare != nil {
		return *bare, true
	}
	return BudgetRow{}, false
}

// pathSuffix reports whether suffix is pkg or ends pkg at a "/".
func pathSuffix(pkg, suffix string) bool {
	suffix = strings.Trim(suffix, "/")
	return suffix != "" && (pkg == suffix || strings.HasSuffix(pkg, "/"+suffix))
}

// BudgetCheck says what to check: tests of packages matching one of
// Packages (import path suffixes) need a row, unless they took less than
// MinTime (tests that always take seconds, e.g. unit tests of package vm
// that the VM tier runs too, are no budget's business).
type BudgetCheck struct {
	Packages []string
	MinTime  time.Duration
}

// Check returns the warnings for results: a test over Overrun times its
// warm budget, a test of c.Packages with no row. Warnings only.
func (b *Budget) Check(results []Result, c BudgetCheck) []string {
	var warns []string
	warns = append(warns, prefixed(b.Problems)...)
	needRows := false
	for _, t := range results {
		for _, p := range c.Packages {
			if pathSuffix(t.Package, p) {
				needRows = true
			}
		}
	}
	if b.Tables == 0 && needRows {
		warns = append(warns, fmt.Sprintf("WARN budget: %s has no table with test, cold and warm columns", b.File))
	}
	for _, t := range results {
		took := roundDuration(t.Duration())
		row, ok := b.find(t.Package, t.Test)
		if !ok {
			if t.Duration() < c.MinTime {
				continue
			}
			for _, p := range c.Packages {
				if pathSuffix(t.Package, p) {
					warns = append(warns, fmt.Sprintf("WARN budget: %s has no line in %s's budget table", t.Test, b.File))
					break
				}
			}
			continue
		}
		if row.Warm <= 0 || t.Duration() <= time.Duration(Overrun*float64(row.Warm)) {
			continue
		}
		over := math.Round((t.Duration().Seconds()/row.Warm.Seconds() - 1) * 100)
		warns = append(warns, fmt.Sprintf("WARN budget: %s took %s, %.0f%% over its warm budget of %s (%s)", t.Test, took, over, roundDuration(row.Warm), b.File))
	}
	return warns
}

// roundDuration rounds to seconds, or to tenths below a minute.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func prefixed(problems []string) []string {
	var out []string
	for _, p := range problems {
		out = append(out, "WARN budget: "+p)
	}
	return out
}

// WriteTable prints "per-test durations": the top-level tests, slowest
// first, then one total line per package (its binary's elapsed time). PASS
// and SKIP tests quicker than quick are counted in one line instead of
// listed; a failed or hung test is always listed. When a test printed VM
// exit lines (CPULine), a "guest CPU" column gives the CPU seconds of those
// VMs and how many there were, for the tests and package totals that have
// any; a run without such lines prints the table without it.
func WriteTable(w io.Writer, results []Result, pkgs []PackageResult, quick time.Duration) {
	fmt.Fprintln(w, "per-test durations (top-level tests, slowest first):")
	if len(results) == 0 && len(pkgs) == 0 {
		fmt.Fprintln(w, "  (no test ran)")
		return
	}
	sorted := append([]Result(nil), results...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Seconds > sorted[j].Seconds })
	type cpuSum struct {
		secs float64
		vms  int
	}
	withCPU := false
	byPkg := map[string]*cpuSum{}
	var all cpuSum
	for _, t := range results {
		if t.VMs == 0 {
			continue
		}
		withCPU = true
		s := byPkg[t.Short]
		if s == nil {
			s = &cpuSum{}
			byPkg[t.Short] = s
		}
		s.secs += t.GuestCPU
		s.vms += t.VMs
		all.secs += t.GuestCPU
		all.vms += t.VMs
	}
	// cpu is the guest CPU cell, after a tab, when the column is shown.
	cpu := func(s *cpuSum) string {
		switch {
		case !withCPU:
			return ""
		case s == nil || s.vms == 0:
			return "\t"
		}
		return fmt.Sprintf("\t%.1f (%s)", s.secs, plural(s.vms, "VM"))
	}
	// The table goes through a buffer: a row with an empty last cell
	// would end in the padding of the cell before it.
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "  package\ttest\tresult\tseconds")
	if withCPU {
		fmt.Fprint(tw, "\tguest CPU")
	}
	fmt.Fprintln(tw)
	short, shortSecs := 0, 0.0
	var shortCPU cpuSum
	for _, t := range sorted {
		if (t.Result == "PASS" || t.Result == "SKIP") && t.Duration() < quick {
			short++
			shortSecs += t.Seconds
			shortCPU.secs += t.GuestCPU
			shortCPU.vms += t.VMs
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%.1f%s\n", t.Short, t.Test, t.Result, t.Seconds, cpu(&cpuSum{t.GuestCPU, t.VMs}))
	}
	if short > 0 {
		fmt.Fprintf(tw, "  \t(%d more under %s)\tPASS/SKIP\t%.1f%s\n", short, quick, shortSecs, cpu(&shortCPU))
	}
	total := 0.0
	for _, p := range pkgs {
		total += p.Seconds
		fmt.Fprintf(tw, "  %s\t(package total, %s)\t%s\t%.1f%s\n", p.Short, plural(p.Tests, "test"), p.Result, p.Seconds, cpu(byPkg[p.Short]))
	}
	if len(pkgs) > 1 {
		fmt.Fprintf(tw, "  (all)\t(%d packages)\t\t%.1f%s\n", len(pkgs), total, cpu(&all))
	}
	tw.Flush()
	for _, l := range strings.SplitAfter(buf.String(), "\n") {
		if l != "" {
			io.WriteString(w, strings.TrimRight(l, " \n")+"\n")
		}
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
