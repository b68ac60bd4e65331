package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/sweep"
)

func TestDebCacheSnapshotAndPublish(t *testing.T) {
	cache := t.TempDir()
	os.WriteFile(filepath.Join(cache, "a_1_amd64.deb"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(cache, "lock"), nil, 0o640)
	os.Mkdir(filepath.Join(cache, "partial"), 0o700)
	snap, err := debCacheSnapshot(cache)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(snap)
	if len(ents) != 1 || ents[0].Name() != "a_1_amd64.deb" {
		t.Fatalf("snapshot holds %v, want the one .deb", ents)
	}
	// A build that publishes after the snapshot does not change it.
	os.WriteFile(filepath.Join(cache, "c_1_all.deb"), []byte("c"), 0o644)
	if ents, _ := os.ReadDir(snap); len(ents) != 1 {
		t.Errorf("snapshot changed: %v", ents)
	}

	in, err := debCacheIncoming(cache)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(in, "a_1_amd64.deb"), []byte("other copy"), 0o644)
	os.WriteFile(filepath.Join(in, "b_2_amd64.deb"), []byte("b"), 0o644)
	os.Mkdir(filepath.Join(in, "partial"), 0o700)
	n, err := publishDebs(in, cache)
	if err != nil || n != 1 {
		t.Fatalf("publishDebs = %d, %v; want 1 new", n, err)
	}
	if b, _ := os.ReadFile(filepath.Join(cache, "a_1_amd64.deb")); string(b) != "a" {
		t.Errorf("a cached .deb was replaced: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(cache, "b_2_amd64.deb")); string(b) != "b" {
		t.Errorf("the new .deb is not in the cache: %q", b)
	}
	if _, err := os.Stat(in); !os.IsNotExist(err) {
		t.Errorf("the sync-out dir is left: %v", err)
	}
}

func TestDebCacheStaleDirsRemoved(t *testing.T) {
	cache := t.TempDir()
	old := filepath.Join(cache, debIncomingPrefix+"killed")
	fresh := filepath.Join(cache, debSnapshotPrefix+"running")
	// Named after their owner: gone with it, at once; kept while it runs.
	deadOwner := filepath.Join(cache, fmt.Sprintf("%s%d-x", debIncomingPrefix, 1<<30)) // above any pid_max
	ours := filepath.Join(cache, fmt.Sprintf("%s%d-y", debSnapshotPrefix, sweep.OwnerPID()))
	for _, d := range []string{old, fresh, deadOwner, ours} {
		os.Mkdir(d, 0o755)
	}
	past := time.Now().Add(-2 * debCacheTempAge)
	os.Chtimes(old, past, past)
	snap, err := debCacheSnapshot(cache)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(snap)
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Error("a killed build's sync-out dir was kept")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("a running build's snapshot was removed")
	}
	if _, err := os.Stat(deadOwner); !os.IsNotExist(err) {
		t.Error("the sync-out dir of a build that is gone was kept")
	}
	if _, err := os.Stat(ours); err != nil {
		t.Error("this process's own snapshot was removed")
	}
}

func TestLockDebCacheWaits(t *testing.T) {
	cache := t.TempDir()
	unlock, err := lockDebCache(context.Background(), cache)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	if _, err := lockDebCache(ctx, cache); err == nil {
		t.Fatal("a second lock was granted while the first was held")
	}
	unlock()
	u2, err := lockDebCache(context.Background(), cache)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	u2()
}

// The copy into a tree must not care that other builds link the cache's
// .debs into their snapshots and unlink them while it reads (which changes
// their ctime: tar, in mmdebstrap's sync-in, took that for a changed file
// and failed the bootstrap).
func TestDebCacheCopyInWhileOthersLink(t *testing.T) {
	cache := t.TempDir()
	big := make([]byte, 24<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>13)
	}
	files := map[string][]byte{"big_1_amd64.deb": big, "a_1_all.deb": []byte("a")}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(cache, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := debCacheSnapshot(cache)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(snap)

	// Other builds: a snapshot's link to each .deb, made and removed again.
	others := t.TempDir()
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		defer func() { done <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for name := range files {
				l := filepath.Join(others, name)
				if os.Link(filepath.Join(cache, name), l) == nil {
					n++
				}
				os.Remove(l)
			}
		}
	}()
	for i := 0; i < 5; i++ {
		tree := t.TempDir()
		if err := os.MkdirAll(filepath.Join(tree, "var/cache/apt/archives"), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("sh", "-c", debCacheCopyInHook(snap), "exec", tree).CombinedOutput()
		if err != nil {
			close(stop)
			<-done
			t.Fatalf("copy-in hook: %v\n%s", err, out)
		}
		for name, want := range files {
			got, err := os.ReadFile(filepath.Join(tree, "var/cache/apt/archives", name))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("copy %d: %s: %d bytes, %v; want %d bytes equal", i, name, len(got), err, len(want))
			}
		}
	}
	close(stop)
	if n := <-done; n == 0 {
		t.Fatal("no link was made beside the copies: the test proved nothing")
	} else {
		t.Logf("%d links made and removed beside 5 copies", n)
	}
}
