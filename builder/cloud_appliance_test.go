package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
)

// On a cloud-image base the appliance leaves the image's network to
// cloud-init: the system stage (networkd on every NIC) does not run there,
// so "network: config: disabled" would leave the NIC down.
func TestCloudInitNetwork(t *testing.T) {
	const off = "network:\n  config: disabled\n"
	if c := appliance.CloudInitConfig(appliance.SSHOptions{CloudInit: true, AdminUser: "admin"}); !strings.Contains(c, off) {
		t.Errorf("packages-built: cloud-init's network is not disabled:\n%s", c)
	}
	on := appliance.CloudInitConfig(appliance.SSHOptions{CloudInit: true, AdminUser: "admin", CloudInitNetwork: true})
	if strings.Contains(on, "network:") && strings.Contains(on, "config: disabled") {
		t.Errorf("cloud image: cloud-init's network disabled:\n%s", on)
	}
	if !strings.Contains(on, "ssh_pwauth: false") {
		t.Errorf("cloud image: the rest of the drop-in is gone:\n%s", on)
	}
}

// The plan of an appliance on a cloud image says that cloud-init keeps the
// network; the packages-built one does not.
func TestCloudImageAppliancePlan(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "base.qcow2"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := strings.Replace(applianceRecipe, "base: {debian: {suite: bookworm}}",
		"base: {image: {path: base.qcow2, sha256: "+strings.Repeat("a", 64)+"}}", 1)
	src = strings.NewReplacer("MODE", "local", "NETS", "[]").Replace(src)
	r, err := recipe.Parse("gw.yaml", []byte(src), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const note = "cloud image base: cloud-init keeps configuring the image's own network stack"
	if ssh := sshInputs(p); !slices.Contains(ssh, note) {
		t.Errorf("ssh stage inputs %q", ssh)
	}
	if !p.sshOptions().CloudInitNetwork {
		t.Error("cloud image base: sshOptions().CloudInitNetwork is false")
	}
	if ssh := sshInputs(compileAppliance(t, "local", "[]")); len(ssh) == 0 || slices.Contains(ssh, note) {
		t.Errorf("packages-built appliance's ssh stage inputs %q", ssh)
	}
}

func sshInputs(p *Plan) []string {
	for _, s := range p.Stages {
		if s.Name == "ssh" {
			return s.Inputs
		}
	}
	return nil
}

func TestMissingKernelArgs(t *testing.T) {
	cfg := `set default=0
menuentry 'Debian GNU/Linux' {
	search --no-floppy --fs-uuid --set=root d5b1a5e0
	linux	/boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=d5b1 ro console=tty0 console=ttyS0,115200
	initrd	/boot/initrd.img-6.1.0-28-cloud-amd64
}
menuentry 'other' {
	linux /boot/vmlinuz-x root=/dev/sda1 no_timer_check
}
`
	for _, c := range []struct {
		want []string
		miss string
	}{
		{[]string{"no_timer_check"}, "no_timer_check"},
		{[]string{"console=ttyS0,115200", "ro"}, ""},
		{[]string{"console=ttyS0", "quiet"}, "console=ttyS0 quiet"},
	} {
		if got := strings.Join(missingKernelArgs(cfg, c.want), " "); got != c.miss {
			t.Errorf("missing %v: %q, want %q", c.want, got, c.miss)
		}
	}
	if got := missingKernelArgs("", []string{"a", "b"}); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("no grub.cfg: %v", got)
	}
	if got := missingKernelArgs(cfg, nil); got == nil || len(got) != 0 {
		t.Errorf("nothing wanted: %#v (want an empty list for the manifest)", got)
	}
}
