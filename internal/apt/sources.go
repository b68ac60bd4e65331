// Package apt knows the build host's apt configuration and writes apt
// source lines: the host's sources (deb822 and one-line) and codename, their
// mapping onto the suite being built, a mirror's lines, the image's own
// debian.sources, and the host's proxy settings. The tree stage
// (mmdebstrap, apt-get in a chroot) and the container layer builder both
// fetch Debian packages the same way through it.
package apt

import (
	"bufio"
	"fmt"
	"io"
	"net/url"
	"path"
	"slices"
	"strings"
)

// Source is one apt source entry, from a deb822 stanza
// (sources.list.d/*.sources) or a one-line entry (sources.list).
type Source struct {
	Types      []string // deb, deb-src
	URIs       []string
	Suites     []string
	Components []string
	// SignedBy is a keyring path, or empty. An embedded (inline) key is
	// reported as empty: it cannot be passed on as a path.
	SignedBy string
}

// ParseDeb822Sources parses a deb822 .sources file. Stanzas with
// "Enabled: no" are left out.
func ParseDeb822Sources(r io.Reader) ([]Source, error) {
	var out []Source
	fields := map[string]string{}
	last := ""
	flush := func() {
		defer func() { fields = map[string]string{}; last = "" }()
		if len(fields) == 0 {
			return
		}
		if strings.EqualFold(strings.TrimSpace(fields["enabled"]), "no") {
			return
		}
		s := Source{
			Types:      strings.Fields(fields["types"]),
			URIs:       strings.Fields(fields["uris"]),
			Suites:     strings.Fields(fields["suites"]),
			Components: strings.Fields(fields["components"]),
		}
		if sb := strings.TrimSpace(fields["signed-by"]); sb != "" && !strings.Contains(sb, "\n") && !strings.Contains(sb, "BEGIN PGP") {
			// Signed-By may list several keyrings or fingerprints;
			// keep the first path.
			for _, f := range strings.Fields(sb) {
				if strings.HasPrefix(f, "/") {
					s.SignedBy = f
					break
				}
			}
		}
		out = append(out, s)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
			continue
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return nil, fmt.Errorf("line %d: continuation line outside a field", n)
			}
			fields[last] += "\n" + strings.TrimSpace(line)
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("line %d: not a field: %q", n, line)
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out, sc.Err()
}

// ParseOneLineSources parses the classic sources.list format:
//
//	deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] URI SUITE COMPONENT...
func ParseOneLineSources(r io.Reader) ([]Source, error) {
	var out []Source
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		typ, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		var s Source
		s.Types = []string{typ}
		if strings.HasPrefix(rest, "[") {
			end := strings.Index(rest, "]")
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated options", n)
			}
			for _, opt := range strings.Fields(rest[1:end]) {
				k, v, _ := strings.Cut(opt, "=")
				if strings.EqualFold(k, "signed-by") {
					s.SignedBy = strings.Split(v, ",")[0]
				}
			}
			rest = rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want URI and suite: %q", n, sc.Text())
		}
		s.URIs = []string{f[0]}
		s.Suites = []string{f[1]}
		s.Components = f[2:]
		out = append(out, s)
	}
	return out, sc.Err()
}

var (
	debianComponents = []string{"main", "contrib", "non-free", "non-free-firmware"}
	// Release aliases a host may use instead of its codename.
	debianAliases = []string{"oldoldstable", "oldstable", "stable", "testing", "unstable", "sid"}
	// Suites without -updates and -security.
	unstableSuites = []string{"sid", "unstable", "experimental", "rc-buggy"}
	// Releases whose security suite is "SUITE/updates" (before bullseye).
	oldSecurityLayout = []string{"buster", "stretch", "jessie", "wheezy", "oldoldstable"}
)

// isDebianArchive tells a Debian archive (or a mirror of one) from a
// third-party repository that merely uses Debian codenames as suites (for
// example a Docker repository at .../linux/debian with suite "bookworm" and
// component "stable").
func isDebianArchive(s Source) bool {
	if !slices.Contains(s.Types, "deb") || len(s.URIs) == 0 {
		return false
	}
	if !slices.ContainsFunc(s.Components, func(c string) bool { return slices.Contains(debianComponents, c) }) {
		return false
	}
	if s.SignedBy != "" {
		return strings.Contains(path.Base(s.SignedBy), "debian-archive-")
	}
	// Unsigned-by entries trust the host's keyrings: accept only URIs
	// laid out like the archive (…/debian, …/debian-security, snapshot
	// …/archive/debian/TIMESTAMP).
	u, err := url.Parse(s.URIs[0])
	if err != nil {
		return false
	}
	for _, seg := range strings.Split(strings.Trim(u.Path, "/"), "/") {
		if seg == "debian" || seg == "debian-security" {
			return true
		}
	}
	return false
}

