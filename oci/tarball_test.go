package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testEpoch = 1700000000

// makeTree writes a small tree with the cases a layer must get right:
// nested dirs, an executable, a symlink, a hard link pair whose sort order
// differs from walk order, a name longer than USTAR's 100 bytes.
func makeTree(t *testing.T, dir string, reverse bool) {
	t.Helper()
	long := strings.Repeat("d", 60) + "/" + strings.Repeat("f", 70)
	files := []struct {
		name string
		mode os.FileMode
		data string
	}{
		{"a/b/c.txt", 0o644, "hello\n"},
		{"a/b-c", 0o600, "sorts before a/b/ in full-path order\n"},
		{"bin/tool", 0o755, "#!/bin/sh\necho tool\n"},
		{long, 0o644, "long name\n"},
		{"z/data", 0o640, "linked\n"},
	}
	if reverse {
		for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
			files[i], files[j] = files[j], files[i]
		}
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../bin/tool", filepath.Join(dir, "a/tool-link")); err != nil {
		t.Fatal(err)
	}
	// Walk order visits z/data after a/... but the link lives in "a":
	// the entry that sorts first must carry the data.
	if err := os.Link(filepath.Join(dir, "z/data"), filepath.Join(dir, "a/hardlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o1777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "empty"), 0o777|os.ModeSticky)
	// Different times each run: they must not reach the tar.
	now := time.Now().Add(time.Duration(len(dir)) * time.Hour)
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error {
		os.Chtimes(p, now, now)
		return nil
	})
}

func tarOf(t *testing.T, dir string, o treeOptions) []byte {
	t.Helper()
	es, err := treeEntries(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeTar(&buf, es, testEpoch); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTarDeterministic(t *testing.T) {
	d1, d2 := t.TempDir(), filepath.Join(t.TempDir(), "other-name")
	makeTree(t, d1, false)
	makeTree(t, d2, true)
	for _, o := range []treeOptions{{}, {Normalize: true, Prefix: "app"}} {
		a, b := tarOf(t, d1, o), tarOf(t, d2, o)
		if !bytes.Equal(a, b) {
			t.Fatalf("same tree, different tar bytes (options %+v)", o)
		}
		if again := tarOf(t, d1, o); !bytes.Equal(a, again) {
			t.Fatal("same tree twice, different tar bytes")
		}
	}
}

func TestTarHeaders(t *testing.T) {
	d := t.TempDir()
	makeTree(t, d, false)
	tr := tar.NewReader(bytes.NewReader(tarOf(t, d, treeOptions{Normalize: true})))
	var names []string
	seen := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		seen[strings.TrimSuffix(h.Name, "/")] = h
		if !h.ModTime.Equal(time.Unix(testEpoch, 0)) {
			t.Errorf("%s: mtime %v", h.Name, h.ModTime)
		}
		if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: atime/ctime recorded", h.Name)
		}
		for k := range h.PAXRecords {
			if k != "path" {
				t.Errorf("%s: PAX record %q", h.Name, k)
			}
		}
		if h.Uname != "" || h.Gname != "" || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: owner %d:%d %q:%q", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
	}
	for i := 1; i < len(names); i++ {
		if strings.TrimSuffix(names[i-1], "/") >= strings.TrimSuffix(names[i], "/") {
			t.Errorf("not sorted: %q before %q", names[i-1], names[i])
		}
	}
	if h := seen["z/data"]; h == nil || h.Typeflag != tar.TypeLink || h.Linkname != "a/hardlink" {
		t.Errorf("z/data should be a hard link to a/hardlink (the first in sort order): %+v", h)
	}
	if h := seen["a/hardlink"]; h == nil || h.Typeflag != tar.TypeReg || h.Size != 7 {
		t.Errorf("a/hardlink should carry the data: %+v", h)
	}
	if h := seen["a/tool-link"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "../bin/tool" {
		t.Errorf("symlink: %+v", h)
	}
	if h := seen["bin/tool"]; h == nil || h.Mode != 0o755 {
		t.Errorf("executable normalised to 0755: %+v", h)
	}
	if h := seen["a/b-c"]; h == nil || h.Mode != 0o644 {
		t.Errorf("file normalised to 0644: %+v", h)
	}
	if h := seen["empty"]; h == nil || h.Mode != 0o755 {
		t.Errorf("dir normalised to 0755: %+v", h)
	}
}

func TestTarKeepsModes(t *testing.T) {
	d := t.TempDir()
	makeTree(t, d, false)
	tr := tar.NewReader(bytes.NewReader(tarOf(t, d, treeOptions{})))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		switch h.Name {
		case "empty/":
			if h.Mode != 0o1777 {
				t.Errorf("sticky dir: mode %o", h.Mode)
			}
		case "z/data", "a/hardlink":
			if h.Mode != 0o640 {
				t.Errorf("%s: mode %o", h.Name, h.Mode)
			}
		}
	}
}

