package recipe

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// IgnoreFile is the file in a recipe's context that names paths bake never
// reads (like .gitignore; see ignoreRules).
const IgnoreFile = ".bakeignore"

// ErrIgnored is returned (wrapped) by Resolve for a path inside .git or
// one that the context's .bakeignore names: bake never reads those (a CI
// checkout keeps its tokens in .git/config).
var ErrIgnored = errors.New("is never read by bake")

// maxIgnoreFile bounds .bakeignore (it is read from the context, which a
// pull request may change, like the recipe).
const maxIgnoreFile = 64 << 10

// ignoreRule is one line of .bakeignore.
type ignoreRule struct {
	line    int
	text    string   // as written, for messages
	parts   []string // the pattern split at "/", each a path.Match pattern or "**"
	anchor  bool     // it has a "/" before its end: matched from the context root
	dirOnly bool     // it ends in "/": matches directories only
	negate  bool     // it starts with "!": re-includes what an earlier rule excluded
}

// ignoreRules is a parsed .bakeignore. The syntax is gitignore's subset
// that path.Match can express:
//
//   - one pattern per line; blank lines and lines starting with # are
//     skipped; trailing spaces are trimmed;
//   - a pattern without a "/" (other than a trailing one) matches a file or
//     folder of that name at any depth, e.g. secrets, *.pem;
//   - a pattern with a "/" is matched from the context root, e.g. /build,
//     deploy/keys/*.key;
//   - each "/"-separated part is a path.Match pattern (*, ?, [a-z], \x);
//     a part that is exactly ** matches any number of folders;
//   - a trailing "/" matches folders only;
//   - a leading "!" re-includes what an earlier line excluded, except below
//     an excluded folder (as in git, the folder is not read at all).
//
// Everything below an excluded folder is excluded. .git is always
// excluded, whatever the file says.
type ignoreRules struct {
	file  string // the .bakeignore path, "" when there is none
	rules []ignoreRule
}

// ignoreFileError is a .bakeignore bake cannot use: validation reports it
// once, at the context, not at every path.
type ignoreFileError struct{ err error }

func (e *ignoreFileError) Error() string { return e.err.Error() }
func (e *ignoreFileError) Unwrap() error { return e.err }

// parseIgnore reads the rules of the .bakeignore at file (none when it does
// not exist). Its errors are *ignoreFileError.
func parseIgnore(file string) (*ignoreRules, error) {
	rs, err := readIgnore(file)
	if err != nil {
		return nil, &ignoreFileError{err}
	}
	return rs, nil
}

func readIgnore(file string) (*ignoreRules, error) {
	rs := &ignoreRules{}
	// Non-blocking: a FIFO named .bakeignore must not hang bake.
	f, fi, err := openRegular(file)
	if errors.Is(err, os.ErrNotExist) {
		return rs, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > maxIgnoreFile {
		return nil, fmt.Errorf("%s is %d bytes, more than %d", file, fi.Size(), maxIgnoreFile)
	}
	rs.file = file
	sc := bufio.NewScanner(io.LimitReader(f, maxIgnoreFile))
	n := 0
	for sc.Scan() {
		n++
		text := strings.TrimRight(sc.Text(), " \t\r")
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		r := ignoreRule{line: n, text: text}
		p := text
		if strings.HasPrefix(p, "!") {
			r.negate, p = true, p[1:]
		} else if strings.HasPrefix(p, `\!`) || strings.HasPrefix(p, `\#`) {
			p = p[1:]
		}
		if strings.HasSuffix(p, "/") {
			r.dirOnly, p = true, strings.TrimRight(p, "/")
		}
		r.anchor = strings.Contains(p, "/")
		p = strings.TrimPrefix(p, "/")
		if p == "" {
			continue
		}
		r.parts = strings.Split(p, "/")
		for _, part := range r.parts {
			if _, err := path.Match(part, ""); err != nil {
				return nil, fmt.Errorf("%s:%d: %q is not a pattern: %v", file, n, text, err)
			}
		}
		if !r.anchor {
			r.parts = append([]string{"**"}, r.parts...)
		}
		rs.rules = append(rs.rules, r)
	}
	return rs, sc.Err()
}

// matchParts matches pattern parts against path components ("**" matches
// any number of them).
func matchParts(pat, name []string) bool {
	if len(pat) == 0 {
		return len(name) == 0
	}
	if pat[0] == "**" {
		for i := 0; i <= len(name); i++ {
			if matchParts(pat[1:], name[i:]) {
				return true
			}
		}
		return false
	}
	if len(name) == 0 {
		return false
	}
	if ok, _ := path.Match(pat[0], name[0]); !ok {
		return false
	}
	return matchParts(pat[1:], name[1:])
}

// excluded reports why rel (a slash path relative to the context root,
// "." for the root) is never read: ".git", the .bakeignore line that
// excludes it or a folder above it, or "" when it may be read. isDir tells
// whether rel itself is a folder.
func (rs *ignoreRules) excluded(rel string, isDir bool) string {
	if rel == "." || rel == "" {
		return ""
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == ".git" {
			return ".git"
		}
	}
	if rs == nil {
		return ""
	}
	for i := 1; i <= len(parts); i++ {
		dir := i < len(parts) || isDir
		why := ""
		for _, r := range rs.rules {
			if r.dirOnly && !dir {
				continue
			}
			if matchParts(r.parts, parts[:i]) {
				if r.negate {
					why = ""
				} else {
					why = fmt.Sprintf("%s:%d (%s)", rs.file, r.line, r.text)
				}
			}
		}
		if why != "" {
			return why
		}
	}
	return ""
}

// Sources is what may be read from a recipe's context: everything below
// Root except .git and what Root's .bakeignore names. Resolve checks every
// path a recipe names with it, and the overlay copy (rootfs.CopyOverlay)
// every file it walks, so that this is the one place that decides.
type Sources struct {
	Root  string // the context, resolved through symlinks
	rules *ignoreRules
}

// Sources returns the context's Sources (reading its .bakeignore).
func (r *Recipe) Sources() (*Sources, error) {
	dir := r.Dir
	if dir == "" {
		dir = "."
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	root, err := r.contextDir(dir)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("context: %w", err)
	}
	rules, err := parseIgnore(filepath.Join(real, IgnoreFile))
	if err != nil {
		return nil, err
	}
	return &Sources{Root: real, rules: rules}, nil
}

// IgnoreFile is the context's .bakeignore, "" when it has none.
func (s *Sources) IgnoreFile() string { return s.rules.file }

// Excluded reports why the host path p (absolute) may not be read, or ""
// when it may. A path outside Root is not this check's to answer ("").
func (s *Sources) Excluded(p string, isDir bool) string {
	rel, err := filepath.Rel(s.Root, p)
	if err != nil || !filepath.IsLocal(rel) && rel != "." {
		return ""
	}
	return s.rules.excluded(filepath.ToSlash(rel), isDir)
}

// Skip is Excluded for a walk: the overlay copy leaves out an excluded
// entry (and everything below an excluded folder).
func (s *Sources) Skip(p string, isDir bool) bool { return s.Excluded(p, isDir) != "" }
