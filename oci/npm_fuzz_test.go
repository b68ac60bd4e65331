package oci

import (
	"os"
	"testing"
)

// FuzzLockfile feeds any bytes as the package-lock.json beside a recipe
// (a pull request can change it) to the parser that checks it pins the
// app, and the app's engines.node (written by the package's publisher)
// to the range check. Nothing may panic.
//
//	go test -run '^$' -fuzz '^FuzzLockfile$' -fuzztime 1m ./oci/
func FuzzLockfile(f *testing.F) {
	b, err := os.ReadFile("testdata/package-lock.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"lockfileVersion":1}`))
	f.Add([]byte(`{"lockfileVersion":3,"packages":{"node_modules/openclaw":{"version":"2026.9.6","engines":[">=1"]}}}`))
	f.Add([]byte(`{"lockfileVersion":3,"packages":{"node_modules/openclaw":{"version":"2026.9.6","bin":{"../x":"y"},"engines":{"node":"^24 || 26.x - 27"}}}}`))
	app := NpmApp{Package: "openclaw", Version: "2026.9.6"}
	f.Fuzz(func(t *testing.T, b []byte) {
		al, err := parseLockfile(b, app)
		if err != nil {
			return
		}
		_ = checkEngine(app, al.Engine, NodeVersion)
	})
}

// FuzzSemver feeds any version and npm range (engines.node comes from
// the package's publisher) to satisfies. Nothing may panic, and a
// version is inside every range that names it exactly and outside those
// that exclude it.
//
//	go test -run '^$' -fuzz '^FuzzSemver$' -fuzztime 1m ./oci/
func FuzzSemver(f *testing.F) {
	for _, c := range [][2]string{
		{"24.16.0", ">=24.16.0 <25 || >=26.1.0"}, {"18.5.0", "^18.2.0"}, {"0.2.5", "^0.2.3"},
		{"14.17.9", "~14.17.0"}, {"16.3.1", "14 - 16"}, {"16.3.1", "14.0.0 - 16.3.0"},
		{"22.1.0", ">=20.0.0-rc.1"}, {"20.0.0", ">= 18.0.0"}, {"20.0.0", "*"}, {"1.2.3", "<*"},
		// A part too large to bump (it wrapped around: every Node
		// satisfied ">9223372036854775807", none "<=9223372036854775807").
		{"9223372036854775807.0.0", ">9223372036854775807"}, {"24.16.0", "24.9223372036854775807.x"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, version, rng string) {
		satisfies(version, rng)
		v, err := parseVersion(version)
		if err != nil {
			return
		}
		s := v.String()
		for _, r := range []string{s, "=" + s, ">=" + s, "<=" + s, "^" + s, "~" + s, s + " - " + s,
			itoa(v[0]), itoa(v[0]) + ".x", itoa(v[0]) + "." + itoa(v[1]), "~" + itoa(v[0]) + "." + itoa(v[1]), "^" + itoa(v[0])} {
			if ok, err := satisfies(s, r); !ok || err != nil {
				t.Fatalf("%s does not satisfy %q (%v)", s, r, err)
			}
		}
		for _, r := range []string{">" + s, "<" + s, ">" + itoa(v[0]), "<" + itoa(v[0])} {
			if ok, err := satisfies(s, r); ok || err != nil {
				t.Fatalf("%s satisfies %q (%v)", s, r, err)
			}
		}
	})
}
