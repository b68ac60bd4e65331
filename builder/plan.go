package builder

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/bakeimg/bake/builder/recipe"
)

// Plan is a recipe compiled into named stages. `bake plan` prints it; `bake
// build` runs it. Printing a plan runs nothing and needs no root.
type Plan struct {
	Recipe *recipe.Recipe
	Opts   Options
	Stages []Stage
	// Notes are decisions bake made for the recipe (packages it added,
	// sizes it chose), printed with the plan so nothing is implicit.
	Notes []string

	bootstrapPackages []string
	chrootPackages    []string
	model             []byte // the plan's JSON at Compile
}

// modelUnchanged fails when a stage changed the compiled model (the
// recipe or the plan): stages are functions of the model and the build's
// state, and a change would make the manifest, verify's expectations and
// `bake plan` disagree with what was built. Checked before any output is
// published.
func (p *Plan) modelUnchanged() error {
	if p.model == nil {
		return nil
	}
	now, err := json.Marshal(p.JSON())
	if err != nil {
		return err
	}
	if !bytes.Equal(now, p.model) {
		return fmt.Errorf("internal error: a build stage changed the compiled recipe model (bake plan --json before: %d bytes, after: %d bytes); nothing was published", len(p.model), len(now))
	}
	return nil
}

// Print writes the plan in a stable, human-readable form (golden-tested).
func (p *Plan) Print(w io.Writer) {
	r := p.Recipe
	fmt.Fprintf(w, "recipe %s (%s)\n", q(r.Name), q(r.Path))
	fmt.Fprintf(w, "recipe sha256 %s\n", r.Digest)
	if len(r.Vars) > 0 {
		names := make([]string, 0, len(r.Vars))
		for k := range r.Vars {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(w, "variable %s=%s\n", q(k), q(r.Vars[k]))
		}
	}
	// Everything the build takes from this machine, so that a reviewer
	// of a recipe sees what it reads (a context or a source outside the
	// project would show here).
	fmt.Fprintln(w, "reads from the build host:")
	for _, hp := range r.HostPaths() {
		fmt.Fprintf(w, "        %s: %s\n", hp.What, q(hp.Path))
	}
	fmt.Fprintf(w, "%d stages:\n", len(p.Stages))
	for i, s := range p.Stages {
		fmt.Fprintf(w, "[%d/%d] %s\n", i+1, len(p.Stages), s.Name)
		for _, in := range s.Inputs {
			fmt.Fprintf(w, "        %s\n", line(in))
		}
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", line(n))
	}
}

// q prints a value from the recipe (or the command line) as it is when it
// is plain, and quoted (Go syntax, escapes visible) when it holds anything
// else: a newline in a path must not print as another line of the plan.
func q(s string) string {
	if plain(s) {
		return s
	}
	return strconv.Quote(s)
}

// line is q for a whole printed line that was put together from recipe
// values: a line that is not plain is printed quoted, on one line. The
// values that reach it are refused by validation already when they are
// paths; this keeps any other one from forging a line of the plan.
func line(s string) string { return q(s) }

// plain: printable, valid UTF-8, no space other than ' ', no quote that a
// quoted value could be confused with at its start.
func plain(s string) bool {
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) {
		return false
	}
	for _, c := range s {
		if c != ' ' && !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}

func list(xs []string) string {
	if len(xs) == 0 {
		return "(none)"
	}
	return strings.Join(xs, " ")
}

func uniqueSorted(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if x != "" && !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}
