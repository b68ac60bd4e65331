package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/verify"
)

var update = flag.Bool("update", false, "rewrite golden files")

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// The plans of the shipped recipes are golden files: a change to what a
// build does shows up in review as a diff of these files.
func TestPlanGolden(t *testing.T) {
	for _, name := range []string{"openclaw", "minimal", "state", "state-partition"} {
		recipePath := "recipes/" + name + ".yaml"
		if strings.HasPrefix(name, "state") {
			recipePath = "cli/testdata/" + name + ".yaml" // a state: section (issue 15)
		}
		t.Run(name, func(t *testing.T) {
			// Run from the repository root so the printed path is stable.
			wd, _ := os.Getwd()
			if err := os.Chdir(".."); err != nil {
				t.Fatal(err)
			}
			defer os.Chdir(wd)
			out, errs, code := run(t, "plan", recipePath)
			if code != 0 {
				t.Fatalf("plan exited %d: %s", code, errs)
			}
			// The host paths the build reads are absolute: the
			// checkout's folder is $REPO in the golden file.
			repo, _ := os.Getwd()
			repo, _ = filepath.EvalSymlinks(repo)
			out = strings.ReplaceAll(out, repo+"/", "$REPO/")
			out = strings.ReplaceAll(out, repo+"\n", "$REPO\n")
			golden := filepath.Join(wd, "testdata", name+".plan.golden")
			if *update {
				os.WriteFile(golden, []byte(out), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./cli -update)", err)
			}
			if out != string(want) {
				t.Errorf("plan differs from %s (go test ./cli -update to accept):\n--- got\n%s--- want\n%s", golden, out, want)
			}
		})
	}
}

// A bad recipe is reported with every problem and exit status 2, and build
// creates nothing: not the output dir, not a file in it.
func TestBadRecipeBuildsNothing(t *testing.T) {
	dir := t.TempDir()
	recipe := filepath.Join(dir, "bad.yaml")
	os.WriteFile(recipe, []byte(`apiVersion: bake/v1
name: Bad Name
base:
  debian:
    suite: bookworm
    pakages: [vim]
disk:
  size: 4 gigs
users:
  - name: a
  - name: a
`), 0o644)
	out := filepath.Join(dir, "out")
	for _, cmd := range []string{"validate", "plan", "build"} {
		args := []string{cmd, recipe}
		if cmd == "build" {
			args = append(args, "-o", out)
		}
		_, errs, code := run(t, args...)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2\n%s", cmd, code, errs)
		}
		for _, want := range []string{
			recipe + ":2:7:",   // name
			recipe + ":6:5:",   // pakages
			recipe + ":8:9:",   // size
			recipe + ":11:11:", // duplicate user
			"did you mean",
		} {
			if !strings.Contains(errs, want) {
				t.Errorf("%s: stderr lacks %q:\n%s", cmd, want, errs)
			}
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("build of a bad recipe created %s", out)
	}
}

func TestSetUndeclaredIsUsageError(t *testing.T) {
	_, errs, code := run(t, "validate", "../recipes/minimal.yaml", "--set", "nosuch=1")
	if code != 2 || !strings.Contains(errs, "nosuch") {
		t.Errorf("exit %d, stderr %s", code, errs)
	}
	_, errs, code = run(t, "validate", "../recipes/minimal.yaml", "--set", "novalue")
	if code != 2 || !strings.Contains(errs, "NAME=VALUE") {
		t.Errorf("exit %d, stderr %s", code, errs)
	}
}

