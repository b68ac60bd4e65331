package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/goccy/go-yaml/ast"
	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/convert"
)

var (
	nameRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	packageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(=[^ ]+)?$`)
	accountRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	ownerRe   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}(:[a-z_][a-z0-9_-]{0,31})?$`)
	unitRe    = regexp.MustCompile(`^[A-Za-z0-9@._:-]+\.(service|socket|timer|target|path|mount)$`)
	uuidRe    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	hexRe     = regexp.MustCompile(`^[0-9a-fA-F]+$`)
	// Repository names become /etc/apt/sources.list.d/NAME.sources and
	// keyring file names.
	repoNameRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	componentRe = regexp.MustCompile(`^[a-z0-9][a-z0-9/._-]*$`)
)

// knownSuites are codenames mmdebstrap can bootstrap plus Debian's aliases.
// A typo here would otherwise surface minutes into a build as a 404 from
// the mirror.
var knownSuites = []string{
	// Debian
	"stable", "testing", "unstable", "oldstable", "oldoldstable", "sid", "experimental",
	"buster", "bullseye", "bookworm", "trixie", "forky", "duke",
	// Ubuntu
	"xenial", "bionic", "focal", "jammy", "lunar", "mantic", "noble", "oracular",
	"plucky", "questing", "resolute",
}

var (
	variants  = []string{"minbase", "required", "important", "standard"}
	firmwares = []string{"bios", "uefi"}
	// The output formats are the convert package's (the outputs stage).
	formats = convert.Names()
)

const (
	minDiskSize = 512 << 20
	minESPSize  = 33 << 20 // the smallest FAT32 with 512-byte sectors
	maxESPSize  = 1 << 30
	maxID       = 65533 // 65534 is nobody/nogroup, 65535 is (uid_t)-1 in 16 bits
)

// Validate checks a decoded recipe and returns every problem as
// Diagnostics (nil error when there is none). Load and Parse call it; it is
// exported for recipes built in Go, whose diagnostics have no positions.
// Checks that look at files (overlay and file sources, repository keys,
// image paths) resolve against Dir.
func (r *Recipe) Validate() error {
	return r.validate().err()
}

type validator struct {
	r     *Recipe
	src   *source
	diags Diagnostics
}

func (r *Recipe) validate() Diagnostics {
	v := &validator{r: r, src: r.src}
	v.top()
	v.base()
	v.apt()
	v.accounts()
	v.overlays()
	v.files()
	v.systemd()
	v.kernel()
	v.disk()
	v.outputs()
	v.appliance()
	return v.diags
}

// errorf reports a problem with the value at path. It stays quiet when
// decoding already reported that value (or one inside or around it), so
// one mistake gives one message.
func (v *validator) errorf(path, hint, format string, args ...any) {
	v.diag(path, v.src.pos, hint, format, args...)
}

// keyErrorf is errorf at the key of path (a key that may not be there
// at all, whatever its value).
func (v *validator) keyErrorf(path, hint, format string, args ...any) {
	v.diag(path, v.src.keyPos, hint, format, args...)
}

func (v *validator) diag(path string, pos func(string) (int, int), hint, format string, args ...any) {
	if v.src != nil {
		for bad := range v.src.bad {
			if related(bad, path) {
				return
			}
		}
	}
	line, col := pos(path)
	file := v.r.Path
	if v.src != nil {
		file = v.src.file
	}
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	v.diags = append(v.diags, Diagnostic{File: file, Line: line, Col: col, Path: path, Msg: msg, Hint: hint})
}

// related reports whether a validation problem at path follows from the
// decode problem at bad: the same value, something inside it, or its
// parent's "exactly one of" and "is missing" checks, which see the value
// as absent.
func related(bad, path string) bool {
	return bad == "" || path == bad || strings.HasPrefix(path, bad+".") || strings.HasPrefix(path, bad+"[") ||
		parentOf(bad) == path
}

// present reports whether path was written, even as an empty value; for
// recipes built in Go, whether the value is non-empty.
func (v *validator) present(path string, value string) bool {
	if v.src != nil {
		return v.src.has(path)
	}
	return value != ""
}

// line is where path was written, for "first at line N" messages.
func (v *validator) line(path string) string {
	if l, _ := v.src.pos(path); l > 0 {
		return fmt.Sprintf(", line %d", l)
	}
	return ""
}

