package sourcedate

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func write(t *testing.T, root, name, content string, mode fs.FileMode) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func TestClampTimes(t *testing.T) {
	tree := t.TempDir()
	write(t, tree, "etc/new", "x", 0o644)
	write(t, tree, "etc/old", "x", 0o644)
	os.Symlink("/nonexistent", filepath.Join(tree, "etc/link"))
	epoch := time.Unix(1700000000, 0)
	old := time.Unix(1600000000, 0)
	os.Chtimes(filepath.Join(tree, "etc/old"), old, old)
	// A package's file read during the build: old mtime, recent atime. Its
	// mtime must stay (a .pyc records its source's mtime).
	write(t, tree, "usr/lib/python3/mod.py", "x", 0o644)
	os.Chtimes(filepath.Join(tree, "usr/lib/python3/mod.py"), time.Unix(1800000000, 0), old)
	if err := ClampTimes(tree, epoch); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]time.Time{"etc/new": epoch, "etc/old": old, "etc/link": epoch, "etc": epoch, ".": epoch, "usr/lib/python3/mod.py": old} {
		fi, err := os.Lstat(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %v, want %v", name, fi.ModTime(), want)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(tree, "usr/lib/python3/mod.py"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Atim.Sec != epoch.Unix() {
		t.Errorf("mod.py: atime %d, want the epoch %d", st.Atim.Sec, epoch.Unix())
	}
}
