package rootfs

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/sweep"
)

func TestInReleaseURL(t *testing.T) {
	for src, want := range map[string]string{
		"deb http://deb.debian.org/debian bookworm main":                                                          "http://deb.debian.org/debian/dists/bookworm/InRelease",
		"deb [signed-by=/usr/share/keyrings/k.gpg] http://deb.debian.org/debian-security/ bookworm-security main": "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease",
		"deb [arch=amd64 signed-by=/k] https://m.example/debian bookworm-updates main contrib":                    "https://m.example/debian/dists/bookworm-updates/InRelease",
		"deb file:///srv/repo ./": "file:///srv/repo/./InRelease",
	} {
		got, err := inReleaseURL(src)
		if err != nil || got != want {
			t.Errorf("inReleaseURL(%q) = %q, %v; want %q", src, got, err, want)
		}
	}
	for _, bad := range []string{"deb", "deb http://x", "deb copy:///srv/repo bookworm main", "deb [signed-by=/k http://x bookworm main"} {
		if got, err := inReleaseURL(bad); err == nil {
			t.Errorf("inReleaseURL(%q) = %q, want an error", bad, got)
		}
	}
}

func TestProxyMap(t *testing.T) {
	m := proxyMap([]string{"Acquire::http::Proxy=http://proxy:3142", "Acquire::https::Proxy=DIRECT"})
	if m["http"] != "http://proxy:3142" || len(m) != 1 {
		t.Errorf("proxyMap = %v", m)
	}
}

func TestFetchDigestBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/small":
			fmt.Fprint(w, "hello")
		case "/big":
			w.Write(make([]byte, 4096))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	sum, err := fetchDigest(ctx, srv.URL+"/small", nil, 1024)
	if err != nil || sum != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Errorf("small: %s, %v", sum, err)
	}
	if _, err := fetchDigest(ctx, srv.URL+"/big", nil, 1024); err == nil {
		t.Error("a body over the limit was accepted")
	}
	if _, err := fetchDigest(ctx, srv.URL+"/missing", nil, 1024); err == nil {
		t.Error("a 404 was accepted")
	}
	f := filepath.Join(t.TempDir(), "InRelease")
	os.WriteFile(f, []byte("hello"), 0o644)
	if sum2, err := fetchDigest(ctx, "file://"+f, nil, 1024); err != nil || sum2 != sum {
		t.Errorf("file: %s, %v", sum2, err)
	}
}

// fakeArchive serves InRelease files whose bytes the test changes, and a
// runner that answers mmdebstrap --version and really runs cp.
type fakeArchive struct {
	srv     *httptest.Server
	release atomic.Value // string
	gets    atomic.Int32
}

func newFakeArchive(t *testing.T) *fakeArchive {
	a := &fakeArchive{}
	a.release.Store("Date: 1\n")
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.gets.Add(1)
		if !strings.HasPrefix(r.URL.Path, "/debian/") || !strings.HasSuffix(r.URL.Path, "/InRelease") {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, a.release.Load().(string))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

type cpRunner struct{ execx.Recorder }

func (r *cpRunner) Run(ctx context.Context, c execx.Cmd) error {
	if c.Name == "cp" {
		return execx.Host{}.Run(ctx, c)
	}
	return r.Recorder.Run(ctx, c)
}

func (r *cpRunner) Output(ctx context.Context, c execx.Cmd) ([]byte, error) {
	if c.Name == "mmdebstrap" {
		return []byte("mmdebstrap 1.3.5\n"), nil
	}
	return nil, fmt.Errorf("unexpected %s", c.Name)
}

func TestTreeCacheKeyFollowsInputsAndArchive(t *testing.T) {
	a := newFakeArchive(t)
	cache := t.TempDir()
	r := &cpRunner{}
	o := BootstrapOptions{Suite: "bookworm", Variant: "minbase", Components: []string{"main"},
		Packages: []string{"sudo", "curl", "sudo"}, TreeCache: cache, Runner: r}
	src := []string{"deb " + a.srv.URL + "/debian bookworm main", "deb " + a.srv.URL + "/debian bookworm-updates main"}
	ctx := context.Background()
	key := func(o BootstrapOptions, src []string) string {
		t.Helper()
		c, err := openTreeCache(ctx, o, src)
		if err != nil {
			t.Fatal(err)
		}
		c.unlock()
		return c.key
	}
	k1 := key(o, src)
	if got := a.gets.Load(); got != 2 {
		t.Errorf("fetched %d InRelease files, want 2", got)
	}
	// The package list is a set.
	o2 := o
	o2.Packages = []string{"curl", "sudo"}
	if key(o2, src) != k1 {
		t.Error("the same package set in another order changed the key")
	}
	o2.Packages = []string{"curl", "sudo", "vim"}
	if key(o2, src) == k1 {
		t.Error("another package did not change the key")
	}
	o2 = o
	o2.Mirror = "http://mirror.example/debian"
	if key(o2, src) == k1 {
		t.Error("the image's mirror did not change the key")
	}
	if key(o, src[:1]) == k1 {
		t.Error("dropping a source did not change the key")
	}
	a.release.Store("Date: 2\n")
	if key(o, src) == k1 {
		t.Error("a new InRelease (the archive changed) did not change the key")
	}
	a.release.Store("Date: 1\n")
	if key(o, src) != k1 {
		t.Error("the key is not stable")
	}
	// An archive whose state cannot be read: no cache.
	if _, err := openTreeCache(ctx, o, []string{"deb " + a.srv.URL + "/nothing/here bookworm main/"}); err == nil {
		t.Error("a source without InRelease still gave a key")
	}
}

func writeTree(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("localhost\n"), 0o644)
	os.Symlink("/etc/hostname", filepath.Join(dir, "etc/link"))
	os.Link(filepath.Join(dir, "etc/hostname"), filepath.Join(dir, "etc/hard"))
}