func (v *validator) top() {
	r := v.r
	switch {
	case r.APIVersion == "":
		v.errorf("apiVersion", "add apiVersion: "+APIVersion+" as the first line", "is missing")
	case r.APIVersion != APIVersion:
		v.errorf("apiVersion", "write apiVersion: "+APIVersion+", the only version this bake reads",
			"%q is not a recipe version this bake reads", r.APIVersion)
	}
	dir, _ := filepath.Abs(r.Dir)
	if root, err := r.contextDir(dir); err != nil {
		hint := ""
		if ce, ok := err.(*contextError); ok {
			hint = ce.hint
		}
		path := "context"
		if r.Context == "" {
			path = ""
		}
		v.errorf(path, hint, "%v", err)
	} else if fi, err := os.Stat(root); r.Context != "" && (err != nil || !fi.IsDir()) {
		v.errorf("context", "name an existing folder that contains the recipe", "%s is not a folder", r.Context)
	} else if _, err := r.Sources(); err != nil {
		path := "context"
		if r.Context == "" {
			path = ""
		}
		v.errorf(path, "fix or remove "+IgnoreFile+": one gitignore-like pattern per line (path.Match syntax), a regular file of at most 64 KiB", "%v", err)
	}
	switch {
	case r.Name == "":
		v.errorf("name", "add name: my-appliance (lower-case letters, digits, ., _ and -)", "is missing")
	case !nameRe.MatchString(r.Name):
		v.errorf("name", "use lower-case letters, digits, ., _ and -, starting with a letter or digit, at most 63 characters, e.g. "+
			sanitizeName(r.Name), "%q is not a valid image name", r.Name)
	}
}

// sanitizeName suggests a valid name close to s.
func sanitizeName(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.TrimLeft(b.String(), "._-")
	if len(out) > 63 {
		out = out[:63]
	}
	if out == "" {
		return "my-appliance"
	}
	return out
}

func (v *validator) base() {
	b := v.r.Base
	switch {
	case b.Debian != nil && b.Image != nil:
		v.errorf("base", "keep one: debian bootstraps a tree from packages, image starts from a cloud image",
			"has both debian and image")
	case b.Debian == nil && b.Image == nil:
		v.errorf("base", "write base: {debian: {suite: bookworm}} or base: {image: {url: https://..., sha256: ...}}",
			"is missing: the recipe must say where the root tree comes from")
		return
	}
	if d := b.Debian; d != nil {
		v.debian(d)
	}
	if im := b.Image; im != nil {
		v.image(im)
	}
}

func (v *validator) debian(d *DebianBase) {
	const p = "base.debian"
	switch {
	case d.Suite == "":
		v.errorf(p+".suite", "add suite: bookworm, or trixie, noble, stable, ...", "is missing")
	case !slices.Contains(knownSuites, d.Suite):
		hint := "write a Debian or Ubuntu codename, e.g. bookworm, trixie, sid, jammy, noble, or stable/testing/unstable"
		if s := suggest(d.Suite, knownSuites); s != "" {
			hint = fmt.Sprintf("did you mean %q?", s)
		}
		v.errorf(p+".suite", hint, "%q is not a Debian or Ubuntu suite bake knows", d.Suite)
	}
	if d.Variant != "" && !slices.Contains(variants, d.Variant) {
		v.errorf(p+".variant", "write minbase, the default, or required, important, standard",
			"%q is not an mmdebstrap variant", d.Variant)
	}
	v.url(p+".mirror", d.Mirror, "http://deb.debian.org/debian")
	v.url(p+".build_mirror", d.BuildMirror, "http://192.0.2.10/debian")
	v.components(p+".components", d.Components)
	v.packages(p+".packages", d.Packages)
}

// url checks an archive URL; "" is fine (the field is optional).
func (v *validator) url(path, s, example string) {
	if s == "" {
		return
	}
	u, err := url.Parse(s)
	hint := "write an http, https or file URL, e.g. " + example
	switch {
	case err != nil:
		v.errorf(path, hint, "%q is not a URL", s)
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file":
		v.errorf(path, hint, "%q is not an http, https or file URL", s)
	case u.Scheme != "file" && u.Host == "":
		v.errorf(path, hint, "%q has no host", s)
	case u.Scheme == "file" && !strings.HasPrefix(u.Path, "/"):
		v.errorf(path, "write file:///absolute/path", "%q is not an absolute file URL", s)
	}
}

func (v *validator) components(path string, cs []string) {
	seen := map[string]string{}
	for i, c := range cs {
		ip := indexPath(path, i)
		if !componentRe.MatchString(c) {
			v.errorf(ip, "write an archive component such as main, contrib, non-free-firmware or universe",
				"%q is not an archive component", c)
			continue
		}
		if first, dup := seen[c]; dup {
			v.errorf(ip, "remove the repeat", "component %q is listed twice (first at %s)", c, first)
		}
		seen[c] = ip
	}
}

