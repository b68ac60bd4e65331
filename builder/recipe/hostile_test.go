package recipe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// aliasBomb is a recipe whose containers[].build (the one field that takes
// any YAML) holds levels of anchors, each a list of `width` aliases of the
// one before: width^levels values once expanded, from a few hundred bytes.
func aliasBomb(levels, width int) string {
	var b strings.Builder
	b.WriteString("apiVersion: bake/v1\nname: bomb\nbase: {debian: {suite: bookworm}}\n")
	b.WriteString("users: [{name: app, system: true}]\n")
	b.WriteString("containers:\n  - name: c\n    user: app\n    build:\n")
	b.WriteString("      l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= levels; i++ {
		fmt.Fprintf(&b, "      l%d: &l%d [", i, i)
		for j := range width {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*l%d", i-1)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// inTime runs f and fails the test when it takes longer than d.
func inTime(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("still running after %s", d)
	}
}

func TestAliasBomb(t *testing.T) {
	src := aliasBomb(9, 10) // 10^10 values expanded
	var err error
	inTime(t, 5*time.Second, func() { _, err = Parse("bomb.yaml", []byte(src), t.TempDir(), nil) })
	var diags Diagnostics
	if !errors.As(err, &diags) || len(diags) != 1 {
		t.Fatalf("want one diagnostic, got %v", err)
	}
	// The alias that passes the budget: in l3 (line 12), whose aliases of
	// l2 stand for 1111 values each, the eighth (column 51).
	want := fmt.Sprintf("bomb.yaml:12:51: alias *l2 expands the recipe past %d values", MaxNodes)
	if got := diags[0].String(); !strings.HasPrefix(got, want) || diags[0].Hint == "" {
		t.Errorf("got  %s\nwant %s...", got, want)
	}

	// Aliases used as they are meant are fine, however often the same
	// small anchor is repeated.
	// (containers[].build is typed now, so the tree's keys are unknown
	// fields there: those are the only problems it may get, never the
	// alias budget's.)
	ok := aliasBomb(2, 10) // 10 + 100 + 1000 values
	if _, err := Parse("ok.yaml", []byte(ok), t.TempDir(), nil); err != nil && strings.Contains(err.Error(), "expands the recipe past") {
		t.Errorf("a small alias tree was refused: %v", err)
	} else if err == nil || !strings.Contains(err.Error(), `unknown field "l0" in containers[0].build`) {
		t.Errorf("the tree's keys under the typed build: %v", err)
	}

	// A merge-key chain is counted the same way.
	var b strings.Builder
	b.WriteString("apiVersion: bake/v1\nname: m\nbase: {debian: {suite: bookworm}}\nvariables:\n  a0: &a0 {")
	for j := range 20 {
		fmt.Fprintf(&b, "k%d: v, ", j)
	}
	b.WriteString("z: v}\n")
	b.WriteString("x:\n")
	for i := 1; i <= 8; i++ {
		fmt.Fprintf(&b, "  - &a%d [", i)
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "{<<: *a%d}", i-1)
		}
		b.WriteString("]\n")
	}
	inTime(t, 5*time.Second, func() { _, err = Parse("merge.yaml", []byte(b.String()), t.TempDir(), nil) })
	if err == nil || !strings.Contains(err.Error(), "expands the recipe past") {
		t.Errorf("merge bomb: got %v", err)
	}
}

func TestTooManyValues(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: bake/v1\nname: big\nbase: {debian: {suite: bookworm}}\napt:\n  packages:\n")
	for i := range MaxNodes + 1 {
		fmt.Fprintf(&b, "    - p%d\n", i)
	}
	_, err := Parse("big.yaml", []byte(b.String()), t.TempDir(), nil)
	// Reported at the value that passes the limit (keys count too).
	if err == nil || !strings.HasPrefix(err.Error(), "big.yaml:9991:7: the recipe holds more than 10000 values") {
		t.Errorf("got %v", err)
	}
}

