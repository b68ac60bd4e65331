package builder

import (
	"encoding"
	"encoding/json"
	"io"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"unicode"

	"github.com/bakeimg/bake/builder/recipe"
)

// PlanJSON is what `bake plan --json` prints: the recipe compiled once
// into its resolved model (every default applied, sizes in bytes, the
// final kernel command line, the typed firewall rules, container ports
// and mounts, the gateway's paths), the stages with their inputs, what the
// build reads from the host, and bake's notes. Host paths under the
// recipe's folder are written relative to it ("./..."), so the same
// recipe prints the same JSON in any checkout; nothing of the build host's
// options (output or cache dir) or the time is in it.
type PlanJSON struct {
	Recipe    string            `json:"recipe"` // the file, relative to its folder
	Digest    string            `json:"sha256"`
	Variables map[string]string `json:"variables,omitempty"`
	Model     any               `json:"model"`
	HostReads []PlanHostRead    `json:"host_reads"`
	Stages    []PlanStageJSON   `json:"stages"`
	Notes     []string          `json:"notes,omitempty"`
}

// PlanHostRead is one thing the build reads from the build host.
type PlanHostRead struct {
	What string `json:"what"`
	Path string `json:"path"`
}

// PlanStageJSON is a stage and its inputs, as `bake plan` prints them.
type PlanStageJSON struct {
	Name   string   `json:"name"`
	Inputs []string `json:"inputs,omitempty"`
}

// JSON is the plan as PlanJSON.
func (p *Plan) JSON() PlanJSON {
	r := p.Recipe
	rel := newRelativizer(r.Dir, r.HostPaths())
	out := PlanJSON{
		Recipe:    filepath.Base(r.Path),
		Digest:    r.Digest,
		Variables: r.Vars,
	}
	model, _ := modelValue(reflect.ValueOf(r).Elem()).(map[string]any)
	// The recipe's own file, folder, digest and variables (as written and
	// as in effect) are PlanJSON's.
	for _, k := range []string{"path", "dir", "digest", "vars", "variables"} {
		delete(model, k)
	}
	out.Model = rel.value(model)
	for _, hp := range r.HostPaths() {
		out.HostReads = append(out.HostReads, PlanHostRead{What: hp.What, Path: rel.path(hp.Path)})
	}
	for _, s := range p.Stages {
		st := PlanStageJSON{Name: s.Name}
		for _, in := range s.Inputs {
			st.Inputs = append(st.Inputs, rel.text(in))
		}
		out.Stages = append(out.Stages, st)
	}
	for _, n := range p.Notes {
		out.Notes = append(out.Notes, rel.text(n))
	}
	return out
}

// PrintJSON writes the plan as indented JSON.
func (p *Plan) PrintJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(p.JSON())
}

// modelValue turns the recipe into plain maps, lists and scalars: a field
// is named as the recipe writes it (its yaml tag), a field the recipe
// does not write (a resolved value: yaml:"-") gets its snake_case name;
// empty values are left out; a value with a text form (netip.Prefix)
// prints as that.
func modelValue(v reflect.Value) any {
	if !v.IsValid() {
		return nil
	}
	if v.CanInterface() {
		if tm, ok := v.Interface().(encoding.TextMarshaler); ok && v.Kind() != reflect.Pointer {
			if b, err := tm.MarshalText(); err == nil {
				return string(b)
			}
		}
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return modelValue(v.Elem())
	case reflect.Struct:
		m := map[string]any{}
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			fv := v.Field(i)
			if fv.IsZero() {
				continue
			}
			name := fieldName(f)
			if name == "" {
				continue
			}
			if x := modelValue(fv); x != nil {
				m[name] = x
			}
		}
		if len(m) == 0 {
			return nil
		}
		return m
	case reflect.Slice, reflect.Array:
		if v.Len() == 0 {
			return nil
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = modelValue(v.Index(i))
		}
		return out
	case reflect.Map:
		if v.Len() == 0 {
			return nil
		}
		m := map[string]any{}
		iter := v.MapRange()
		for iter.Next() {
			m[toString(iter.Key())] = modelValue(iter.Value())
		}
		return m
	default:
		return v.Interface()
	}
}

func toString(v reflect.Value) string {
	if v.Kind() == reflect.String {
		return v.String()
	}
	b, _ := json.Marshal(v.Interface())
	return string(b)
}

