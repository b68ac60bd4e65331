package cloudconfig

import (
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
	"github.com/goccy/go-yaml"
)

// Values that YAML reads as something other than the string they are when
// written plain: a date, ints (hex, octal, sexagesimal, underscores),
// floats, booleans, nulls, an alias, an anchor, a tag, a mapping, a
// comment, a directive, block scalars, a document marker, and text that
// needs escapes.
var hostile = []string{
	"2024-01-01", "2001-12-14t21:59:43.10-05:00", "0x1F", "0o17", "0644", "0b101", "1_000", "12:30:00", "190:20:30",
	"1e3", ".inf", "-.Inf", ".NaN", "3.14", "+12",
	"yes", "no", "Yes", "NO", "on", "off", "y", "n", "true", "False",
	"~", "null", "Null", "",
	"*alias", "&anchor x", "!tag x", "!!str", "a: b", "key:", "- item", "? key", "{a: b}", "[a, b]", "x # comment", "#comment",
	"%YAML 1.1", "|", ">-", "---", "...", "'single'", `"double"`, "back\\slash", "tab\there", "new\nline", "cr\rlf",
	" leading space", "trailing space ", "@at", "`tick", "=", "<<",
	"é ü 漢字 \u2028 \u0085 \ufeff", "\x00\x07\x1b",
	"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn0kKk0PWQnRkKTuXb7F6vQ6ThW0jU1QZ6g2l3m4n5o me@example.com",
	strings.Repeat("long value, ", 100),
}

// Each hostile value, as a mapping value, in a list, in a list of
// mappings, comes back from the YAML parser as exactly that string.
func TestHostileValuesRoundTrip(t *testing.T) {
	for _, v := range hostile {
		doc := Map{
			{Key: "instance-id", Value: v},
			{Key: "ssh_authorized_keys", Value: []string{v, "plain"}},
			{Key: "users", Value: []any{"default", Map{{Key: "name", Value: v}, {Key: "lock_passwd", Value: true}}}},
		}
		out := Document([]string{"comment with\nnewline"}, doc)
		var got map[string]any
		if err := yaml.Unmarshal(out, &got); err != nil {
			t.Errorf("%q: not YAML: %v\n%s", v, err, out)
			continue
		}
		want := map[string]any{
			"instance-id":         v,
			"ssh_authorized_keys": []any{v, "plain"},
			"users":               []any{"default", map[string]any{"name": v, "lock_passwd": true}},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q came back as %#v\n%s", v, got, out)
		}
	}
}

// cloud-init reads its seed with PyYAML (YAML 1.1, yaml.safe_load): there
// too every value is the string that was written.
func TestHostileValuesPyYAML(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.Missing(t, "python3 is not installed (scripts/install-deps.sh)")
	}
	if err := exec.Command("python3", "-c", "import yaml").Run(); err != nil {
		testenv.Missing(t, "python3-yaml (PyYAML, what cloud-init reads with) is not installed (scripts/install-deps.sh)")
	}
	valid := hostile
	doc := Map{{Key: "values", Value: valid}, {Key: "users", Value: []any{Map{{Key: "name", Value: valid[0]}}}}}
	cmd := exec.Command("python3", "-c", `import sys, json, yaml
print(json.dumps(yaml.safe_load(sys.stdin.read())))`)
	cmd.Stdin = strings.NewReader(string(Document(nil, doc)))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var got struct {
		Values []any
		Users  []map[string]any
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(got.Values) != len(valid) {
		t.Fatalf("%d values, want %d: %s", len(got.Values), len(valid), out)
	}
	for i, v := range valid {
		if got.Values[i] != v {
			t.Errorf("PyYAML reads %q as %#v", v, got.Values[i])
		}
	}
	if len(got.Users) != 1 || got.Users[0]["name"] != valid[0] {
		t.Errorf("users %v", got.Users)
	}
}

func TestItems(t *testing.T) {
	got := string(Items(4, "default", Map{{Key: "name", Value: "admin"}, {Key: "keys", Value: []string{"k"}}}))
	want := "    - \"default\"\n    - name: \"admin\"\n      keys:\n        - \"k\"\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// Under a key of the same indentation the items are one list.
	var m map[string]any
	if err := yaml.Unmarshal([]byte("users:\n"+got+"    - other\n"), &m); err != nil {
		t.Fatal(err)
	}
	if u, _ := m["users"].([]any); len(u) != 3 || u[0] != "default" || u[2] != "other" {
		t.Errorf("users %v", m["users"])
	}
	if Items(2) != nil {
		t.Error("no items gave text")
	}
}

func TestMarshalPlainKeysOnly(t *testing.T) {
	if got := string(Marshal(Map{{Key: "instance-id", Value: "iid-1"}, {Key: "ssh_pwauth", Value: false}})); got != "instance-id: \"iid-1\"\nssh_pwauth: false\n" {
		t.Errorf("got %q", got)
	}
	if Marshal(nil) != nil {
		t.Error("an empty map gave text")
	}
	for _, bad := range []any{Map{{Key: "a: b", Value: "x"}}, Map{{Key: "n", Value: 1}}, []any{3.5}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%v: no panic", bad)
				}
			}()
			if m, ok := bad.(Map); ok {
				Marshal(m)
			} else {
				Items(0, bad.([]any)...)
			}
		}()
	}
}
