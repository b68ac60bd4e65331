// Package firstboot is the first-boot stage of an appliance: the oneshot
// unit and POSIX sh script that, once per instance (keyed by
// /etc/machine-id) and before sshd and the gateway start, read the
// instance's seed (a NoCloud volume, systemd credentials, cloud-init's
// user-data), install the admin's SSH keys, set the gateway token (given or
// generated) and write the gateway's openclaw.json. It also defines the
// seed format (docs/seed.md) and builds seeds for tests and `bake verify`.
package firstboot

import (
	_ "embed"
	"fmt"
	"sort"
	"strings"

	"github.com/bakeimg/bake/appliance"
)

//go:embed firstboot.sh
var script string

//go:embed cloudinit_scrub.sh
var scrubScript string

// Locations in the image.
const (
	ScriptPath = appliance.LibDir + "/firstboot"
	ConfigPath = appliance.EtcDir + "/firstboot.conf"
	UnitName   = "bake-firstboot.service"
	UnitPath   = appliance.UnitDir + "/" + UnitName
	// BakedSeedDir holds values the recipe baked in (allow_baked_secrets):
	// the lowest precedence, below every instance seed.
	BakedSeedDir = appliance.EtcDir + "/seed.d"
	// CloudInitSeedDir is where a cloud-init user-data's write_files puts
	// bake's values (see docs/seed.md).
	CloudInitSeedDir = "/run/bake/cloud-init-seed"
	StateDir         = appliance.StateDir + "/firstboot"
	// ScrubUnitName removes the seed's secrets from cloud-init's stored
	// user-data after cloud-init ran, on every boot (cloudinit_scrub.sh).
	ScrubUnitName   = "bake-cloud-init-scrub.service"
	ScrubUnitPath   = appliance.UnitDir + "/" + ScrubUnitName
	ScrubScriptPath = appliance.LibDir + "/cloud-init-scrub"
)

// Seed value names: a file bake.NAME in a NoCloud volume, a systemd
// credential bake.NAME, or a file bake.NAME written by cloud-init.
const (
	AdminSSHKeys     = "bake.admin_ssh_keys"
	GatewayToken     = "bake.gateway_token"
	TailscaleAuthKey = "bake.tailscale_authkey"
	// TailscaleLoginServer and TailscaleCA override the recipe's
	// tailscale.login_server and add to its tailscale.ca for one
	// instance: first boot writes them to appliance.TailscaleSeedLoginServerFile
	// and appliance.TailscaleSeedCAFile.
	TailscaleLoginServer = "bake.tailscale_login_server"
	TailscaleCA          = "bake.tailscale_ca"
)

// SeedNames are every value a seed may carry.
var SeedNames = []string{AdminSSHKeys, GatewayToken, TailscaleAuthKey, TailscaleLoginServer, TailscaleCA}

// Options configure first boot for one image.
type Options struct {
	AdminUser string
	// Seeds are the sources in order of precedence: nocloud,
	// credentials, cloud-init.
	Seeds []string
	// Gateway: the host path of openclaw.json, its owner (a user name)
	// and the gateway container's unit, which waits for first boot.
	GatewayConfig string
	GatewayOwner  string
	GatewayUnit   string
	Tailscale     bool
}

func (o Options) has(src string) bool {
	for _, s := range o.Seeds {
		if s == src {
			return true
		}
	}
	return false
}

// Script is the first-boot script.
func Script() string { return script }

