package verify

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/bakeimg/bake/internal/cloudconfig"
)

// UserData is extra cloud-config for the seed (bake verify --user-data
// FILE): the user-data a cloud will pass to instances of the image, so that
// verify boots them as they will be booted.
//
// How it is merged with verify's own user-data (Seed.UserData):
//
//   - ssh_authorized_keys and users: verify's items first (its throwaway
//     key; cloud-init's default user; the admin with the key, passwordless
//     sudo, a locked password and /bin/bash), then FILE's items as written.
//     cloud-init merges entries of the same user with the first one's
//     settings winning, so for the admin verify's settings above win and
//     FILE's other settings for the admin apply.
//   - Every other top-level key of FILE is copied as written, and where
//     verify has the same key (hostname, ssh_pwauth, disable_root) FILE's
//     value wins: those are what the image must withstand, not what verify
//     needs (verify's password and root checks then test the image against
//     FILE's settings).
//   - bake's own seed values (the admin's keys, the gateway token) are files
//     of the seed volume, not user-data keys, and are never affected.
//
// FILE's text is copied line for line, not decoded and re-encoded, so that
// cloud-init (YAML 1.1: yes/no/on/off are booleans, 0644 is octal) reads
// exactly what FILE says. The merged document is parsed again and checked
// to hold FILE's values and verify's; when it does not (an anchor used
// across keys, an unusual layout), ParseUserData says so.
type UserData struct {
	Name   string // the file, for messages and the report
	SHA256 string

	lines   []string                  // FILE's lines (LF)
	entries []userDataEntry           // top-level entries in FILE's order
	values  map[string]any            // FILE decoded, for the check of the merge
	keyed   map[string]*userDataEntry // ssh_authorized_keys and users
}

// userDataEntry is one top-level key of FILE and its lines.
type userDataEntry struct {
	key        string
	first      int // index in lines of the key's line
	end        int // one past its last line
	seq        *ast.SequenceNode
	itemsFirst int // for a block sequence value: index of its first item's line
}

// userDataMergedKeys are the keys whose items are joined to verify's.
var userDataMergedKeys = []string{"ssh_authorized_keys", "users"}

var documentMarker = regexp.MustCompile(`^(---|\.\.\.)([ \t]|$)`)