func (v *validator) packages(path string, pkgs []string) {
	for i, p := range pkgs {
		if packageRe.MatchString(p) {
			continue
		}
		ip := indexPath(path, i)
		switch {
		case strings.ContainsAny(strings.TrimSpace(p), " \t,"):
			v.errorf(ip, "put one package per list item, e.g. [curl, ca-certificates]", "%q is more than one package", p)
		default:
			v.errorf(ip, "a Debian package name is lower-case letters, digits, +, - and ., at least 2 long, optionally =VERSION, e.g. curl or curl=7.88.1-10",
				"%q is not a Debian package name", p)
		}
	}
}

func (v *validator) image(im *ImageBase) {
	const p = "base.image"
	switch {
	case im.Path != "" && im.URL != "":
		v.errorf(p, "keep one: path for a local file, url to download", "has both path and url")
	case im.Path == "" && im.URL == "":
		v.errorf(p, "add url: https://cloud.debian.org/images/cloud/... or path: images/debian.qcow2",
			"needs a path or a url")
	case im.URL != "":
		if u, err := url.Parse(im.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.errorf(p+".url", "write an http or https URL; for a local file use path:", "%q is not an http(s) URL", im.URL)
		}
	case filepath.IsAbs(im.Path):
		// A base image pinned by digest may live in a shared cache
		// outside the recipe folder; the digest, not the folder, makes
		// the build reproducible.
		v.exists(p+".path", im.Path, false)
	default:
		v.local(p+".path", im.Path, false)
	}
	const digestHint = "pin the image: add sha256: with the 64 hex digits from the SHA256SUMS beside the image, or sha512: with 128"
	switch {
	case im.SHA256 != "" && im.SHA512 != "":
		v.errorf(p, "keep one of sha256 and sha512", "has both sha256 and sha512")
	case im.SHA256 == "" && im.SHA512 == "":
		v.errorf(p, digestHint, "is not pinned by a digest")
	case im.SHA256 != "" && (len(im.SHA256) != 64 || !hexRe.MatchString(im.SHA256)):
		v.errorf(p+".sha256", digestHint, "%q is not a sha256 digest: it has %d characters, not 64 hex digits", im.SHA256, len(im.SHA256))
	case im.SHA512 != "" && (len(im.SHA512) != 128 || !hexRe.MatchString(im.SHA512)):
		v.errorf(p+".sha512", digestHint, "%q is not a sha512 digest: it has %d characters, not 128 hex digits", im.SHA512, len(im.SHA512))
	}
}

// badChar finds a character that has no place in a path: a control
// character (a newline would print as another line of `bake plan`), an
// invisible formatting character (bidirectional overrides reorder what a
// reviewer sees) or invalid UTF-8.
func badChar(s string) (rune, bool) {
	for i, c := range s {
		if c == utf8.RuneError {
			if _, n := utf8.DecodeRuneInString(s[i:]); n == 1 {
				return c, true
			}
		}
		if c != ' ' && !unicode.IsPrint(c) {
			return c, true
		}
	}
	return 0, false
}

// plainPath reports a path-like value with a character badChar refuses.
func (v *validator) plainPath(path, s string) bool {
	if c, bad := badChar(s); bad {
		v.errorf(path, "write the path on one line, with printable characters only (no newline, tab or other control character)",
			"%q contains the character %U", s, c)
		return false
	}
	return true
}

// local checks that rel is a path inside the recipe folder that exists and
// is a directory (dir) or a regular file.
func (v *validator) local(path, rel string, dir bool) {
	if !v.plainPath(path, rel) {
		return
	}
	if filepath.IsAbs(rel) {
		v.errorf(path, "copy it beside the recipe and write the path relative to the recipe folder",
			"%s is absolute; recipes take files from their own folder", rel)
		return
	}
	real, err := v.r.Resolve(rel)
	var ce *contextError
	switch {
	case errors.As(err, &ce), errors.As(err, new(*ignoreFileError)):
		// A refused context or an unusable .bakeignore: reported once,
		// at context:.
		return
	case errors.Is(err, ErrEscapes):
		v.errorf(path, "keep everything the image needs inside the recipe folder "+v.r.Dir+" (or set context: to a folder containing both)", "%v", err)
		return
	case errors.Is(err, ErrIgnored):
		v.errorf(path, "name a file outside .git and outside what "+IgnoreFile+" lists; keep secrets out of the recipe's context", "%v", err)
		return
	case errors.Is(err, fs.ErrNotExist):
		v.errorf(path, "paths are relative to the recipe folder "+v.r.Dir, "%s does not exist", rel)
		return
	case err != nil:
		v.errorf(path, "", "%v", err)
		return
	}
	v.kind(path, rel, real, dir)
}