func TestWriteTarRejects(t *testing.T) {
	for _, es := range [][]entry{
		{fileEntry("/abs", 0o644, nil)},
		{fileEntry("a/../b", 0o644, nil)},
		{fileEntry("a", 0o644, nil), fileEntry("a", 0o644, nil)},
		{{Name: "l", Type: tar.TypeLink, Linkname: "missing"}},
	} {
		if err := writeTar(io.Discard, es, 0); err == nil {
			t.Errorf("%+v: no error", es)
		}
	}
}

func TestWithParents(t *testing.T) {
	es := withParents([]entry{symlinkEntry("usr/local/bin/x", "/y"), dirEntry("usr", 0o755, 0, 0)}, nil)
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	got := strings.Join(names, " ")
	if got != "usr/local/bin/x usr usr/local/bin usr/local" {
		t.Errorf("got %q", got)
	}
}

// TestWithParentsLower: a layer above the Debian one repeats the home as
// that layer has it (1777, the image user's), not as 0755 root.
func TestWithParentsLower(t *testing.T) {
	b := &builder{user: imageUser{Name: "node", UID: 1000, GID: 1000, Home: "/home/node"}}
	es := withParents([]entry{dirEntry("home/node/.openclaw", 0o1777, 1000, 1000), symlinkEntry("usr/local/bin/x", "/y")}, b.lowerDir)
	got := map[string]entry{}
	for _, e := range es {
		got[e.Name] = e
	}
	for name, want := range map[string][3]int64{
		"home": {0o755, 0, 0}, "home/node": {0o1777, 1000, 1000}, "usr": {0o755, 0, 0}, "usr/local/bin": {0o755, 0, 0},
	} {
		e, ok := got[name]
		if !ok || e.Type != tar.TypeDir || e.Mode != want[0] || int64(e.UID) != want[1] || int64(e.GID) != want[2] {
			t.Errorf("%s: %+v (present %v), want dir %o %d:%d", name, e, ok, want[0], want[1], want[2])
		}
	}
}

