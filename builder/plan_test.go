package builder

import (
	"strings"
	"testing"

	"github.com/bakeimg/bake/builder/recipe"
)

// A stage that writes into the compiled model is caught before anything
// is published (modelUnchanged, called by the outputs stage).
func TestModelUnchangedCatchesAStageWrite(t *testing.T) {
	src := `apiVersion: bake/v1
name: m
base:
  debian:
    suite: bookworm
kernel:
  cmdline: quiet
`
	r, err := recipe.Parse("m.yaml", []byte(src), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.modelUnchanged(); err != nil {
		t.Fatalf("unchanged model refused: %v", err)
	}
	r.Kernel.Args = append(r.Kernel.Args, "console=ttyS0,115200n8")
	if err := p.modelUnchanged(); err == nil || !strings.Contains(err.Error(), "changed the compiled recipe model") {
		t.Errorf("a stage's write to the model went unnoticed: %v", err)
	}
	r.Kernel.Args = r.Kernel.Args[:len(r.Kernel.Args)-1]
	p.Notes = append(p.Notes, "a note from a stage")
	if err := p.modelUnchanged(); err == nil {
		t.Error("a note added by a stage went unnoticed")
	}
}
