package appliance

import (
	"bufio"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// SSH file locations.
const (
	// SSHDropIn sorts first in sshd_config.d: OpenSSH keeps the first
	// value it reads for most keywords, so nothing read later (cloud-init's
	// 50-cloud-init.conf, a package's drop-in) can weaken it.
	SSHDropIn = "/etc/ssh/sshd_config.d/00-bake.conf"
	// CloudInitSSH sorts last in cloud.cfg.d, where the last value wins.
	CloudInitSSH = "/etc/cloud/cloud.cfg.d/99-bake.cfg"
	// HostKeysUnitName makes missing host keys before sshd starts, on
	// every boot, independently of the first-boot unit: an instance must
	// never be locked out because something else failed.
	HostKeysUnitName = "bake-hostkeys.service"
	HostKeysUnit     = UnitDir + "/" + HostKeysUnitName
	SSHServiceDropIn = UnitDir + "/ssh.service.d/00-bake-hostkeys.conf"
	// CloudInitSSHDConfig is the file cloud-init 22.4's set_passwords
	// module writes ssh_pwauth into (sshd_config includes
	// sshd_config.d). The image has it already as 99-bake.cfg's
	// ssh_pwauth: false makes it, so that at first boot cloud-init finds
	// nothing to change and does not restart sshd.
	CloudInitSSHDConfig = "/etc/ssh/sshd_config.d/50-cloud-init.conf"
)

// SSHOptions are the SSH settings of an appliance.
type SSHOptions struct {
	Port int // 22 when 0
	// CloudInit: cloud-init is in the image; its configuration must not
	// turn password login back on.
	CloudInit bool
	// AdminUser becomes cloud-init's default user, which receives the
	// keys of the cloud's metadata service and of user-data.
	AdminUser string
	// AdminGroups are the admin's supplementary groups (cloud-init would
	// otherwise add its distro defaults).
	AdminGroups []string
	// CloudInitDatasources limit cloud-init to the clouds the image is
	// meant for (ds-identify disables cloud-init when none is found).
	CloudInitDatasources []string
	// CloudInitNetwork leaves the network to cloud-init: an image made
	// from a cloud image keeps its own network stack (ifupdown, netplan),
	// which cloud-init configures. Otherwise (a tree bootstrapped from
	// packages, networked by bake's systemd-networkd files) cloud-init's
	// network configuration is disabled.
	CloudInitNetwork bool
	// CloudInitModules sets cloud-init's module lists to those the
	// appliance uses (CloudInitModules, below). Set for a tree
	// bootstrapped from packages, whose cloud-init is the suite's; an
	// image made from a cloud image keeps the lists its vendor chose.
	CloudInitModules bool
}

// CloudInitModules are the cloud-init modules of an appliance
// bootstrapped from packages, per stage, in Debian's order. Debian's
// cloud.cfg also lists modules for software the appliance does not have
// (snap, byobu, landscape, lxd, fan, puppet, chef, mcollective,
// salt-minion, rightscale, RMC, rsyslog, ssh-import-id, keyboard) and
// modules that would change what the image owns:
// package-update-upgrade-install and apt-configure/apt-pipelining (an
// instance is replaced, never patched in place: user-data's packages,
// package_upgrade and apt sources are not applied), grub-dpkg (bake owns
// the boot loader; it ran grub-probe and debconf, 3.6 s of a boot under
// TCG), locale (the image has C.UTF-8 only; update-locale, 1.5 s),
// install-hotplug (the network is bake's networkd configuration), and
// migrator (semaphores of older cloud-init versions; a new image has
// none). Each listed module still costs an import on every boot.
var CloudInitModules = map[string][]string{
	"cloud_init_modules": {"seed_random", "bootcmd", "write_files", "growpart", "resizefs", "disk_setup", "mounts",
		"set_hostname", "update_hostname", "update_etc_hosts", "ca_certs", "users_groups", "ssh"},
	"cloud_config_modules": {"set_passwords", "ntp", "timezone", "disable_ec2_metadata", "runcmd"},
	"cloud_final_modules": {"write_files_deferred", "scripts_vendor", "scripts_per_once", "scripts_per_boot",
		"scripts_per_instance", "scripts_user", "ssh_authkey_fingerprints", "keys_to_console", "final_message",
		"power_state_change"},
}

// DefaultDatasources: NoCloud (local seeds), OpenStack and its ConfigDrive,
// AWS, GCP, Azure. None is last so that cloud-init still runs its
// modules when no datasource is found by a full search.
var DefaultDatasources = []string{"NoCloud", "ConfigDrive", "OpenStack", "Ec2", "GCE", "Azure", "None"}

// SSHRequired are the effective settings (sshd -T, lower-case) every
// appliance must have, whatever else is in the tree's configuration.
var SSHRequired = map[string]string{
	"passwordauthentication":       "no",
	"kbdinteractiveauthentication": "no",
	"permitrootlogin":              "no",
	"pubkeyauthentication":         "yes",
	"authenticationmethods":        "publickey",
	"permitemptypasswords":         "no",
}

func (o SSHOptions) port() int {
	if o.Port == 0 {
		return 22
	}
	return o.Port
}

// SSHDConfig is the drop-in: key-only login, no root, no
// keyboard-interactive (PAM could otherwise ask for a password that way).
// AuthenticationMethods publickey closes every other method even if a
// later file turns one on.
func SSHDConfig(o SSHOptions) string {
	var b strings.Builder
	b.WriteString(Header)
	b.WriteString(`# It sorts first in sshd_config.d: OpenSSH keeps the first value it reads,
# so nothing later (cloud-init's 50-cloud-init.conf) can undo it. The build
# checked the effective configuration with sshd -T.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PermitEmptyPasswords no
PubkeyAuthentication yes
AuthenticationMethods publickey
# Host keys: Ed25519 and ECDSA, made at first boot by bake-hostkeys. No RSA
# key: every current client takes Ed25519, and an RSA 3072 key costs a
# first boot tens of seconds of CPU on a small or emulated machine.
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
`)
	if p := o.port(); p != 22 {
		fmt.Fprintf(&b, "Port %d\n", p)
	}
	return b.String()
}

// CloudInitConfig keeps cloud-init from weakening SSH (ssh_pwauth: false,
// no root login), makes the admin the default user (so a cloud's metadata
// keys land in its authorized_keys), leaves host keys to bake-hostkeys
// (no deletion of keys sshd may already use), leaves networking to the
// image's networkd configuration, keeps the locale the image has
// (C.UTF-8), and limits the datasources.
func CloudInitConfig(o SSHOptions) string {
	ds := o.CloudInitDatasources
	if len(ds) == 0 {
		ds = DefaultDatasources
	}
	var b strings.Builder
	b.WriteString(Header)
	b.WriteString("# Sorts last in cloud.cfg.d, where the last value wins.\n")
	b.WriteString("ssh_pwauth: false\n")
	b.WriteString("disable_root: true\n")
	b.WriteString("ssh_deletekeys: false\n")
	// Only the key types sshd uses (HostKey in 00-bake.conf; cloud-init
	// 22.4 would also make DSA and RSA).
	b.WriteString("ssh_genkeytypes: [ed25519, ecdsa]\n")
	b.WriteString("datasource_list: [" + strings.Join(ds, ", ") + "]\n")
	// Ec2 only where the platform says it is one of its clouds (DMI: AWS,
	// Brightbox, ZStack, e24cloud, Outscale). cloud-init's default
	// ("warn") lets DataSourceEc2 poll 169.254.169.254 for 120 s on any
	// machine when ds-identify found no datasource and left the search to
	// cloud-init (notfound=enabled, dsIdentifyPolicy): an instance with no
	// seed or SMBIOS credentials only waited 2 minutes more for SSH.
	// ds-identify's own default is already true; the other network
	// datasources listed check DMI before they poll (OpenStack's product
	// name or asset tag, GCE's product name or serial, Azure's chassis
	// asset tag).
	b.WriteString(ec2StrictID)
	if o.CloudInitNetwork {
		b.WriteString("# network: cloud-init configures the base cloud image's own network stack.\n")
	} else {
		b.WriteString("network:\n  config: disabled\n")
	}
	// The image has no generated locales; cloud-init's default
	// (en_US.UTF-8) would fail its locale module and mark the boot failed.
	b.WriteString("locale: C.UTF-8\n")
	if o.CloudInitModules {
		b.WriteString("# Only the modules the appliance uses (bake's appliance.CloudInitModules).\n")
		for _, k := range []string{"cloud_init_modules", "cloud_config_modules", "cloud_final_modules"} {
			fmt.Fprintf(&b, "%s: [%s]\n", k, strings.Join(CloudInitModules[k], ", "))
		}
	}
	if o.AdminUser != "" {
		b.WriteString("system_info:\n  default_user:\n")
		fmt.Fprintf(&b, "    name: %s\n", o.AdminUser)
		b.WriteString("    lock_passwd: true\n")
		b.WriteString("    shell: /bin/bash\n")
		groups := append([]string{}, o.AdminGroups...)
		sort.Strings(groups)
		fmt.Fprintf(&b, "    groups: [%s]\n", strings.Join(groups, ", "))
	}
	return b.String()
}

// cloudInitSSHDConfig is CloudInitSSHDConfig as cloud-init's set_passwords
// writes it for ssh_pwauth: false (0600, one line). Without it, first boot
// ran "systemctl restart ssh" in cloud-config (set_passwords 1.75 s of a
// boot under TCG, and an sshd restart while clients log in). 00-bake.conf,
// read first, decides the value either way; user-data's ssh_pwauth: true
// still makes cloud-init write "yes" here and restart sshd, to no effect.
const cloudInitSSHDConfig = `# cloud-init's file (ssh_pwauth), made in the image as cloud-init would
# write it for 99-bake.cfg's ssh_pwauth: false, so that first boot finds it
# set and does not restart sshd. 00-bake.conf is read first and wins.
PasswordAuthentication no
`

// ec2StrictID is CloudInitConfig's Ec2 setting (see there).
const ec2StrictID = "datasource:\n  Ec2:\n    strict_id: true\n"

// HostKeyTypes are the host keys sshd uses (HostKey in SSHDConfig) and
// bake-hostkeys makes. Not RSA: ssh-keygen -A would make an RSA 3072 key,
// whose prime search was a third of a first boot's CPU under emulation
// (13.5 s of bake-hostkeys under TCG), for clients that all take Ed25519.
var HostKeyTypes = []string{"ed25519", "ecdsa"}

// hostKeysUnit makes whatever host keys are missing before sshd starts,
// each through a temporary name so that an interrupted boot never leaves a
// half-written key that the next boot would keep. It has no dependency on
// anything that can fail at first boot, and sshd wants it through a
// drop-in, so keys exist even when the first-boot unit fails.
const hostKeysUnit = `[Unit]
Description=bake: make missing SSH host keys
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=ssh.service ssh.socket sshd.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/usr/bin/ssh-keygen

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for t in ed25519 ecdsa; do k=/etc/ssh/ssh_host_$${t}_key; [ -s "$$k" ] && [ -s "$$k.pub" ] && continue; rm -f "$$k.new" "$$k.new.pub" && ssh-keygen -q -t "$$t" -N "" -f "$$k.new" && mv -f "$$k.new.pub" "$$k.pub" && mv -f "$$k.new" "$$k" || exit 1; done'

[Install]
WantedBy=multi-user.target
`

const sshServiceDropIn = `[Unit]
Wants=bake-hostkeys.service
After=bake-hostkeys.service
`

// SSHFiles are the files of the ssh stage.
func SSHFiles(o SSHOptions) []File {
	fs := []File{
		file(SSHDropIn, SSHDConfig(o), unitMode),
		file(HostKeysUnit, Header+hostKeysUnit, unitMode),
		file(SSHServiceDropIn, Header+sshServiceDropIn, unitMode),
	}
	if o.CloudInit {
		fs = append(fs, file(CloudInitSSH, CloudInitConfig(o), unitMode),
			file(CloudInitSSHDConfig, Header+cloudInitSSHDConfig, 0o600))
		if o.CloudInitNetwork {
			fs = append(fs, file(DSIdentifyConfig, Header+dsIdentifyPolicy, unitMode))
		}
	}
	return fs
}

// DSIdentifyConfig is ds-identify's policy on an image made from a cloud
// image, whose network stack cloud-init configures.
const DSIdentifyConfig = "/etc/cloud/ds-identify.cfg"

// dsIdentifyPolicy: ds-identify's default (notfound=disabled) turns
// cloud-init off when no datasource is found, as on a hypervisor that
// passes only SMBIOS credentials: the image's own network stack (ifupdown)
// then got no configuration at all and the instance never took a DHCP
// lease. With notfound=enabled cloud-init runs with DataSourceNone (last
// in datasource_list) and writes its fallback network configuration (DHCP
// on the first NIC); bake's first boot reads the credentials.
const dsIdentifyPolicy = `# With no datasource found (SMBIOS credentials only), cloud-init still runs
# (DataSourceNone) and configures the network: DHCP on the first NIC.
policy: search,found=all,maybe=all,notfound=enabled
`

// ParseSSHDT parses `sshd -T` output: one "keyword value" per line,
// keywords in lower case. A keyword that appears on several lines (port,
// listenaddress, hostkey) keeps every value, space-separated.
func ParseSSHDT(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if k == "" {
			continue
		}
		k = strings.ToLower(k)
		if old, ok := m[k]; ok {
			m[k] = old + " " + v
		} else {
			m[k] = v
		}
	}
	return m
}

