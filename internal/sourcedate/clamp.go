package sourcedate

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/mounts"
	"golang.org/x/sys/unix"
)

// ClampTimes sets every access or modification time of the tree that is
// later than epoch (SOURCE_DATE_EPOCH) to epoch, symlinks included (their
// own times, never their targets'), so that a filesystem made from the tree
// does not depend on when it was built. Earlier times stay, each on its own:
// they come from the packages and are already reproducible. Change times
// cannot be set; mkfs.ext4 -d gets E2FSPROGS_FAKE_TIME for those. The tree
// must have no mounts, so the walk never reaches /proc or a bind.
func ClampTimes(tree string, epoch time.Time) error {
	if m, err := mounts.Below(tree); err != nil {
		return err
	} else if len(m) > 0 {
		return fmt.Errorf("clamp times: %w %s: %s", mounts.ErrMounted, tree, strings.Join(m, ", "))
	}
	ts := unix.NsecToTimespec(epoch.UnixNano())
	omit := unix.Timespec{Nsec: unix.UTIME_OMIT}
	return filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		// Each time on its own: a package's file that was merely read
		// during the build (atime now) keeps its package mtime. Python
		// compares a .pyc's recorded source mtime with the .py's, so
		// moving the mtime of every file read at build time made every
		// byte-compiled module stale, and the first boot recompiled
		// them all (cloud-init's four stages included).
		times := []unix.Timespec{omit, omit}
		if st.Atim.Nano() > epoch.UnixNano() {
			times[0] = ts
		}
		if st.Mtim.Nano() > epoch.UnixNano() {
			times[1] = ts
		}
		if times[0] == omit && times[1] == omit {
			return nil
		}
		// WalkDir does not follow symlinks, so every directory on the
		// way to p is a real directory of the tree.
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &fs.PathError{Op: "lutimes", Path: p, Err: err}
		}
		return nil
	})
}
