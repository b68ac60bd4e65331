package recipe

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/goccy/go-yaml/ast"
)

// Variables: a recipe declares `variables: {name: default}`, any text value
// outside that block may say ${name}, --set name=value overrides a default,
// and $${ is a literal ${. Substitution is done per decoded scalar (not on
// the raw file) so that a value can never inject YAML structure and every
// error keeps the position of the scalar it is in. Defaults are literal:
// they are not themselves expanded.

func isVarName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// refError is a bad ${...} at byte offset off of the value; ref is the text
// of the reference as written, used to find it in the file.
type refError struct {
	off       int
	ref       string
	msg, hint string
}

// expandVars substitutes vars into s.
func expandVars(s string, vars map[string]string) (string, []refError) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	var errs []refError
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			b.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				errs = append(errs, refError{off: i, ref: "${", msg: "unterminated variable reference: ${ without a closing }",
					hint: "write ${name}, or $${ for a literal ${"})
				b.WriteString(s[i:])
				i = len(s)
				continue
			}
			name := s[i+2 : i+2+end]
			ref := s[i : i+3+end]
			switch v, ok := vars[name]; {
			case !isVarName(name):
				errs = append(errs, refError{off: i, ref: ref, msg: fmt.Sprintf("%q is not a variable reference", ref),
					hint: "variable names are letters, digits and _; write $${ for a literal ${"})
			case !ok:
				hint := fmt.Sprintf("declare it: variables: {%s: default}, or write $${%s} for a literal ${", name, name)
				if sug := suggest(name, slices.Sorted(mapKeys(vars))); sug != "" {
					hint = fmt.Sprintf("did you mean ${%s}?", sug)
				}
				errs = append(errs, refError{off: i, ref: ref, msg: fmt.Sprintf("undefined variable %s", ref), hint: hint})
			default:
				b.WriteString(v)
			}
			i += len(ref)
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), errs
}

// expand substitutes d.vars into the text of scalar n at path and reports
// bad references at their own line and column where they can be found.
func (d *decoder) expand(s string, n ast.Node, path string) string {
	out, errs := expandVars(s, d.vars)
	for _, e := range errs {
		nth := strings.Count(s[:e.off], e.ref)
		line, col := d.locate(n, e.ref, nth)
		if line == 0 {
			line, col = nodePos(n, d.src.keys[path])
		}
		d.diags = append(d.diags, Diagnostic{File: d.src.file, Line: line, Col: col, Path: path,
			Msg: fmt.Sprintf("%s: %s", path, e.msg), Hint: e.hint})
		d.src.bad[path] = true
	}
	return out
}

// locate finds the nth occurrence of ref in the file at or after scalar n,
// so an error points at the reference itself, also inside block literals.
// Escapes in quoted scalars may hide it; then the caller uses n's position.
func (d *decoder) locate(n ast.Node, ref string, nth int) (int, int) {
	line, col := tokenPos(n.GetToken())
	if line == 0 {
		return 0, 0
	}
	for l := line - 1; l < len(d.src.lines); l++ {
		text := d.src.lines[l]
		start := 0
		if l == line-1 {
			start = runeOffset(text, col-1)
		}
		for {
			i := strings.Index(text[start:], ref)
			if i < 0 {
				break
			}
			if nth == 0 {
				return l + 1, utf8.RuneCountInString(text[:start+i]) + 1
			}
			nth--
			start += i + len(ref)
		}
	}
	return 0, 0
}

// runeOffset is the byte offset of rune index r in s (goccy counts columns
// in runes).
func runeOffset(s string, r int) int {
	for i := range s {
		if r == 0 {
			return i
		}
		r--
	}
	return len(s)
}