// exists checks an absolute path outside the recipe folder.
func (v *validator) exists(path, p string, dir bool) {
	if !v.plainPath(path, p) {
		return
	}
	if _, err := os.Stat(p); err != nil {
		v.errorf(path, "", "%s does not exist", p)
		return
	}
	v.kind(path, p, p, dir)
}

func (v *validator) kind(path, written, real string, dir bool) {
	fi, err := os.Stat(real)
	if err != nil {
		v.errorf(path, "", "%v", err)
		return
	}
	switch {
	case dir && !fi.IsDir():
		v.errorf(path, "an overlay copies a directory tree; for one file use files: [{path: ..., source: ...}]", "%s is not a directory", written)
	case !dir && !fi.Mode().IsRegular():
		v.errorf(path, "name a regular file", "%s is not a regular file", written)
	}
}

func (v *validator) apt() {
	v.packages("apt.packages", v.r.Apt.Packages)
	seen := map[string]string{}
	for i, repo := range v.r.Apt.Repositories {
		p := indexPath("apt.repositories", i)
		switch {
		case repo.Name == "":
			v.errorf(p+".name", "add name: tailscale (it names the .sources file and keyring)", "is missing")
		case !repoNameRe.MatchString(repo.Name):
			v.errorf(p+".name", "use lower-case letters, digits, ., _ and -, e.g. tailscale", "%q is not a valid repository name", repo.Name)
		default:
			if first, dup := seen[repo.Name]; dup {
				v.errorf(p+".name", "give each repository its own name", "repository %q is declared twice (first at %s%s)", repo.Name, first, v.line(first))
			}
			seen[repo.Name] = p
		}
		if repo.URI == "" {
			v.errorf(p+".uri", "add uri: https://pkgs.tailscale.com/stable/debian", "is missing")
		} else {
			v.url(p+".uri", repo.URI, "https://pkgs.tailscale.com/stable/debian")
		}
		switch {
		case repo.Suite == "":
			v.errorf(p+".suite", "add suite: bookworm, or ./ for a flat repository", "is missing")
		case strings.ContainsAny(repo.Suite, " \t"):
			v.errorf(p+".suite", "one suite per repository", "%q is not a suite", repo.Suite)
		case strings.HasSuffix(repo.Suite, "/") && len(repo.Components) > 0:
			v.errorf(p+".components", "remove components: a suite ending in / is a flat repository, which has none",
				"a flat repository (suite %q) takes no components", repo.Suite)
		}
		v.components(p+".components", repo.Components)
		if repo.Key == "" {
			v.errorf(p+".key", "add key: keys/NAME.asc, the repository's signing key saved beside the recipe", "is missing: apt must verify the repository")
		} else {
			v.local(p+".key", repo.Key, false)
		}
		if repo.BuildURI != "" {
			v.url(p+".build_uri", repo.BuildURI, "http://127.0.0.1:8080/debian")
		}
		if repo.BuildKey != "" {
			v.local(p+".build_key", repo.BuildKey, false)
		}
		if (repo.BuildURI == "") != (repo.BuildKey == "") && repo.BuildKey != "" {
			v.errorf(p+".build_uri", "add build_uri: the mirror build_key signs", "build_key without build_uri")
		}
	}
}

func (v *validator) accounts() {
	groups := map[string]string{}
	gids := map[int]string{}
	for i, g := range v.r.Groups {
		p := indexPath("groups", i)
		v.account(p+".name", g.Name, "group", groups)
		v.id(p+".gid", "gid", g.GID, gids)
	}
	users := map[string]string{}
	uids := map[int]string{}
	for i, u := range v.r.Users {
		p := indexPath("users", i)
		v.account(p+".name", u.Name, "user", users)
		v.id(p+".uid", "uid", u.UID, uids)
		seen := map[string]string{}
		for j, g := range u.Groups {
			gp := indexPath(p+".groups", j)
			if !accountRe.MatchString(g) {
				v.errorf(gp, "a group name is lower-case letters, digits, _ and -, e.g. sudo, adm, systemd-journal", "%q is not a valid group name", g)
				continue
			}
			if first, dup := seen[g]; dup {
				v.errorf(gp, "remove the repeat", "group %q is listed twice (first at %s)", g, first)
			}
			seen[g] = gp
		}
		if v.plainPath(p+".shell", u.Shell) && u.Shell != "" && !path.IsAbs(u.Shell) {
			v.errorf(p+".shell", "write an absolute path, e.g. /bin/bash or /usr/sbin/nologin", "shell %q is not an absolute path", u.Shell)
		}
		if v.plainPath(p+".home", u.Home) && u.Home != "" && (!path.IsAbs(u.Home) || path.Clean(u.Home) != u.Home || u.Home == "/") {
			v.errorf(p+".home", "write an absolute, clean path, e.g. /home/"+u.Name, "home %q is not an absolute, clean path", u.Home)
		}
		if u.Sudo != "" && u.Sudo != "nopasswd" {
			v.errorf(p+".sudo", `write sudo: nopasswd for passwordless sudo, or leave sudo out for none`, "%q is not a sudo mode", u.Sudo)
		}
		for j, key := range u.SSHAuthorizedKeys {
			v.sshKey(indexPath(p+".ssh_authorized_keys", j), j, key)
		}
	}
}

