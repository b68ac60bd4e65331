package rootfs

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// notTreeStage are the packages that must not import the tree stage: the
// verifier, the VM runner, the appliance file generators, the container
// layer builder and the cloud image reader. What they share with rootfs
// (safepath, the mount table, apt sources, dpkg's status) lives in
// internal packages.
var notTreeStage = []string{
	"github.com/bakeimg/bake/verify/...",
	"github.com/bakeimg/bake/vm/...",
	"github.com/bakeimg/bake/appliance/...",
	"github.com/bakeimg/bake/oci/...",
	"github.com/bakeimg/bake/cloudimg/...",
}

// TestOnlyStagesImportRootfs runs go list -deps (with their tests, under
// every build tag the tiers use) on notTreeStage and fails when any of
// them reaches a rootfs package, naming the package that imports it.
func TestOnlyStagesImportRootfs(t *testing.T) {
	testenv.NeedTools(t, "go")
	const rootfs = "github.com/bakeimg/bake/rootfs"
	isRootfs := func(p string) bool { return p == rootfs || strings.HasPrefix(p, rootfs+"/") }
	for _, tags := range []string{"", "integration", "vm"} {
		args := append([]string{"list", "-deps", "-test", "-tags", tags,
			"-f", "{{.ImportPath}}\t{{join .Imports \" \"}}"}, notTreeStage...)
		cmd := exec.Command("go", args...)
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		n := 0
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			pkg, imports, _ := strings.Cut(line, "\t")
			n++
			// "P [Q.test]" is P compiled for Q's tests.
			if p, _, _ := strings.Cut(pkg, " "); isRootfs(p) {
				continue // reported by its importer below
			}
			for _, imp := range strings.Fields(imports) {
				if isRootfs(imp) {
					t.Errorf("tags %q: %s imports %s", tags, pkg, imp)
				}
			}
		}
		if n < len(notTreeStage) {
			t.Fatalf("tags %q: go list named only %d packages:\n%s", tags, n, out)
		}
	}
}
