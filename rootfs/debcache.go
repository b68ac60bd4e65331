package rootfs

import (
	"context"
	"errors"
	"fmt"
	"github.com/bakeimg/bake/internal/flock"
	"github.com/bakeimg/bake/internal/sweep"
	"os"
	"path/filepath"
	"strings"
)

// The build's .deb cache (BAKE_CACHE_DIR/apt/SUITE) is shared by every
// build on the machine, and builds run at the same time (CI, make test's
// VM tests two at a time). mmdebstrap's sync-in and sync-out hooks copy the
// whole directory with tar: a sync-out writing a .deb that another build's
// sync-out is writing too fails ("Cannot open: File exists"), and a
// sync-in could copy a .deb half written. So a bootstrap copies in from a
// snapshot of hard links (debCacheSnapshot: stable whatever others add)
// and syncs out into a directory of its own, whose new .debs are then renamed
// into the cache one by one (publishDebs: rename is atomic, and a .deb's
// name carries its version, so two builds never publish different bytes
// under one name). InstallPackages, which bind-mounts the cache as the
// tree's apt archive, holds lockDebCache while apt runs (apt refuses a
// second apt on the same archive directory).
//
// The copy in is a plain cp (debCacheCopyInHook), not mmdebstrap's sync-in:
// the snapshot's files are the cache's inodes, and every other build's
// snapshot links to them and unlinks them again, which changes their ctime.
// tar, which sync-in runs, takes a ctime that changes while it reads a file
// for a file that changed ("file changed as we read it", exit 1), and
// mmdebstrap's hook listener dies of it: the bootstrap fails at its next
// special hook (sync-out: "special hook failed with exit code 13", the
// helper's SIGPIPE). Found in make test with a 38 MB .deb in the cache. The
// bytes of a cached .deb never change (publishDebs only adds new names), so
// cp, which does not look at ctime, copies them whole.

// debCacheTempAge: snapshot and sync-out directories whose names record no
// owner (made by an older bake) and older than this were left by a build
// that was killed, and are removed. Those named after their owner
// (sweep.MkdirTemp) go as soon as it is gone.
const debCacheTempAge = sweep.DefaultMaxAge

const (
	debSnapshotPrefix = ".bake-in-"
	debIncomingPrefix = ".bake-out-"
	debCacheLock      = ".bake-lock"
)

// debCacheSnapshot makes cache/.bake-in-PID-XXXX holding a hard link to every
// .deb in cache. The caller removes it.
func debCacheSnapshot(cache string) (string, error) {
	removeStaleDebCacheDirs(cache)
	snap, err := sweep.MkdirTemp(cache, debSnapshotPrefix)
	if err != nil {
		return "", err
	}
	ents, err := os.ReadDir(cache)
	if err != nil {
		os.RemoveAll(snap)
		return "", err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".deb") {
			continue
		}
		err := os.Link(filepath.Join(cache, e.Name()), filepath.Join(snap, e.Name()))
		if err != nil && !errors.Is(err, os.ErrNotExist) { // renamed over meanwhile: skip it
			os.RemoveAll(snap)
			return "", fmt.Errorf("snapshot of the .deb cache: %w", err)
		}
	}
	return snap, nil
}

// debCacheCopyInHook is the setup hook that copies the snapshot snap into
// the tree's apt archive (mmdebstrap runs it with sh -c, the tree as $1).
// snap has no character the shell would split or expand (Bootstrap checks
// the cache path; the rest is sweep.MkdirTemp's digits).
func debCacheCopyInHook(snap string) string {
	return `cp -a --reflink=auto ` + snap + `/. "$1"/var/cache/apt/archives/`
}

// debCacheIncoming makes cache/.bake-out-PID-XXXX for a bootstrap's
// sync-out.
func debCacheIncoming(cache string) (string, error) {
	return sweep.MkdirTemp(cache, debIncomingPrefix)
}

// publishDebs moves the .debs of incoming that cache lacks into cache, each
// by one rename, and removes incoming. It returns how many it added.
func publishDebs(incoming, cache string) (int, error) {
	defer os.RemoveAll(incoming)
	ents, err := os.ReadDir(incoming)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".deb") {
			continue
		}
		dst := filepath.Join(cache, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.Rename(filepath.Join(incoming, e.Name()), dst); err != nil {
			return n, fmt.Errorf("adding %s to the .deb cache: %w", e.Name(), err)
		}
		n++
	}
	return n, nil
}

// removeStaleDebCacheDirs removes snapshot and sync-out directories that
// killed builds left in cache (package sweep's policy).
func removeStaleDebCacheDirs(cache string) {
	for _, prefix := range []string{debSnapshotPrefix, debIncomingPrefix} {
		sweep.Sweep{Dir: cache, Prefix: prefix, MaxAge: debCacheTempAge}.Run()
	}
}

// lockDebCache takes an exclusive lock on cache for InstallPackages,
// waiting for another build's apt to finish; unlock releases it.
func lockDebCache(ctx context.Context, cache string) (unlock func(), err error) {
	unlock, err = flock.Lock(ctx, filepath.Join(cache, debCacheLock))
	if err != nil {
		return nil, fmt.Errorf("locking the .deb cache %s: %w", cache, err)
	}
	return unlock, nil
}
