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
	if ssh := sshInputs(p); !slices.ContainsFunc(ssh, func(s string) bool { return strings.HasPrefix(s, note+";") && strings.Contains(s, "notfound=enabled") }) {
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

// On a cloud base only the recipe's own kernel arguments count: bake's
// DefaultCmdline is not the recipe asking for anything, so a base whose
// grub.cfg writes console=ttyS0,115200 (Debian's genericcloud) keeps its
// grub.cfg when the recipe has no kernel.cmdline.
func TestCloudBaseKernelArgs(t *testing.T) {
	const genericcloud = "menuentry 'Debian GNU/Linux' {\n\tlinux\t/boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=d5b1 ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0\n}\n"
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "base.qcow2"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ kernel, missing, input string }{
		{"", "", "kernel command line: the base's own"},
		{"kernel: {cmdline: no_timer_check}\n", "no_timer_check", "kernel command line: the base's own, plus (grub.cfg made anew if it lacks one) no_timer_check"},
		{"kernel: {cmdline: console=tty0}\n", "", "kernel command line: the base's own, plus (grub.cfg made anew if it lacks one) console=tty0"},
	} {
		src := "apiVersion: bake/v1\nname: c\nbase: {image: {path: base.qcow2, sha256: " + strings.Repeat("a", 64) + "}}\n" + c.kernel
		r, err := recipe.Parse("c.yaml", []byte(src), dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(missingKernelArgs(genericcloud, r.Kernel.RecipeArgs), " "); got != c.missing {
			t.Errorf("%q: missing %q, want %q", c.kernel, got, c.missing)
		}
		p, err := Compile(r, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if in := stageInputs(p, "reassemble"); !slices.Contains(in, c.input) {
			t.Errorf("%q: reassemble inputs %q, want %q", c.kernel, in, c.input)
		}
	}
}

// A disk bake assembles boots with each argument once: DefaultCmdline's,
// then the recipe's (recipes/minimal.yaml had console=tty0
// console=ttyS0,115200n8 twice).
func TestAssembleKernelArgsOnce(t *testing.T) {
	for kernel, want := range map[string]string{
		"":                                    "console=tty0 console=ttyS0,115200n8 no_timer_check",
		"kernel: {cmdline: no_timer_check}\n": "console=tty0 console=ttyS0,115200n8 no_timer_check",
		"kernel: {cmdline: quiet no_timer_check}\n": "console=tty0 console=ttyS0,115200n8 quiet no_timer_check",
	} {
		r, err := recipe.Parse("m.yaml", []byte("apiVersion: bake/v1\nname: m\nbase: {debian: {suite: bookworm}}\n"+kernel), t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Compile(r, Options{})
		if err != nil {
			t.Fatal(err)
		}
		line := "kernel command line: root=UUID=" + p.layout().RootFSUUID + " ro " + want
		if in := stageInputs(p, "assemble"); !slices.Contains(in, line) {
			t.Errorf("%q: assemble inputs %q, want %q", kernel, in, line)
		}
	}
}

// Compile reads the recipe's defaults and parsed values; a recipe that
// never had them applied is refused, not built with zeros.
func TestCompileNeedsDefaults(t *testing.T) {
	r := &recipe.Recipe{APIVersion: recipe.APIVersion, Name: "x", Path: "go", Base: recipe.Base{Debian: &recipe.DebianBase{Suite: "bookworm"}}}
	if _, err := Compile(r, Options{}); err == nil || !strings.Contains(err.Error(), "defaults are not applied") {
		t.Errorf("Compile without Defaults: %v", err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := r.Defaults(); err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(r, Options{}); err != nil {
		t.Errorf("after Validate and Defaults: %v", err)
	}
}

func stageInputs(p *Plan, name string) []string {
	for _, s := range p.Stages {
		if s.Name == name {
			return s.Inputs
		}
	}
	return nil
}
