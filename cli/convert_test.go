package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/convert"
)

// bake convert: every mistake on the command line, and an image bake
// cannot read, is exit status 2 with one clear line, and nothing is
// written.
func TestConvertUsage(t *testing.T) {
	dir := t.TempDir()
	notDisk := filepath.Join(dir, "notes.raw")
	os.WriteFile(notDisk, make([]byte, 1<<20), 0o644)
	out := filepath.Join(dir, "out")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"convert"}, "one IMAGE, got 0"},
		{[]string{"convert", "a.raw", "b.raw", "-f", "vhd"}, "one IMAGE, got 2"},
		{[]string{"convert", notDisk}, "no --format given: want one or more of raw, qcow2, vmdk, ova, vhd, vhdx, gce"},
		{[]string{"convert", notDisk, "-f", "vdi"}, `unknown format "vdi"`},
		{[]string{"convert", notDisk, "-f", "vhd,ova", "--format", "vhd"}, "--format vhd is given twice"},
		{[]string{"convert", notDisk, "-f", "ova", "--firmware", "efi"}, `--firmware "efi": want auto, bios or uefi`},
		{[]string{"convert", notDisk, "-f", "ova", "--name", ".hidden"}, `--name ".hidden"`},
		{[]string{"convert", notDisk, "-f", "ova", "--name", "a/b"}, `--name "a/b"`},
		{[]string{"convert", filepath.Join(dir, "none.raw"), "-f", "vhd", "-o", out}, "no such file"},
		{[]string{"convert", notDisk, "-f", "vhd", "-o", out}, "no partition table"},
		{[]string{"convert", dir, "-f", "vhd", "-o", out}, "not a regular file"},
		{[]string{"convert", notDisk, "--nosuch"}, "unknown flag"},
	} {
		_, errs, code := run(t, c.args...)
		if code != 2 || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line with %q", c.args, code, errs, c.want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused convert made %s", out)
	}
	out, _, code := run(t, "convert", "--help")
	for _, want := range []string{"vhd    NAME.vhd", "gce    NAME.tar.gz", "Secure Boot", "SHA256SUMS", "Exit status"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("convert --help lacks %q", want)
		}
	}
}

func TestImageFirmware(t *testing.T) {
	for _, c := range []struct {
		types []string
		want  convert.Firmware
	}{
		{[]string{cloudimg.TypeBIOSBoot, cloudimg.TypeESP, cloudimg.TypeRootX8664}, convert.UEFI},
		{[]string{cloudimg.TypeBIOSBoot, cloudimg.TypeLinuxData}, convert.BIOS},
		{[]string{"0x83"}, convert.BIOS},
		{[]string{"0xef", "0x83"}, convert.UEFI},
	} {
		tb := &cloudimg.Table{}
		for i, ty := range c.types {
			tb.Partitions = append(tb.Partitions, cloudimg.Partition{Number: i + 1, Type: ty})
		}
		if got := imageFirmware(tb); got != c.want {
			t.Errorf("%v: %s, want %s", c.types, got, c.want)
		}
	}
}

// SHA256SUMS keeps the lines of other files (a build's), replaces a
// remade file's line and stays sorted; a file bake cannot parse is left
// alone.
func TestAddSums(t *testing.T) {
	dir := t.TempDir()
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(a+"  x.qcow2\n"+a+"  x.manifest.json\n"), 0o644)
	if err := addSums(dir, map[string]string{"x.vhd": b, "x.qcow2": c}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if want := a + "  x.manifest.json\n" + c + "  x.qcow2\n" + b + "  x.vhd\n"; string(got) != want {
		t.Errorf("SHA256SUMS:\n%s\nwant:\n%s", got, want)
	}
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte("not a sums file\n"), 0o644)
	if err := addSums(dir, map[string]string{"x.vhd": b}); err == nil {
		t.Error("a SHA256SUMS bake cannot read was rewritten")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left %v", ents)
	}
}
