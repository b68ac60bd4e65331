package builder

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/convert"
)

// The outputs stage tells package convert how the image boots and what it
// holds: the recipe's firmware for a Debian base, the kept ESP for a cloud
// base, and the OS from the tree's own os-release (through its symlink,
// which cannot lead out of the tree).
func TestConvertOptions(t *testing.T) {
	src := `apiVersion: bake/v1
name: fmts
base: {debian: {suite: bookworm}}
disk: {firmware: [FW]}
outputs: [qcow2, ova, gce]
`
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.MkdirAll(filepath.Join(tree, "usr/lib"), 0o755)
	os.WriteFile(filepath.Join(tree, "usr/lib/os-release"), []byte("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\n"), 0o644)
	// Absolute, as a tree may have it: resolved inside the tree.
	os.Symlink("/usr/lib/os-release", filepath.Join(tree, "etc/os-release"))
	for fw, want := range map[string]convert.Firmware{"bios": convert.BIOS, "uefi": convert.UEFI, "bios, uefi": convert.UEFI} {
		r, err := recipe.Parse("f.yaml", []byte(strings.Replace(src, "FW", fw, 1)), t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Compile(r, Options{})
		if err != nil {
			t.Fatal(err)
		}
		s := &State{Tree: tree, WorkDir: "/work", Opts: Options{SourceDateEpoch: 42}}
		o := p.convertOptions(s)
		if o.Firmware != want || o.OS != "debian" || o.OSName != "Debian GNU/Linux 12 (bookworm)" || o.Name != "fmts" ||
			o.Dir != "/work" || o.SourceDateEpoch != 42 {
			t.Errorf("firmware %s: %+v", fw, o)
		}
		// A cloud base: its ESP decides.
		s.cloud = &cloudState{layout: &cloudimg.Layout{}}
		if o := p.convertOptions(s); o.Firmware != convert.BIOS {
			t.Errorf("a cloud base without ESP: %s", o.Firmware)
		}
		s.cloud.layout.ESP = 15
		if o := p.convertOptions(s); o.Firmware != convert.UEFI {
			t.Errorf("a cloud base with an ESP: %s", o.Firmware)
		}
		in := outputsInputs(r)
		if len(in) != 3 || !strings.HasPrefix(in[1], "ova, gce: guest bytes compared with the raw image") {
			t.Errorf("plan inputs:\n%s", strings.Join(in, "\n"))
		}
	}
	if id, pretty := treeOSRelease(t.TempDir()); id != "" || pretty != "" {
		t.Errorf("a tree without os-release: %q %q", id, pretty)
	}
}
