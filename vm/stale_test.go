package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestTrailingPID(t *testing.T) {
	for _, c := range []struct {
		name, prefix string
		pid          int
		ok           bool
	}{
		{"bake-verify-bios-0-1234", "bake-verify-", 1234, true},
		{"bake-verify-uefi-1-7", "bake-verify-", 7, true},
		{"bake-verify-bios-0-", "bake-verify-", 0, false},
		{"bake-verify-bios-0-12x", "bake-verify-", 0, false},
		{"bake-verify-bios-0-0012", "bake-verify-", 0, false},
		{"bake-boot-bios-0-1234", "bake-verify-", 0, false},
	} {
		pid, ok := TrailingPID(c.name, c.prefix)
		if pid != c.pid || ok != c.ok {
			t.Errorf("TrailingPID(%q, %q) = %d, %v; want %d, %v", c.name, c.prefix, pid, ok, c.pid, c.ok)
		}
	}
	// LeadingPID (work dirs' names) is sweep's: sweep.TestLeadingPID.
}

// Only what belongs to a dead owner goes: namespaces of the prefix with a
// dead PID, link dirs with a dead PID; never a live owner's (nor ours), a
// namespace of another prefix, or a dir whose owner is unknown.
func TestRemoveStaleLinks(t *testing.T) {
	nsDir, tmp := t.TempDir(), t.TempDir()
	const dead, live = 4000001, 4000002
	self := os.Getpid()
	for _, n := range []string{
		fmt.Sprintf("bake-verify-bios-0-%d", dead),
		fmt.Sprintf("bake-verify-bios-1-%d", dead),
		fmt.Sprintf("bake-verify-bios-0-%d", live),
		fmt.Sprintf("bake-verify-bios-0-%d", self),
		fmt.Sprintf("bake-boot-bios-%d", dead),
		"someone-else",
	} {
		os.WriteFile(filepath.Join(nsDir, n), nil, 0o644)
	}
	for _, d := range []string{
		fmt.Sprintf("bake-link-%d-1", dead),
		fmt.Sprintf("bake-link-%d-2", live),
		fmt.Sprintf("bake-link-%d-3", self),
		"bake-link-3490247584",
		fmt.Sprintf("bake-verify-%d-4", dead), // not a link's
	} {
		os.MkdirAll(filepath.Join(tmp, d, "sub"), 0o755)
	}
	var deleted []string
	removed, err := removeStaleLinks(context.Background(), staleEnv{
		netnsDir: nsDir, tmpDir: tmp, prefix: "bake-verify-",
		alive: func(pid int) bool { return pid == live || pid == self },
		deleteNetns: func(_ context.Context, name string) error {
			deleted = append(deleted, name)
			return os.Remove(filepath.Join(nsDir, name))
		},
		removeDir: os.RemoveAll,
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deleted)
	want := []string{fmt.Sprintf("bake-verify-bios-0-%d", dead), fmt.Sprintf("bake-verify-bios-1-%d", dead)}
	if !slices.Equal(deleted, want) {
		t.Errorf("deleted namespaces %v, want %v", deleted, want)
	}
	if len(removed) != 3 {
		t.Errorf("removed %v, want the two namespaces and one link dir", removed)
	}
	left, _ := os.ReadDir(tmp)
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	wantLeft := []string{fmt.Sprintf("bake-link-%d-2", live), fmt.Sprintf("bake-link-%d-3", self), "bake-link-3490247584", fmt.Sprintf("bake-verify-%d-4", dead)}
	slices.Sort(wantLeft)
	if !slices.Equal(names, wantLeft) {
		t.Errorf("left %v, want %v", names, wantLeft)
	}
}

// A dir that cannot be removed (a mount below it: RemoveAllSafe refuses) is
// reported and left; the rest still goes.
func TestRemoveStaleLinksKeepsWhatItCannotRemove(t *testing.T) {
	tmp := t.TempDir()
	const dead = 4000001
	for _, d := range []string{fmt.Sprintf("bake-link-%d-1", dead), fmt.Sprintf("bake-link-%d-2", dead)} {
		os.MkdirAll(filepath.Join(tmp, d), 0o755)
	}
	mounted := filepath.Join(tmp, fmt.Sprintf("bake-link-%d-1", dead))
	removed, err := removeStaleLinks(context.Background(), staleEnv{
		netnsDir: filepath.Join(tmp, "none"), tmpDir: tmp, prefix: "bake-verify-",
		alive: func(int) bool { return false },
		removeDir: func(p string) error {
			if p == mounted {
				return fmt.Errorf("mount points below directory %s", p)
			}
			return os.RemoveAll(p)
		},
	})
	if err == nil || len(removed) != 1 {
		t.Errorf("removed %v, err %v; want one removed and an error for the other", removed, err)
	}
	if _, err := os.Stat(mounted); err != nil {
		t.Errorf("the dir with a mount below it was removed")
	}
}