// fieldName: the yaml tag's name, or snake_case of the Go name for fields
// the recipe does not write (resolved values).
func fieldName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag != "" && tag != "-" {
		return tag
	}
	// ESPVolumeID -> esp_volume_id, SizeBytes -> size_bytes.
	n := []rune(f.Name)
	var b strings.Builder
	for i, c := range n {
		if i > 0 && unicode.IsUpper(c) && (unicode.IsLower(n[i-1]) || (i+1 < len(n) && unicode.IsLower(n[i+1]))) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

// relativizer writes host paths relative to the recipe's folder: paths
// under it as "./...", and paths under its parents (up to three levels: a
// context of ../../..) as "../..." when they are host paths the recipe
// reads (r.HostPaths(): the recipe, its context, overlays, keys, ...).
// Every other absolute path is the image's (/var/lib/tailscale, /etc/...)
// and is written as it is, whatever folder the recipe lives in: before
// session 22 every path under the folder's three parents was rewritten,
// so that a recipe in /var/tmp/x/recipes printed /var/lib/tailscale as
// ../../../lib/tailscale (and one in /home/me/proj/recipes would have
// printed /home/openclaw/.openclaw as ../../openclaw/.openclaw).
type relativizer struct {
	dir   string   // the recipe's folder, absolute
	real  string   // dir with its symlinks resolved, when that differs
	hosts []string // the host paths the recipe reads, absolute and clean
}

func newRelativizer(dir string, hosts []recipe.HostPath) relativizer {
	d := relativizer{dir: dir}
	if dir != "" {
		if abs, err := filepath.Abs(dir); err == nil {
			d.dir = abs
		}
		if real, err := filepath.EvalSymlinks(d.dir); err == nil && real != d.dir {
			// A host path is written with symlinks resolved (HostPaths).
			d.real = real
			d.hosts = append(d.hosts, real)
		}
	}
	for _, h := range hosts {
		if filepath.IsAbs(h.Path) {
			d.hosts = append(d.hosts, filepath.Clean(h.Path))
		}
	}
	return d
}

// under says whether p is dir or lies below it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// host says whether the absolute path p is a host path: under the
// recipe's folder or under (or equal to) a host path the recipe reads.
func (d relativizer) host(p string) bool {
	p = filepath.Clean(p)
	if d.dir != "" && under(p, d.dir) {
		return true
	}
	for _, h := range d.hosts {
		if under(p, h) {
			return true
		}
	}
	return false
}

// path writes the host path p relative to the recipe's folder: "." or
// "./x" below it, "../x" up to three levels above it; any other path as
// it is.
func (d relativizer) path(p string) string {
	if d.dir == "" || !filepath.IsAbs(p) || !d.host(p) {
		return p
	}
	bases := []string{d.dir}
	if d.real != "" {
		bases = append(bases, d.real) // host paths are written resolved
	}
	for _, base := range bases {
		r, err := filepath.Rel(base, filepath.Clean(p))
		if err != nil {
			continue
		}
		switch {
		case r == ".":
			return r
		case strings.HasPrefix(r, "../"):
			if strings.Count(r, "../") <= 3 {
				return r
			}
		default:
			return "./" + r
		}
	}
	return p
}

// absPathRE finds the absolute paths in a text: a "/" that starts a word
// (at the start, or after a space, a quote, a parenthesis, "=" or ":"
// followed by a space), then anything but spaces, quotes, commas,
// parentheses and brackets.
var absPathRE = regexp.MustCompile(`(?:^|[\s"'(=\[])(/[^\s"'(),;\[\]{}<>|]*)`)

// text rewrites every host path in s (see relativizer) and leaves the
// image's paths as they are.
func (d relativizer) text(s string) string {
	if d.dir == "" {
		return s
	}
	var b strings.Builder
	last := 0
	for _, m := range absPathRE.FindAllStringSubmatchIndex(s, -1) {
		i, j := m[2], m[3]
		p := s[i:j]
		// A sentence's full stop is not part of the path.
		trail := ""
		for strings.HasSuffix(p, ".") && len(p) > 1 {
			p, trail = p[:len(p)-1], "."+trail
		}
		r := d.path(p)
		if r == p {
			continue
		}
		b.WriteString(s[last:i])
		b.WriteString(r + trail)
		last = j
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

func (d relativizer) value(v any) any {
	switch x := v.(type) {
	case string:
		return d.text(x)
	case map[string]any:
		for k, e := range x {
			x[k] = d.value(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = d.value(e)
		}
		return x
	}
	return v
}