func (v *validator) account(path, name, what string, seen map[string]string) {
	switch {
	case name == "":
		v.errorf(path, fmt.Sprintf("add name: %s; names are lower-case letters, digits, _ and -", map[string]string{"user": "admin", "group": "operators"}[what]),
			"is missing")
	case !accountRe.MatchString(name):
		v.errorf(path, "a "+what+" name starts with a lower-case letter or _, then lower-case letters, digits, _ and -, at most 32 characters",
			"%q is not a valid %s name", name, what)
	default:
		if first, dup := seen[name]; dup {
			v.errorf(path, "declare each "+what+" once", "%s %q is declared twice (first at %s%s)", what, name, first, v.line(first))
			return
		}
		seen[name] = strings.TrimSuffix(path, ".name")
	}
}

// id checks a uid or gid: 0 is root's and exists already; 65534 is
// nobody/nogroup; the same id twice would merge two accounts.
func (v *validator) id(path, what string, id *int, seen map[int]string) {
	if id == nil {
		return
	}
	switch {
	case *id == 0:
		v.errorf(path, fmt.Sprintf("leave %s out to let the system choose, or pick 1000 or above", what),
			"%s 0 is root's and cannot be given to another account", what)
	case *id < 0 || *id > maxID:
		v.errorf(path, "write a number from 1 to 65533; system accounts use 100-999, others 1000-59999",
			"%s %d is out of range", what, *id)
	default:
		if first, dup := seen[*id]; dup {
			v.errorf(path, "give each account its own "+what+", or leave it out to let the system choose",
				"%s %d is already used by %s%s", what, *id, first, v.line(first))
		}
		seen[*id] = strings.TrimSuffix(strings.TrimSuffix(path, ".uid"), ".gid")
	}
}

func (v *validator) sshKey(path string, i int, key string) {
	if strings.Contains(key, "PRIVATE KEY") {
		v.errorf(path, "put the public key from the .pub file here, e.g. ssh-ed25519 AAAA... comment; secrets must not go into recipes or images",
			"entry %d is a private key", i)
		return
	}
	const hint = "expected e.g. ssh-ed25519 AAAA... comment, one key per item"
	_, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(key))
	switch {
	case err != nil:
		v.errorf(path, hint, "entry %d is not an SSH public key", i)
	case len(strings.TrimSpace(string(rest))) > 0:
		v.errorf(path, hint, "entry %d holds more than one key", i)
	}
}

func (v *validator) overlays() {
	for i, o := range v.r.Overlays {
		p := indexPath("overlays", i)
		if o.Source == "" {
			v.errorf(p+".source", "add source: overlays/NAME, a directory beside the recipe", "is missing")
		} else {
			v.local(p+".source", o.Source, true)
		}
		if o.Target != "" {
			v.imagePath(p+".target", o.Target, true)
		}
		v.owner(p+".owner", o.Owner)
		for pattern, mode := range o.Modes {
			mp := childPath(p+".modes", pattern)
			if !v.plainPath(mp, pattern) {
				continue
			}
			if _, err := filepath.Match(pattern, ""); err != nil || pattern == "" || path.IsAbs(pattern) || !filepath.IsLocal(pattern) {
				v.errorf(mp, "write a path below the overlay target, glob allowed, e.g. usr/local/bin/*: \"0755\"", "%q is not a relative path pattern", pattern)
			}
			v.mode(mp, mode)
		}
	}
}

// imagePath checks an absolute path inside the image.
func (v *validator) imagePath(p, s string, dirOK bool) {
	switch {
	case !v.plainPath(p, s):
	case !path.IsAbs(s):
		v.errorf(p, "write an absolute path in the image, e.g. /"+strings.TrimLeft(s, "./"), "%q is not an absolute path", s)
	case path.Clean(s) != s:
		v.errorf(p, "write it as "+path.Clean(s), "%q is not a clean path", s)
	case !dirOK && s == "/":
		v.errorf(p, "name a file, e.g. /etc/motd", "%q is a directory, not a file path", s)
	}
}

