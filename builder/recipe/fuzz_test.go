package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse: Parse must never panic, must answer every input with a recipe
// or with Diagnostics naming the file, and a recipe it accepts must still
// be valid once defaults are filled in.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, "name", "x")
	}
	for _, s := range []string{
		"", "---", "--- |\n  x", "a: &a [*a]", "<<: *x", "&a a: b", "? [a]: b", "apiVersion: !!binary aGk=",
		"name: ${", "name: $${${}}", "users: [{uid: 99999999999999999999999}]", "disk: {size: 1e400GiB}",
		"base: {debian: {suite: ${x}}}\nvariables: {x: sid}",
		"x: &x {<<: *x}\n", "users:\n- &u\n  <<: *u\n",
	} {
		f.Add([]byte(s), "x", "y")
	}
	f.Fuzz(func(t *testing.T, data []byte, setName, setValue string) {
		var sets map[string]string
		if setName != "" {
			sets = map[string]string{setName: setValue}
		}
		r, err := Parse("fuzz.yaml", data, "testdata/good", sets)
		if err != nil {
			var diags Diagnostics
			if !errors.As(err, &diags) || len(diags) == 0 {
				t.Fatalf("error %v (%T) is not Diagnostics", err, err)
			}
			if r != nil {
				t.Fatal("a recipe and an error")
			}
			for _, d := range diags {
				if d.File != "fuzz.yaml" || d.Line < 0 || d.Col < 0 || d.Msg == "" {
					t.Fatalf("bad diagnostic %#v", d)
				}
				if strings.Contains(d.Msg, "strict decoder") {
					t.Fatalf("cross-check caught what the schema walk let through: %s\n%q", d, data)
				}
			}
			_ = diags.Error()
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted recipe is invalid after Defaults: %v\n%q", err, data)
		}
	})
}
