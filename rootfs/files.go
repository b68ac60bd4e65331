package rootfs

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/internal/safepath"
)

// rootUID and rootGID own the files bake itself writes into the tree
// (configuration, sudoers, keyrings). Unit tests that run without root set
// them to their own ids; nothing else changes them.
var rootUID, rootGID = 0, 0

// ParseMode parses an octal mode string ("0644", "4755", "0o750") into a Go
// file mode, setuid, setgid and sticky bits included.
func ParseMode(s string) (fs.FileMode, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O"), 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fmt.Errorf("mode %q: want an octal mode such as 0644", s)
	}
	return safepath.FileMode(uint32(v)), nil
}

// WriteFile writes one file into the tree at name (a path in the image)
// with mode and owner, creating missing parents (0755, owned like the directory they are made in). The path
// resolves inside the tree: a symlink on the way is followed as the image
// would follow it, never out of the tree, and a symlink at name itself is
// replaced.
func WriteFile(tree, name string, content []byte, mode fs.FileMode, uid, gid int) error {
	root, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	return root.WriteFile(name, content, mode, uid, gid)
}

// OverlayOptions describe one overlay directory copied into the tree.
type OverlayOptions struct {
	Source string // host directory
	Target string // directory in the image; default "/"
	// UID and GID own what the overlay creates (resolve names with
	// LookupOwner against the tree).
	UID, GID int
	// Modes maps a path below Target (a path.Match glob, e.g. "etc/ssh/*"
	// or "usr/local/bin/tool") to the mode it gets instead of the
	// source's. The last matching pattern in sorted order wins.
	Modes map[string]fs.FileMode
	// Skip, when set, leaves out a source entry (a host path under
	// Source) and, for a folder, everything below it: the recipe's
	// Sources.Skip (.git and what the context's .bakeignore names).
	Skip func(hostPath string, isDir bool) bool
}

// CopyOverlay copies the host directory o.Source into the tree at o.Target:
// regular files, directories and symlinks (copied as symlinks, their targets
// never followed on the host or in the tree). Modes come from the source
// unless o.Modes overrides them; what the overlay creates is owned by
// o.UID:o.GID. Directories that already exist in the tree keep their mode
// and owner unless a Modes pattern names them: a git checkout does not
// record directory modes, and an overlay's etc/ must not turn the image's
// /etc group-writable. Existing files and symlinks are replaced. Device
// nodes, fifos and sockets in the source are errors.
//
// Every write resolves inside the tree (package safepath): a symlink in the
// tree, such as etc/evil -> /tmp/outside, leads to TREE/tmp/outside, never
// to the build host's /tmp. Entries o.Skip refuses are never opened.
func CopyOverlay(tree string, o OverlayOptions) error {
	target := safepath.Clean(o.Target)
	patterns := make([]string, 0, len(o.Modes))
	for p := range o.Modes {
		if _, err := path.Match(strings.TrimPrefix(p, "/"), ""); err != nil {
			return fmt.Errorf("overlay %s: mode pattern %q: %w", o.Source, p, err)
		}
		patterns = append(patterns, p)
	}
	sort.Strings(patterns)
	modeFor := func(rel string, def fs.FileMode) (fs.FileMode, bool) {
		m, ok := def, false
		for _, p := range patterns {
			if matched, _ := path.Match(strings.TrimPrefix(p, "/"), rel); matched {
				m, ok = o.Modes[p], true
			}
		}
		return m, ok
	}

	root, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	src, err := filepath.Abs(o.Source)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(src); err != nil || !fi.IsDir() {
		return fmt.Errorf("overlay source %s is not a directory", src)
	}
	// Parents of the target are the image's: create missing ones root-owned.
	if err := root.MkdirAll(path.Dir(target), 0o755, rootUID, rootGID); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel != "." && o.Skip != nil && o.Skip(p, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := target
		if rel != "." {
			dst = path.Join(target, rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode, override := modeFor(rel, info.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
		switch {
		case d.IsDir():
			// A symlink to a directory in the tree (/lib -> usr/lib on
			// a merged-/usr image) is used as the directory it is.
			if !root.IsDir(dst) {
				if err := root.Mkdir(dst, mode, o.UID, o.GID); err != nil {
					return fmt.Errorf("overlay %s: %w", p, err)
				}
			} else if override {
				if err := root.Chmod(dst, mode); err != nil {
					return fmt.Errorf("overlay %s: %w", p, err)
				}
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := root.Symlink(link, dst, o.UID, o.GID); err != nil {
				return fmt.Errorf("overlay %s: %w", p, err)
			}
		case d.Type().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			err = root.WriteFrom(dst, f, mode, o.UID, o.GID)
			f.Close()
			if err != nil {
				return fmt.Errorf("overlay %s: %w", p, err)
			}
		default:
			return fmt.Errorf("overlay %s: unsupported file type %v", p, d.Type())
		}
		return nil
	})
}
