package builder

import (
	"encoding"
	"encoding/json"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"unicode"
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
	rel := relativizer(r.Dir)
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

// relativizer writes host paths under the recipe's folder relative to it.
type relativizer string

func (d relativizer) path(p string) string {
	dir := string(d)
	if dir == "" || !filepath.IsAbs(p) {
		return p
	}
	if r, err := filepath.Rel(dir, p); err == nil {
		switch {
		case r == "." || strings.HasPrefix(r, "../") && strings.Count(r, "../") <= 3:
			return r
		case !strings.HasPrefix(r, "../"):
			return "./" + r
		}
	}
	return p
}

// text rewrites every absolute path in s that lies under the recipe's
// folder's parents (up to three levels: a context of ../../..).
func (d relativizer) text(s string) string {
	dir := string(d)
	if dir == "" {
		return s
	}
	// The longest prefix first: the folder, then its parents.
	prefixes := []string{dir}
	for p := dir; len(prefixes) < 4; {
		p = filepath.Dir(p)
		if p == "/" || p == "." {
			break
		}
		prefixes = append(prefixes, p)
	}
	for i, p := range prefixes {
		rel := "."
		if i > 0 {
			rel = strings.TrimSuffix(strings.Repeat("../", i), "/")
		}
		s = strings.ReplaceAll(s, p+"/", rel+"/")
		if strings.HasSuffix(s, p) {
			s = strings.TrimSuffix(s, p) + rel
		}
	}
	return s
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
