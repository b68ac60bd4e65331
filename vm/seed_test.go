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
		// go-diskfs v1.9.1 reads a file of more than 512 bytes up to a
		// multiple of 256, padded with NULs (mtype below reads the exact
		// bytes).
		if len(content) > 512 && len(content)%256 != 0 {
			got = bytes.TrimRight(got, "\x00")
		}
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

// The FAT seed is read back by go-diskfs and, when installed, by the tools
// that find and read it in a guest: blkid (LABEL=CIDATA, TYPE=vfat, what
// first boot and cloud-init look for), fsck.fat (nothing to repair) and
// mtools (the long file names and contents).
func TestWriteNoCloudFAT(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "seed.img")
	meta := []byte("instance-id: iid-bake-1\n")
	user := []byte("#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA test\"\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: several clusters
	// The three bake.tailscale_* names share one 8.3 name as go-diskfs
	// makes it (BAKE.TAI): uniqueShortNames numbers them.
	extra := map[string][]byte{"bake.gateway_token": []byte("T0ken-0123456789abcdef\n"), "vendor-data": big,
		"bake.tailscale_authkey": []byte("hskey-auth-1\n"), "bake.tailscale_ca": []byte("-----BEGIN CERTIFICATE-----\n" + strings.Repeat("A", 600) + "\n"),
		"bake.tailscale_login_server": []byte("https://10.77.0.1\n")}
	want := map[string][]byte{"meta-data": meta, "user-data": user}
	for n, v := range extra {
		want[n] = v
	}
	if err := WriteNoCloudFAT(img, meta, user, extra); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() < fatSeedMin || st.Size()%(1<<20) != 0 {
		t.Errorf("mode %v size %d", st.Mode(), st.Size())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dir holds %d entries, want only seed.img", len(ents))
	}

	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimRight(fs.Label(), " "); got != SeedLabelFAT {
		t.Errorf("label %q", got)
	}
	for name, content := range want {
		f, err := fs.OpenFile("/"+name, os.O_RDONLY)
		if err != nil {
			t.Errorf("open %s: %v", name, err)
			continue
		}
		got, err := io.ReadAll(f)
		f.Close()
		// go-diskfs v1.9.1 reads a file of more than 512 bytes up to a
		// multiple of 256, padded with NULs (mtype below reads the exact
		// bytes).
		if len(content) > 512 && len(content)%256 != 0 {
			got = bytes.TrimRight(got, "\x00")
		}
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s: read %d bytes (err %v), want %d bytes equal", name, len(got), err, len(content))
		}
	}

	if _, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command("blkid", "-p", "-o", "export", img).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "LABEL="+SeedLabelFAT+"\n") || !strings.Contains(string(out), "TYPE=vfat") {
			t.Errorf("blkid: %v\n%s", err, out)
		}
	} else {
		t.Log("blkid not installed: label not checked by it")
	}
	if _, err := exec.LookPath("fsck.fat"); err == nil {
		if out, err := exec.Command("fsck.fat", "-n", "-v", img).CombinedOutput(); err != nil {
			t.Errorf("fsck.fat -n: %v\n%s", err, out)
		}
	} else {
		t.Log("fsck.fat not installed: not checked by it")
	}
	if _, err := exec.LookPath("mtype"); err == nil {
		for name, content := range want {
			out, err := exec.Command("mtype", "-i", img, "::"+name).Output()
			if err != nil || !bytes.Equal(out, content) {
				t.Errorf("mtype %s: %v (%d bytes)", name, err, len(out))
			}
		}
	} else {
		t.Log("mtools not installed: not read back by them")
	}
}
