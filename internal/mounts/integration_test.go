//go:build integration

package mounts

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/safepath"
	"golang.org/x/sys/unix"
)

// TestRemoveAllSafeMounted: with a real mount below, RemoveAllSafe refuses,
// and even the fd-based removal itself (no mountinfo check) stops at the
// mount point instead of emptying the mounted filesystem.
func TestRemoveAllSafeMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the integration tier needs root (mounts): run `make test` as root")
	}
	work := t.TempDir()
	dir := filepath.Join(work, "with space", "d")
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	if err := unix.Mount("bake-test", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(mnt, "precious"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644)

	if err := RemoveAllSafe(filepath.Join(work, "with space")); !errors.Is(err, ErrMounted) {
		t.Fatalf("got %v, want ErrMounted", err)
	}
	r, err := safepath.Open(work)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.RemoveAll("with space")
	if err == nil || !strings.Contains(err.Error(), "mount point") {
		t.Errorf("RemoveAll across a mount: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "precious")); err != nil {
		t.Fatal("removal crossed the mount point")
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := RemoveAllSafe(filepath.Join(work, "with space")); err != nil {
		t.Fatal(err)
	}
}
