package recipe

import (
	"strconv"
	"testing"
)

// FuzzParseValues feeds any string to the parsers of a recipe's (and the
// command line's) typed values: sizes, modes, firewall ports, published
// ports, volumes, uid:gid. Nothing may panic; what is accepted is in
// range, and what is printed again (into docker run arguments, the
// firewall, bake plan) parses back to the same value.
//
//	go test -run '^$' -fuzz '^FuzzParseValues$' -fuzztime 1m ./builder/recipe/
func FuzzParseValues(f *testing.F) {
	for _, s := range []string{
		"4GiB", "1.5 GiB", "512M", "0B", "1e3GiB", "0644", "4755", "0o755", "22/tcp", "60000:61000/udp", "0:1/tcp",
		"127.0.0.1:18789:18789", "[::1]:8080:80/udp", "8080:80", "[::ffff:1.2.3.4]:1:2", "/srv/data:/data:ro", "/a:/b",
		"1000:1000", "65534:65534",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := ParseSize(s); err == nil && n < 0 {
			t.Fatalf("size %q = %d", s, n)
		}
		if m, err := ParseMode(s); err == nil && m.Perm() != m&0o777 {
			t.Fatalf("mode %q = %v", s, m)
		}
		if p, err := ParsePortRule(s); err == nil {
			if p.Low < 1 || p.High > 65535 || p.Low > p.High || (p.Proto != "tcp" && p.Proto != "udp") {
				t.Fatalf("port rule %q = %+v", s, p)
			}
			if q, err := ParsePortRule(p.Ports() + "/" + p.Proto); err != nil || q != p {
				t.Fatalf("port rule %q = %+v prints as %q = %+v, %v", s, p, p.Ports()+"/"+p.Proto, q, err)
			}
		}
		if p, err := ParsePublish(s); err == nil {
			if q, err := ParsePublish(p.String()); err != nil || q != p {
				t.Fatalf("publish %q = %+v prints as %q = %+v, %v", s, p, p.String(), q, err)
			}
		}
		if v, err := ParseVolume(s); err == nil {
			if w, err := ParseVolume(v.String()); err != nil || w != v {
				t.Fatalf("volume %q = %+v prints as %q = %+v, %v", s, v, v.String(), w, err)
			}
		}
		if u, g, ok := ParseUIDGID(s); ok && s != strconv.Itoa(u)+":"+strconv.Itoa(g) && (u < 0 || g < 0) {
			t.Fatalf("uid:gid %q = %d:%d", s, u, g)
		}
	})
}
