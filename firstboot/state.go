package firstboot

import (
	_ "embed"
	"fmt"
	"strings"

	"github.com/bakeimg/bake/appliance"
)

// The state volume (issue 15, docs/state.md) is set up by
// bake-state.service at every boot, before first boot and every service
// that reads instance state.

//go:embed state.sh
var stateScript string

//go:embed state_partition.sh
var statePartitionScript string

// StateFormat is the layout of the state volume this bake writes: data/PATH
// for each state path, bake-state/format and bake-state/image. An image
// refuses a volume with a larger number. Raise it when the layout changes
// in a way an older image would misread, and say so in docs/state.md.
const StateFormat = 1

// State locations in the image.
const (
	StateScriptPath = appliance.LibDir + "/state"
	StateConfigPath = appliance.EtcDir + "/state.conf"
	StateUnitName   = "bake-state.service"
	StateUnitPath   = appliance.UnitDir + "/" + StateUnitName
	StateMount      = "/run/bake/state"
	StateStatusFile = "/run/bake/state.status"

	StatePartitionScriptPath = appliance.LibDir + "/state-partition"
	StatePartitionUnitName   = "bake-state-partition.service"
	StatePartitionUnitPath   = appliance.UnitDir + "/" + StatePartitionUnitName
	// GrowrootUnitName is rootfs.GrowrootUnitName (the state partition
	// is made before root grows into the disk).
	GrowrootUnitName = "bake-growroot.service"
)

// StateOptions configure the state volume of one image.
type StateOptions struct {
	Label, Serial string
	// PartitionSize, when not 0, puts the state on a partition of the
	// root disk (named and labelled Label) that bake-state-partition.service
	// makes at the disk's end at first boot; Serial is then empty.
	PartitionSize int64
	Paths         []string
	// The image that writes the volume (recorded on it).
	ImageName, ImageVersion, ImageDigest string
	// Units that must not start without their state: the unit fails for
	// a volume it must not use (foreign, newer format), and these
	// Require it (drop-ins).
	Guarded []string
	// Before are units that read state and so start after the binds.
	Before []string
}

// StateUnits are the units to enable for o.
func StateUnits(o StateOptions) []string {
	if o.PartitionSize > 0 {
		return []string{StatePartitionUnitName, StateUnitName}
	}
	return []string{StateUnitName}
}

// StateScript is the state volume's script.
func StateScript() string { return stateScript }

// StateConfig renders /etc/bake/state.conf.
func StateConfig(o StateOptions) string {
	var b strings.Builder
	b.WriteString(appliance.Header)
	kv := func(k, v string) { fmt.Fprintf(&b, "%s=%s\n", k, shQuote(v)) }
	kv("LABEL", o.Label)
	kv("SERIAL", o.Serial)
	if o.PartitionSize > 0 {
		kv("PARTITION_SIZE", fmt.Sprint(o.PartitionSize))
	}
	kv("PATHS", strings.Join(o.Paths, " "))
	kv("FORMAT", fmt.Sprint(StateFormat))
	kv("IMAGE_NAME", o.ImageName)
	kv("IMAGE_VERSION", o.ImageVersion)
	kv("IMAGE_DIGEST", o.ImageDigest)
	return b.String()
}

// StateBefore are the units bake-state.service always precedes: they read
// a state path or the machine ID (networkd: the DHCP client ID; cloud-init:
// /var/lib/cloud; ssh: host keys; first boot: its stamps, the admin's
// keys, the gateway's config).
var StateBefore = []string{
	"sysinit.target", "systemd-machine-id-commit.service", "cloud-init-local.service",
	"systemd-networkd.service", "network-pre.target",
	appliance.HostKeysUnitName, "ssh.service", "ssh.socket", UnitName,
	"containerd.service", "docker.service", "docker.socket", "tailscaled.service",
}

