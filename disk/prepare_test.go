package disk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testEpoch = 1700000000 // 2023-11-14T22:13:20Z

// fakeTree makes the parts of a Debian root tree the stage looks at.
func fakeTree(t *testing.T) string {
	t.Helper()
	tree := t.TempDir()
	files := map[string]string{
		"boot/vmlinuz-6.1.0-9-amd64":           "old kernel",
		"boot/initrd.img-6.1.0-9-amd64":        "old initrd",
		"boot/vmlinuz-6.1.0-26-amd64":          "new kernel",
		"boot/initrd.img-6.1.0-26-amd64":       "new initrd",
		"boot/vmlinuz-6.1.0-30-amd64.dpkg-tmp": "half-installed",
		"boot/config-6.1.0-26-amd64":           "",
		"usr/bin/grub-mkimage":                 "#!/bin/false\n",
		"usr/lib/grub/i386-pc/kernel.img":      "k",
		"usr/lib/grub/i386-pc/boot.img":        string(syntheticBootImg()),
		"usr/lib/grub/i386-pc/normal.mod":      "normal",
		"usr/lib/grub/i386-pc/command.lst":     "linux: linux\n",
		"usr/lib/grub/i386-pc/moddep.lst":      "normal: \n",
		"usr/lib/grub/i386-pc/efiemu32.o":      "e",
		"usr/lib/grub/i386-pc/kernel.exec":     "not copied",
		"usr/lib/grub/i386-pc/config.h":        "not copied",
		"usr/lib/grub/x86_64-efi/kernel.img":   "k",
		"usr/lib/grub/x86_64-efi/normal.mod":   "normal",
		"usr/lib/grub/x86_64-efi/command.lst":  "linux: linux\n",
		"usr/lib/os-release":                   "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
		"etc/fstab":                            "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n/dev/sda1 / ext4 defaults 0 1\ntmpfs /tmp tmpfs mode=1777,nosuid 0 0\n/dev/sda15 /boot/efi/ vfat defaults 0 0\n",
		"boot/grub/i386-pc/stale-2.04.mod":     "from an older GRUB",
	}
	for name, data := range files {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../usr/lib/os-release", filepath.Join(tree, "etc/os-release")); err != nil {
		t.Fatal(err)
	}
	return tree
}

func testSpec(tree string) Spec {
	return Spec{
		Tree:            tree,
		Output:          filepath.Join(filepath.Dir(tree), "disk.raw"),
		BIOS:            true,
		UEFI:            true,
		Layout:          DeriveLayout("bake"),
		KernelCmdline:   "console=tty0  console=ttyS0,115200n8",
		SourceDateEpoch: testEpoch,
	}
}