func TestTreeCacheStoreRestoreEvict(t *testing.T) {
	a := newFakeArchive(t)
	cache := t.TempDir()
	ctx := context.Background()
	r := &cpRunner{}
	var keys []string
	for i := 0; i < treeCacheKeep+2; i++ {
		o := BootstrapOptions{Suite: "bookworm", Packages: []string{fmt.Sprint("p", i)}, TreeCache: cache, Runner: r}
		c, err := openTreeCache(ctx, o, []string{"deb " + a.srv.URL + "/debian bookworm main"})
		if err != nil {
			t.Fatal(err)
		}
		if c.hit() {
			t.Fatal("hit in an empty cache")
		}
		tree := filepath.Join(t.TempDir(), "tree")
		os.Mkdir(tree, 0o755)
		writeTree(t, tree)
		if err := c.store(ctx, r, tree); err != nil {
			t.Fatal(err)
		}
		if !c.hit() {
			t.Fatal("no hit after store")
		}
		out := filepath.Join(t.TempDir(), "out")
		os.Mkdir(out, 0o755)
		if err := c.restore(ctx, r, out); err != nil {
			t.Fatal(err)
		}
		if l, _ := os.Readlink(filepath.Join(out, "etc/link")); l != "/etc/hostname" {
			t.Errorf("symlink not kept: %q", l)
		}
		st1, _ := os.Stat(filepath.Join(out, "etc/hostname"))
		st2, _ := os.Stat(filepath.Join(out, "etc/hard"))
		if !os.SameFile(st1, st2) {
			t.Error("hard link not kept")
		}
		c.unlock()
		keys = append(keys, c.key)
		// Distinct use times for the LRU order.
		old := time.Now().Add(time.Duration(i-100) * time.Minute)
		os.Chtimes(filepath.Join(cache, c.key, treeCacheInputsFile), old, old)
	}
	var left []string
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if e.IsDir() {
			left = append(left, e.Name())
		}
	}
	if len(left) != treeCacheKeep {
		t.Errorf("%d trees kept, want %d: %v", len(left), treeCacheKeep, left)
	}
	for _, k := range keys[:2] {
		if _, err := os.Stat(filepath.Join(cache, k)); err == nil {
			t.Errorf("the least recently used tree %s was kept", k[:8])
		}
	}
}

func TestTreeCacheStaleStagesRemoved(t *testing.T) {
	cache := t.TempDir()
	dead := filepath.Join(cache, treeCacheStage+"999999999-x")
	mine := filepath.Join(cache, sweep.Pattern(treeCacheStage)+"y")
	for _, d := range []string{dead, mine} {
		os.MkdirAll(filepath.Join(d, "tree/etc"), 0o755)
	}
	removeStaleStages(cache)
	if _, err := os.Stat(dead); err == nil {
		t.Error("the stage of a process that is gone was kept")
	}
	if _, err := os.Stat(mine); err != nil {
		t.Error("the stage of a live process was removed")
	}
}

func TestTreeCacheWaitsForTheSameKey(t *testing.T) {
	a := newFakeArchive(t)
	cache := t.TempDir()
	ctx := context.Background()
	o := BootstrapOptions{Suite: "bookworm", TreeCache: cache, Runner: &cpRunner{}}
	src := []string{"deb " + a.srv.URL + "/debian bookworm main"}
	c1, err := openTreeCache(ctx, o, src)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	defer cancel()
	if _, err := openTreeCache(short, o, src); err == nil {
		t.Fatal("a second build got the lock of a key being made")
	}
	c1.unlock()
	c2, err := openTreeCache(ctx, o, src)
	if err != nil {
		t.Fatal(err)
	}
	c2.unlock()
}
