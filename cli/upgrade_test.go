package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bake upgrade: bad input is exit 2 with what is wrong, nothing written.
func TestUpgradeBadInput(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.raw")
	os.WriteFile(junk, make([]byte, 1<<20), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"upgrade", filepath.Join(dir, "none.qcow2"), junk}, "DISK: stat"},
		{[]string{"upgrade", dir, junk}, "is not a regular file"},
		{[]string{"upgrade", junk, junk}, "the same file"},
		{[]string{"upgrade", junk, filepath.Join(dir, "x")}, "DISK: base image"},
		{[]string{"upgrade", junk}, "accepts 2 arg(s)"},
	} {
		_, errs, code := run(t, c.args...)
		if code != ExitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, errs, c.want)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".bake-upgrade-*")); len(m) != 0 {
		t.Errorf("left behind: %v", m)
	}
}