// CheckSSHDT checks sshd -T output against SSHRequired and the port;
// it returns every difference.
func CheckSSHDT(out string, port int) error {
	if port == 0 {
		port = 22
	}
	m := ParseSSHDT(out)
	var bad []string
	keys := make([]string, 0, len(SSHRequired))
	for k := range SSHRequired {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if got := m[k]; got != SSHRequired[k] {
			bad = append(bad, fmt.Sprintf("%s is %q, want %q", k, got, SSHRequired[k]))
		}
	}
	if got := m["port"]; got != strconv.Itoa(port) {
		bad = append(bad, fmt.Sprintf("port is %q, want %d", got, port))
	}
	if len(bad) > 0 {
		return fmt.Errorf("effective sshd configuration: %s", strings.Join(bad, "; "))
	}
	return nil
}

// HostKeyFiles are the unit that makes missing SSH host keys before sshd
// starts and the ssh.service drop-in that wants it. Sysprep removes host
// keys from every image, so every image with sshd needs them, appliance or
// not (the builder adds them when the recipe has no ssh section).
func HostKeyFiles() []File {
	return []File{
		file(HostKeysUnit, Header+hostKeysUnit, unitMode),
		file(SSHServiceDropIn, Header+sshServiceDropIn, unitMode),
	}
}