func TestLayerFileStable(t *testing.T) {
	d := t.TempDir()
	makeTree(t, filepath.Join(d, "tree"), false)
	es, err := treeEntries(filepath.Join(d, "tree"), treeOptions{Normalize: true})
	if err != nil {
		t.Fatal(err)
	}
	a, err := writeLayerFile(filepath.Join(d, "a.tar.gz"), es, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	b, err := writeLayerFile(filepath.Join(d, "b.tar.gz"), es, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest != b.Digest || a.DiffID != b.DiffID || a.Size != b.Size {
		t.Fatalf("digests differ: %+v %+v", a, b)
	}
	blob, _ := os.ReadFile(a.Path)
	sum := sha256.Sum256(blob)
	if "sha256:"+hex.EncodeToString(sum[:]) != a.Digest || int64(len(blob)) != a.Size {
		t.Errorf("recorded digest/size do not match the file")
	}
	// gzip header: no name, no mtime, OS unknown.
	if blob[3] != 0 || !bytes.Equal(blob[4:8], []byte{0, 0, 0, 0}) || blob[9] != 255 {
		t.Errorf("gzip header % x", blob[:10])
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	sum = sha256.Sum256(raw)
	if "sha256:"+hex.EncodeToString(sum[:]) != a.DiffID || int64(len(raw)) != a.UncompressedSize {
		t.Errorf("diff ID does not match the uncompressed tar")
	}
	// A different epoch is a different layer.
	c, err := writeLayerFile(filepath.Join(d, "c.tar.gz"), es, testEpoch+1)
	if err != nil {
		t.Fatal(err)
	}
	if c.DiffID == a.DiffID {
		t.Error("epoch does not reach the tar")
	}
}

func TestLayerCache(t *testing.T) {
	c := layerCache{dir: t.TempDir()}
	key := cacheKey("x", map[string]string{"a": "b"})
	if key != cacheKey("x", map[string]string{"a": "b"}) || key == cacheKey("x", map[string]string{"a": "c"}) {
		t.Fatal("cache key is not a function of the inputs")
	}
	if _, ok := c.get(key, nil); ok {
		t.Fatal("hit in an empty cache")
	}
	type info struct{ N int }
	lf, err := c.put(key, []entry{fileEntry("f", 0o644, []byte("x"))}, testEpoch, info{N: 7})
	if err != nil {
		t.Fatal(err)
	}
	var got info
	hit, ok := c.get(key, &got)
	if !ok || hit != lf || got.N != 7 {
		t.Fatalf("get = %+v %v %+v, want %+v", hit, ok, got, lf)
	}
	// A damaged blob is a miss, not a layer that lies about its digest.
	os.WriteFile(lf.Path, []byte("garbage"), 0o644)
	if _, ok := c.get(key, nil); ok {
		t.Fatal("damaged cache entry used")
	}
}

func TestDebianSkip(t *testing.T) {
	d := t.TempDir()
	for _, f := range []string{
		"etc/resolv.conf", "etc/hostname", "etc/passwd", "etc/apt/sources.list",
		"var/lib/dpkg/status", "var/lib/dpkg/status-old", "var/cache/debconf/config.dat",
		"var/cache/debconf/config.dat-old", "var/cache/apt/archives/x.deb", "var/lib/apt/lists/x_Packages",
		"var/cache/ldconfig/aux-cache", "proc/1", "tmp/junk", "run/lock/x", "dev/null", "usr/bin/env",
		"var/log/apt/history.log", "var/log/lastlog",
	} {
		p := filepath.Join(d, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(d, "tmp"), 0o777|os.ModeSticky)
	es, err := treeEntries(d, treeOptions{Skip: debianSkip, KeepDir: debianKeepDir})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]entry{}
	for _, e := range es {
		have[e.Name] = e
	}
	for _, want := range []string{"etc/passwd", "var/lib/dpkg/status", "var/cache/debconf/config.dat",
		"usr/bin/env", "proc", "tmp", "dev", "run", "var/cache/apt", "var/lib/apt/lists", "var/log/lastlog"} {
		if _, ok := have[want]; !ok {
			t.Errorf("%s missing", want)
		}
	}
	for _, not := range []string{"etc/resolv.conf", "etc/hostname", "etc/apt/sources.list", "var/lib/dpkg/status-old",
		"var/cache/debconf/config.dat-old", "var/cache/apt/archives", "var/lib/apt/lists/x_Packages",
		"var/cache/ldconfig/aux-cache", "proc/1", "tmp/junk", "run/lock", "dev/null", "var/log/apt/history.log"} {
		if _, ok := have[not]; ok {
			t.Errorf("%s should be left out", not)
		}
	}
	if e := have["tmp"]; e.Mode != 0o1777 {
		t.Errorf("/tmp mode %o", e.Mode)
	}
}

func TestAddImageUser(t *testing.T) {
	d := t.TempDir()
	os.MkdirAll(filepath.Join(d, "etc"), 0o755)
	os.WriteFile(filepath.Join(d, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\n"), 0o644)
	os.WriteFile(filepath.Join(d, "etc/group"), []byte("root:x:0:"), 0o644)
	u := imageUser{Name: "node", UID: os.Getuid(), GID: os.Getgid(), Home: "/home/node"}
	if u.UID == 0 {
		u.UID, u.GID = 1000, 1000 // root may chown
	}
	for range 2 { // idempotent
		if err := addImageUser(d, u); err != nil {
			t.Fatal(err)
		}
	}
	pw, _ := os.ReadFile(filepath.Join(d, "etc/passwd"))
	gr, _ := os.ReadFile(filepath.Join(d, "etc/group"))
	if strings.Count(string(pw), "node:x:") != 1 || !strings.Contains(string(pw), ":/home/node:/bin/sh\n") {
		t.Errorf("passwd:\n%s", pw)
	}
	if string(gr) != "root:x:0:\nnode:x:"+itoa(u.GID)+":\n" {
		t.Errorf("group:\n%s", gr)
	}
	st, err := os.Stat(filepath.Join(d, "home/node"))
	if err != nil || st.Mode().Perm() != 0o777 || st.Mode()&os.ModeSticky == 0 {
		t.Errorf("home: %v %v", st.Mode(), err)
	}
}