func TestPrepareTree(t *testing.T) {
	tree := fakeTree(t)
	if err := PrepareTree(testSpec(tree)); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	golden(t, "grub.cfg.golden", read("boot/grub/grub.cfg"))
	golden(t, "fstab.golden", read("etc/fstab"))

	for _, want := range []string{"i386-pc/normal.mod", "i386-pc/command.lst", "i386-pc/moddep.lst", "i386-pc/efiemu32.o", "x86_64-efi/normal.mod", "x86_64-efi/command.lst"} {
		if got := string(read("boot/grub/" + want)); got != string(read("usr/lib/grub/"+want)) {
			t.Errorf("/boot/grub/%s = %q", want, got)
		}
	}
	for _, absent := range []string{"i386-pc/kernel.exec", "i386-pc/config.h", "i386-pc/kernel.img", "i386-pc/stale-2.04.mod"} {
		if _, err := os.Lstat(filepath.Join(tree, "boot/grub", absent)); err == nil {
			t.Errorf("/boot/grub/%s should not be there", absent)
		}
	}
	for _, name := range []string{"etc/fstab", "boot/grub/grub.cfg", "boot/grub", "boot/grub/i386-pc", "boot/grub/i386-pc/normal.mod", "boot/efi", "boot", "etc", "."} {
		fi, err := os.Stat(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(time.Unix(testEpoch, 0)) {
			t.Errorf("/%s mtime %v, want SOURCE_DATE_EPOCH", name, fi.ModTime().UTC())
		}
		want := os.FileMode(0o644)
		if fi.IsDir() {
			want = 0o755 | os.ModeDir
		}
		if name != "." && fi.Mode() != want {
			t.Errorf("/%s mode %v, want %v", name, fi.Mode(), want)
		}
	}

	// Running it again gives the same result (a rebuild of the same tree).
	before := read("boot/grub/grub.cfg")
	if err := PrepareTree(testSpec(tree)); err != nil {
		t.Fatal(err)
	}
	if string(read("boot/grub/grub.cfg")) != string(before) {
		t.Error("second PrepareTree changed grub.cfg")
	}
	golden(t, "fstab.golden", read("etc/fstab"))
}

func TestPrepareTreeNeverWritesThroughSymlinks(t *testing.T) {
	tree := fakeTree(t)
	host := filepath.Join(t.TempDir(), "host-fstab")
	if err := os.WriteFile(host, []byte("HOST\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fstab := filepath.Join(tree, "etc/fstab")
	os.Remove(fstab)
	if err := os.Symlink(host, fstab); err != nil {
		t.Fatal(err)
	}
	if err := PrepareTree(testSpec(tree)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(host); string(b) != "HOST\n" {
		t.Fatalf("host file written through the tree's symlink: %q", b)
	}
	if fi, err := os.Lstat(fstab); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("tree fstab is not a regular file: %v %v", fi, err)
	}

	// A directory on the way that escapes the tree is refused.
	tree2 := fakeTree(t)
	os.RemoveAll(filepath.Join(tree2, "boot/grub"))
	if err := os.Symlink(t.TempDir(), filepath.Join(tree2, "boot/grub")); err != nil {
		t.Fatal(err)
	}
	if err := PrepareTree(testSpec(tree2)); err == nil {
		t.Fatal("PrepareTree followed /boot/grub out of the tree")
	}
}

func TestPrepareTreeErrors(t *testing.T) {
	tree := fakeTree(t)
	for _, k := range []string{"vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-26-amd64", "vmlinuz-6.1.0-30-amd64.dpkg-tmp"} {
		os.Remove(filepath.Join(tree, "boot", k))
	}
	if err := PrepareTree(testSpec(tree)); err == nil || !strings.Contains(err.Error(), "no kernel") {
		t.Errorf("tree without kernel: err = %v", err)
	}

	tree = fakeTree(t)
	os.RemoveAll(filepath.Join(tree, "usr/lib/grub/x86_64-efi"))
	if err := PrepareTree(testSpec(tree)); err == nil || !strings.Contains(err.Error(), "x86_64-efi") {
		t.Errorf("UEFI without x86_64-efi modules: err = %v", err)
	}
	s := testSpec(tree)
	s.UEFI = false
	if err := PrepareTree(s); err != nil {
		t.Errorf("BIOS-only tree: %v", err)
	}

	s = testSpec(fakeTree(t))
	s.KernelCmdline = "quiet; reboot"
	if err := PrepareTree(s); err == nil || !strings.Contains(err.Error(), "KernelCmdline") {
		t.Errorf("unsafe cmdline: err = %v", err)
	}
}

func TestPrepareTreeNoInitrd(t *testing.T) {
	tree := fakeTree(t)
	os.Remove(filepath.Join(tree, "boot/initrd.img-6.1.0-26-amd64"))
	var log strings.Builder
	s := testSpec(tree)
	s.Log = &log
	if err := PrepareTree(s); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(tree, "boot/grub/grub.cfg"))
	if strings.Contains(string(cfg), "initrd") {
		t.Errorf("grub.cfg loads an initrd that does not exist:\n%s", cfg)
	}
	if !strings.Contains(log.String(), "initrd.img-6.1.0-26-amd64 not found") {
		t.Errorf("no warning logged: %q", log.String())
	}
}

func TestRenderFstabKeepsOtherEntries(t *testing.T) {
	l := DeriveLayout("bake")
	got := string(renderFstab(l, []byte("# comment\n\nUUID=x / ext4 defaults 0 1\n  tmpfs /tmp tmpfs defaults 0 0\nPARTUUID=y /boot/efi vfat defaults 0 0\n")))
	if strings.Count(got, " / ext4") != 1 || strings.Count(got, "/boot/efi") != 1 {
		t.Errorf("old root/ESP entries kept:\n%s", got)
	}
	if !strings.HasSuffix(got, "tmpfs /tmp tmpfs defaults 0 0\n") {
		t.Errorf("tmpfs entry lost:\n%s", got)
	}
	if !strings.Contains(got, "UUID="+l.RootFSUUID+" / ext4 ") || !strings.Contains(got, "PARTUUID="+l.ESPPartUUID+" /boot/efi vfat ") {
		t.Errorf("new entries missing:\n%s", got)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int // sign
	}{
		{"6.1.0-26-amd64", "6.1.0-9-amd64", 1},
		{"6.1.0-9-amd64", "6.1.0-26-amd64", -1},
		{"6.1.0-26-amd64", "6.1.0-26-amd64", 0},
		{"6.10.0-1-amd64", "6.9.0-1-amd64", 1},
		{"6.8.0-45-generic", "6.8.0-100-generic", -1},
		{"5.10.0-30-cloud-amd64", "5.10.0-30-amd64", 1}, // 'c' > 'a'
		{"6.1.0~rc1", "6.1.0", -1},
		{"6.1.0", "6.1.0+b1", -1},
		{"1.0", "1.00", 0},
		{"1.0a", "1.0", 1},
		{"1.0", "1.0-1", -1},
	} {
		got := compareVersions(c.a, c.b)
		if (got > 0) != (c.want > 0) || (got < 0) != (c.want < 0) {
			t.Errorf("compareVersions(%q, %q) = %d, want sign %d", c.a, c.b, got, c.want)
		}
	}
}
