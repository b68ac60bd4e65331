package recipe

// Decoding walks goccy's AST against the Go types in types.go instead of
// handing the document to yaml.Unmarshal alone, for three reasons:
//   - goccy's decoder stops at the first problem (and reports unknown keys in
//     Go map order); a user should see every unknown key and wrong type at
//     once, in file order;
//   - it is lax where a recipe must not be: it turns `uid: "1000"` into a
//     number, `mode: 0644` into the text "420" and `sudo: true` into "true";
//   - every value's position is recorded under its field path (users[1].name),
//     so validation errors point at the offending value, and ${var}
//     substitution happens per scalar, where its position is known.
// goccy's strict decoder still runs afterwards as a cross-check (crossCheck).

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/token"
)

// source is what decoding learnt about where each value is in the file.
type source struct {
	file   string
	lines  []string
	nodes  map[string]ast.Node // field path → value node as written
	keys   map[string]ast.Node // field path → its key node
	parent map[string]string   // field path → enclosing field path
	bad    map[string]bool     // field paths whose value did not decode
}

// has reports whether path was written in the recipe (even as null).
func (s *source) has(path string) bool {
	if s == nil {
		return false
	}
	_, ok := s.nodes[path]
	return ok
}

// node returns the value node written at path, or nil.
func (s *source) node(path string) ast.Node {
	if s == nil {
		return nil
	}
	return s.nodes[path]
}

// pos is the position of the value at path, or of the nearest enclosing
// value that was written (a missing field is reported at its parent).
func (s *source) pos(path string) (line, col int) {
	if s == nil {
		return 0, 0
	}
	for p := path; ; {
		if n, ok := s.nodes[p]; ok {
			return nodePos(n, s.keys[p])
		}
		if p == "" {
			return 0, 0
		}
		parent, ok := s.parent[p]
		if !ok {
			// Not written: a missing field. Validation only asks about
			// struct fields and list items, whose paths split plainly.
			parent = parentOf(p)
		}
		p = parent
	}
}

// keyPos is the position of the key of path, falling back to pos.
func (s *source) keyPos(path string) (line, col int) {
	if s != nil {
		if k, ok := s.keys[path]; ok {
			return tokenPos(k.GetToken())
		}
	}
	return s.pos(path)
}

// nodePos is where a user sees a value: a block mapping starts at its
// first key (goccy's token for it is the first ':'), and an empty value
// (`name:`) is best shown at its key.
func nodePos(n ast.Node, key ast.Node) (int, int) {
	switch n := n.(type) {
	case *ast.MappingNode:
		if !n.IsFlowStyle && len(n.Values) > 0 && n.Values[0].Key != nil {
			return tokenPos(n.Values[0].Key.GetToken())
		}
	case *ast.NullNode:
		if key != nil && (n.Token == nil || n.Token.Type == token.ImplicitNullType) {
			return tokenPos(key.GetToken())
		}
	}
	return tokenPos(n.GetToken())
}

func tokenPos(tk *token.Token) (int, int) {
	if tk == nil || tk.Position == nil {
		return 0, 0
	}
	return tk.Position.Line, tk.Position.Column
}

// maxDepth bounds alias and merge-key chains; the schema itself is shallow.
const maxDepth = 32

type decoder struct {
	src     *source
	diags   Diagnostics
	anchors map[string][]*ast.AnchorNode
	// vars are the effective variables; nil while decoding the variables
	// block itself, whose values are literal.
	vars map[string]string
}

func newDecoder(src *source) *decoder {
	src.nodes = map[string]ast.Node{}
	src.keys = map[string]ast.Node{}
	src.parent = map[string]string{}
	src.bad = map[string]bool{}
	return &decoder{src: src, anchors: map[string][]*ast.AnchorNode{}}
}

// errAt reports a problem at node n (or, when n is nil, at path's position)
// and marks path as not decoded, so validation does not pile a second
// message ("name is required") onto the same mistake.
func (d *decoder) errAt(n ast.Node, path, msg, hint string) {
	line, col := d.src.pos(path)
	if n != nil {
		line, col = nodePos(n, d.src.keys[path])
	}
	d.diags = append(d.diags, Diagnostic{File: d.src.file, Line: line, Col: col, Path: path, Msg: msg, Hint: hint})
	d.src.bad[path] = true
}

