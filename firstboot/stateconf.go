package firstboot

import (
	"errors"
	"fmt"
	"strings"
)

// ParseStateConfig parses /etc/bake/state.conf as firstboot.StateConfig
// writes it: comment lines and KEY='VALUE' lines (single quotes, a quote
// written '\”). Anything else is an error.
func ParseStateConfig(b []byte) (map[string]string, error) {
	out := map[string]string{}
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" || strings.Trim(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789") != "" {
			return nil, fmt.Errorf("state.conf line %d: not KEY='VALUE'", i+1)
		}
		val, err := unquoteSh(v)
		if err != nil {
			return nil, fmt.Errorf("state.conf line %d (%s): %w", i+1, k, err)
		}
		out[k] = val
	}
	for _, k := range []string{"LABEL", "SERIAL", "FORMAT", "IMAGE_NAME"} {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("state.conf has no %s", k)
		}
	}
	if out["LABEL"] == "" && out["SERIAL"] == "" {
		return nil, errors.New("state.conf names neither a label nor a serial")
	}
	return out, nil
}

// unquoteSh undoes firstboot's shQuote: 'a'\”b' is a'b.
func unquoteSh(s string) (string, error) {
	var b strings.Builder
	for s != "" {
		switch {
		case s[0] == '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return "", errors.New("unterminated quote")
			}
			b.WriteString(s[1 : 1+end])
			s = s[2+end:]
		case strings.HasPrefix(s, `\'`):
			b.WriteByte('\'')
			s = s[2:]
		default:
			return "", fmt.Errorf("unquoted text %q", s)
		}
	}
	return b.String(), nil
}
