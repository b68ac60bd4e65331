// Package cloudconfig writes the YAML of cloud-init seeds: NoCloud
// meta-data and #cloud-config user-data. It is the one writer of those
// documents; package firstboot (the seed format an image reads) and package
// verify (the seed a throwaway instance boots with) both use it.
//
// cloud-init reads YAML 1.1 (PyYAML), where a plain 2024-01-01 is a date,
// 0x1F and 0644 are integers, .inf is a float, yes/no/on/off are booleans,
// ~ is null, and *x, &x, !x are an alias, an anchor and a tag. A seed's
// values (host names, instance ids, keys, user names) are strings whatever
// they look like, so every string goes out double-quoted: no value can be
// read as another type, whichever YAML version reads it. Keys are bake's
// own names and go out plain.
package cloudconfig

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
)

// Map is an ordered mapping. Its values may be string, bool, []string,
// []any (of these) or Map.
type Map = yaml.MapSlice

// Item is one key and value of a Map.
type Item = yaml.MapItem

var keyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

// Quote is s as a YAML double-quoted scalar. strconv's escapes (\", \\,
// \n, \t, \xNN, \uNNNN, \UNNNNNNNN, \a, \b, \f, \v) are all YAML's too.
// YAML is Unicode text: a byte that is not UTF-8 has no representation,
// so invalid UTF-8 is written as U+FFFD (seed checks refuse such values
// before they get here).
func Quote(s string) string {
	return strconv.Quote(strings.ToValidUTF8(s, "\uFFFD"))
}

var options = []yaml.EncodeOption{
	yaml.Indent(2),
	yaml.IndentSequence(true),
	yaml.CustomMarshaler[string](func(s string) ([]byte, error) { return []byte(Quote(s)), nil }),
}

// Marshal writes m as block-style YAML, every string double-quoted. It
// panics when m holds a key that is not a plain name or a value of another
// type: both are mistakes in bake's code, never in its input. An empty m
// is no text at all.
func Marshal(m Map) []byte {
	check(m)
	if len(m) == 0 {
		return nil // not "{}": a document of comments only
	}
	return marshal(m)
}

// Document is a #cloud-config user-data document: the first line
// cloud-init looks for, one comment line for each of comments (a newline
// in one becomes a space), then m.
func Document(comments []string, m Map) []byte {
	var b strings.Builder
	b.WriteString("#cloud-config\n")
	for _, c := range comments {
		b.WriteString("# ")
		b.WriteString(strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(c))
		b.WriteString("\n")
	}
	b.Write(Marshal(m))
	return []byte(b.String())
}

// Items writes values as the items of a block sequence whose "- " stands
// at column indent (0-based): for a list that other lines continue, as
// when verify merges a user's user-data into its own.
func Items(indent int, values ...any) []byte {
	if len(values) == 0 {
		return nil
	}
	check(values)
	out := marshal(values)
	// The encoder puts a sequence's "- " 2 columns in (IndentSequence).
	lines := strings.SplitAfter(strings.TrimSuffix(string(out), "\n"), "\n")
	var b strings.Builder
	pad := strings.Repeat(" ", indent)
	for _, l := range lines {
		b.WriteString(pad)
		b.WriteString(strings.TrimPrefix(l, "  "))
	}
	b.WriteString("\n")
	return []byte(b.String())
}

func marshal(v any) []byte {
	b, err := yaml.MarshalWithOptions(v, options...)
	if err != nil {
		panic(fmt.Sprintf("cloudconfig: %v", err))
	}
	return b
}

// check panics on what Marshal does not write: keys that would need
// quoting, values of other types.
func check(v any) {
	switch v := v.(type) {
	case string, bool:
	case []string:
	case []any:
		for _, x := range v {
			check(x)
		}
	case Map:
		for _, it := range v {
			k, ok := it.Key.(string)
			if !ok || !keyRe.MatchString(k) {
				panic(fmt.Sprintf("cloudconfig: key %#v is not a plain name", it.Key))
			}
			check(it.Value)
		}
	default:
		panic(fmt.Sprintf("cloudconfig: a value of type %T", v))
	}
}
