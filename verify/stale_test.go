package verify

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A work dir goes only when the PID in its name is gone: not a live run's,
// not ours, not one kept with --keep, not one whose owner is unknown (named
// before owners were recorded), not one that cannot be removed safely.
func TestRemoveStaleWorkDirs(t *testing.T) {
	tmp := t.TempDir()
	const dead, live = 4000001, 4000002
	self := os.Getpid()
	mk := func(name string, files ...string) string {
		p := filepath.Join(tmp, name)
		os.MkdirAll(filepath.Join(p, "sub"), 0o755)
		os.WriteFile(filepath.Join(p, "sub", "disk-bios-0.qcow2"), []byte("x"), 0o644)
		for _, f := range files {
			os.WriteFile(filepath.Join(p, f), nil, 0o644)
		}
		return p
	}
	gone := mk(fmt.Sprintf("bake-verify-%d-11", dead))
	mk(fmt.Sprintf("bake-verify-%d-12", live))
	mk(fmt.Sprintf("bake-verify-%d-13", self))
	mk(fmt.Sprintf("bake-verify-%d-14", dead), keptMarker)
	mk("bake-verify-2393829905")
	mounted := mk(fmt.Sprintf("bake-verify-%d-15", dead))
	os.WriteFile(filepath.Join(tmp, fmt.Sprintf("bake-verify-%d-16", dead)), nil, 0o644) // a file, not a dir

	removed, err := removeStaleWorkDirs(tmp, func(pid int) bool { return pid == live },
		func(p string) error {
			if p == mounted {
				return fmt.Errorf("mount points below directory %s: %s/x", p, p)
			}
			return os.RemoveAll(p)
		})
	if err == nil {
		t.Error("no error for the dir with a mount below it")
	}
	if !slices.Equal(removed, []string{gone}) {
		t.Errorf("removed %v, want [%s]", removed, gone)
	}
	ents, _ := os.ReadDir(tmp)
	if len(ents) != 6 {
		var n []string
		for _, e := range ents {
			n = append(n, e.Name())
		}
		t.Errorf("left %v, want 6 entries", n)
	}
}

func TestNewWorkDirNamesItsOwner(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	d, err := newWorkDir()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s%d-", workDirPrefix, os.Getpid())
	if b := filepath.Base(d); len(b) <= len(want) || b[:len(want)] != want {
		t.Errorf("work dir %s, want %s*", d, want)
	}
}
