package recipe

import (
	"strings"
	"testing"
)

// The state section's defaults are filled once, by Defaults, from the
// appliance sections (the gateway's resolved state directory, the admin's
// home), and the first-boot stamps are always kept on the volume.
func TestStateDefaults(t *testing.T) {
	const head = `apiVersion: bake/v1
name: s
base: {debian: {suite: bookworm}}
users:
  - {name: admin, groups: [sudo], sudo: nopasswd, home: /srv/admin}
  - {name: openclaw, system: true, home: /home/openclaw}
containers:
  - name: gw
    image: 127.0.0.1:5000/gw@sha256:0000000000000000000000000000000000000000000000000000000000000000
    user: openclaw
    volumes: ["/var/lib/gw:/home/node/.openclaw"]
gateway: {container: gw}
tailscale: {enabled: true}
firstboot: {admin_user: admin}
`
	for _, c := range []struct{ state, label, serial, paths string }{
		{"state: {}\n", "bake-state", "", "/var/lib/gw /var/lib/tailscale /etc/ssh/ssh_host_* /srv/admin/.ssh /var/lib/docker/volumes /etc/machine-id /var/lib/bake/firstboot"},
		{"state: {volume: {serial: vol1, label: mine}, paths: [/var/lib/gw]}\n", "mine", "vol1", "/var/lib/gw /var/lib/bake/firstboot"},
		{"state: {paths: [/var/lib/bake/firstboot, /etc/machine-id]}\n", "bake-state", "", "/var/lib/bake/firstboot /etc/machine-id"},
	} {
		r, err := Parse("s.yaml", []byte(head+c.state), t.TempDir(), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.state, err)
		}
		s := r.State
		if s.Volume.Label != c.label || s.Volume.Serial != c.serial || strings.Join(s.Paths, " ") != c.paths {
			t.Errorf("%s: label %q serial %q paths %q, want %q %q %q", c.state, s.Volume.Label, s.Volume.Serial, strings.Join(s.Paths, " "), c.label, c.serial, c.paths)
		}
		// Defaults is idempotent: nothing added twice.
		if err := r.Defaults(); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(r.State.Paths, " "); got != c.paths {
			t.Errorf("%s: after a second Defaults: %q", c.state, got)
		}
	}
	// No state section: nothing (opt-in).
	r, err := Parse("s.yaml", []byte(head), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != nil {
		t.Errorf("state without a state: section: %+v", r.State)
	}
}

// state.partition: its label defaults to bake-state, its size is parsed,
// and the volume's label is not filled (the state is not on a volume).
func TestStatePartitionDefaults(t *testing.T) {
	const head = "apiVersion: bake/v1\nname: s\nbase: {debian: {suite: bookworm}}\n"
	for _, c := range []struct {
		state, label string
		size         int64
	}{
		{"state: {partition: {size: 2GiB}}\n", "bake-state", 2 << 30},
		{"state: {partition: {size: 512MiB, label: st1}}\n", "st1", 512 << 20},
	} {
		r, err := Parse("s.yaml", []byte(head+c.state), t.TempDir(), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.state, err)
		}
		s := r.State
		if s.Partition == nil || s.Partition.Label != c.label || s.Partition.SizeBytes != c.size || s.Label() != c.label {
			t.Errorf("%s: partition %+v, want label %q size %d", c.state, s.Partition, c.label, c.size)
		}
		if s.Volume.Label != "" || s.Volume.Serial != "" {
			t.Errorf("%s: volume %+v filled for a partition", c.state, s.Volume)
		}
		if got := strings.Join(s.Paths, " "); got != "/etc/machine-id /var/lib/bake/firstboot" {
			t.Errorf("%s: paths %q", c.state, got)
		}
	}
}