func (d *decoder) record(path, parent string, key, value ast.Node) {
	d.src.nodes[path] = value
	if key != nil {
		d.src.keys[path] = key
	}
	if path != parent {
		d.src.parent[path] = parent
	}
}

func childPath(parent, key string) string {
	if !isIdent(key) {
		return parent + "[" + strconv.Quote(key) + "]"
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func parentOf(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndex(p, "["); i >= 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndex(p, "."); i >= 0 {
		return p[:i]
	}
	return ""
}

func indexPath(parent string, i int) string { return fmt.Sprintf("%s[%d]", parent, i) }

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

type anchorCollector struct{ d *decoder }

func (a anchorCollector) Visit(n ast.Node) ast.Visitor {
	if an, ok := n.(*ast.AnchorNode); ok && an.Name != nil {
		name := an.Name.GetToken().Value
		a.d.anchors[name] = append(a.d.anchors[name], an)
	}
	return a
}

// decodeRecipe decodes body into r. Variables are decoded first, wherever
// the block is, because every other string may refer to them. It returns
// false, having decoded nothing, for a document over the value budget
// (MaxNodes), which would cost exponential time to expand.
func (d *decoder) decodeRecipe(r *Recipe, body ast.Node, sets map[string]string) bool {
	ast.Walk(anchorCollector{d}, body)
	if !d.checkBudget(body) {
		return false
	}
	d.record("", "", nil, body)

	root, tag := d.resolve(body, "")
	if root == nil {
		return true
	}
	m, ok := root.(*ast.MappingNode)
	if !ok || tag != "" {
		d.errAt(body, "", fmt.Sprintf("a recipe is a YAML mapping, found %s", describe(root)),
			"start with apiVersion: bake/v1, then name:, base: and the other sections")
		return true
	}
	entries := d.entries(m, "", 0)

	for _, mv := range entries {
		if k, _ := d.keyText(mv.Key); k == "variables" {
			d.record("variables", "", mv.Key, mv.Value)
			d.decode(reflect.ValueOf(&r.Variables).Elem(), mv.Value, "variables", 0)
		}
	}
	d.applyVariables(r, sets)

	d.decodeStruct(reflect.ValueOf(r).Elem(), entries, "", func(key string) bool { return key == "variables" })
	return true
}

// applyVariables computes r.Vars from the declared defaults and sets.
func (d *decoder) applyVariables(r *Recipe, sets map[string]string) {
	r.Vars = map[string]string{}
	for name, v := range r.Variables {
		path := childPath("variables", name)
		if !isVarName(name) {
			line, col := d.src.keyPos(path)
			d.diags = append(d.diags, Diagnostic{File: d.src.file, Line: line, Col: col, Path: path,
				Msg:  fmt.Sprintf("variable name %q is not valid", name),
				Hint: "use letters, digits and _, starting with a letter or _, e.g. disk_size"})
			continue
		}
		r.Vars[name] = v
	}
	names := make([]string, 0, len(sets))
	for name := range sets {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, ok := r.Variables[name]; ok {
			r.Vars[name] = sets[name]
			continue
		}
		declared := slices.Sorted(mapKeys(r.Variables))
		hint := fmt.Sprintf("declare it in the recipe, e.g. variables: {%s: default}", name)
		if s := suggest(name, declared); s != "" {
			hint = fmt.Sprintf("did you mean --set %s=...?", s)
		} else if len(declared) > 0 {
			hint += "; declared: " + strings.Join(declared, ", ")
		}
		line, col := d.src.keyPos("variables")
		if !d.src.has("variables") {
			line, col = 0, 0
		}
		d.diags = append(d.diags, Diagnostic{File: d.src.file, Line: line, Col: col, Path: "variables",
			Msg: fmt.Sprintf("--set %s=%s: the recipe declares no variable %q", name, sets[name], name), Hint: hint})
	}
	d.vars = r.Vars
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// resolve looks through anchors, aliases, tags and `? key` wrappers to the
// node that holds the value. It returns nil (after reporting) for an alias
// with no anchor or a tag other than !!str, and the tag that was seen.
func (d *decoder) resolve(n ast.Node, path string) (ast.Node, string) {
	tag := ""
	for range maxDepth {
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
		case *ast.MappingKeyNode:
			n = v.Value
		case *ast.TagNode:
			t := v.Start.Value
			if t != "!!str" {
				d.errAt(v, path, fmt.Sprintf("YAML tag %s is not supported in a recipe", t),
					"remove it; quote the value, or tag it !!str, to make it text")
				return nil, ""
			}
			tag = t
			n = v.Value
		case *ast.AliasNode:
			target := d.anchorFor(v)
			if target == nil {
				d.errAt(v, path, fmt.Sprintf("alias %s refers to no anchor before it", v.String()),
					"define the anchor first, e.g. packages: &common [curl] ... packages: *common")
				return nil, ""
			}
			n = target.Value
		case nil:
			d.errAt(nil, path, "missing value", "")
			return nil, ""
		default:
			return n, tag
		}
		if n == nil {
			d.errAt(nil, path, "missing value", "")
			return nil, ""
		}
	}
	d.errAt(n, path, "anchors and aliases nest too deeply", "simplify the aliases")
	return nil, ""
}

// anchorFor is the last anchor of that name defined before the alias, as
// YAML specifies (anchors may be redefined).
func (d *decoder) anchorFor(a *ast.AliasNode) *ast.AnchorNode {
	if a.Value == nil {
		return nil
	}
	name := a.Value.GetToken().Value
	at := a.GetToken().Position.Offset
	var found *ast.AnchorNode
	for _, an := range d.anchors[name] {
		if an.GetToken().Position.Offset < at {
			found = an
		}
	}
	return found
}

// entries returns a mapping's key/value pairs with merge keys (`<<: *base`)
// expanded: explicit keys win over merged ones, earlier merge sources over
// later ones.
func (d *decoder) entries(m *ast.MappingNode, path string, depth int) []*ast.MappingValueNode {
	if depth > maxDepth {
		d.errAt(m, path, "merge keys nest too deeply", "simplify the << merges")
		return nil
	}
	var explicit, merged []*ast.MappingValueNode
	for _, mv := range m.Values {
		if _, ok := mv.Key.(*ast.MergeKeyNode); !ok {
			explicit = append(explicit, mv)
			continue
		}
		src, _ := d.resolve(mv.Value, path)
		var sources []ast.Node
		if seq, ok := src.(*ast.SequenceNode); ok {
			sources = seq.Values
		} else if src != nil {
			sources = []ast.Node{src}
		}
		for _, s := range sources {
			s, _ = d.resolve(s, path)
			sm, ok := s.(*ast.MappingNode)
			if !ok {
				if s != nil {
					d.errAt(mv.Value, path, "<< merges mappings only, found "+describe(s), "write <<: *anchor_of_a_mapping")
				}
				continue
			}
			merged = append(merged, d.entries(sm, path, depth+1)...)
		}
	}
	seen := map[string]bool{}
	for _, mv := range explicit {
		if k, ok := d.keyText(mv.Key); ok {
			seen[k] = true
		}
	}
	out := explicit
	for _, mv := range merged {
		k, ok := d.keyText(mv.Key)
		if ok && seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, mv)
	}
	return out
}

// keyText is a mapping key as text; keys are scalars in a recipe.
func (d *decoder) keyText(k ast.Node) (string, bool) {
	for range maxDepth {
		switch v := k.(type) {
		case *ast.MappingKeyNode:
			k = v.Value
			continue
		case *ast.StringNode:
			return v.Value, true
		case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.NullNode:
			return v.GetToken().Value, true
		}
		return "", false
	}
	return "", false
}

// decode stores node n into v; path names v in messages. The caller has
// recorded n at path.
func (d *decoder) decode(v reflect.Value, written ast.Node, path string, depth int) {
	// Errors point at the value as written (an alias, a tag), not at
	// what it resolves to.
	at := written
	n, tag := d.resolve(written, path)
	if n == nil {
		return
	}
	if _, null := n.(*ast.NullNode); null && tag == "" {
		// An empty value is the zero value, except that a pointer to a
		// section is allocated: `debian:` alone still says which base was
		// meant, and validation then asks for its required fields.
		if v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		s, ok := d.scalarText(n, at, tag, path)
		if !ok {
			return
		}
		if d.vars != nil {
			s = d.expand(s, n, path)
		}
		v.SetString(s)
	case reflect.Bool:
		b, ok := n.(*ast.BoolNode)
		if !ok || tag != "" {
			d.errAt(at, path, fmt.Sprintf("%s: must be true or false, found %s", path, describeTagged(n, tag)),
				fmt.Sprintf("write %s: true or %s: false, without quotes", lastKey(path), lastKey(path)))
			return
		}
		v.SetBool(b.Value)
	case reflect.Pointer:
		switch v.Type().Elem().Kind() {
		case reflect.Int:
			i, ok := d.integer(n, at, tag, path)
			if ok {
				v.Set(reflect.ValueOf(&i))
			}
		case reflect.Bool:
			// *bool: a setting whose default is true, so that
			// `false` can be told from "not written".
			b := reflect.New(v.Type().Elem())
			d.decode(b.Elem(), written, path, depth)
			if !d.src.bad[path] {
				v.Set(b)
			}
		case reflect.Struct:
			m, ok := n.(*ast.MappingNode)
			if !ok || tag != "" {
				d.errAt(at, path, fmt.Sprintf("%s: must be a mapping, found %s", path, describeTagged(n, tag)), knownFieldsHint(v.Type().Elem()))
				return
			}
			p := reflect.New(v.Type().Elem())
			d.decodeStruct(p.Elem(), d.entries(m, path, depth), path, nil)
			v.Set(p)
		default:
			panic("recipe: unsupported field type " + v.Type().String())
		}
	case reflect.Struct:
		m, ok := n.(*ast.MappingNode)
		if !ok || tag != "" {
			d.errAt(at, path, fmt.Sprintf("%s: must be a mapping, found %s", path, describeTagged(n, tag)), knownFieldsHint(v.Type()))
			return
		}
		d.decodeStruct(v, d.entries(m, path, depth), path, nil)
	case reflect.Slice:
		seq, ok := n.(*ast.SequenceNode)
		if !ok || tag != "" {
			hint := fmt.Sprintf("write a list: %s: [a, b], or one `- item` per line", lastKey(path))
			if _, isMap := n.(*ast.MappingNode); isMap {
				hint = "start each item with `- `"
			} else if s, ok := d.scalarQuiet(n); ok && v.Type().Elem().Kind() == reflect.String {
				hint = fmt.Sprintf("write a list: %s: [%s]", lastKey(path), s)
			}
			d.errAt(at, path, fmt.Sprintf("%s: must be a list, found %s", path, describeTagged(n, tag)), hint)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(seq.Values), len(seq.Values))
		for i, item := range seq.Values {
			ip := indexPath(path, i)
			d.record(ip, path, nil, item)
			d.decode(s.Index(i), item, ip, depth+1)
		}
		v.Set(s)
	case reflect.Map:
		m, ok := n.(*ast.MappingNode)
		if !ok || tag != "" {
			d.errAt(at, path, fmt.Sprintf("%s: must be a mapping of names to text, found %s", path, describeTagged(n, tag)),
				fmt.Sprintf("write %s: {name: value}", lastKey(path)))
			return
		}
		out := reflect.MakeMap(v.Type())
		for _, mv := range d.entries(m, path, depth) {
			k, ok := d.keyText(mv.Key)
			if !ok {
				d.errAt(mv.Key, path, fmt.Sprintf("keys in %s must be plain text, found %s", path, describe(mv.Key)), "")
				continue
			}
			kp := childPath(path, k)
			d.record(kp, path, mv.Key, mv.Value)
			ev := reflect.New(v.Type().Elem()).Elem()
			d.decode(ev, mv.Value, kp, depth+1)
			out.SetMapIndex(reflect.ValueOf(k), ev)
		}
		v.Set(out)
	case reflect.Interface:
		// An opaque value (containers[].build): kept as plain Go values,
		// positions recorded, variables substituted in text.
		if val, ok := d.generic(n, path, depth); ok && val != nil {
			v.Set(reflect.ValueOf(val))
		}
	default:
		panic("recipe: unsupported field type " + v.Type().String())
	}
}

// generic decodes any YAML value into map[string]any, []any, string, int,
// float64, bool or nil.
func (d *decoder) generic(n ast.Node, path string, depth int) (any, bool) {
	if depth > maxDepth {
		d.errAt(n, path, "values nest too deeply", "simplify the value")
		return nil, false
	}
	switch x := n.(type) {
	case *ast.MappingNode:
		out := map[string]any{}
		for _, mv := range d.entries(x, path, depth) {
			k, ok := d.keyText(mv.Key)
			if !ok {
				d.errAt(mv.Key, path, fmt.Sprintf("keys in %s must be plain text, found %s", path, describe(mv.Key)), "")
				continue
			}
			kp := childPath(path, k)
			d.record(kp, path, mv.Key, mv.Value)
			if c, tag := d.resolve(mv.Value, kp); c != nil {
				if tag == "!!str" {
					s, _ := d.scalarQuiet(c)
					out[k] = s
				} else if val, ok := d.generic(c, kp, depth+1); ok {
					out[k] = val
				}
			}
		}
		return out, true
	case *ast.SequenceNode:
		out := make([]any, 0, len(x.Values))
		for i, item := range x.Values {
			ip := indexPath(path, i)
			d.record(ip, path, nil, item)
			if c, _ := d.resolve(item, ip); c != nil {
				if val, ok := d.generic(c, ip, depth+1); ok {
					out = append(out, val)
				}
			}
		}
		return out, true
	case *ast.NullNode:
		return nil, true
	case *ast.BoolNode:
		return x.Value, true
	case *ast.IntegerNode:
		i, ok := d.integer(x, x, "", path)
		return i, ok
	case *ast.FloatNode:
		return x.Value, true
	case *ast.StringNode, *ast.LiteralNode:
		s, _ := d.scalarQuiet(x)
		if d.vars != nil {
			s = d.expand(s, x, path)
		}
		return s, true
	}
	d.errAt(n, path, fmt.Sprintf("%s: cannot read %s", path, describe(n)), "write a mapping, list or plain value")
	return nil, false
}

// decodeStruct decodes mapping entries into the struct v by yaml tag.
// skip names keys decoded elsewhere.
func (d *decoder) decodeStruct(v reflect.Value, entries []*ast.MappingValueNode, path string, skip func(string) bool) {
	fields := yamlFields(v.Type())
	for _, mv := range entries {
		key, ok := d.keyText(mv.Key)
		if !ok {
			d.errAt(mv.Key, path, fmt.Sprintf("keys must be plain text, found %s", describe(mv.Key)), knownFieldsHint(v.Type()))
			continue
		}
		if skip != nil && skip(key) {
			continue
		}
		idx, known := fields[key]
		if !known {
			d.unknownField(mv.Key, key, path, v.Type())
			continue
		}
		fp := childPath(path, key)
		d.record(fp, path, mv.Key, mv.Value)
		d.decode(v.Field(idx), mv.Value, fp, 0)
	}
}

func (d *decoder) unknownField(keyNode ast.Node, key, path string, t reflect.Type) {
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	names := yamlFieldNames(t)
	hint := ""
	if s := suggest(key, names); s != "" {
		hint = fmt.Sprintf("did you mean %q?", s)
	} else if elsewhere := fieldHomes[key]; len(elsewhere) > 0 {
		hint = fmt.Sprintf("%q belongs under %s", key, strings.Join(elsewhere, " or "))
	} else {
		hint = "known fields: " + strings.Join(names, ", ")
	}
	line, col := tokenPos(keyNode.GetToken())
	// Not marked bad: the known fields beside it decoded fine.
	d.diags = append(d.diags, Diagnostic{File: d.src.file, Line: line, Col: col, Path: childPath(path, key),
		Msg: fmt.Sprintf("unknown field %q %s", key, where), Hint: hint})
}

// scalarText reads a scalar for a text field. Numbers keep their source
// spelling (goccy would turn 0644 into "420"); booleans are refused because
// `sudo: yes`-style mistakes are never meant as the text "true".
func (d *decoder) scalarText(n, at ast.Node, tag, path string) (string, bool) {
	if b, ok := n.(*ast.BoolNode); ok && tag == "" && !strings.HasPrefix(path, "variables") {
		hint := fmt.Sprintf("quote it if you mean the word: %s: \"%s\"", lastKey(path), b.GetToken().Value)
		if lastKey(path) == "sudo" {
			hint = "write sudo: nopasswd for passwordless sudo, or leave sudo out for none"
		}
		d.errAt(at, path, fmt.Sprintf("%s: must be text, found the YAML boolean %s", path, b.GetToken().Value), hint)
		return "", false
	}
	if s, ok := d.scalarQuiet(n); ok {
		return s, true
	}
	d.errAt(at, path, fmt.Sprintf("%s: must be text, found %s", path, describeTagged(n, tag)),
		fmt.Sprintf("write %s: some text", lastKey(path)))
	return "", false
}

func (d *decoder) scalarQuiet(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.LiteralNode:
		if v.Value == nil {
			return "", true
		}
		return v.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.InfinityNode, *ast.NanNode, *ast.BoolNode, *ast.NullNode:
		return v.GetToken().Value, true
	}
	return "", false
}

