package recipe

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestKernelArgs(t *testing.T) {
	def := strings.Fields(DefaultCmdline)
	for _, c := range []struct{ own, want string }{
		{"", DefaultCmdline},
		{"no_timer_check", "console=tty0 console=ttyS0,115200n8 no_timer_check"},
		{"quiet", DefaultCmdline + " quiet"},
		{DefaultCmdline, DefaultCmdline},
		// The recipe's console order holds: the last console= is
		// /dev/console, so a repeated default moves to the recipe's place.
		{"console=ttyS0,115200n8 console=tty0", "no_timer_check console=ttyS0,115200n8 console=tty0"},
		{"net.ifnames=0", DefaultCmdline + " net.ifnames=0"},
		// After "--" the arguments are init's: never compared, never dropped.
		{"quiet -- console=tty0 single", DefaultCmdline + " quiet -- console=tty0 single"},
	} {
		got := strings.Join(KernelArgs(def, strings.Fields(c.own)), " ")
		if got != c.want {
			t.Errorf("KernelArgs(%q) = %q, want %q", c.own, got, c.want)
		}
	}
}

// The default command line is applied once, by Defaults: a recipe without
// kernel.cmdline asks for nothing (a cloud base keeps its grub.cfg), one
// with it asks for exactly its own arguments; the command line of a disk
// bake assembles has each argument once.
func TestKernelDefaultsOnce(t *testing.T) {
	const head = "apiVersion: bake/v1\nname: k\nbase: {debian: {suite: bookworm}}\n"
	for _, c := range []struct{ kernel, args, own string }{
		{"", DefaultCmdline, ""},
		{"kernel: {cmdline: no_timer_check}\n", DefaultCmdline, "no_timer_check"},
		{"kernel: {cmdline: \"" + DefaultCmdline + "\"}\n", DefaultCmdline, DefaultCmdline},
		{"kernel: {cmdline: net.ifnames=0 quiet}\n", DefaultCmdline + " net.ifnames=0 quiet", "net.ifnames=0 quiet"},
	} {
		r, err := Parse("k.yaml", []byte(head+c.kernel), t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(r.Kernel.Args, " "); got != c.args {
			t.Errorf("%q: Args %q, want %q", c.kernel, got, c.args)
		}
		if got := strings.Join(r.Kernel.RecipeArgs, " "); got != c.own {
			t.Errorf("%q: RecipeArgs %q, want %q", c.kernel, got, c.own)
		}
		before := strings.Join(r.Kernel.Args, " ") + "|" + strings.Join(r.Kernel.RecipeArgs, " ")
		if err := r.Defaults(); err != nil {
			t.Fatal(err)
		}
		if after := strings.Join(r.Kernel.Args, " ") + "|" + strings.Join(r.Kernel.RecipeArgs, " "); after != before {
			t.Errorf("%q: Defaults again: %s, was %s", c.kernel, after, before)
		}
	}
}

// The acceptance of issue 17: every shipped recipe's kernel command line
// has each argument once.
func TestShippedRecipesKernelArgsOnce(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	paths, _ := filepath.Glob(filepath.Join(repo, "recipes", "*.yaml"))
	more, _ := filepath.Glob(filepath.Join(repo, "test", "vm", "testdata", "*.yaml"))
	paths = append(paths, more...)
	if len(paths) < 3 {
		t.Fatalf("recipes: %v", paths)
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var sets map[string]string
		if strings.Contains(string(data), "\n  base_image:") {
			// The fixture image the VM tests make; any file in the
			// context validates (its digest is checked at build).
			sets = map[string]string{"base_image": "../../../go.mod", "base_sha256": strings.Repeat("a", 64)}
		}
		r, err := LoadIn(repo, p, sets)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		seen := map[string]bool{}
		for _, a := range r.Kernel.Args {
			if seen[a] {
				t.Errorf("%s: %s twice in %q", p, a, r.Kernel.Args)
			}
			seen[a] = true
		}
		if !slices.Contains(r.Kernel.Args, "console=ttyS0,115200n8") {
			t.Errorf("%s: no serial console in %q", p, r.Kernel.Args)
		}
	}
}

// Values are parsed once, by Defaults, into the fields later stages read.
func TestParsedValues(t *testing.T) {
	r, err := Load("testdata/good/appliance.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.HasDefaults() {
		t.Fatal("HasDefaults false after Load")
	}
	if got := r.Firewall.Rules; len(got) != 3 || got[2] != (PortRule{Low: 60000, High: 61000, Proto: "udp"}) {
		t.Errorf("firewall rules %v", got)
	}
	if n := r.Firewall.AllowedNetworks; n[0].Prefix != netip.MustParsePrefix("192.168.1.0/24") || n[1].Prefix != netip.MustParsePrefix("fd00::/64") {
		t.Errorf("networks %v", n)
	}
	if n := r.GatewayNetworks(); len(n) != 3 || n[2].Prefix != netip.MustParsePrefix("10.100.0.0/16") {
		t.Errorf("gateway networks %v", n)
	}
	if m := r.Containers[0].Mounts; len(m) != 1 || m[0] != (Volume{Host: "/srv/data", Container: "/data", ReadOnly: true}) {
		t.Errorf("mounts %v", m)
	}
	if p := r.Containers[1].Ports; len(p) != 2 || p[0].String() != "8080:80" || p[1].String() != "[::1]:8081:81/udp" {
		t.Errorf("ports %v", p)
	}
	if g := r.Gateway; g.StateDir != "/home/openclaw/.openclaw" || g.ConfigPath != "/home/openclaw/.openclaw/openclaw.json" || g.Owner != "openclaw" {
		t.Errorf("gateway paths %q %q %q", g.StateDir, g.ConfigPath, g.Owner)
	}
	if !r.Disk.BIOS || !r.Disk.UEFI || r.Disk.ESPBytes != 64<<20 || r.Disk.SizeBytes != 0 {
		t.Errorf("disk %+v", r.Disk)
	}

	full, err := Load("testdata/good/full.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if full.Disk.SizeBytes != 4<<30 || full.Disk.BIOS || !full.Disk.UEFI {
		t.Errorf("full: disk %+v", full.Disk)
	}
}

// A recipe built in Go that skipped Validate: Defaults says which value it
// could not parse instead of leaving a zero behind, and the recipe is not
// marked as having its defaults.
func TestDefaultsUnvalidated(t *testing.T) {
	r := &Recipe{Path: "go", Base: Base{Debian: &DebianBase{Suite: "bookworm"}},
		Disk:     Disk{Size: "4GB", ESPSerial: "xyz"},
		Firewall: &Firewall{Allow: []string{"22"}, AllowedNetworks: []Network{{CIDR: "10.0.0.1"}}}}
	err := r.Defaults()
	if err == nil || r.HasDefaults() {
		t.Fatalf("Defaults: %v, HasDefaults %v", err, r.HasDefaults())
	}
	for _, want := range []string{"disk.size", "disk.esp_serial", "firewall.allow[0]", "firewall.allowed_networks[0].cidr"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s: %v", want, err)
		}
	}
}
