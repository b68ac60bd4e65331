package oci

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// This file checks a Node version against an npm `engines.node` range
// (node-semver syntax: `||`, space-separated comparators, hyphen ranges,
// ^ ~ x-ranges). Node releases have no prerelease part, so prereleases in
// ranges are compared by their numbers only.

type semver [3]int

func (a semver) cmp(b semver) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func (a semver) String() string { return fmt.Sprintf("%d.%d.%d", a[0], a[1], a[2]) }

func parseVersion(s string) (semver, error) {
	p, n, err := parsePartial(s)
	if err != nil || n != 3 {
		return semver{}, fmt.Errorf("%q is not a version (want MAJOR.MINOR.PATCH)", s)
	}
	return p, nil
}

// maxPart is the largest version part node-semver accepts
// (Number.MAX_SAFE_INTEGER). It also keeps bump from wrapping around: a
// range such as ">9223372036854775807" from a package's engines.node must
// not read as ">= -9223372036854775808.0.0", which every version satisfies.
const maxPart = 1<<53 - 1

// parsePartial parses "24", "24.16", "24.16.0", "24.x", "*", with an
// optional leading v/= and ignoring prerelease and build suffixes. n is the
// number of parts given (0 for "*" or "").
func parsePartial(s string) (semver, int, error) {
	s = strings.TrimLeft(strings.TrimSpace(s), "=v")
	if i := strings.IndexAny(s, "-+"); i >= 0 {
		s = s[:i]
	}
	var v semver
	if s == "" || s == "*" || s == "x" || s == "X" {
		return v, 0, nil
	}
	parts := strings.Split(s, ".")
	if len(parts) > 3 {
		return v, 0, fmt.Errorf("bad version %q", s)
	}
	n := 0
	for i, p := range parts {
		if p == "x" || p == "X" || p == "*" {
			break
		}
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 || x > maxPart {
			return v, 0, fmt.Errorf("bad version %q", s)
		}
		v[i] = x
		n++
	}
	return v, n, nil
}

// bump returns the smallest version above every version matching the
// partial v with n parts (24 -> 25.0.0, 24.16 -> 24.17.0).
func bump(v semver, n int) semver {
	switch n {
	case 1:
		return semver{v[0] + 1, 0, 0}
	case 2:
		return semver{v[0], v[1] + 1, 0}
	}
	return v
}

type constraint struct {
	op string // ">=", ">", "<", "<=", "="
	v  semver
}

func (c constraint) ok(v semver) bool {
	d := v.cmp(c.v)
	switch c.op {
	case ">=":
		return d >= 0
	case ">":
		return d > 0
	case "<":
		return d < 0
	case "<=":
		return d <= 0
	}
	return d == 0
}

var opSpace = regexp.MustCompile(`(>=|<=|>|<|=|\^|~>?)\s+`)

// satisfies reports whether version satisfies the npm range rng.
func satisfies(version, rng string) (bool, error) {
	v, err := parseVersion(version)
	if err != nil {
		return false, err
	}
	for _, set := range strings.Split(rng, "||") {
		cs, err := parseSet(set)
		if err != nil {
			return false, fmt.Errorf("range %q: %w", rng, err)
		}
		all := true
		for _, c := range cs {
			if !c.ok(v) {
				all = false
				break
			}
		}
		if all {
			return true, nil
		}
	}
	return false, nil
}

func parseSet(set string) ([]constraint, error) {
	set = opSpace.ReplaceAllString(strings.TrimSpace(set), "$1")
	f := strings.Fields(set)
	if len(f) == 3 && f[1] == "-" {
		lo, _, err := parsePartial(f[0])
		if err != nil {
			return nil, err
		}
		hi, n, err := parsePartial(f[2])
		if err != nil {
			return nil, err
		}
		cs := []constraint{{">=", lo}}
		switch {
		case n == 3:
			cs = append(cs, constraint{"<=", hi})
		case n > 0:
			cs = append(cs, constraint{"<", bump(hi, n)})
		}
		return cs, nil
	}
	var out []constraint
	for _, c := range f {
		cs, err := parseComparator(c)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

func parseComparator(c string) ([]constraint, error) {
	op := ""
	for _, o := range []string{">=", "<=", "~>", ">", "<", "=", "^", "~"} {
		if strings.HasPrefix(c, o) {
			op, c = o, c[len(o):]
			break
		}
	}
	v, n, err := parsePartial(c)
	if err != nil {
		return nil, err
	}
	if n == 0 { // *, x: anything (and "<*" nothing)
		if op == "<" || op == ">" {
			return []constraint{{"<", semver{}}}, nil
		}
		return nil, nil
	}
	switch op {
	case "", "=":
		if n == 3 {
			return []constraint{{"=", v}}, nil
		}
		return []constraint{{">=", v}, {"<", bump(v, n)}}, nil
	case ">=":
		return []constraint{{">=", v}}, nil
	case ">":
		if n == 3 {
			return []constraint{{">", v}}, nil
		}
		return []constraint{{">=", bump(v, n)}}, nil
	case "<":
		return []constraint{{"<", v}}, nil
	case "<=":
		if n == 3 {
			return []constraint{{"<=", v}}, nil
		}
		return []constraint{{"<", bump(v, n)}}, nil
	case "~", "~>":
		if n == 1 {
			return []constraint{{">=", v}, {"<", bump(v, 1)}}, nil
		}
		return []constraint{{">=", v}, {"<", bump(v, 2)}}, nil
	case "^":
		var hi semver
		switch {
		case v[0] > 0 || n == 1:
			hi = semver{v[0] + 1, 0, 0}
		case v[1] > 0 || n == 2:
			hi = semver{0, v[1] + 1, 0}
		default:
			hi = semver{0, 0, v[2] + 1}
		}
		return []constraint{{">=", v}, {"<", hi}}, nil
	}
	return nil, fmt.Errorf("bad comparator %q", c)
}