func TestUsageErrors(t *testing.T) {
	if _, _, code := run(t, "build"); code != 2 {
		t.Errorf("build without a recipe: exit %d, want 2", code)
	}
	if _, _, code := run(t, "validate", "--nosuch", "x"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	if _, _, code := run(t, "validate", "/nonexistent/recipe.yaml"); code != 2 {
		t.Errorf("missing recipe: exit %d, want 2", code)
	}
	out, _, code := run(t, "version")
	if code != 0 || !strings.HasPrefix(out, "bake ") {
		t.Errorf("version: %d %q", code, out)
	}
	out, _, code = run(t, "completion", "bash")
	if code != 0 || !strings.Contains(out, "bash completion") {
		t.Errorf("completion: %d", code)
	}
}

// `bake plan --json` of every recipe in recipes/ and test/vm/testdata/ is a
// golden file too (the resolved model: every default applied once). The
// JSON holds no host path (paths under the recipe's folder are relative),
// and every kernel command line has each argument once.
func TestPlanJSONGolden(t *testing.T) {
	zero := strings.Repeat("0", 64)
	for _, tc := range []struct {
		name, recipe string
		sets         []string
	}{
		{"openclaw", "recipes/openclaw.yaml", nil},
		{"minimal", "recipes/minimal.yaml", nil},
		{"openclaw-test", "test/vm/testdata/openclaw-test.yaml", nil},
		{"boottest", "test/vm/testdata/boot/recipe.yaml", nil},
		{"state", "cli/testdata/state.yaml", nil},
		{"state-partition", "cli/testdata/state-partition.yaml", nil},
		// The test names its fixture; any file in the folder stands in for
		// it here (plan checks that it exists, the build that it is an
		// image with that digest).
		{"openclaw-cloud-test", "test/vm/testdata/openclaw-cloud-test.yaml", []string{"base_image=openclaw-test.yaml", "base_sha256=" + zero}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wd, _ := os.Getwd()
			if err := os.Chdir(".."); err != nil {
				t.Fatal(err)
			}
			defer os.Chdir(wd)
			args := []string{"plan", "--json", tc.recipe}
			for _, s := range tc.sets {
				args = append(args, "--set", s)
			}
			out, errs, code := run(t, args...)
			if code != 0 {
				t.Fatalf("plan --json exited %d: %s", code, errs)
			}
			repo, _ := os.Getwd()
			repo, _ = filepath.EvalSymlinks(repo)
			if strings.Contains(out, repo) {
				t.Errorf("the JSON names the checkout %s", repo)
			}
			var p struct {
				Model struct {
					Kernel struct {
						Args []string `json:"args"`
					} `json:"kernel"`
				} `json:"model"`
			}
			if err := json.Unmarshal([]byte(out), &p); err != nil {
				t.Fatal(err)
			}
			if len(p.Model.Kernel.Args) == 0 {
				t.Error("no kernel command line in the model")
			}
			seen := map[string]bool{}
			for _, a := range p.Model.Kernel.Args {
				if seen[a] {
					t.Errorf("kernel argument %q twice: %v", a, p.Model.Kernel.Args)
				}
				seen[a] = true
			}
			golden := filepath.Join(wd, "testdata", tc.name+".plan.json.golden")
			if *update {
				os.WriteFile(golden, []byte(out), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./cli -update)", err)
			}
			if out != string(want) {
				t.Errorf("plan --json differs from %s (go test ./cli -update to accept):\n--- got\n%s--- want\n%s", golden, out, want)
			}
		})
	}
}

// TestReadmeListsEveryCheck: README's list of verify's checks is the
// catalog's, for the default recipe (go test ./cli -update rewrites it
// between its markers).
func TestReadmeListsEveryCheck(t *testing.T) {
	const begin, end = "<!-- checks:begin (go test ./cli -update) -->\n", "<!-- checks:end -->\n"
	path := filepath.Join("..", "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q block", begin, end)
	}
	var table strings.Builder
	verify.ListMarkdown(&table, verify.DefaultSpec())
	if got := s[i+len(begin) : j]; got != table.String() {
		if *update {
			if err := os.WriteFile(path, []byte(s[:i+len(begin)]+table.String()+s[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README.md's list of checks is not the catalog's (go test ./cli -update to rewrite it):\n--- got\n%s--- want\n%s", got, table.String())
	}
}