func (d *decoder) integer(n, at ast.Node, tag, path string) (int, bool) {
	in, ok := n.(*ast.IntegerNode)
	if !ok || tag != "" {
		hint := fmt.Sprintf("write a whole number without quotes, e.g. %s: 1000", lastKey(path))
		if s, ok := n.(*ast.StringNode); ok && strings.Contains(s.Value, "${") {
			hint = "variables substitute into text fields only; write the number itself"
		}
		d.errAt(at, path, fmt.Sprintf("%s: must be a whole number, found %s", path, describeTagged(n, tag)), hint)
		return 0, false
	}
	switch x := in.Value.(type) {
	case int64:
		if x >= math.MinInt && x <= math.MaxInt {
			return int(x), true
		}
	case uint64:
		if x <= math.MaxInt {
			return int(x), true
		}
	}
	d.errAt(at, path, fmt.Sprintf("%s: %s is out of range", path, in.GetToken().Value), "")
	return 0, false
}

// describeTagged is describe for a value that may carry a !!str tag.
func describeTagged(n ast.Node, tag string) string {
	if tag == "!!str" {
		s, _ := (&decoder{}).scalarQuiet(n)
		return fmt.Sprintf("the text %q", s)
	}
	return describe(n)
}

// describe names a node's kind the way a user would.
func describe(n ast.Node) string {
	switch v := n.(type) {
	case *ast.MappingNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode, *ast.LiteralNode:
		s, _ := (&decoder{}).scalarQuiet(n)
		if len(s) > 40 {
			s = s[:37] + "..."
		}
		return fmt.Sprintf("the text %q", s)
	case *ast.IntegerNode, *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "the number " + v.GetToken().Value
	case *ast.BoolNode:
		return "the boolean " + v.GetToken().Value
	case *ast.NullNode:
		return "nothing (null)"
	case *ast.AliasNode, *ast.AnchorNode, *ast.TagNode, *ast.MappingKeyNode:
		return "an alias or tag"
	case nil:
		return "nothing"
	}
	return "a " + strings.ToLower(n.Type().String())
}

