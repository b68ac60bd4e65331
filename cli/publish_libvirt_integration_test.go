//go:build integration

package cli

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/crypto/ssh"
	"libvirt.org/go/libvirtxml"

	"github.com/bakeimg/bake/internal/libvirttest"
	"github.com/bakeimg/bake/publish"
)

// partAppImage writes DIR/NAME.qcow2: a GPT disk laid out as bake's, with
// an EFI system partition, a root partition with random data and, when
// bios, a BIOS boot partition (else a UEFI-only image); and its build
// manifest. It returns the qcow2's SHA-256.
func partAppImage(t *testing.T, dir, name string, bios bool) string {
	t.Helper()
	const size = 32 << 20
	raw := filepath.Join(dir, name+".raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	last := uint64(size/512) - 34
	tb := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "6F0B6F1E-2C39-4B43-9E4E-6C1F8C2A9D10"}
	tb.Partitions = []*gpt.Partition{
		{Index: 1, Start: 20480, End: last, Type: gpt.LinuxFilesystem, Name: "root", GUID: "1B5B3C7A-6D0E-4D8A-9A55-3A1E6B0D7F21"},
		{Index: 15, Start: 4096, End: 20479, Type: gpt.EFISystemPartition, Name: "esp", GUID: "3D3E4F5A-6B7C-4D8E-9FA0-1B2C3D4E5F60"},
	}
	if bios {
		tb.Partitions = append(tb.Partitions, &gpt.Partition{Index: 14, Start: 2048, End: 4095, Type: gpt.BIOSBoot, Name: "bios", GUID: "4C2D3E4F-5A6B-4C7D-8E9F-0A1B2C3D4E5F"})
	}
	for _, p := range tb.Partitions {
		p.Size = (p.End - p.Start + 1) * 512
	}
	if err := tb.Write(f, size); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	f.WriteAt(data, 20480*512)
	f.Close()
	q := filepath.Join(dir, name+".qcow2")
	if b, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	os.Remove(raw)
	b, _ := os.ReadFile(q)
	sum := sha256.Sum256(b)
	m := map[string]any{
		"bake_version": "v9.9.9-test", "recipe": map[string]any{"name": name, "sha256": strings.Repeat("ab", 32)},
		"source_date_epoch": 1700000000,
		"outputs":           []map[string]any{{"file": name + ".qcow2", "format": "qcow2", "sha256": hex.EncodeToString(sum[:])}},
	}
	mb, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, name+".manifest.json"), mb, 0o644)
	return hex.EncodeToString(sum[:])
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func dirList(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		fi, _ := e.Info()
		out = append(out, e.Name()+"@"+fi.ModTime().String())
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestPublishLibvirt publishes to a real libvirtd (Debian's, private,
// started here): the image volume holds the image's bytes, the domain's
// XML has the image's firmware, an overlay disk on virtio, the seed bake
// seed's writer made; a re-run changes nothing; a UEFI-only image gets
// OVMF with Secure Boot off; a wrong pool, a wrong URI, a name taken by
// another image, leftover volumes and a define that fails each give one
// line and leave nothing.
func TestPublishLibvirt(t *testing.T) {
	d := libvirttest.Start(t)
	poolDir := d.DirPool(t, "bake")
	dir := t.TempDir()
	image := filepath.Join(dir, "app.qcow2")
	sum := partAppImage(t, dir, "app", true)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sp, _ := ssh.NewPublicKey(pub)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " test@bake"
	keyFile := filepath.Join(dir, "admin.pub")
	os.WriteFile(keyFile, []byte(key+"\n"), 0o644)
	base := []string{"--connect", d.URI, "--virt-type", "qemu"}

	out, errs, code := run(t, append([]string{"publish", image, "--to", "libvirt://bake/app", "--admin-key", keyFile}, base...)...)
	if code != 0 {
		t.Fatalf("publish: exit %d\n%s\n%s", code, out, errs)
	}
	t.Logf("publish:\n%s%s", out, errs)
	// The volumes, read from the pool's directory (not through bake).
	if got := fileSHA256(t, filepath.Join(poolDir, "app.image.qcow2")); got != sum {
		t.Errorf("image volume sha256 %s, image %s", got, sum)
	}
	info, err := exec.Command("qemu-img", "info", "--output=json", filepath.Join(poolDir, "app.qcow2")).Output()
	if err != nil {
		t.Fatal(err)
	}
	var qi struct {
		Format      string `json:"format"`
		Backing     string `json:"full-backing-filename"`
		VirtualSize int64  `json:"virtual-size"`
	}
	json.Unmarshal(info, &qi)
	if qi.Format != "qcow2" || qi.Backing != filepath.Join(poolDir, "app.image.qcow2") || qi.VirtualSize != 32<<20 {
		t.Errorf("disk volume: %s", info)
	}
	seed, err := os.ReadFile(filepath.Join(poolDir, "app.seed"))
	if err != nil {
		t.Fatal(err)
	}
	if string(seed[0x8001:0x8006]) != "CD001" || !strings.Contains(string(seed), key) {
		t.Errorf("seed volume: not an ISO9660 holding the admin key")
	}
	if st, _ := os.Stat(filepath.Join(poolDir, "app.seed")); st.Mode().Perm() != 0o600 {
		t.Errorf("seed volume mode %v, want 0600 (it may hold secrets)", st.Mode())
	}
	l, err := d.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	domXML := func(name string) *libvirtxml.Domain {
		t.Helper()
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			t.Fatalf("domain %s: %v", name, err)
		}
		x, err := l.DomainGetXMLDesc(dom, 0)
		if err != nil {
			t.Fatal(err)
		}
		var dx libvirtxml.Domain
		if err := dx.Unmarshal(x); err != nil {
			t.Fatal(err)
		}
		return &dx
	}
	dx := domXML("app")
	if dx.Type != "qemu" || dx.OS.Firmware != "" || dx.OS.Loader != nil || dx.OS.Type.Machine == "" || !strings.HasPrefix(dx.OS.Type.Machine, "pc-q35") {
		t.Errorf("domain app: type %s, os %+v; want qemu, q35, SeaBIOS", dx.Type, dx.OS)
	}
	var disks []string
	for _, k := range dx.Devices.Disks {
		ro := k.ReadOnly != nil
		disks = append(disks, k.Device+":"+k.Target.Bus+":"+k.Driver.Type+":"+k.Source.File.File+":"+map[bool]string{true: "ro", false: "rw"}[ro])
	}
	want := []string{"disk:virtio:qcow2:" + filepath.Join(poolDir, "app.qcow2") + ":rw", "disk:virtio:raw:" + filepath.Join(poolDir, "app.seed") + ":ro"}
	if strings.Join(disks, " ") != strings.Join(want, " ") {
		t.Errorf("domain app disks:\n %v\nwant\n %v", disks, want)
	}
	if len(dx.Devices.Interfaces) != 1 || dx.Devices.Interfaces[0].Model.Type != "virtio" || dx.Devices.Interfaces[0].Source.User == nil {
		t.Errorf("domain app: interfaces %+v", dx.Devices.Interfaces)
	}
	if dx.Metadata == nil || !strings.Contains(dx.Metadata.XML, sum) {
		t.Errorf("domain app: metadata does not name the image's sha256: %+v", dx.Metadata)
	}
	var rc publish.Receipt
	rb, err := os.ReadFile(image + ".publish.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(rb, &rc); err != nil || len(rc.Publishes) != 1 {
		t.Fatalf("receipt: %v\n%s", err, rb)
	}
	if r := rc.Publishes[0]; r.Libvirt == nil || r.ImageSHA256 != sum || r.Libvirt.Image.SHA256 != sum || r.Libvirt.Domain != "app" || r.Libvirt.Firmware != "bios" || r.Libvirt.Seed == nil || r.Libvirt.UUID == "" {
		t.Errorf("receipt: %s", rb)
	}

	// The same again: nothing changes, not even the receipt.
	before, rbefore := dirList(t, poolDir), dirList(t, dir)
	out, errs, code = run(t, append([]string{"publish", image, "--to", "libvirt://bake/app"}, base...)...)
	if code != 0 || !strings.Contains(out, "nothing to upload or define") {
		t.Errorf("re-publish: exit %d\n%s\n%s", code, out, errs)
	}
	if now := dirList(t, poolDir); now != before {
		t.Errorf("re-publish changed the pool:\n%s\n%s", before, now)
	}
	if now := dirList(t, dir); now != rbefore {
		t.Errorf("re-publish changed the image's folder (receipt):\n%s\n%s", rbefore, now)
	}

	// A UEFI-only image: OVMF, Secure Boot off.
	usum := partAppImage(t, dir, "efi", false)
	out, errs, code = run(t, append([]string{"publish", filepath.Join(dir, "efi.qcow2"), "--to", "libvirt://bake/efi"}, base...)...)
	if code != 0 {
		t.Fatalf("publish efi: exit %d\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(out, "firmware uefi (an EFI system partition and no BIOS boot partition)") {
		t.Errorf("publish efi: firmware not from the image:\n%s", out)
	}
	ex := domXML("efi")
	sbOff := false
	if ex.OS.FirmwareInfo != nil {
		for _, f := range ex.OS.FirmwareInfo.Features {
			sbOff = sbOff || f.Name == "secure-boot" && f.Enabled == "no"
		}
	}
	if ex.OS.Firmware != "efi" || !sbOff {
		t.Errorf("domain efi: os %+v firmware %+v: want efi, secure-boot off", ex.OS, ex.OS.FirmwareInfo)
	}
	if got := fileSHA256(t, filepath.Join(poolDir, "efi.image.qcow2")); got != usum {
		t.Errorf("efi image volume sha256 %s, image %s", got, usum)
	}
	if _, err := os.Stat(filepath.Join(poolDir, "efi.seed")); err == nil {
		t.Errorf("efi: a seed volume without --admin-key or --seed")
	}

	// Refusals: one line each, nothing left.
	other := filepath.Join(t.TempDir(), "app.qcow2")
	partAppImage(t, filepath.Dir(other), "app", true)
	os.WriteFile(filepath.Join(poolDir, "orphan.image.qcow2"), []byte("left over"), 0o600)
	before = dirList(t, poolDir)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"publish", image, "--to", "libvirt://nopool/x"}, 1, `has no storage pool "nopool" (it has: bake)`},
		{[]string{"publish", image, "--to", "libvirt://bake/x", "--connect", "qemu:///system?socket=" + filepath.Join(dir, "no-such-sock")}, 1, "is unreachable"},
		{[]string{"publish", other, "--to", "libvirt://bake/app"}, 1, "domain app exists, defined from another image"},
		{[]string{"publish", image, "--to", "libvirt://bake/orphan"}, 1, "already has a volume orphan.image.qcow2 but there is no domain orphan"},
		// kvm where libvirtd has none: the define fails, after the
		// uploads: every volume made is removed.
		{[]string{"publish", image, "--to", "libvirt://bake/x", "--virt-type", "kvm", "--admin-key", keyFile, "--start"}, 1, "defining domain x: libvirt: unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not support virt type 'kvm'"},
		// A start that fails (no such network), after the define: the
		// domain is undefined and every volume removed.
		{[]string{"publish", image, "--to", "libvirt://bake/x", "--network", "network:nosuch", "--admin-key", keyFile, "--start"}, 1, "starting domain x: libvirt:"},
		{[]string{"publish", image, "--to", "libvirt://bake/a/b"}, 2, "want libvirt://POOL/NAME"},
		{[]string{"publish", image, "--to", "libvirt://bake/x", "--ca", keyFile}, 2, "--ca and --force are for oci://"},
		{[]string{"publish", image, "--to", "oci://r.example/a:1", "--start"}, 2, "--start: for libvirt:// destinations only"},
		{[]string{"publish", image, "--to", "libvirt://bake/x", "--network", "bridge:"}, 2, "--network"},
	} {
		args := c.args
		if !strings.Contains(strings.Join(args, " "), "--connect") {
			args = append(args, "--connect", d.URI)
		}
		if !strings.Contains(strings.Join(args, " "), "--virt-type") {
			args = append(args, "--virt-type", "qemu")
		}
		out, errs, code := run(t, args...)
		// One error line; a progress line (stderr is no terminal) may
		// come before it.
		var lines []string
		for _, line := range strings.Split(strings.TrimSpace(errs), "\n") {
			if !strings.HasPrefix(line, "upload ") {
				lines = append(lines, line)
			}
		}
		if code != c.code || !strings.Contains(errs, c.want) || len(lines) != 1 {
			t.Errorf("%v: exit %d\nstdout %s\nstderr %q\nwant exit %d and one line with %q", c.args, code, out, errs, c.code, c.want)
		}
		if now := dirList(t, poolDir); now != before {
			t.Errorf("%v: the pool changed:\n%s\n%s", c.args, before, now)
		}
		if _, err := l.DomainLookupByName("x"); err == nil {
			t.Errorf("%v: a domain x was left", c.args)
		}
	}
	if got := fileSHA256(t, filepath.Join(poolDir, "app.image.qcow2")); got != sum {
		t.Errorf("after the refusals, the image volume sha256 %s, image %s", got, sum)
	}
}