// splitSuite splits "bookworm-security" into ("bookworm", "-security") and
// "buster/updates" into ("buster", "/updates").
func splitSuite(s string) (base, suffix string) {
	for _, suf := range []string{"-updates", "-security", "-backports-sloppy", "-backports", "-proposed-updates", "/updates"} {
		if strings.HasSuffix(s, suf) {
			return strings.TrimSuffix(s, suf), suf
		}
	}
	return s, ""
}

// HostCodename guesses the build host's codename from its sources when
// /etc/os-release does not say: the base suite of the first Debian entry.
func HostCodename(srcs []Source) string {
	for _, s := range srcs {
		if isDebianArchive(s) && len(s.Suites) > 0 {
			b, _ := splitSuite(s.Suites[0])
			return b
		}
	}
	return ""
}

// MapHostSources turns the build host's apt sources into the sources a
// bootstrap of suite fetches from (one-line entries for mmdebstrap), so a
// build with no mirror configured uses whatever mirror, proxy-facing URI or
// snapshot the host's administrator chose; bake never hard-codes a mirror
// host.
//
// Only Debian archive entries are kept (see isDebianArchive). Each of the
// host's suites is mapped onto the requested one: hostCodename ->
// suite, hostCodename-updates -> suite-updates, hostCodename-security ->
// suite-security (suite/updates before bullseye). Backports and
// proposed-updates are dropped: they are not needed to bootstrap and may not
// exist for the requested suite, which would fail the update. Unstable
// suites get the base suite only. components replaces the host's
// components: the recipe decides what the image may use.
func MapHostSources(hostCodename, suite string, components []string, srcs []Source) ([]string, error) {
	if len(components) == 0 {
		components = []string{"main"}
	}
	var out []string
	seen := map[string]bool{}
	for _, s := range srcs {
		if !isDebianArchive(s) {
			continue
		}
		for _, hs := range s.Suites {
			base, suffix := splitSuite(hs)
			if base != hostCodename && !slices.Contains(debianAliases, base) {
				continue
			}
			var target string
			switch suffix {
			case "":
				target = suite
			case "-updates":
				target = suite + "-updates"
			case "-security", "/updates":
				if slices.Contains(oldSecurityLayout, suite) {
					target = suite + "/updates"
				} else {
					target = suite + "-security"
				}
			default:
				continue
			}
			if suffix != "" && slices.Contains(unstableSuites, suite) {
				continue
			}
			for _, uri := range s.URIs {
				key := strings.TrimSuffix(uri, "/") + " " + target
				if seen[key] {
					continue
				}
				seen[key] = true
				opts := ""
				if s.SignedBy != "" {
					opts = "[signed-by=" + s.SignedBy + "] "
				}
				out = append(out, "deb "+opts+uri+" "+target+" "+strings.Join(components, " "))
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the build host's apt sources name no Debian archive for %q: set the recipe's mirror or build_mirror", hostCodename)
	}
	return out, nil
}

// MirrorSources are the build sources for an explicit mirror: the suite and,
// for released suites, its -updates. Security updates live in a separate
// archive (debian-security) whose location bake cannot derive from an
// arbitrary mirror URL.
func MirrorSources(mirror, suite string, components []string) []string {
	if len(components) == 0 {
		components = []string{"main"}
	}
	c := strings.Join(components, " ")
	out := []string{"deb " + mirror + " " + suite + " " + c}
	if !slices.Contains(unstableSuites, suite) {
		out = append(out, "deb "+mirror+" "+suite+"-updates "+c)
	}
	return out
}

// DebianSourcesFile is the image's /etc/apt/sources.list.d/debian.sources
// for mirror (deb822, as Debian 12 writes it), verified with the
// debian-archive-keyring the image has (apt depends on it).
func DebianSourcesFile(mirror, suite string, components []string) string {
	if len(components) == 0 {
		components = []string{"main"}
	}
	suites := suite
	if !slices.Contains(unstableSuites, suite) {
		suites += " " + suite + "-updates"
	}
	return "# Written by bake.\n" +
		"Types: deb\n" +
		"URIs: " + mirror + "\n" +
		"Suites: " + suites + "\n" +
		"Components: " + strings.Join(components, " ") + "\n" +
		"Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
}
