package mounts

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const mountinfoFixture = `22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k,mode=755
27 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
101 27 0:50 / /work/my\040builds/tree/proc rw,nosuid,nodev,noexec - proc proc rw
102 27 0:51 / /work/my\040builds/tree/dev rw,nosuid master:3 - tmpfs tmpfs rw,mode=755
103 102 0:52 / /work/my\040builds/tree/dev/pts rw - devpts devpts rw,gid=5,mode=620,ptmxmode=666
104 27 0:53 / /work/my\040builds/tree2 rw - tmpfs weird\134name rw
105 27 0:54 / /work/tab\011and\012nl rw - tmpfs tmpfs rw
106 27 0:55 / /work/my\040builds/treex rw - tmpfs tmpfs rw
`

func TestParse(t *testing.T) {
	ms, err := Parse(strings.NewReader(mountinfoFixture))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 9 {
		t.Fatalf("%d mounts", len(ms))
	}
	if ms[3].MountPoint != "/work/my builds/tree/proc" || ms[3].FSType != "proc" || ms[3].ID != 101 || ms[3].Parent != 27 {
		t.Errorf("%+v", ms[3])
	}
	// optional fields (shared:1, master:3) before the separator
	if ms[2].FSType != "ext4" || ms[2].Source != "/dev/vda" {
		t.Errorf("%+v", ms[2])
	}
	if ms[6].Source != `weird\name` {
		t.Errorf("source %q", ms[6].Source)
	}
	if ms[7].MountPoint != "/work/tab\tand\nnl" {
		t.Errorf("mount point %q", ms[7].MountPoint)
	}
	got := under(ms, "/work/my builds/tree")
	want := []string{"/work/my builds/tree/proc", "/work/my builds/tree/dev", "/work/my builds/tree/dev/pts"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("under tree: %q", got)
	}
	if got := under(ms, "/work/my builds/tree2"); len(got) != 1 {
		t.Errorf("tree2 itself is a mount point: %q", got)
	}
	if _, err := Parse(strings.NewReader("garbage line\n")); err == nil {
		t.Error("malformed line accepted")
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/a\\b`:     `/a\\b`,
		`/end\04`:   `/end\04`,
		`/x\134y`:   `/x\y`,
		`/p\0401\1`: "/p 1\\1",
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
	}
}

func TestRemoveAllSafeRefusesMounts(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "my builds", "tree")
	if err := os.MkdirAll(filepath.Join(tree, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(dir, "mountinfo")
	esc := strings.ReplaceAll(tree, " ", `\040`)
	os.WriteFile(fixture, []byte("27 1 253:0 / / rw - ext4 /dev/vda rw\n101 27 0:50 / "+esc+"/dev rw - tmpfs tmpfs rw\n"), 0o644)
	old := mountinfoPath
	mountinfoPath = fixture
	defer func() { mountinfoPath = old }()

	err := RemoveAllSafe(filepath.Join(dir, "my builds"))
	if !errors.Is(err, ErrMounted) {
		t.Fatalf("got %v, want ErrMounted", err)
	}
	if _, err := os.Stat(filepath.Join(tree, "dev")); err != nil {
		t.Fatal("removed despite a mount")
	}
	os.WriteFile(fixture, []byte("27 1 253:0 / / rw - ext4 /dev/vda rw\n"), 0o644)
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), nil, 0o644)
	os.Symlink(outside, filepath.Join(tree, "link"))
	if err := RemoveAllSafe(filepath.Join(dir, "my builds")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "my builds")); !os.IsNotExist(err) {
		t.Fatal("not removed")
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatal("followed a symlink")
	}
	if err := RemoveAllSafe(filepath.Join(dir, "missing")); err != nil {
		t.Fatal(err)
	}
}
