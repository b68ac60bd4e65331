package builder

import (
	"bytes"
	"strings"
	"testing"

	"github.com/bakeimg/bake/builder/recipe"
)

// Values from a recipe or the command line are printed quoted when they
// are not plain text: a newline cannot forge a stage of the plan.
func TestPrintQuotes(t *testing.T) {
	p := &Plan{
		Recipe: &recipe.Recipe{Name: "x", Path: "r.yaml\n[1/1] evil", Vars: map[string]string{"v": "a\n[1/1] evil", "ok": "plain text"}},
		Stages: []Stage{{Name: "files", Inputs: []string{"file /etc/a\n[1/1] evil mode 0644", "file /etc/b mode 0644"}}},
		Notes:  []string{"n\x1b[2J"},
	}
	var b bytes.Buffer
	p.Print(&b)
	out := b.String()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "[1/1] evil") {
			t.Errorf("a forged line:\n%s", out)
		}
	}
	for _, want := range []string{
		`recipe x ("r.yaml\n[1/1] evil")`,
		`variable v="a\n[1/1] evil"`,
		"variable ok=plain text\n",
		`        "file /etc/a\n[1/1] evil mode 0644"`,
		"        file /etc/b mode 0644\n",
		`note: "n\x1b[2J"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in\n%s", want, out)
		}
	}
}
