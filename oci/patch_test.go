package oci

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testPatch = `a note before the diff, as git format-patch writes one

diff --git a/node_modules/pkg/x.mjs b/node_modules/pkg/x.mjs
index 1111111..2222222 100644
--- a/node_modules/pkg/x.mjs
+++ b/node_modules/pkg/x.mjs
@@ -1,3 +1,3 @@
 // x
-const T = 5e3;
+const T = 6e4;
 export { T };
`

func patchTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "node_modules/pkg"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "node_modules/pkg/x.mjs"), []byte("// x\nconst T = 5e3;\nexport { T };\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestApplyPatches(t *testing.T) {
	dir := patchTree(t)
	if err := applyPatches(dir, []AppPatch{{Name: "0001-t.patch", Data: []byte(testPatch)}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "node_modules/pkg/x.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "// x\nconst T = 6e4;\nexport { T };\n" {
		t.Errorf("patched file:\n%s", b)
	}
	st, _ := os.Stat(filepath.Join(dir, "node_modules/pkg/x.mjs"))
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", st.Mode().Perm())
	}
	// Applied again, the context no longer matches: an error, not a
	// silent second change.
	if err := applyPatches(dir, []AppPatch{{Name: "0001-t.patch", Data: []byte(testPatch)}}); err == nil || !strings.Contains(err.Error(), "does not apply") {
		t.Errorf("second apply: %v, want does not apply", err)
	}
}

func TestApplyPatchesRefuses(t *testing.T) {
	for name, c := range map[string]struct{ patch, want string }{
		"escape": {strings.ReplaceAll(testPatch, "node_modules/pkg/x.mjs", "node_modules/../../x.mjs"), "not a clean relative path"},
		// a//etc/x.mjs is etc/x.mjs inside the tree (as patch -p1 reads it)
		"absolute": {strings.ReplaceAll(testPatch, "node_modules/pkg/x.mjs", "/etc/x.mjs"), "etc: no such file"},
		"new file": {`diff --git a/node_modules/pkg/y.mjs b/node_modules/pkg/y.mjs
new file mode 100644
index 0000000..2222222
--- /dev/null
+++ b/node_modules/pkg/y.mjs
@@ -0,0 +1 @@
+x
`, "only change the text of an existing file"},
		"missing": {strings.ReplaceAll(testPatch, "pkg/x.mjs", "pkg/z.mjs"), "no such file"},
		"no diff": {"just words\n", "no file diff"},
		"context": {strings.Replace(testPatch, " // x", " // y", 1), "does not apply"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := patchTree(t)
			err := applyPatches(dir, []AppPatch{{Name: "p.patch", Data: []byte(c.patch)}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v, want one containing %q", err, c.want)
			}
			b, _ := os.ReadFile(filepath.Join(dir, "node_modules/pkg/x.mjs"))
			if !strings.Contains(string(b), "5e3") {
				t.Errorf("x.mjs changed:\n%s", b)
			}
		})
	}
}

func TestApplyPatchesNoSymlink(t *testing.T) {
	dir := patchTree(t)
	outside := filepath.Join(t.TempDir(), "x.mjs")
	if err := os.WriteFile(outside, []byte("// x\nconst T = 5e3;\nexport { T };\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "node_modules/pkg/x.mjs"))
	if err := os.Symlink(outside, filepath.Join(dir, "node_modules/pkg/x.mjs")); err != nil {
		t.Fatal(err)
	}
	if err := applyPatches(dir, []AppPatch{{Name: "p.patch", Data: []byte(testPatch)}}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("err %v, want not a regular file", err)
	}
	if b, _ := os.ReadFile(outside); !strings.Contains(string(b), "5e3") {
		t.Errorf("the file outside the tree changed")
	}
}

// The shipped patches parse and name only files inside the app dir.
func TestShippedPatches(t *testing.T) {
	ps, err := ListPatches(filepath.Join("..", "recipes", "openclaw-gateway"))
	if err != nil || len(ps) == 0 {
		t.Fatalf("patches %v, %v", ps, err)
	}
	got, err := readPatches(ps)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range got {
		if !strings.Contains(string(p.Data), "diff --git a/node_modules/openclaw/") {
			t.Errorf("%s does not patch node_modules/openclaw", p.Name)
		}
	}
	spec := OpenClawGatewaySpec(filepath.Join("..", "recipes", "openclaw-gateway"), testEpoch)
	if len(spec.App.Patches) != len(ps) {
		t.Errorf("the gateway spec has %d patches, want %d", len(spec.App.Patches), len(ps))
	}
}

func FuzzApplyPatches(f *testing.F) {
	f.Add([]byte(testPatch))
	f.Add([]byte("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := patchTree(t)
		_ = applyPatches(dir, []AppPatch{{Name: "f.patch", Data: b}})
		// Nothing outside node_modules/pkg appears.
		es, _ := os.ReadDir(dir)
		if len(es) != 1 || es[0].Name() != "node_modules" {
			t.Errorf("the tree's top has %v", es)
		}
	})
}
