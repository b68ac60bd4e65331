package vm

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
)

func TestWriteNoCloudSeed(t *testing.T) {
	dir := t.TempDir()
	iso := filepath.Join(dir, "seed.iso")
	meta := []byte("instance-id: iid-bake-1\nlocal-hostname: bake\n")
	user := []byte("#cloud-config\nusers:\n  - name: admin\n    ssh_authorized_keys: [ssh-ed25519 AAAA test]\n")
	netcfg := []byte("version: 2\nethernets:\n  all:\n    match: {name: \"e*\"}\n    dhcp4: true\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1000) // spans several 2 KiB blocks
	if err := WriteNoCloudSeed(iso, meta, user, map[string][]byte{"network-config": netcfg, "vendor-data": big}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{"meta-data": meta, "user-data": user, "network-config": netcfg, "vendor-data": big}

	// Nothing left behind but the ISO.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %v, want only seed.iso", names)
	}

	// Read back with go-diskfs (always).
	d, err := diskfs.Open(iso, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := fs.Label(); strings.TrimRight(got, " ") != SeedLabel || strings.ContainsRune(got, 0) {
		t.Errorf("label %q, want %q", got, SeedLabel)
	}
	entries, err := fs.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		seen[e.Name()] = true
	}
	for name, content := range want {
		if !seen[name] {
			t.Errorf("go-diskfs: %s missing from root (have %v)", name, seen)
			continue
		}
		f, err := fs.OpenFile("/"+name, os.O_RDONLY)
		if err != nil {
			t.Errorf("open %s: %v", name, err)
			continue
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s: read %d bytes (err %v), want %d bytes equal", name, len(got), err, len(content))
		}
	}

	// And with independent tools when present.
	if _, err := exec.LookPath("xorriso"); err == nil {
		out, err := exec.Command("xorriso", "-indev", iso, "-pvd_info", "-ls", "/").CombinedOutput()
		if err != nil {
			t.Fatalf("xorriso: %v\n%s", err, out)
		}
		s := string(out)
		if !strings.Contains(s, "Volume Id    : "+SeedLabel) {
			t.Errorf("xorriso: no Volume Id %s:\n%s", SeedLabel, s)
		}
		for name := range want {
			if !strings.Contains(s, "'"+name+"'") {
				t.Errorf("xorriso -ls lacks %q (Rock Ridge name):\n%s", name, s)
			}
		}
		x := filepath.Join(t.TempDir(), "ud")
		if out, err := exec.Command("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/user-data", x).CombinedOutput(); err != nil {
			t.Errorf("xorriso extract: %v\n%s", err, out)
		} else if got, _ := os.ReadFile(x); !bytes.Equal(got, user) {
			t.Errorf("xorriso extracted user-data %q", got)
		}
	} else {
		t.Log("xorriso not installed: skipped its readback (go-diskfs readback ran)")
	}
	if _, err := exec.LookPath("isoinfo"); err == nil {
		out, err := exec.Command("isoinfo", "-R", "-l", "-i", iso).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "meta-data") {
			t.Errorf("isoinfo -R -l: %v\n%s", err, out)
		}
	}
	// blkid is what cloud-init uses to find the seed (LABEL=cidata).
	if _, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command("blkid", "-p", "-o", "export", iso).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "LABEL="+SeedLabel) || !strings.Contains(string(out), "TYPE=iso9660") {
			t.Errorf("blkid: %v\n%s", err, out)
		}
	}
}

func TestWriteNoCloudSeedRejectsBadNames(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"", "a/b", "..", "meta-data"} {
		if err := WriteNoCloudSeed(filepath.Join(dir, "s.iso"), nil, nil, map[string][]byte{name: nil}); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left files behind: %v", ents)
	}
}