// StateUnit renders bake-state.service: no default dependencies (it runs
// in early boot), after the local file systems are writable and udev has
// seen the disks, before sysinit.target and everything in StateBefore.
func StateUnit(o StateOptions) string {
	before := append(append([]string{}, StateBefore...), o.Before...)
	before = append(before, "shutdown.target")
	var b strings.Builder
	b.WriteString(appliance.Header)
	b.WriteString("[Unit]\nDescription=bake: the instance's state volume (docs/state.md)\n")
	b.WriteString("DefaultDependencies=no\n")
	b.WriteString("Wants=local-fs.target\n")
	after := "local-fs.target systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service"
	if o.PartitionSize > 0 {
		after += " " + StatePartitionUnitName
	}
	fmt.Fprintf(&b, "After=%s\n", after)
	fmt.Fprintf(&b, "Before=%s\n", strings.Join(before, " "))
	b.WriteString("Conflicts=shutdown.target\n")
	writeEarlyOneshot(&b, StateScriptPath)
	return b.String()
}

// StatePartitionUnit renders bake-state-partition.service: every boot,
// early (no default dependencies), once / is writable and udev runs, and
// before root grows (bake-growroot.service) and bake-state.service looks
// for the partition by its label.
func StatePartitionUnit() string {
	var b strings.Builder
	b.WriteString(appliance.Header)
	b.WriteString("[Unit]\nDescription=bake: the instance's state partition, made at first boot before root grows (docs/state.md)\n")
	b.WriteString("DefaultDependencies=no\n")
	b.WriteString("After=systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service\n")
	fmt.Fprintf(&b, "Before=%s %s sysinit.target shutdown.target\n", GrowrootUnitName, StateUnitName)
	b.WriteString("Conflicts=shutdown.target\nConditionVirtualization=!container\n")
	writeEarlyOneshot(&b, StatePartitionScriptPath)
	return b.String()
}

// writeEarlyOneshot ends the state units: a oneshot of script, logged to
// the journal and the console, bounded, wanted by sysinit.target.
func writeEarlyOneshot(b *strings.Builder, script string) {
	b.WriteString("\n[Service]\nType=oneshot\nRemainAfterExit=yes\n")
	fmt.Fprintf(b, "ExecStart=%s\n", script)
	b.WriteString("StandardOutput=journal+console\nStandardError=journal+console\n")
	b.WriteString("TimeoutStartSec=5min\n")
	b.WriteString("\n[Install]\nWantedBy=sysinit.target\n")
}

// StateGuardDropIn is the drop-in that keeps a unit from starting without
// its state: Requires= with After= (a failed bake-state.service stops it).
func StateGuardDropIn(unit string) appliance.File {
	return appliance.File{
		Path:    appliance.UnitDir + "/" + unit + ".d/20-bake-state.conf",
		Content: []byte(appliance.Header + "[Unit]\nRequires=" + StateUnitName + "\nAfter=" + StateUnitName + "\n"),
		Mode:    0o644,
	}
}

// StateFiles are the state volume's files: script, configuration, unit,
// and the guards.
func StateFiles(o StateOptions) []appliance.File {
	fs := []appliance.File{
		{Path: StateScriptPath, Content: []byte(stateScript), Mode: 0o755},
		{Path: StateConfigPath, Content: []byte(StateConfig(o)), Mode: 0o644},
		{Path: StateUnitPath, Content: []byte(StateUnit(o)), Mode: 0o644},
	}
	if o.PartitionSize > 0 {
		// Root does not grow when the partition was not made: the free
		// space stays for the next boot's try.
		fs = append(fs,
			appliance.File{Path: StatePartitionScriptPath, Content: []byte(statePartitionScript), Mode: 0o755},
			appliance.File{Path: StatePartitionUnitPath, Content: []byte(StatePartitionUnit()), Mode: 0o644},
			appliance.File{Path: appliance.UnitDir + "/" + GrowrootUnitName + ".d/20-bake-state-partition.conf", Mode: 0o644,
				Content: []byte(appliance.Header + "[Unit]\nRequires=" + StatePartitionUnitName + "\nAfter=" + StatePartitionUnitName + "\n")})
	}
	for _, u := range o.Guarded {
		fs = append(fs, StateGuardDropIn(u))
	}
	return fs
}
