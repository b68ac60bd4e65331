package recipe

import (
	"errors"
	"fmt"
	"path/filepath"
)

// ErrEscapes is returned (wrapped) by Resolve for a path that leaves the
// recipe folder, by `..` or through a symlink.
var ErrEscapes = errors.New("leaves the recipe folder")

// Resolve returns the real path of rel, a path written in the recipe
// relative to its folder (Dir). It refuses absolute paths and paths that
// leave the folder, lexically or through symlinks: a recipe must carry
// everything it puts into an image, so that its digest and its folder
// describe the build, and a recipe from elsewhere cannot read, say,
// ~/.ssh into an image. A path that does not exist comes back with an error
// wrapping fs.ErrNotExist.
func (r *Recipe) Resolve(rel string) (string, error) {
	if rel == "" {
		return "", errors.New("empty path")
	}
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%s is absolute; write it relative to the recipe folder", rel)
	}
	dir := r.Dir
	if dir == "" {
		dir = "."
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	root, err := r.contextDir(dir)
	if err != nil {
		return "", err
	}
	if !within(root, filepath.Join(dir, rel)) {
		return "", fmt.Errorf("%s %w", rel, ErrEscapes)
	}
	realDir, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", fmt.Errorf("recipe folder: %w", err)
	}
	real, err := filepath.EvalSymlinks(filepath.Join(dir, rel))
	if err != nil {
		return "", err
	}
	if !within(realDir, real) {
		return "", fmt.Errorf("%s %w (through a symlink, to %s)", rel, ErrEscapes, real)
	}
	return real, nil
}

func within(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && (rel == "." || filepath.IsLocal(rel))
}

// contextDir is the folder relative paths may not leave: the recipe's
// folder, or the ancestor of it that `context:` names.
func (r *Recipe) contextDir(dir string) (string, error) {
	if r.Context == "" || r.Context == "." {
		return dir, nil
	}
	if filepath.IsAbs(r.Context) {
		return "", fmt.Errorf("context %s is absolute; write it relative to the recipe folder, e.g. \"..\"", r.Context)
	}
	root := filepath.Join(dir, r.Context)
	if !within(root, dir) {
		return "", fmt.Errorf("context %s must contain the recipe folder (an ancestor such as \"..\")", r.Context)
	}
	return root, nil
}