func (v *validator) owner(path, owner string) {
	switch {
	case owner == "":
	case !ownerRe.MatchString(owner):
		v.errorf(path, "write user or user:group, e.g. root:root or admin:admin", "%q is not an owner", owner)
	default:
		v.knownOwner(path, owner)
	}
}

// mode checks an octal mode string. A YAML number is refused even when it
// would parse: YAML 1.1 readers take 0644 as octal 420, YAML 1.2 ones as
// decimal 644, and 644 unquoted is the decimal 644 = 0o1204.
func (v *validator) mode(path, mode string) {
	if n := scalarNode(v.src.node(path)); n != nil {
		if _, isInt := n.(*ast.IntegerNode); isInt {
			v.errorf(path, fmt.Sprintf(`quote it: "%s"`, fmtQuotedMode(mode)),
				"%s is a YAML number, and numbers are read as decimal or octal depending on the reader", mode)
			return
		}
	}
	if mode == "" {
		return
	}
	if _, err := ParseMode(mode); err != nil {
		v.errorf(path, `write 3 or 4 octal digits in quotes, e.g. "0644", "0755" or "4755"`, "%q is not an octal mode", mode)
	}
}

func fmtQuotedMode(m string) string {
	m = strings.TrimPrefix(strings.TrimPrefix(m, "0o"), "0O")
	if len(m) == 3 {
		return "0" + m
	}
	return m
}

// scalarNode looks through anchors and a !!str tag; a tagged value is text
// and so yields nil.
func scalarNode(n ast.Node) ast.Node {
	for range maxDepth {
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
		case *ast.TagNode:
			return nil
		default:
			return n
		}
	}
	return nil
}

func (v *validator) files() {
	seen := map[string]string{}
	for i, f := range v.r.Files {
		p := indexPath("files", i)
		if f.Path == "" {
			v.errorf(p+".path", "add path: /etc/NAME, the absolute path of the file in the image", "is missing")
		} else {
			v.imagePath(p+".path", f.Path, false)
			if first, dup := seen[f.Path]; dup {
				v.errorf(p+".path", "write each file once", "%s is written twice (first at %s%s)", f.Path, first, v.line(first))
			}
			seen[f.Path] = p
		}
		hasContent := v.present(p+".content", f.Content)
		hasSource := v.present(p+".source", f.Source)
		switch {
		case hasContent && hasSource:
			v.errorf(p, "keep one: content for text written in the recipe, source for a file beside it", "has both content and source")
		case !hasContent && !hasSource:
			v.errorf(p, `add content: "..." or source: files/NAME; content: "" writes an empty file`, "has neither content nor source")
		case hasSource && f.Source == "":
			v.errorf(p+".source", "write source: files/NAME, relative to the recipe folder", "is empty")
		case hasSource:
			v.local(p+".source", f.Source, false)
		}
		v.mode(p+".mode", f.Mode)
		v.owner(p+".owner", f.Owner)
	}
}

func (v *validator) systemd() {
	s := v.r.Systemd
	lists := []struct {
		name  string
		units []string
	}{{"enable", s.Enable}, {"disable", s.Disable}, {"mask", s.Mask}}
	where := map[string]string{} // unit → first path
	verb := map[string]string{}
	for _, l := range lists {
		for i, u := range l.units {
			p := indexPath("systemd."+l.name, i)
			if !unitRe.MatchString(u) {
				hint := "write a full unit name, e.g. ssh.service, fstrim.timer, getty@tty1.service"
				if !strings.Contains(u, ".") && u != "" {
					hint = fmt.Sprintf("write the full unit name, e.g. %s.service", u)
				}
				v.errorf(p, hint, "%q is not a systemd unit name", u)
				continue
			}
			first, seen := where[u]
			switch {
			case !seen:
				where[u], verb[u] = p, l.name
			case verb[u] == l.name:
				v.errorf(p, "remove the repeat", "%s is listed twice (first at %s)", u, first)
			default:
				v.errorf(p, fmt.Sprintf("keep one of %s and %s", verb[u], l.name),
					"%s is in both %s (%s) and %s", u, verb[u], first, l.name)
			}
		}
	}
}

