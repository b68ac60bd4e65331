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
// be valid once defaults are filled in, with its context inside the
// working directory. Its seeds run with `go test`; fuzz
// with `go test -fuzz FuzzParse ./builder/recipe` (under a memory cap:
// -fuzz has none of its own).
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
	// Hostile inputs (issue 12): an alias bomb under containers[].build and
	// through merge keys, a recipe one byte over the size limit, values
	// past the budget, control characters in paths, contexts that leave.
	f.Add([]byte(aliasBomb(9, 10)), "", "")
	f.Add([]byte("x: "+strings.Repeat("[", 5000)+strings.Repeat("]", 5000)), "", "")
	f.Add([]byte("a: &a [x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nd: [*c, *c, *c, *c]\n"), "", "")
	f.Add([]byte("x: &a {k: v}\ny: &b {<<: *a}\nz: [{<<: *b}, {<<: *b}]\n"), "", "")
	f.Add(append([]byte("apiVersion: bake/v1\n#"), strings.Repeat("x", MaxSize)...), "", "")
	f.Add([]byte("apiVersion: bake/v1\nname: n\nbase: {debian: {suite: sid}}\nfiles: [{path: \"/a\\n[2/2] x\", content: x}]\n"), "", "")
	f.Add([]byte("apiVersion: bake/v1\nname: n\ncontext: ../../../../../../../../../..\nbase: {debian: {suite: sid}}\n"), "", "")
	f.Add([]byte("apiVersion: bake/v1\nname: n\ncontext: ../..\nbase: {debian: {suite: sid}}\n"), "", "")
	f.Add([]byte("apiVersion: bake/v1\nname: ${n}\nvariables: {n: a}\nbase: {debian: {suite: sid}}\n"), "n", "x\ny")
	// Issue 12, "recipes cannot reach out" and the checks validate makes
	// instead of a build: .git and .bakeignore'd sources (testdata/good
	// has a .bakeignore naming *.key), unsafe kernel arguments, owners
	// nobody defines, an admin named root or docker.
	const head = "apiVersion: bake/v1\nname: n\nbase: {debian: {suite: sid}}\n"
	for _, s := range []string{
		"files: [{path: /a, source: files/ignored.key}]\n",
		"files: [{path: /a, source: ./files/../files/ignored.key}]\n",
		"files: [{path: /a, source: .git/config}]\noverlays: [{source: .git}]\n",
		"kernel: {cmdline: \"quiet a=\\\"x y\\\" b;c $d `e` f\\\\g h|i #j\"}\n",
		"kernel: {cmdline: \"quiet\\tx\\u00e9 -- ;\"}\n",
		"users: [{name: app}]\nfiles: [{path: /a, content: x, owner: \"app:wheel\"}, {path: /b, content: x, owner: \"ghost\"}]\n",
		"users: [{name: app}]\nfiles: [{path: /a, content: x, owner: \"systemd-x:docker\"}]\n",
		"users: [{name: root}]\nfirstboot: {admin_user: root}\n",
		"users: [{name: docker}]\nfirstboot: {admin_user: docker}\n",
	} {
		f.Add([]byte(head+s), "", "")
	}
	f.Add([]byte(head+"variables: {o: \"a:b\"}\nusers: [{name: a}]\nfiles: [{path: /a, content: x, owner: \"${o}\"}]\n"), "o", "root:wheel")
	f.Add([]byte(head+"variables: {c: quiet}\nkernel: {cmdline: \"${c}\"}\n"), "c", "x;reboot")
	f.Fuzz(func(t *testing.T, data []byte, setName, setValue string) {
		var sets map[string]string
		if setName != "" {
			sets = map[string]string{setName: setValue}
		}
		r, err := Parse("fuzz.yaml", data, "testdata/good", sets)
		if len(data) > MaxSize && err == nil {
			t.Fatalf("a recipe of %d bytes was read", len(data))
		}
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
		// Nothing that validate refuses got through: no unsafe kernel
		// argument, no admin named root or docker, no source that
		// .git or .bakeignore excludes.
		for _, arg := range strings.Fields(r.Kernel.Cmdline) {
			if strings.ContainsAny(arg, cmdlineUnsafe) || strings.IndexFunc(arg, func(c rune) bool { return c < 0x20 || c > 0x7e }) >= 0 {
				t.Fatalf("accepted kernel argument %q\n%q", arg, data)
			}
		}
		if fb := r.Firstboot; fb != nil && (fb.AdminUser == "root" || fb.AdminUser == "docker") {
			t.Fatalf("accepted admin %q\n%q", fb.AdminUser, data)
		}
		if srcs, err := r.Sources(); err == nil {
			for _, hp := range r.HostPaths() {
				if why := srcs.Excluded(hp.Path, false); why != "" && hp.What != "context" {
					t.Fatalf("accepted %s %s, excluded by %s\n%q", hp.What, hp.Path, why, data)
				}
			}
		}
		// Its context stays inside the working directory (the recipe
		// folder, testdata/good, is inside it too).
		root, err := r.contextDir(r.Dir)
		if err != nil {
			t.Fatalf("accepted recipe with a refused context: %v\n%q", err, data)
		}
		realRoot, err1 := filepath.EvalSymlinks(root)
		realWD, err2 := filepath.EvalSymlinks(r.workDir)
		if err1 == nil && err2 == nil && !within(realWD, realRoot) {
			t.Fatalf("accepted context %s outside the working directory %s\n%q", realRoot, realWD, data)
		}
	})
}