// Config renders /etc/bake/firstboot.conf, sourced by the script.
func Config(o Options) string {
	var b strings.Builder
	b.WriteString(appliance.Header)
	kv := func(k, v string) { fmt.Fprintf(&b, "%s=%s\n", k, shQuote(v)) }
	kv("ADMIN_USER", o.AdminUser)
	kv("SEEDS", strings.Join(o.Seeds, " "))
	kv("GATEWAY_CONFIG", o.GatewayConfig)
	kv("GATEWAY_TEMPLATE", appliance.GatewayConfigTemplate)
	kv("GATEWAY_OWNER", o.GatewayOwner)
	ts := ""
	if o.Tailscale {
		ts = "yes"
	}
	kv("TAILSCALE", ts)
	return b.String()
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Unit renders bake-firstboot.service. It runs early (no default
// dependencies: it must precede ssh.socket too), after the file systems
// and udev (the NoCloud volume), and after cloud-init's network stage when
// cloud-init is a seed source; sshd, user logins and the gateway wait for
// it. systemd credentials named bake.* are loaded when passed to the
// system (SMBIOS type 11 or fw_cfg); a missing one is not an error.
func Unit(o Options) string {
	after := []string{"local-fs.target", "systemd-remount-fs.service", "systemd-tmpfiles-setup.service",
		"systemd-udevd.service", "systemd-udev-trigger.service"}
	if o.has("cloud-init") {
		after = append(after, "cloud-init.service")
	}
	before := []string{"ssh.service", "ssh.socket", "systemd-user-sessions.service"}
	if o.GatewayUnit != "" {
		before = append(before, o.GatewayUnit)
	}
	if o.Tailscale {
		// tailscaled too: it reads the seed's CA (SSL_CERT_DIR) when it
		// first verifies a certificate, which may be at its start.
		before = append(before, "tailscaled.service", appliance.TailscaleUpUnitName)
	}
	before = append(before, "shutdown.target")
	var b strings.Builder
	b.WriteString(appliance.Header)
	b.WriteString("[Unit]\nDescription=bake: first boot of this instance (seed, admin SSH keys, gateway token)\n")
	b.WriteString("DefaultDependencies=no\n")
	b.WriteString("Wants=local-fs.target\n")
	fmt.Fprintf(&b, "After=%s\n", strings.Join(after, " "))
	fmt.Fprintf(&b, "Before=%s\n", strings.Join(before, " "))
	b.WriteString("Conflicts=shutdown.target\n")
	b.WriteString("\n[Service]\nType=oneshot\nRemainAfterExit=yes\n")
	fmt.Fprintf(&b, "ExecStart=%s\n", ScriptPath)
	b.WriteString("TimeoutStartSec=5min\n")
	if o.has("credentials") {
		names := append([]string{}, SeedNames...)
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(&b, "LoadCredential=%s\n", n)
		}
	}
	b.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
	return b.String()
}

// ScrubScript removes the seed's secrets from cloud-init's stored copies
// of the user-data.
func ScrubScript() string { return scrubScript }

// ScrubUnit renders bake-cloud-init-scrub.service: on every boot where
// cloud-init has kept instance data, after cloud-init's last stage and
// first boot (which consumed the seed), it removes cloud-init's copies of
// the user-data (cloud-init writes them again at each boot while the seed
// is attached). cloud-final runs after multi-user.target, so the scrub is
// wanted by cloud-init.target, as cloud-final is (multi-user.target would
// make an ordering cycle); `systemctl is-system-running --wait` waits for
// it.
func ScrubUnit() string {
	var b strings.Builder
	b.WriteString(appliance.Header)
	b.WriteString(`[Unit]
Description=bake: remove the seed's secrets from cloud-init's stored user-data
ConditionPathIsDirectory=/var/lib/cloud/instances
After=cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service ` + UnitName + `
Before=cloud-init.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + ScrubScriptPath + `
TimeoutStartSec=2min

[Install]
WantedBy=cloud-init.target
`)
	return b.String()
}

// Units are the units to enable: first boot and the scrub of cloud-init's
// stored user-data.
func Units() []string { return []string{UnitName, ScrubUnitName} }

// Files are the first-boot files: script, configuration, unit, the state
// directory, and the scrub of cloud-init's stored user-data.
func Files(o Options) []appliance.File {
	return []appliance.File{
		{Path: ScriptPath, Content: []byte(script), Mode: 0o755},
		{Path: ConfigPath, Content: []byte(Config(o)), Mode: 0o644},
		{Path: UnitPath, Content: []byte(Unit(o)), Mode: 0o644},
		appliance.Dir(StateDir, 0o700, ""),
		{Path: ScrubScriptPath, Content: []byte(scrubScript), Mode: 0o755},
		{Path: ScrubUnitPath, Content: []byte(ScrubUnit()), Mode: 0o644},
	}
}

// BakedSeedFiles put values the recipe bakes in (allow_baked_secrets)
// where first boot reads them last. Empty values are skipped.
func BakedSeedFiles(values map[string]string) []appliance.File {
	var names []string
	for n, v := range values {
		if v != "" {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	fs := []appliance.File{appliance.Dir(BakedSeedDir, 0o700, "")}
	for _, n := range names {
		fs = append(fs, appliance.File{Path: BakedSeedDir + "/" + n, Content: []byte(values[n] + "\n"), Mode: 0o600})
	}
	return fs
}