// lastKey is the last field name of a path, for "write KEY: ..." hints.
func lastKey(path string) string {
	p := path
	for strings.HasSuffix(p, "]") {
		i := strings.LastIndex(p, "[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	if i := strings.LastIndex(p, "."); i >= 0 {
		p = p[i+1:]
	}
	if p == "" {
		return "value"
	}
	return p
}

// yamlFields maps yaml names to field indexes of a struct type.
func yamlFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" || name == "" {
			continue
		}
		m[name] = i
	}
	return m
}

func yamlFieldNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.IsExported() && name != "-" && name != "" {
			names = append(names, name)
		}
	}
	return names
}

func knownFieldsHint(t reflect.Type) string {
	return "write keys under it, such as " + strings.Join(yamlFieldNames(t), ", ")
}

// fieldHomes maps every field name to the sections it belongs in, so that
// `packages:` at the top level can say "belongs under apt or base.debian".
var fieldHomes = func() map[string][]string {
	homes := map[string][]string{}
	var walk func(t reflect.Type, path string, depth int)
	walk = func(t reflect.Type, path string, depth int) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || depth > 5 {
			return
		}
		fields := yamlFields(t)
		names := slices.Sorted(func(yield func(string) bool) {
			for k := range fields {
				if !yield(k) {
					return
				}
			}
		})
		for _, name := range names {
			where := path
			if where == "" {
				where = "the top level"
			}
			homes[name] = append(homes[name], where)
			child := name
			if path != "" {
				child = path + "." + name
			}
			walk(t.Field(fields[name]).Type, child, depth+1)
		}
	}
	walk(reflect.TypeFor[Recipe](), "", 0)
	return homes
}()
