package recipe

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/appliance"
)

// Default values Defaults fills in.
const (
	DefaultVariant = "minbase"
	DefaultShell   = "/bin/bash"
	// DefaultSystemShell is the shell of system users: they run services
	// and never log in.
	DefaultSystemShell = "/usr/sbin/nologin"
	DefaultMode        = "0644"
	DefaultOwner       = "root:root"
	DefaultTarget      = "/"
	// DefaultCmdline puts the kernel console on the first serial port
	// (clouds and `qemu -nographic` show it) and on the screen.
	// no_timer_check: under software emulation on a loaded host the
	// kernel's IO-APIC timer check can fail and panic the boot; virtual
	// machines do not need it. Every disk bake assembles from a Debian
	// base boots with these (Kernel.Args); a cloud-image base keeps its
	// own.
	DefaultCmdline = "console=tty0 console=ttyS0,115200n8 no_timer_check"
	DefaultESPSize = "64MiB"
)

// Defaults fills every optional field that has a fixed default, and the
// typed fields that hold the recipe's strings parsed (Disk.SizeBytes,
// Disk.BIOS/UEFI, Kernel.Args, Firewall.Rules, Network.Prefix,
// Container.Ports/Mounts; see each), so later stages (plan, build,
// verify) read one complete recipe and never repeat a default or parse a
// value again. Load and Parse call it after validation succeeds; call it
// yourself for a recipe built in Go, after Validate: an error means a value
// that validation refuses. It is idempotent and only fills empty values
// (the typed fields are worked out anew from the strings), except that
// image digests are lower-cased (sha256sum prints lower case; some sites
// publish upper case).
//
// Left empty on purpose: Disk.Size (the assembler sizes the disk from the
// content), Disk.DiskGUID/RootUUID/RootPartUUID/ESPSerial (derived from
// the digest by the assembler), User.Home (useradd's default),
// DebianBase.Mirror (no sources entry in the image), and
// AptRepository.Components for a flat repository (suite ending in /).
func (r *Recipe) Defaults() error {
	if d := r.Base.Debian; d != nil {
		if d.Variant == "" {
			d.Variant = DefaultVariant
		}
		if len(d.Components) == 0 {
			d.Components = []string{"main"}
		}
	}
	if im := r.Base.Image; im != nil {
		im.SHA256 = strings.ToLower(im.SHA256)
		im.SHA512 = strings.ToLower(im.SHA512)
	}
	for i := range r.Apt.Repositories {
		repo := &r.Apt.Repositories[i]
		if len(repo.Components) == 0 && !strings.HasSuffix(repo.Suite, "/") {
			repo.Components = []string{"main"}
		}
	}
	for i := range r.Users {
		u := &r.Users[i]
		if u.Shell == "" {
			u.Shell = DefaultShell
			if u.System {
				u.Shell = DefaultSystemShell
			}
		}
	}
	for i := range r.Overlays {
		o := &r.Overlays[i]
		if o.Target == "" {
			o.Target = DefaultTarget
		}
		if o.Owner == "" {
			o.Owner = DefaultOwner
		}
	}
	for i := range r.Files {
		f := &r.Files[i]
		if f.Mode == "" {
			f.Mode = DefaultMode
		}
		if f.Owner == "" {
			f.Owner = DefaultOwner
		}
	}
	if r.Kernel.defaulted && r.Kernel.Cmdline != DefaultCmdline {
		r.Kernel.defaulted = false // changed in Go after Defaults
	}
	if r.Kernel.Cmdline == "" {
		r.Kernel.Cmdline = DefaultCmdline
		r.Kernel.defaulted = true
	}
	if r.Disk.ESPSize == "" {
		r.Disk.ESPSize = DefaultESPSize
	}
	if len(r.Disk.Firmware) == 0 {
		r.Disk.Firmware = []string{"bios", "uefi"}
	}
	if len(r.Outputs) == 0 {
		r.Outputs = []string{"qcow2"}
	}
	if r.Vars == nil {
		r.Vars = map[string]string{}
	}
	r.applianceDefaults()
	if err := r.parseValues(); err != nil {
		return err
	}
	r.stateDefaults() // after parseValues: needs Gateway.StateDir
	r.hasDefaults = true
	return nil
}

// HasDefaults reports whether Defaults has filled the recipe (Load and
// Parse call it): only then do the typed fields hold the recipe's values.
func (r *Recipe) HasDefaults() bool { return r.hasDefaults }

