package recipe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	// .git and what .bakeignore names are never read: checked on the
	// path as written and on where it leads.
	rules, err := parseIgnore(filepath.Join(realDir, IgnoreFile))
	if err != nil {
		return "", err
	}
	isDir := false
	if fi, err := os.Stat(real); err == nil {
		isDir = fi.IsDir()
	}
	lexRel, _ := filepath.Rel(root, filepath.Join(dir, rel))
	why := rules.excluded(filepath.ToSlash(lexRel), isDir)
	if realRel, _ := filepath.Rel(realDir, real); why == "" {
		why = rules.excluded(filepath.ToSlash(realRel), isDir)
	}
	switch {
	case why == ".git":
		return "", fmt.Errorf("%s is inside .git, which %w", rel, ErrIgnored)
	case why != "":
		return "", fmt.Errorf("%s is excluded by %s, and so %w", rel, why, ErrIgnored)
	}
	return real, nil
}

func within(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && (rel == "." || filepath.IsLocal(rel))
}

// contextDir is the folder relative paths may not leave: the recipe's
// folder, or the ancestor of it that `context:` names. The context, resolved
// through symlinks, must lie inside the recipe's folder or inside the
// working directory (the folder the person running bake chose: a recipe
// from a pull request cannot name the build host's / or /root), and is
// never / or a home directory. A context that does not exist is left to
// the callers (validation says it is not a folder; Resolve fails).
func (r *Recipe) contextDir(dir string) (string, error) {
	if r.Context == "" || r.Context == "." {
		real, err := filepath.EvalSymlinks(dir)
		if err == nil && real == "/" {
			return "", &contextError{"the recipe folder is /: every file of the build host would be in reach",
				"move the recipe and the files it names into a folder of their own"}
		}
		if err == nil && r.bound != "" && !within(r.bound, real) {
			return "", &contextError{fmt.Sprintf("the recipe folder %s is outside --context %s", real, r.bound),
				"pass --context a folder that holds the recipe and the files it names, or leave --context out"}
		}
		return dir, nil
	}
	if c, bad := badChar(r.Context); bad {
		return "", &contextError{fmt.Sprintf("context %q contains the character %U", r.Context, c),
			"write a relative folder such as \"..\", without control characters"}
	}
	if filepath.IsAbs(r.Context) {
		return "", &contextError{fmt.Sprintf("context %s is absolute; write it relative to the recipe folder, e.g. \"..\"", r.Context),
			"write context: .. when the recipe sits in a subfolder (recipes/) of the folder holding its overlays"}
	}
	root := filepath.Join(dir, r.Context)
	if !within(root, dir) {
		return "", &contextError{fmt.Sprintf("context %s must contain the recipe folder (an ancestor such as \"..\")", r.Context),
			"write context: .. when the recipe sits in a subfolder (recipes/) of the folder holding its overlays"}
	}
	return root, r.confine(dir, root)
}

// contextError is a refused context, with what to write instead.
type contextError struct{ msg, hint string }

func (e *contextError) Error() string { return e.msg }

// confine checks the context root (see contextDir).
func (r *Recipe) confine(dir, root string) error {
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil
	}
	const keep = "keep the files the recipe needs beside it (in its folder or below) and remove context:"
	if realRoot == "/" {
		return &contextError{fmt.Sprintf("context %s is / (the whole build host)", r.Context),
			"name the project folder that holds the recipe and its files, or " + keep}
	}
	if isHome(realRoot) && realRoot != r.bound {
		return &contextError{fmt.Sprintf("context %s is %s, a home directory", r.Context, realRoot),
			fmt.Sprintf("move the recipe and its files into a project folder and name that, pass --context %s if you mean it, or %s", realRoot, keep)}
	}
	if r.bound != "" {
		// --context: the person running bake chose the folder.
		if within(r.bound, realRoot) {
			return nil
		}
		return &contextError{fmt.Sprintf("context %s resolves to %s, outside --context %s", r.Context, realRoot, r.bound),
			fmt.Sprintf("pass --context %s (or a folder above it) to allow it, or %s", realRoot, keep)}
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		realDir = dir
	}
	if within(realDir, realRoot) {
		return nil
	}
	wd := r.workDir
	if wd == "" {
		if wd, err = os.Getwd(); err != nil {
			return &contextError{fmt.Sprintf("context %s: cannot find the working directory: %v", r.Context, err), "run bake from an existing folder"}
		}
	}
	realWD, err := filepath.EvalSymlinks(wd)
	if err != nil {
		realWD = wd
	}
	if within(realWD, realRoot) {
		if repo := repoRoot(realDir); repo != "" && !within(repo, realRoot) {
			return &contextError{fmt.Sprintf("context %s resolves to %s, above the repository root %s", r.Context, realRoot, repo),
				fmt.Sprintf("keep the context inside the repository (at most %s), or pass --context %s to allow it", repo, realRoot)}
		}
		return nil
	}
	via := ""
	if lexical, _ := filepath.Abs(root); lexical != realRoot {
		via = " (through a symlink)"
	}
	return &contextError{
		fmt.Sprintf("context %s resolves to %s%s, outside both the recipe folder %s and the working directory %s", r.Context, realRoot, via, realDir, realWD),
		fmt.Sprintf("a context may reach up to the folder bake runs in: run bake from %s (cd %s), or %s", realRoot, realRoot, keep)}
}

// isHome reports whether dir is a home directory: the user's, root's or one
// directly under /home.
func isHome(dir string) bool {
	homes := []string{"/root"}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		homes = append(homes, h)
		if real, err := filepath.EvalSymlinks(h); err == nil {
			homes = append(homes, real)
		}
	}
	return slices.Contains(homes, dir) || filepath.Dir(dir) == "/home"
}

// repoRoot is the nearest folder at or above dir that holds a .git (a
// folder, or the file of a worktree or submodule), "" when there is none.
func repoRoot(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(filepath.Join(d, ".git")); err == nil {
			return d
		}
		if d == filepath.Dir(d) {
			return ""
		}
	}
}

// contextBound checks --context DIR and returns it resolved through
// symlinks.
func contextBound(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("--context %s: %v", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("--context %s: %v", dir, err)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("--context %s is not a folder", dir)
	}
	if real == "/" {
		return "", fmt.Errorf("--context %s is / (the whole build host)", dir)
	}
	return real, nil
}