func TestRecipeSizeLimit(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	data := []byte("apiVersion: bake/v1\nname: big\nbase: {debian: {suite: bookworm}}\n#")
	data = append(data, strings.Repeat("x", MaxSize)...)
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(big, nil)
	if err == nil || !strings.HasPrefix(err.Error(), big+": cannot read recipe: recipe too large") {
		t.Errorf("Load: got %v", err)
	}
	_, err = Parse("big.yaml", data, dir, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "big.yaml: cannot read recipe: recipe too large") {
		t.Errorf("Parse: got %v", err)
	}
	// Exactly the limit is read.
	if err := os.WriteFile(big, data[:MaxSize], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big, nil); err != nil && strings.Contains(err.Error(), "too large") {
		t.Errorf("a recipe of exactly MaxSize bytes: %v", err)
	}
}

// A FIFO (or a device) is refused at once: opening or reading it would
// block forever.
func TestRecipeNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "recipe.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal("mkfifo:", err)
	}
	var err error
	inTime(t, 5*time.Second, func() { _, err = Load(fifo, nil) })
	if err == nil || !strings.Contains(err.Error(), "is not a regular file (a named pipe)") {
		t.Errorf("FIFO: got %v", err)
	}
	inTime(t, 5*time.Second, func() { _, err = Load(dir, nil) })
	if err == nil || !strings.Contains(err.Error(), "is not a regular file (a directory)") {
		t.Errorf("directory: got %v", err)
	}
}