// parseValues fills the typed fields from the strings they parse. Every
// value was accepted by validation; an error is a recipe that was not
// validated.
func (r *Recipe) parseValues() error {
	var errs []error
	fail := func(path string, err error) { errs = append(errs, fmt.Errorf("%s: %w", path, err)) }

	var own []string
	if !r.Kernel.defaulted {
		own = strings.Fields(r.Kernel.Cmdline)
	}
	r.Kernel.RecipeArgs = own
	r.Kernel.Args = KernelArgs(strings.Fields(DefaultCmdline), own)

	d := &r.Disk
	d.SizeBytes, d.ESPBytes, d.ESPVolumeID = 0, 0, 0
	if d.Size != "" {
		n, err := ParseSize(d.Size)
		if err != nil {
			fail("disk.size", err)
		}
		d.SizeBytes = n
	}
	if d.ESPSize != "" {
		n, err := ParseSize(d.ESPSize)
		if err != nil {
			fail("disk.esp_size", err)
		}
		d.ESPBytes = n
	}
	d.BIOS, d.UEFI = slices.Contains(d.Firmware, "bios"), slices.Contains(d.Firmware, "uefi")
	if d.ESPSerial != "" {
		n, err := strconv.ParseUint(d.ESPSerial, 16, 32)
		if err != nil {
			fail("disk.esp_serial", err)
		}
		d.ESPVolumeID = uint32(n)
	}

	networks := func(path string, ns []Network) {
		for i := range ns {
			p, err := netip.ParsePrefix(ns[i].CIDR)
			if err != nil {
				fail(indexPath(path, i)+".cidr", err)
			}
			ns[i].Prefix = p.Masked()
		}
	}
	if f := r.Firewall; f != nil {
		f.Rules = nil
		for i, a := range f.Allow {
			rule, err := ParsePortRule(a)
			if err != nil {
				fail(indexPath("firewall.allow", i), err)
				continue
			}
			f.Rules = append(f.Rules, rule)
		}
		networks("firewall.allowed_networks", f.AllowedNetworks)
	}
	if g := r.Gateway; g != nil {
		networks("gateway.allowed_networks", g.AllowedNetworks)
	}
	for i := range r.Containers {
		c := &r.Containers[i]
		c.Ports, c.Mounts = nil, nil
		for j, s := range c.Publish {
			pb, err := ParsePublish(s)
			if err != nil {
				fail(indexPath(indexPath("containers", i)+".publish", j), err)
				continue
			}
			c.Ports = append(c.Ports, pb)
		}
		for j, s := range c.Volumes {
			v, err := ParseVolume(s)
			if err != nil {
				fail(indexPath(indexPath("containers", i)+".volumes", j), err)
				continue
			}
			c.Mounts = append(c.Mounts, v)
		}
	}
	r.gatewayPaths()
	if len(errs) > 0 {
		return fmt.Errorf("recipe %s was not validated: %w", r.Path, errors.Join(errs...))
	}
	return nil
}

// gatewayPaths fills Gateway.StateDir, ConfigPath and Owner (see Gateway)
// from the gateway container's user and mounts.
func (r *Recipe) gatewayPaths() {
	g := r.Gateway
	if g == nil {
		return
	}
	g.StateDir, g.Owner = "", ""
	c := r.ContainerByName(g.Container)
	if c == nil {
		return // refused by validation
	}
	g.Owner = c.User
	for _, m := range c.Mounts {
		if m.Container == appliance.GatewayContainerStateDir {
			g.StateDir = m.Host
		}
	}
	if u := r.UserByName(c.User); u != nil && g.StateDir == "" {
		g.StateDir = path.Join(u.HomeDir(), ".openclaw")
	}
	if g.StateDir == "" {
		g.StateDir = path.Join(appliance.StateDir, c.Name)
	}
	g.ConfigPath = appliance.GatewayOptions{StateDir: g.StateDir}.ConfigPath()
}

// KernelArgs is a kernel command line: defaults, then the recipe's own
// arguments (own) as written. A default that own repeats before any "--"
// is left out of the defaults: it appears once, where own puts it (for
// console= the last one names /dev/console, so own's order must hold).
// Arguments after "--" are init's, not the kernel's, and never compared.
func KernelArgs(defaults, own []string) []string {
	kernel := own
	if i := slices.Index(own, "--"); i >= 0 {
		kernel = own[:i]
	}
	var out []string
	for _, a := range defaults {
		if !slices.Contains(kernel, a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return append(out, own...)
}