func (v *validator) kernel() {
	c := v.r.Kernel.Cmdline
	if strings.ContainsAny(c, "\n\r") {
		v.errorf("kernel.cmdline", "write the command line on one line", "spans several lines")
	}
	v.cmdlineChars(c)
	seen := map[string]bool{}
	for _, arg := range strings.Fields(c) {
		if arg == "--" {
			break // the rest is init's (its argv), not the kernel's
		}
		if strings.HasPrefix(arg, "root=") {
			v.errorf("kernel.cmdline", "remove "+arg+"; bake sets root= to the root filesystem it builds",
				"must not set root=")
		}
		// The same argument twice sets nothing more than once, and
		// bake gives each argument once (Kernel.Args): say so rather
		// than drop one of the recipe's without a word.
		if seen[arg] {
			v.errorf("kernel.cmdline", "remove the repeat", "%s is written twice", arg)
		}
		seen[arg] = true
	}
}

func (v *validator) disk() {
	d := v.r.Disk
	var size, esp int64
	if d.Size != "" {
		n, err := ParseSize(d.Size)
		switch {
		case err != nil:
			v.errorf("disk.size", sizeHint, "%v", err)
		case n < minDiskSize:
			v.errorf("disk.size", "write at least 512MiB, e.g. size: 4GiB, or leave size out to fit the content",
				"%s is too small for a bootable disk", d.Size)
		default:
			size = n
		}
	}
	if d.ESPSize != "" {
		n, err := ParseSize(d.ESPSize)
		switch {
		case err != nil:
			v.errorf("disk.esp_size", sizeHint, "%v", err)
		case n < minESPSize || n > maxESPSize:
			v.errorf("disk.esp_size", "write a size from 33MiB, FAT32's minimum, to 1GiB, e.g. esp_size: 64MiB, the default",
				"%s is outside 33MiB..1GiB", d.ESPSize)
		default:
			esp = n
		}
	}
	if size > 0 && esp > 0 && esp >= size/2 {
		v.errorf("disk.esp_size", "make the disk larger or the ESP smaller", "esp_size %s leaves too little of the %s disk for the root filesystem", d.ESPSize, d.Size)
	}
	if v.present("disk.firmware", strings.Join(d.Firmware, "")) && len(d.Firmware) == 0 {
		v.errorf("disk.firmware", "list bios, uefi or both, or leave firmware out for both", "is empty")
	}
	v.set("disk.firmware", d.Firmware, firmwares, "firmware")
	ids := map[string]string{}
	for _, f := range []struct{ path, val string }{
		{"disk.disk_guid", d.DiskGUID}, {"disk.root_uuid", d.RootUUID}, {"disk.root_partuuid", d.RootPartUUID},
	} {
		if f.val == "" {
			continue
		}
		switch {
		case !uuidRe.MatchString(f.val):
			v.errorf(f.path, "write a UUID such as 0f8b5c6e-2c1d-4d8e-9a3b-5f6e7d8c9b0a, which uuidgen makes, or leave it out to derive it from the recipe",
				"%q is not a UUID", f.val)
		case strings.Trim(f.val, "0-") == "":
			v.errorf(f.path, "write a non-zero UUID, or leave it out", "the nil UUID is not an identifier")
		default:
			if first, dup := ids[strings.ToLower(f.val)]; dup {
				v.errorf(f.path, "give each identifier its own UUID", "%s repeats %s", f.val, first)
			}
			ids[strings.ToLower(f.val)] = f.path
		}
	}
	if d.ESPSerial != "" && (len(d.ESPSerial) != 8 || !hexRe.MatchString(d.ESPSerial)) {
		v.errorf("disk.esp_serial", "write 8 hex digits without the dash blkid shows, e.g. 1A2B3C4D",
			"%q is not a FAT volume serial", d.ESPSerial)
	}
}

func (v *validator) outputs() {
	if v.present("outputs", strings.Join(v.r.Outputs, "")) && len(v.r.Outputs) == 0 {
		v.errorf("outputs", "list one or more of "+strings.Join(formats, ", ")+", or leave outputs out for qcow2", "is empty")
	}
	v.set("outputs", v.r.Outputs, formats, "output format")
}

// set checks that list holds only allowed values, each once.
func (v *validator) set(path string, list, allowed []string, what string) {
	seen := map[string]string{}
	for i, x := range list {
		ip := indexPath(path, i)
		if !slices.Contains(allowed, x) {
			hint := "write one of " + strings.Join(allowed, ", ")
			if s := suggest(x, allowed); s != "" {
				hint = fmt.Sprintf("did you mean %q?", s)
			}
			v.errorf(ip, hint, "%q is not a%s %s", x, map[bool]string{true: "n", false: ""}[strings.ContainsAny(what[:1], "aeiou")], what)
			continue
		}
		if first, dup := seen[x]; dup {
			v.errorf(ip, "remove the repeat", "%s is listed twice (first at %s)", x, first)
		}
		seen[x] = ip
	}
}

