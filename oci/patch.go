package oci

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bluekeyes/go-gitdiff/gitdiff"
	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/safepath"
)

// Patches of an app (the app layer's stage): unified diffs kept beside the
// app's lockfile in patches/*.patch, applied in name order to the tree npm
// installed (paths relative to /app, e.g.
// a/node_modules/openclaw/dist/x.mjs), after the install scripts and
// before the layer is made, the way patch-package and `pnpm patch` do it.
// bake applies them strictly: every hunk must match its context exactly
// (no fuzz, no offset guessing), a patch may only change the text of
// regular files that npm installed (no new, deleted, renamed or binary
// files, no mode changes, no symlinks), and a patch that does not apply
// fails the build. The patches' bytes are in the layer's cache key and
// their names and SHA-256 sums in the image's labels.

// PatchDirName is the directory of an app's patches, beside its lockfile.
const PatchDirName = "patches"

// Bounds on what a patch may make bake read.
const (
	maxPatchBytes       = 1 << 20  // one patch file
	maxPatchTargetBytes = 32 << 20 // one patched file
)

// AppPatch is one patch of an app: its file name and content.
type AppPatch struct {
	Name string // e.g. 0001-lease-heartbeat-timeout.patch
	Data []byte
}

// Sum is the patch's SHA-256, hex.
func (p AppPatch) Sum() string {
	s := sha256.Sum256(p.Data)
	return hex.EncodeToString(s[:])
}

// ListPatches returns the host paths of dir's patches (PatchDirName/*.patch
// beside the lockfile), sorted by name; none when there is no such
// directory.
func ListPatches(lockfileDir string) ([]string, error) {
	d := filepath.Join(lockfileDir, PatchDirName)
	es, err := os.ReadDir(d)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		if strings.HasSuffix(e.Name(), ".patch") {
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// readPatches reads the patch files (regular files, bounded).
func readPatches(paths []string) ([]AppPatch, error) {
	var out []AppPatch
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return nil, fmt.Errorf("patch %s: %w", p, err)
		}
		st, err := f.Stat()
		if err == nil && !st.Mode().IsRegular() {
			err = fmt.Errorf("not a regular file")
		}
		var b []byte
		if err == nil {
			b, err = io.ReadAll(io.LimitReader(f, maxPatchBytes+1))
		}
		f.Close()
		if err == nil && len(b) > maxPatchBytes {
			err = fmt.Errorf("larger than %d bytes", maxPatchBytes)
		}
		if err != nil {
			return nil, fmt.Errorf("patch %s: %w", p, err)
		}
		out = append(out, AppPatch{Name: filepath.Base(p), Data: b})
	}
	return out, nil
}

// patchTarget is the path inside the app dir a diff names, refused when
// it is absolute, leaves the dir or differs between the two sides.
func patchTarget(f *gitdiff.File) (string, error) {
	if f.IsNew || f.IsDelete || f.IsRename || f.IsCopy || f.IsBinary || (f.NewMode != 0 && f.NewMode != f.OldMode) {
		return "", fmt.Errorf("%s: a patch may only change the text of an existing file (no new, deleted, renamed, copied or binary files, no mode changes)", f.NewName)
	}
	// gitdiff strips the a/ and b/ of a git diff's names.
	if f.OldName != f.NewName {
		return "", fmt.Errorf("%s: old and new names differ (%s)", f.NewName, f.OldName)
	}
	c := path.Clean(f.NewName)
	if f.NewName == "" || path.IsAbs(f.NewName) || c != f.NewName || c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%q: not a clean relative path inside the app dir (write a/node_modules/PKG/FILE)", f.NewName)
	}
	return c, nil
}

// applyPatches applies patches, in order, to the app tree at dir.
func applyPatches(dir string, patches []AppPatch) error {
	if len(patches) == 0 {
		return nil
	}
	root, err := safepath.Open(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, p := range patches {
		files, _, err := gitdiff.Parse(bytes.NewReader(p.Data))
		if err != nil {
			return fmt.Errorf("patch %s: %w", p.Name, err)
		}
		if len(files) == 0 {
			return fmt.Errorf("patch %s: no file diff in it", p.Name)
		}
		for _, f := range files {
			name, err := patchTarget(f)
			if err != nil {
				return fmt.Errorf("patch %s: %w", p.Name, err)
			}
			if err := applyFile(root, name, f); err != nil {
				return fmt.Errorf("patch %s: %s: %w", p.Name, name, err)
			}
		}
	}
	return nil
}

func applyFile(root *safepath.Root, name string, f *gitdiff.File) error {
	st, err := root.Lstat(name)
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("not a regular file")
	}
	if st.Size > maxPatchTargetBytes {
		return fmt.Errorf("larger than %d bytes", maxPatchTargetBytes)
	}
	src, err := root.Open(name)
	if err != nil {
		return err
	}
	old, err := io.ReadAll(io.LimitReader(src, maxPatchTargetBytes+1))
	src.Close()
	if err != nil {
		return err
	}
	if len(old) > maxPatchTargetBytes {
		return fmt.Errorf("larger than %d bytes", maxPatchTargetBytes)
	}
	var out bytes.Buffer
	if err := gitdiff.Apply(&out, bytes.NewReader(old), f); err != nil {
		return fmt.Errorf("does not apply: %w", err)
	}
	return root.WriteFile(name, out.Bytes(), os.FileMode(st.Mode&0o7777), int(st.Uid), int(st.Gid))
}
