package safepath

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// trapTree builds a tree whose etc/evil and etc/evil2 point out of it, the
// way a hostile overlay or package could, and an "outside" directory that
// must never be written.
func trapTree(t *testing.T) (tree, outside string) {
	t.Helper()
	base := t.TempDir()
	tree = filepath.Join(base, "tree")
	outside = filepath.Join(base, "outside")
	for _, d := range []string{tree + "/etc", outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Absolute: in the tree it means TREE/<outside>; on the host the
	// real outside directory.
	must(t, os.Symlink(outside, tree+"/etc/evil"))
	// Relative with enough ".." to climb out of the tree on the host.
	must(t, os.Symlink("../../../../../../../../.."+outside, tree+"/etc/evil2"))
	must(t, os.Symlink("/etc/target", tree+"/etc/abs"))
	return tree, outside
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("%s was written through a symlink: %v", dir, ents)
	}
}

func TestWriteThroughSymlinkStaysInTree(t *testing.T) {
	tree, outside := trapTree(t)
	r, err := Open(tree)
	must(t, err)
	defer r.Close()

	for _, name := range []string{"etc/evil/x", "/etc/evil2/x", "etc/evil/../../../../x", "../../../x"} {
		err := r.WriteFile(name, []byte("pwned"), 0o644, os.Getuid(), os.Getgid())
		if err != nil {
			t.Logf("%s: refused: %v", name, err)
		}
		emptyDir(t, outside)
	}
	// mkdir -p through the dangling in-tree symlink creates nothing
	// outside either.
	_ = r.MkdirAll("etc/evil/sub/dir", 0o755, os.Getuid(), os.Getgid())
	emptyDir(t, outside)

	// Once the symlink's in-tree target exists, writes land there: the
	// symlink means what it means when the tree is "/".
	must(t, r.MkdirAll(outside, 0o755, os.Getuid(), os.Getgid()))
	must(t, r.WriteFile("etc/evil/x", []byte("in"), 0o600, os.Getuid(), os.Getgid()))
	must(t, r.WriteFile("etc/evil2/y", []byte("in"), 0o600, os.Getuid(), os.Getgid()))
	emptyDir(t, outside)
	for _, f := range []string{"x", "y"} {
		b, err := os.ReadFile(filepath.Join(tree, outside, f))
		if err != nil || string(b) != "in" {
			t.Fatalf("%s not inside the tree: %q %v", f, b, err)
		}
	}
	// "../../../x" is TREE/x.
	if _, err := os.Stat(filepath.Join(tree, "x")); err != nil {
		t.Fatalf("../../../x should be TREE/x: %v", err)
	}
}

func TestAbsoluteSymlinkResolvesInTree(t *testing.T) {
	tree, _ := trapTree(t)
	r, err := Open(tree)
	must(t, err)
	defer r.Close()
	must(t, os.WriteFile(tree+"/etc/target", []byte("tree's"), 0o644))
	b, err := r.ReadFile("/etc/abs")
	must(t, err)
	if string(b) != "tree's" {
		t.Fatalf("read %q", b)
	}
}

func TestWriteReplacesFinalSymlink(t *testing.T) {
	tree, outside := trapTree(t)
	r, err := Open(tree)
	must(t, err)
	defer r.Close()
	// The final component is a symlink to the host's outside dir/file:
	// writing replaces the symlink instead of following it.
	must(t, os.Symlink(filepath.Join(outside, "f"), tree+"/etc/link"))
	must(t, r.WriteFile("etc/link", []byte("new"), 0o640, os.Getuid(), os.Getgid()))
	fi, err := os.Lstat(tree + "/etc/link")
	must(t, err)
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 {
		t.Fatalf("etc/link: %v", fi.Mode())
	}
	emptyDir(t, outside)

	// Chmod and Truncate refuse a final symlink.
	if err := r.Chmod("etc/evil", 0o777); err == nil {
		t.Fatal("chmod followed a symlink")
	}
	if err := r.Truncate("etc/abs"); err == nil {
		t.Fatal("truncate followed a symlink")
	}
	// Symlink replaces a file, and stores the target text verbatim.
	must(t, r.Symlink("/nowhere", "etc/link", os.Getuid(), os.Getgid()))
	if tgt, _ := os.Readlink(tree + "/etc/link"); tgt != "/nowhere" {
		t.Fatalf("target %q", tgt)
	}
}

func TestModesAndDirs(t *testing.T) {
	tree := t.TempDir()
	r, err := Open(tree)
	must(t, err)
	defer r.Close()
	must(t, r.MkdirAll("/a/b/c", 0o750, os.Getuid(), os.Getgid()))
	fi, err := os.Stat(tree + "/a/b/c")
	must(t, err)
	if fi.Mode().Perm() != 0o750 {
		t.Fatalf("mode %v (umask must not apply)", fi.Mode())
	}
	must(t, r.WriteFile("/a/b/c/s", nil, 0o4755|fs.ModeSetuid, os.Getuid(), os.Getgid()))
	must(t, r.WriteFile("/a/b/c/s", []byte("x"), 0o755|fs.ModeSetuid, os.Getuid(), os.Getgid()))
	fi, err = os.Stat(tree + "/a/b/c/s")
	must(t, err)
	if fi.Mode()&fs.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if err := r.WriteFile("/a/b", []byte("x"), 0o644, 0, 0); err == nil {
		t.Fatal("wrote over a directory")
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(tree + "/a/b/c")
	if len(ents) != 1 {
		t.Fatalf("leftovers: %v", ents)
	}
}

func TestRemoveAllNeverFollows(t *testing.T) {
	tree, outside := trapTree(t)
	must(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("k"), 0o644))
	must(t, os.MkdirAll(tree+"/var/tmp/d/e", 0o755))
	must(t, os.Symlink(outside, tree+"/var/tmp/d/e/link"))
	must(t, os.Symlink(outside, tree+"/var/tmp/dirlink"))
	r, err := Open(tree)
	must(t, err)
	defer r.Close()
	must(t, r.RemoveContents("/var/tmp"))
	must(t, r.RemoveAll("/etc"))
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatal("removal followed a symlink out of the tree")
	}
	ents, _ := os.ReadDir(tree + "/var/tmp")
	if len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
	if _, err := os.Lstat(tree + "/etc"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("etc still there: %v", err)
	}
	must(t, r.RemoveAll("/does/not/exist"))
	must(t, r.Remove("/does-not-exist"))
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"":             "/",
		"etc/passwd":   "/etc/passwd",
		"/../../etc/x": "/etc/x",
		"a/./b/../c/":  "/a/c",
	} {
		if got := Clean(in); got != want {
			t.Errorf("Clean(%q) = %q, want %q", in, got, want)
		}
	}
}