// cmdlineUnsafe are the characters a kernel argument may not hold: bake
// writes the command line into grub.cfg and the boot loader entry, where
// quotes, ; $ ` \ | & < > and # are GRUB script syntax (and a quoted value
// with a space becomes one argument or several depending on who reads it).
const cmdlineUnsafe = "\"';$`\\|&<>#"

// cmdlineChars reports each argument of the kernel command line that holds
// a character that is not safe, all at once. A newline is reported once,
// by kernel(); other control characters (a tab too) and non-ASCII
// characters are refused here. A quoted value with spaces is reported as
// the one argument it was meant to be.
func (v *validator) cmdlineChars(c string) {
	// Split at spaces only: a tab stays in its argument and is reported.
	fields := strings.FieldsFunc(c, func(r rune) bool { return r == ' ' || r == '\n' || r == '\r' })
	for i := 0; i < len(fields); i++ {
		arg := fields[i]
		spaced := false
		for strings.Count(arg, `"`)%2 == 1 && i+1 < len(fields) {
			i++
			arg += " " + fields[i]
			spaced = true
		}
		bad := ""
		for _, ch := range arg {
			switch {
			case ch < 0x20 || ch == 0x7f:
				bad = fmt.Sprintf("the control character %U", ch)
			case ch > 0x7e:
				bad = fmt.Sprintf("the non-ASCII character %U", ch)
			case strings.ContainsRune(cmdlineUnsafe, ch):
				bad = fmt.Sprintf("%q", ch)
			default:
				continue
			}
			break
		}
		if spaced {
			bad = "a space inside quotes"
		}
		if bad == "" {
			continue
		}
		v.errorf("kernel.cmdline", "write each argument as NAME or NAME=VALUE, separated by spaces: no quotes, no space inside a value, none of ; $ ` \\ | & < > #, printable ASCII only",
			"argument %q contains %s, which is not safe on a kernel command line", arg, bad)
	}
}

// debianUsers and debianGroups are the accounts every Debian (and Ubuntu)
// base has before the recipe's own are made: base-passwd's passwd.master
// and group.master, apt's _apt, and the ones systemd and dbus add (any
// systemd-* name is accepted as well). An owner must name one of them or an
// account the recipe declares (see knownOwner).
var (
	debianUsers = []string{
		"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
		"www-data", "backup", "list", "irc", "gnats", "nobody", "_apt", "messagebus",
	}
	debianGroups = []string{
		"root", "daemon", "bin", "sys", "adm", "tty", "disk", "lp", "mail", "news", "uucp", "man", "proxy",
		"kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo", "audio", "dip", "www-data",
		"backup", "operator", "list", "irc", "src", "gnats", "shadow", "utmp", "video", "sasl", "plugdev",
		"staff", "games", "users", "nogroup", "input", "kvm", "render", "sgx", "messagebus",
	}
)

// knownOwner checks that the user and group of owner ("user[:group]",
// already well-formed) exist in the image when the files stage runs: an
// account the recipe declares (a user also gets a group of its own name),
// one Debian's base has, or the docker group when the recipe has
// containers (bake installs docker.io). Anything else would fail only
// after the bootstrap, in the files stage.
func (v *validator) knownOwner(p, owner string) {
	user, group, hasGroup := strings.Cut(owner, ":")
	r := v.r
	systemd := func(name string) bool { return strings.HasPrefix(name, "systemd-") && len(name) > len("systemd-") }
	if r.UserByName(user) == nil && !slices.Contains(debianUsers, user) && !systemd(user) {
		v.errorf(p, fmt.Sprintf("declare it under users:, e.g. {name: %s, system: true} (an account a package of the recipe creates is then used as the package made it), or name a user of Debian's base such as root", user),
			"user %q is neither declared in users nor one of Debian's base system users", user)
	}
	if !hasGroup {
		return
	}
	switch {
	case slices.ContainsFunc(r.Groups, func(g Group) bool { return g.Name == group }),
		r.UserByName(group) != nil, // a user's own group
		slices.Contains(debianGroups, group), systemd(group),
		group == "docker" && len(r.Containers) > 0:
		return
	}
	v.errorf(p, fmt.Sprintf("declare it under groups:, e.g. {name: %s, system: true}, or name a group of Debian's base such as root or adm", group),
		"group %q is neither declared in groups (nor a user's own group) nor one of Debian's base system groups", group)
}
