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
// so "network: config: disabled" would leave the NIC down. Everything else
// of the cloud-init drop-in stays.
func TestKeepCloudInitNetwork(t *testing.T) {
	files := appliance.SSHFiles(appliance.SSHOptions{CloudInit: true, AdminUser: "admin"})
	var before string
	for _, f := range files {
		if f.Path == appliance.CloudInitSSH {
			before = string(f.Content)
		}
	}
	if !strings.Contains(before, cloudInitNetworkOff) {
		t.Fatalf("the appliance's cloud-init drop-in no longer has %q:\n%s", cloudInitNetworkOff, before)
	}
	out, err := keepCloudInitNetwork(files)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(files) {
		t.Fatalf("%d files, want %d", len(out), len(files))
	}
	for i, f := range out {
		if f.Path != appliance.CloudInitSSH {
			if string(f.Content) != string(files[i].Content) {
				t.Errorf("%s changed", f.Path)
			}
			continue
		}
		c := string(f.Content)
		if strings.Contains(c, "config: disabled") || strings.Contains(c, "\nnetwork:") {
			t.Errorf("network configuration still disabled:\n%s", c)
		}
		if c != strings.Replace(before, cloudInitNetworkOff, "# network: cloud-init configures the base cloud image's own network stack.\n", 1) {
			t.Errorf("more than the network stanza changed:\n%s", c)
		}
		for _, want := range []string{"ssh_pwauth: false\n", "disable_root: true\n", "datasource_list: ["} {
			if !strings.Contains(c, want) {
				t.Errorf("lacks %q", want)
			}
		}
	}
	// The input is not modified.
	for _, f := range files {
		if f.Path == appliance.CloudInitSSH && string(f.Content) != before {
			t.Error("keepCloudInitNetwork modified its input")
		}
	}
	// A drop-in without the stanza is an error, not a silent no-op.
	bad := slices.Clone(files)
	for i := range bad {
		if bad[i].Path == appliance.CloudInitSSH {
			bad[i].Content = []byte("ssh_pwauth: false\n")
		}
	}
	if _, err := keepCloudInitNetwork(bad); err == nil {
		t.Error("a drop-in without the network stanza was accepted")
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
