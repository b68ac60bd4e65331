package recipe

import "strings"

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
	DefaultCmdline     = "console=tty0 console=ttyS0,115200n8"
	DefaultESPSize     = "64MiB"
)

// Defaults fills every optional field that has a fixed default, so later
// stages (plan, build, verify) read one complete recipe and never repeat a
// default. Load and Parse call it after validation succeeds; call it
// yourself for a recipe built in Go. It is idempotent and only fills empty
// values, except that image digests are lower-cased (sha256sum prints lower
// case; some sites publish upper case).
//
// Left empty on purpose: Disk.Size (the assembler sizes the disk from the
// content), Disk.DiskGUID/RootUUID/RootPartUUID/ESPSerial (derived from
// the digest by the assembler), User.Home (useradd's default),
// DebianBase.Mirror (no sources entry in the image), and
// AptRepository.Components for a flat repository (suite ending in /).
func (r *Recipe) Defaults() {
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
	if r.Kernel.Cmdline == "" {
		r.Kernel.Cmdline = DefaultCmdline
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
}
