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
	if !filepath.IsLocal(rel) {
		return "", fmt.Errorf("%s %w", rel, ErrEscapes)
	}
	dir := r.Dir
	if dir == "" {
		dir = "."
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	realDir, err := filepath.EvalSymlinks(dir)
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