// ParseUserData checks that b is a #cloud-config document whose top level
// is a block mapping with ssh_authorized_keys (if any) a list of strings
// and users (if any) a list, and that it merges into verify's user-data.
// name is used in messages.
func ParseUserData(name string, b []byte) (*UserData, error) {
	sum := sha256.Sum256(b)
	u := &UserData{Name: name, SHA256: hex.EncodeToString(sum[:]), keyed: map[string]*userDataEntry{}}
	text := strings.ReplaceAll(string(b), "\r\n", "\n")
	if first, _, _ := strings.Cut(text, "\n"); strings.TrimRight(first, " \t") != "#cloud-config" {
		return nil, fmt.Errorf("%s: not cloud-config: the first line must be #cloud-config (MIME multi-part, scripts, #include and jinja templates are not supported), found %q", name, truncate(first, 40))
	}
	u.lines = strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, l := range u.lines {
		if documentMarker.MatchString(l) {
			return nil, fmt.Errorf("%s:%d: a document marker (%s): give one cloud-config document without --- or ...", name, i+1, strings.TrimSpace(l))
		}
		if strings.HasPrefix(l, "\t") {
			return nil, fmt.Errorf("%s:%d: a tab indents the line; YAML indents with spaces", name, i+1)
		}
	}
	f, err := parser.ParseBytes([]byte(text), 0)
	if err != nil {
		return nil, fmt.Errorf("%s: not YAML: %v", name, err)
	}
	if len(f.Docs) != 1 || f.Docs[0] == nil || f.Docs[0].Body == nil {
		return nil, fmt.Errorf("%s: no cloud-config keys: want a mapping such as \"ssh_pwauth: true\"", name)
	}
	var values []*ast.MappingValueNode
	switch n := f.Docs[0].Body.(type) {
	case *ast.MappingNode:
		if n.IsFlowStyle {
			return nil, fmt.Errorf("%s: write the top-level mapping in block style (key: value lines), not {...}", name)
		}
		values = n.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{n}
	default:
		return nil, fmt.Errorf("%s: not a cloud-config mapping: the document is a %s, want key: value lines", name, strings.ToLower(n.Type().String()))
	}
	if err := yaml.Unmarshal([]byte(text), &u.values); err != nil {
		return nil, fmt.Errorf("%s: not a cloud-config mapping: %v", name, err)
	}
	seen := map[string]int{}
	for _, mv := range values {
		k, ok := mv.Key.(*ast.StringNode)
		pos := mv.Key.GetToken().Position
		if !ok || pos.Column != 1 {
			return nil, fmt.Errorf("%s:%d: top-level keys are plain names in the first column", name, pos.Line)
		}
		if l, dup := seen[k.Value]; dup {
			return nil, fmt.Errorf("%s:%d: key %s again (first on line %d)", name, pos.Line, k.Value, l)
		}
		seen[k.Value] = pos.Line
		u.entries = append(u.entries, userDataEntry{key: k.Value, first: pos.Line - 1})
	}
	sort.Slice(u.entries, func(i, j int) bool { return u.entries[i].first < u.entries[j].first })
	for i := range u.entries {
		if i+1 < len(u.entries) {
			u.entries[i].end = u.entries[i+1].first
		} else {
			u.entries[i].end = len(u.lines)
		}
	}
	for _, mv := range values {
		k := mv.Key.(*ast.StringNode).Value
		if !isMergedKey(k) {
			continue
		}
		e := u.entry(k)
		seq, ok := mv.Value.(*ast.SequenceNode)
		if !ok {
			return nil, fmt.Errorf("%s:%d: %s must be a list (- item lines)", name, e.first+1, k)
		}
		e.seq = seq
		if !seq.IsFlowStyle && len(seq.Entries) > 0 {
			e.itemsFirst = seq.Entries[0].Start.Position.Line - 1
			if e.itemsFirst <= e.first {
				return nil, fmt.Errorf("%s:%d: start the items of %s on the line after it", name, e.first+1, k)
			}
		}
		if k == "ssh_authorized_keys" {
			for _, v := range u.values[k].([]any) {
				if _, ok := v.(string); !ok {
					return nil, fmt.Errorf("%s:%d: ssh_authorized_keys must be a list of keys (strings), has %v", name, e.first+1, v)
				}
			}
		}
		u.keyed[k] = e
	}
	// A merge with a stand-in seed finds what cannot be merged now, not
	// when the VMs start.
	if _, err := u.merge(Seed{InstanceID: "iid-check", Hostname: "check", AdminUser: "admin",
		AuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn0kKk0PWQnRkKTuXb7F6vQ6ThW0jU1QZ6g2l3m4n5o check"}}); err != nil {
		return nil, err
	}
	return u, nil
}

func isMergedKey(k string) bool {
	for _, m := range userDataMergedKeys {
		if k == m {
			return true
		}
	}
	return false
}

func (u *UserData) entry(k string) *userDataEntry {
	for i := range u.entries {
		if u.entries[i].key == k {
			return &u.entries[i]
		}
	}
	return nil
}

// Has reports whether FILE sets a top-level key.
func (u *UserData) Has(key string) bool { return u != nil && u.entry(key) != nil }

// items returns the text of the items of a merged key, and the column
// (0-based) at which verify's own items must stand to be of the same list.
func (u *UserData) items(k string) (lines []string, indent int) {
	e := u.keyed[k]
	if e == nil || len(e.seq.Values) == 0 {
		return nil, 2
	}
	if e.seq.IsFlowStyle {
		// A flow list ([a, b]) becomes block items, each as written.
		for _, v := range e.seq.Values {
			lines = append(lines, "  - "+v.String())
		}
		return lines, 2
	}
	return u.lines[e.itemsFirst:e.end], e.seq.Entries[0].Start.Position.Column - 1
}

// merge renders verify's user-data for s with u merged in (see UserData).
func (u *UserData) merge(s Seed) ([]byte, error) {
	base := s.ownUserData()
	var b strings.Builder
	b.Write(cloudconfig.Document(append([]string{
		fmt.Sprintf("Written by bake verify for a throwaway instance, with %s (sha256 %s)", u.Name, u.SHA256),
		"merged in: verify's items of ssh_authorized_keys and users first, then",
		"the file's; the file's other keys as written, its values winning.",
	}, s.canaryComment()...), nil))
	if s.Hostname != "" && !u.Has("hostname") {
		b.Write(cloudconfig.Marshal(cloudconfig.Map{{Key: "hostname", Value: s.Hostname}}))
	}
	keys, ind := u.items("ssh_authorized_keys")
	b.WriteString("ssh_authorized_keys:\n")
	var ours []any
	for _, k := range s.AuthorizedKeys {
		ours = append(ours, k)
	}
	b.Write(cloudconfig.Items(ind, ours...))
	writeLines(&b, keys)
	users, ind := u.items("users")
	b.WriteString("users:\n")
	b.Write(cloudconfig.Items(ind, "default", s.adminUser()))
	writeLines(&b, users)
	var defaults cloudconfig.Map
	if !u.Has("ssh_pwauth") {
		defaults = append(defaults, cloudconfig.Item{Key: "ssh_pwauth", Value: false})
	}
	if !u.Has("disable_root") {
		defaults = append(defaults, cloudconfig.Item{Key: "disable_root", Value: true})
	}
	b.Write(cloudconfig.Marshal(defaults))
	for _, e := range u.entries {
		if isMergedKey(e.key) {
			continue
		}
		writeLines(&b, u.lines[e.first:e.end])
	}
	out := []byte(b.String())
	if err := u.checkMerge(out, base); err != nil {
		return nil, fmt.Errorf("%s: cannot be merged into verify's user-data as written: %v", u.Name, err)
	}
	return out, nil
}

func writeLines(b *strings.Builder, lines []string) {
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
}

// checkMerge parses the merged document again: it must hold each of the
// file's values as the file alone gives them, verify's items first in the
// merged lists, and verify's values for keys the file does not set.
func (u *UserData) checkMerge(merged, base []byte) error {
	var got, ours map[string]any
	if err := yaml.Unmarshal(merged, &got); err != nil {
		return fmt.Errorf("the merged document is not YAML: %v", err)
	}
	if err := yaml.Unmarshal(base, &ours); err != nil {
		return err
	}
	var bad []string
	for k, v := range u.values {
		if isMergedKey(k) {
			continue
		}
		if !reflect.DeepEqual(got[k], v) {
			bad = append(bad, fmt.Sprintf("%s is %v, the file says %v", k, got[k], v))
		}
	}
	for k, v := range ours {
		if isMergedKey(k) || u.Has(k) {
			continue
		}
		if !reflect.DeepEqual(got[k], v) {
			bad = append(bad, fmt.Sprintf("verify's %s is %v, want %v", k, got[k], v))
		}
	}
	for _, k := range userDataMergedKeys {
		var want []any
		if l, ok := ours[k].([]any); ok {
			want = append(want, l...)
		}
		if l, ok := u.values[k].([]any); ok {
			want = append(want, l...)
		}
		if !reflect.DeepEqual(got[k], want) {
			bad = append(bad, fmt.Sprintf("%s is %v, want %v", k, got[k], want))
		}
	}
	for k := range got {
		if _, inFile := u.values[k]; !inFile {
			if _, inOurs := ours[k]; !inOurs {
				bad = append(bad, "a key from nowhere: "+k)
			}
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}