// contextTree makes WORK/proj/recipes/r.yaml (context: CONTEXT) with an
// overlay in WORK/proj/overlays, and returns WORK.
func contextTree(t *testing.T, context string) (work, recipePath string) {
	t.Helper()
	work = t.TempDir()
	for _, d := range []string{"proj/recipes", "proj/overlays/o"} {
		if err := os.MkdirAll(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	recipePath = filepath.Join(work, "proj/recipes/r.yaml")
	src := "apiVersion: bake/v1\nname: ctx\ncontext: " + context + "\nbase: {debian: {suite: bookworm}}\noverlays: [{source: ../overlays/o}]\n"
	if err := os.WriteFile(recipePath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return work, recipePath
}

func TestContextConfined(t *testing.T) {
	work, rp := contextTree(t, "..")
	proj := filepath.Join(work, "proj")
	// From the project folder (or above it), .. is the project: fine.
	for _, wd := range []string{proj, work} {
		if _, err := LoadIn(wd, rp, nil); err != nil {
			t.Errorf("from %s: %v", wd, err)
		}
	}
	// From the recipe's own folder, or from elsewhere, it is refused.
	for _, wd := range []string{filepath.Join(proj, "recipes"), filepath.Join(proj, "overlays")} {
		_, err := LoadIn(wd, rp, nil)
		want := rp + ":3:10: context: context .. resolves to " + proj + ", outside both the recipe folder " +
			filepath.Join(proj, "recipes") + " and the working directory " + wd + " (a context may reach up to the folder bake runs in: run bake from " + proj
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("from %s:\ngot  %v\nwant %s...", wd, err, want)
		}
	}

	// However many ../ it takes, / is never a context, not even from /.
	deep := strings.Repeat("../", strings.Count(filepath.Join(work, "proj/recipes"), "/")+3)
	_, rp = contextTree(t, deep)
	_, err := LoadIn("/", rp, nil)
	if err == nil || !strings.Contains(err.Error(), ":3:10: context: context "+deep+" is / (the whole build host)") {
		t.Errorf("context %s: got %v", deep, err)
	}

	// A home directory is refused even from above it.
	home := t.TempDir()
	t.Setenv("HOME", filepath.Join(home, "user"))
	if err := os.MkdirAll(filepath.Join(home, "user/proj"), 0o755); err != nil {
		t.Fatal(err)
	}
	rp = filepath.Join(home, "user/proj/r.yaml")
	os.WriteFile(rp, []byte("apiVersion: bake/v1\nname: h\ncontext: ..\nbase: {debian: {suite: bookworm}}\n"), 0o644)
	_, err = LoadIn(home, rp, nil)
	if err == nil || !strings.Contains(err.Error(), "context: context .. is "+filepath.Join(home, "user")+", a home directory") {
		t.Errorf("home: got %v", err)
	}
}

// A context that is inside the working directory by its written path but
// elsewhere in fact (a folder on the way is a symlink) is refused, and so
// is a source that a symlink leads out of the context.
func TestContextSymlink(t *testing.T) {
	work := t.TempDir()
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(outside, "recipes"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(outside, "recipes/r.yaml"), []byte("apiVersion: bake/v1\nname: s\ncontext: ..\nbase: {debian: {suite: bookworm}}\n"), 0o644)
	if err := os.Symlink(outside, filepath.Join(work, "proj")); err != nil {
		t.Fatal(err)
	}
	_, err := LoadIn(work, filepath.Join(work, "proj/recipes/r.yaml"), nil)
	realOutside, _ := filepath.EvalSymlinks(outside)
	if err == nil || !strings.Contains(err.Error(), "context .. resolves to "+realOutside+" (through a symlink), outside both") {
		t.Errorf("got %v", err)
	}
	// From the real folder's parent it is that folder's choice: fine.
	if _, err := LoadIn(outside, filepath.Join(outside, "recipes/r.yaml"), nil); err != nil {
		t.Errorf("from the real project folder: %v", err)
	}
}

// Path fields refuse control characters: a newline in files[].path would
// print as another stage of `bake plan`.
func TestPathControlCharacters(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "motd"), []byte("hi"), 0o644)
	src := `apiVersion: bake/v1
name: cc
base: {debian: {suite: bookworm}}
overlays:
  - {source: "o\tx", target: "/srv\u202e"}
files:
  - {path: "/etc/motd\n[2/2] evil", content: x}
  - {path: /etc/b, source: "motd\r"}
users:
  - {name: u, home: "/home/u\x1b[2J"}
`
	_, err := Parse("cc.yaml", []byte(src), dir, nil)
	var diags Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("got %v", err)
	}
	for _, want := range []string{
		`cc.yaml:5:14: overlays[0].source: "o\tx" contains the character U+0009 (write the path on one line`,
		`cc.yaml:5:30: overlays[0].target: "/srv\u202e" contains the character U+202E`,
		`cc.yaml:7:12: files[0].path: "/etc/motd\n[2/2] evil" contains the character U+000A`,
		`cc.yaml:8:28: files[1].source: "motd\r" contains the character U+000D`,
		`cc.yaml:10:21: users[0].home: "/home/u\x1b[2J" contains the character U+001B`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %s\nin\n%v", want, err)
		}
	}
	if n := len(diags); n != 5 {
		t.Errorf("%d diagnostics, want 5:\n%v", n, err)
	}
}

func TestHostPaths(t *testing.T) {
	work, rp := contextTree(t, "..")
	proj := filepath.Join(work, "proj")
	r, err := LoadIn(proj, rp, nil)
	if err != nil {
		t.Fatal(err)
	}
	real := func(p string) string { s, _ := filepath.EvalSymlinks(p); return s }
	var got []string
	for _, hp := range r.HostPaths() {
		got = append(got, hp.What+" "+hp.Path)
	}
	want := []string{"recipe " + real(rp), "context " + real(proj), "overlay " + real(filepath.Join(proj, "overlays/o"))}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("HostPaths:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Deeply nested flow collections are refused from the tokens: goccy's
// parser would take time and memory quadratic in the depth.
func TestDeepNesting(t *testing.T) {
	n := 100000
	src := "apiVersion: bake/v1\nname: d\nbase: {debian: {suite: bookworm}}\nx: " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n"
	var err error
	inTime(t, 5*time.Second, func() { _, err = Parse("deep.yaml", []byte(src), t.TempDir(), nil) })
	want := fmt.Sprintf("deep.yaml:4:%d: values nest more than %d deep", 4+maxNesting, maxNesting)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got  %.200v\nwant %s", err, want)
	}
}
