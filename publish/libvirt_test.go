package publish

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

func TestParseLibvirt(t *testing.T) {
	for _, c := range []struct{ in, pool, name, err string }{
		{"libvirt://default/gw-1", "default", "gw-1", ""},
		{"libvirt://images/openclaw_2026.12", "images", "openclaw_2026.12", ""},
		{"libvirt://default", "", "", "want libvirt://POOL/NAME"},
		{"libvirt:///gw", "", "", "want libvirt://POOL/NAME"},
		{"libvirt://a/b/c", "", "", "want libvirt://POOL/NAME"},
		{"libvirt://p/-x", "", "", `the domain name "-x"`},
		{"libvirt://p/a b", "", "", `the domain name "a b"`},
		{"libvirt://p%/x", "", "", `the pool "p%"`},
		{"libvirt://p/" + strings.Repeat("x", 64), "", "", "at most 63"},
	} {
		pool, name, err := ParseLibvirt(c.in)
		if c.err == "" && (err != nil || pool != c.pool || name != c.name) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %q %q %v; want %q %q %q", c.in, pool, name, err, c.pool, c.name, c.err)
		}
	}
}

// The domain bake defines passes its own read-back check, and the check
// catches what it is for.
func TestDomainXML(t *testing.T) {
	m := &BuildManifest{Bake: "v1"}
	m.Recipe.Name = "openclaw"
	sum := strings.Repeat("ab", 32)
	r := &LibvirtRecord{
		Image: LibvirtVolume{Path: "/p/gw.image.qcow2"},
		Disk:  LibvirtVolume{Path: "/p/gw.qcow2"},
		Seed:  &LibvirtVolume{Path: "/p/gw.seed"},
	}
	for _, fw := range []string{FirmwareBIOS, FirmwareUEFI} {
		lo := Libvirt{VirtType: "qemu", Firmware: fw, MemoryMiB: 1024, CPUs: 2, Network: "user", SSHForward: 2222, SSHPort: 22, SeedKind: "iso", Passt: true}
		x, err := DomainXML("gw", m, sum, "openclaw.qcow2", lo, r)
		if err != nil {
			t.Fatal(err)
		}
		var d libvirtxml.Domain
		if err := d.Unmarshal(x); err != nil {
			t.Fatal(err)
		}
		if err := CheckDomain(&d, sum, lo, r); err != nil {
			t.Errorf("%s: %v\n%s", fw, err, x)
		}
		efi := strings.Contains(x, `firmware="efi"`) && strings.Contains(x, `<feature enabled="no" name="secure-boot">`)
		if efi != (fw == FirmwareUEFI) {
			t.Errorf("%s: efi with secure boot off: %v\n%s", fw, efi, x)
		}
		for _, want := range []string{`<backend type="passt">`, `<portForward proto="tcp" address="127.0.0.1">`, `<range start="2222" to="22">`, `<model type="virtio">`, `bus="virtio"`, `<readonly>`, sum} {
			if !strings.Contains(x, want) {
				t.Errorf("%s: no %s in\n%s", fw, want, x)
			}
		}
		// libvirt before 9.2: QEMU's user network with a hostfwd, passed
		// through qemu:commandline, and no <interface>.
		slirp := lo
		slirp.Passt = false
		sx, err := DomainXML("gw", m, sum, "openclaw.qcow2", slirp, r)
		if err != nil {
			t.Fatal(err)
		}
		var sd libvirtxml.Domain
		if err := sd.Unmarshal(sx); err != nil {
			t.Fatal(err)
		}
		if err := CheckDomain(&sd, sum, slirp, r); err != nil || strings.Contains(sx, "<interface") || !strings.Contains(sx, `value="user,id=bakenet0,hostfwd=tcp:127.0.0.1:2222-:22"`) {
			t.Errorf("%s, slirp: %v\n%s", fw, err, sx)
		}
		if err := CheckDomain(&d, sum, slirp, r); err == nil {
			t.Errorf("%s: the passt domain passed the slirp check", fw)
		}
		// Wrong firmware, the image volume as a disk, no metadata.
		other := lo
		other.Firmware = map[string]string{FirmwareBIOS: FirmwareUEFI, FirmwareUEFI: FirmwareBIOS}[fw]
		if err := CheckDomain(&d, sum, other, r); err == nil || !strings.Contains(err.Error(), "firmware") {
			t.Errorf("%s checked as %s: %v", fw, other.Firmware, err)
		}
		var bad libvirtxml.Domain
		bad.Unmarshal(x)
		bad.Devices.Disks[0].Source.File.File = r.Image.Path
		if err := CheckDomain(&bad, sum, lo, r); err == nil || !strings.Contains(err.Error(), "the image volume itself is a disk") {
			t.Errorf("image volume as the disk: %v", err)
		}
		if err := CheckDomain(&d, strings.Repeat("cd", 32), lo, r); err == nil || !strings.Contains(err.Error(), "metadata") {
			t.Errorf("another image's sha256: %v", err)
		}
	}
}
