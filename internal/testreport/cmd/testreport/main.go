// Command testreport reads `go test -json` on stdin and prints CI's report
// (package internal/testreport): RUN and PASS/FAIL/SKIP lines, the tail of
// each failing test, crashes and timeouts in full, hung tests, a table of
// per-test durations and warnings against BENCHMARKS.md's budget table.
//
//	go test -json ./... 2>&1 | testreport -json unit.json -log unit-test.log
//	testreport -summary-only vm.json -budget BENCHMARKS.md -budget-packages test/vm,vm
//
// It exits 1 if a test or package failed or hung, go test printed an error
// outside its JSON stream, or no test ran; budget warnings do not count.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/bakeimg/bake/internal/testreport"
)

func main() {
	os.Exit(run())
}

func run() int {
	logFile := flag.String("log", "", "write the tests' plain-text output (what go test -v prints) to `FILE`")
	jsonFile := flag.String("json", "", "copy the raw input lines to `FILE`")
	budgetFile := flag.String("budget", "", "check durations against the budget tables (test, cold, warm columns) of the Markdown `FILE`")
	budgetPkgs := flag.String("budget-packages", "", "comma-separated import path `suffixes` whose tests need a budget line")
	budgetMin := flag.Duration("budget-min", 0, "tests shorter than this need no budget line")
	quick := flag.Duration("quick", 0, "tests quicker than this that pass (or skip) are counted, not listed: in the table, and for subtests in the --- PASS lines")
	summary := flag.String("summary-only", "", "print only the durations table and budget warnings of a saved -json `FILE`")
	module := flag.String("module", "", "module path that package names are shown relative to (default: from go.mod)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go test -json ... 2>&1 | testreport [flags]\n       testreport -summary-only FILE.json [flags]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		return 2
	}
	if *module == "" {
		if wd, err := os.Getwd(); err == nil {
			*module = testreport.FindModule(wd)
		}
	}
	check := testreport.BudgetCheck{MinTime: *budgetMin}
	for _, p := range strings.Split(*budgetPkgs, ",") {
		if p = strings.TrimSpace(p); p != "" {
			check.Packages = append(check.Packages, p)
		}
	}

	if *summary != "" {
		f, err := os.Open(*summary)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testreport:", err)
			return 2
		}
		defer f.Close()
		r := testreport.New(testreport.Config{Module: *module, Quiet: true})
		if err := r.Read(f); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: reading %s: %v\n", *summary, err)
			return 2
		}
		r.Finish()
		testreport.WriteTable(os.Stdout, r.Results(), r.Packages(), *quick)
		budgetWarnings(os.Stdout, *budgetFile, r.Results(), check)
		return 0
	}

	cfg := testreport.Config{Out: os.Stdout, Module: *module, Quick: *quick}
	var files []*os.File
	for _, o := range []struct {
		name string
		w    *io.Writer
	}{{*logFile, &cfg.Log}, {*jsonFile, &cfg.JSON}} {
		if o.name == "" {
			continue
		}
		f, err := os.Create(o.name)
		if err != nil {
			// Go on without the file: the tests are running and write into
			// our stdin; stopping here would kill them.
			fmt.Println("testreport:", err)
			continue
		}
		files = append(files, f)
		*o.w = f
	}
	if *logFile != "" && cfg.Log != nil {
		cfg.LogName = *logFile
	} else if *jsonFile != "" && cfg.JSON != nil {
		cfg.LogName = *jsonFile
	}
	r := testreport.New(cfg)
	readErr := r.Read(os.Stdin)
	r.Finish()
	fmt.Println()
	testreport.WriteTable(os.Stdout, r.Results(), r.Packages(), *quick)
	budgetWarnings(os.Stdout, *budgetFile, r.Results(), check)
	r.WriteSummary(os.Stdout)
	status := r.ExitCode()
	if readErr != nil {
		fmt.Println("testreport: reading stdin:", readErr)
		status = 1
	}
	if err := r.WriteErr(); err != nil {
		fmt.Println("testreport: writing the report:", err)
	}
	for _, f := range files {
		if err := f.Close(); err != nil {
			fmt.Println("testreport:", err)
			status = 1
		}
	}
	if len(files) < len(nonEmpty(*logFile, *jsonFile)) {
		status = 1
	}
	return status
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, x := range s {
		if x != "" {
			out = append(out, x)
		}
	}
	return out
}

func budgetWarnings(w io.Writer, file string, results []testreport.Result, check testreport.BudgetCheck) {
	if file == "" {
		return
	}
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(w, "WARN budget: cannot read %s: %v\n", file, err)
		return
	}
	for _, s := range testreport.ParseBudget(file, data).Check(results, check) {
		fmt.Fprintln(w, s)
	}
}
