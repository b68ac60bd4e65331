package builder

import (
	"fmt"
	"io"
	"sort"
	"strings"

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
	cloud             *cloudState // base.image builds
}

// Print writes the plan in a stable, human-readable form (golden-tested).
func (p *Plan) Print(w io.Writer) {
	r := p.Recipe
	fmt.Fprintf(w, "recipe %s (%s)\n", r.Name, r.Path)
	fmt.Fprintf(w, "recipe sha256 %s\n", r.Digest)
	if len(r.Vars) > 0 {
		names := make([]string, 0, len(r.Vars))
		for k := range r.Vars {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(w, "variable %s=%s\n", k, r.Vars[k])
		}
	}
	fmt.Fprintf(w, "%d stages:\n", len(p.Stages))
	for i, s := range p.Stages {
		fmt.Fprintf(w, "[%d/%d] %s\n", i+1, len(p.Stages), s.Name)
		for _, in := range s.Inputs {
			fmt.Fprintf(w, "        %s\n", in)
		}
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
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
