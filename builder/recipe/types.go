// Package recipe owns the first stage of the pipeline: parsing and validating
// a bake recipe (apiVersion bake/v1). Decoding is strict (unknown keys, wrong
// types and extra documents are errors with file:line:col), and Validate
// collects every problem at once, each with its YAML position, so that a user
// fixes a recipe in one round. Only the CLI prints; this package returns
// Diagnostics.
package recipe

import (
	"net/netip"
	"strings"
)

// APIVersion is the only recipe format this bake reads.
const APIVersion = "bake/v1"

// Recipe is a decoded bake/v1 recipe. Paths in it are as written; Resolved*
// helpers and Load resolve them against Dir.
type Recipe struct {
	APIVersion  string            `yaml:"apiVersion"`
	Name        string            `yaml:"name"`
	Description string            `yaml:"description,omitempty"`
	Variables   map[string]string `yaml:"variables,omitempty"`
	// Context is the folder that relative paths may not leave, written
	// relative to the recipe's folder and containing it (like a container
	// build context), e.g. ".." for recipes/x.yaml using overlays/x.
	// Default: the recipe's own folder. Resolved through symlinks, it must
	// lie inside the recipe's folder or inside the working directory (the
	// folder the person running bake chose), and is never / or a home
	// directory.
	Context string `yaml:"context,omitempty"`

	Base     Base      `yaml:"base"`
	Apt      Apt       `yaml:"apt,omitempty"`
	Groups   []Group   `yaml:"groups,omitempty"`
	Users    []User    `yaml:"users,omitempty"`
	Overlays []Overlay `yaml:"overlays,omitempty"`
	Files    []File    `yaml:"files,omitempty"`
	Systemd  Systemd   `yaml:"systemd,omitempty"`
	Kernel   Kernel    `yaml:"kernel,omitempty"`
	Disk     Disk      `yaml:"disk,omitempty"`
	Outputs  []string  `yaml:"outputs,omitempty"` // raw, qcow2, vmdk, ova, vhd, vhdx, gce

	// Appliance sections (see the types below). Each is optional; the
	// builder's appliance stages act only on the sections a recipe has.
	SSH        *SSH        `yaml:"ssh,omitempty"`
	Firewall   *Firewall   `yaml:"firewall,omitempty"`
	Containers []Container `yaml:"containers,omitempty"`
	Gateway    *Gateway    `yaml:"gateway,omitempty"`
	Tailscale  *Tailscale  `yaml:"tailscale,omitempty"`
	Firstboot  *Firstboot  `yaml:"firstboot,omitempty"`
	State      *State      `yaml:"state,omitempty"`

	// Path is the recipe file as given; Dir is its folder (absolute).
	// Relative paths in the recipe resolve against Dir.
	Path string `yaml:"-"`
	Dir  string `yaml:"-"`
	// Digest is the sha256 of the recipe file's bytes (before variables).
	Digest string `yaml:"-"`
	// Vars are the effective variable values (defaults overridden by --set).
	Vars map[string]string `yaml:"-"`

	// src remembers where each value came from in the YAML, so that
	// Validate can point at it. Nil for recipes built in Go.
	src *source
	// hasDefaults: Defaults has run and succeeded (HasDefaults).
	hasDefaults bool
	// workDir is the highest folder Context may name besides the
	// recipe's own (see contextDir): the working directory when the recipe
	// was read, or what LoadIn was given. "" (recipes built in Go): the
	// working directory at the time of the check.
	workDir string
	// bound is --context (LoadOptions.ContextDir), resolved through
	// symlinks: when set, the folder the context must lie in instead of
	// the recipe's folder, the working directory and the repository.
	bound string
}

// Base is where the root tree comes from: exactly one of Debian or Image.
type Base struct {
	Debian *DebianBase `yaml:"debian,omitempty"`
	Image  *ImageBase  `yaml:"image,omitempty"`
}

// DebianBase bootstraps a tree from Debian packages with mmdebstrap.
type DebianBase struct {
	Suite string `yaml:"suite"`
	// Mirror is the archive the image's own apt sources name. It is also
	// used to fetch packages unless BuildMirror is set. Empty: packages are
	// fetched through the build host's apt sources and the image gets no
	// Debian sources entry.
	Mirror string `yaml:"mirror,omitempty"`
	// BuildMirror is used only while building; it never reaches the image.
	BuildMirror string   `yaml:"build_mirror,omitempty"`
	Variant     string   `yaml:"variant,omitempty"`    // minbase|required|important|standard (default minbase)
	Components  []string `yaml:"components,omitempty"` // default [main]
	Packages    []string `yaml:"packages,omitempty"`
}

// ImageBase starts from a cloud image (raw or qcow2), pinned by digest.
type ImageBase struct {
	Path   string `yaml:"path,omitempty"`
	URL    string `yaml:"url,omitempty"`
	SHA256 string `yaml:"sha256,omitempty"`
	SHA512 string `yaml:"sha512,omitempty"`
}

// Apt is the package step run in a chroot of the tree.
type Apt struct {
	Packages     []string        `yaml:"packages,omitempty"`
	Repositories []AptRepository `yaml:"repositories,omitempty"`
}

// AptRepository is written as a deb822 .sources file with Signed-By.
type AptRepository struct {
	Name       string   `yaml:"name"`
	URI        string   `yaml:"uri"`
	Suite      string   `yaml:"suite"`
	Components []string `yaml:"components,omitempty"`
	Key        string   `yaml:"key"` // file beside the recipe, armored or binary
	// BuildURI and BuildKey are used only while building (a local mirror
	// on a build network that cannot reach URI); the image's sources name
	// URI and trust Key. BuildKey defaults to Key (a mirror of the same
	// signed repository).
	BuildURI string `yaml:"build_uri,omitempty"`
	BuildKey string `yaml:"build_key,omitempty"`
}

// Group is created in the tree.
type Group struct {
	Name   string `yaml:"name"`
	GID    *int   `yaml:"gid,omitempty"`
	System bool   `yaml:"system,omitempty"`
}

// User is created in the tree.
type User struct {
	Name   string   `yaml:"name"`
	UID    *int     `yaml:"uid,omitempty"`
	Groups []string `yaml:"groups,omitempty"` // supplementary groups
	Shell  string   `yaml:"shell,omitempty"`  // default /bin/bash, or nologin for system users
	Home   string   `yaml:"home,omitempty"`
	System bool     `yaml:"system,omitempty"`
	// Sudo: "" (none) or "nopasswd" (passwordless sudo through a sudoers drop-in).
	Sudo string `yaml:"sudo,omitempty"`
	// SSHAuthorizedKeys are public keys (validated). Per-instance keys come
	// from the first-boot seed instead; these are for keys every instance shares.
	SSHAuthorizedKeys []string `yaml:"ssh_authorized_keys,omitempty"`
}

// Overlay copies a directory tree from beside the recipe into the image.
type Overlay struct {
	Source string `yaml:"source"`           // directory, relative to the recipe
	Target string `yaml:"target,omitempty"` // absolute path in the image, default /
	Owner  string `yaml:"owner,omitempty"`  // user[:group] in the image; default root:root
	// Modes maps a path below Target (glob allowed) to an octal mode string.
	Modes map[string]string `yaml:"modes,omitempty"`
}

// File writes one file into the image.
type File struct {
	Path    string `yaml:"path"`              // absolute path in the image
	Content string `yaml:"content,omitempty"` // exactly one of Content, Source
	Source  string `yaml:"source,omitempty"`  // file relative to the recipe
	Mode    string `yaml:"mode,omitempty"`    // octal string, default "0644"
	Owner   string `yaml:"owner,omitempty"`   // user[:group], default root:root
}

// Systemd unit presets applied in the tree (no daemon runs).
type Systemd struct {
	Enable  []string `yaml:"enable,omitempty"`
	Disable []string `yaml:"disable,omitempty"`
	Mask    []string `yaml:"mask,omitempty"`
}

// Kernel settings for the boot entry bake writes.
type Kernel struct {
	// Cmdline is what the recipe adds to the kernel command line. On a
	// Debian base bake writes root=... ro, then DefaultCmdline, then
	// these; on a cloud-image base these are added to the base's own
	// arguments. Default (left empty): DefaultCmdline. An argument may
	// not be written twice (the ones after "--" are init's, and may).
	Cmdline string `yaml:"cmdline,omitempty"`

	// Filled by Defaults (never written in YAML):

	// Args is the command line after root=... ro of a disk bake
	// assembles: DefaultCmdline's arguments, then the recipe's own as
	// written. An argument of DefaultCmdline that the recipe writes too
	// is given once, where the recipe puts it (for console= the last
	// one wins, so the recipe's order is kept).
	Args []string `yaml:"-"`
	// RecipeArgs are the recipe's own arguments: none when Cmdline was
	// left empty (DefaultCmdline is not the recipe asking for anything).
	// A cloud-image base's grub.cfg is rewritten only when it lacks one.
	RecipeArgs []string `yaml:"-"`
	// defaulted: Defaults filled Cmdline with DefaultCmdline.
	defaulted bool
}

// Disk is how the tree becomes a disk.
type Disk struct {
	Size     string   `yaml:"size,omitempty"`     // e.g. 4GiB; default: content + headroom
	Firmware []string `yaml:"firmware,omitempty"` // bios, uefi (default both)
	ESPSize  string   `yaml:"esp_size,omitempty"` // default 64MiB
	// Identifiers override the values bake derives from the recipe digest.
	DiskGUID     string `yaml:"disk_guid,omitempty"`
	RootUUID     string `yaml:"root_uuid,omitempty"`
	RootPartUUID string `yaml:"root_partuuid,omitempty"`
	ESPSerial    string `yaml:"esp_serial,omitempty"` // FAT volume id, 8 hex digits

	// Filled by Defaults (never written in YAML): the values above
	// parsed once.

	// SizeBytes is Size in bytes; 0 when Size is empty (fit the content).
	SizeBytes int64 `yaml:"-"`
	// ESPBytes is ESPSize in bytes.
	ESPBytes int64 `yaml:"-"`
	// BIOS and UEFI are Firmware as a set.
	BIOS bool `yaml:"-"`
	UEFI bool `yaml:"-"`
	// ESPVolumeID is ESPSerial as a number; 0 when ESPSerial is empty.
	ESPVolumeID uint32 `yaml:"-"`
}

// SSH is the OpenSSH server of an appliance. Key-only authentication, no
// root login and no keyboard-interactive authentication are not options:
// bake always writes them, in a drop-in that OpenSSH reads first, and checks
// the effective configuration (sshd -T) at build time.
type SSH struct {
	Port *int `yaml:"port,omitempty"` // default 22
}

// Firewall is the host firewall (layer 1) and Docker's DOCKER-USER chain
// (layer 2), written as files into the image and active from the first boot.
type Firewall struct {
	// Backend: ufw (default) or iptables-persistent.
	Backend string `yaml:"backend,omitempty"`
	// Allow lists what may reach the host: PORT/PROTO or LOW:HIGH/PROTO,
	// e.g. 22/tcp, 41641/udp. The SSH port is always allowed.
	Allow []string `yaml:"allow,omitempty"`
	// AllowedNetworks may reach the gateway port (gateway.port) on the
	// host (INPUT). With gateway.mode network they are also the
	// DOCKER-USER exception, together with gateway.allowed_networks.
	AllowedNetworks []Network `yaml:"allowed_networks,omitempty"`
	// Rules are Allow parsed (filled by Defaults).
	Rules []PortRule `yaml:"-"`
	// DockerIsolation keeps published container ports unreachable from
	// every non-loopback interface (DOCKER-USER), and drops packets to
	// 127.0.0.0/8 arriving from outside. Default true.
	DockerIsolation *bool `yaml:"docker_isolation,omitempty"`
	// MetadataAccess lets containers reach the cloud metadata services
	// (169.254.0.0/16, 168.63.129.16, 100.100.100.200, fd00:ec2::254;
	// see appliance.MetadataV4). Default false: they are dropped, except
	// DNS to the resolvers that sit on metadata addresses.
	MetadataAccess bool `yaml:"metadata_access,omitempty"`
}

// Network is a CIDR with a comment (the seed's allowed_networks).
type Network struct {
	CIDR    string `yaml:"cidr"`
	Comment string `yaml:"comment,omitempty"`
	// Prefix is CIDR parsed (filled by Defaults).
	Prefix netip.Prefix `yaml:"-"`
}

// Container runs one container image from a systemd unit, from an image
// stored in the disk (nothing is pulled at boot), as its own non-root uid,
// with no new privileges and no capabilities.
// ContainerBuild makes a container's image without a Docker daemon
// (package oci): a minimal Debian layer, Node from the npm registry and
// the app installed from a lockfile kept beside the recipe.
type ContainerBuild struct {
	// App is the npm package to run, PACKAGE@VERSION (exact).
	App string `yaml:"app"`
	// Lockfile is the package-lock.json that pins every package of the
	// app, relative to the recipe, inside its context.
	Lockfile string `yaml:"lockfile"`
}

// Package and Version split App ("" when it is not PACKAGE@VERSION).
func (b *ContainerBuild) Package() (name, version string) {
	name, version, ok := strings.Cut(b.App, "@")
	if strings.HasPrefix(b.App, "@") { // @scope/name@version
		i := strings.LastIndex(b.App, "@")
		name, version, ok = b.App[:i], b.App[i+1:], i > 0
	}
	if !ok || name == "" || version == "" {
		return "", ""
	}
	return name, version
}

type Container struct {
	Name string `yaml:"name"`
	// Image is a reference resolved at build time and pinned by digest:
	// HOST/REPO@sha256:..., docker-archive:FILE[@sha256:...] or
	// oci-layout:DIR[:TAG][@sha256:...] (paths relative to the recipe).
	Image string `yaml:"image,omitempty"`
	// Build makes the image instead of pulling one (package oci).
	Build *ContainerBuild `yaml:"build,omitempty"`
	// User runs the container: a user of the recipe (its uid and primary
	// gid in the image) or UID:GID. Never root.
	User string `yaml:"user"`
	// Publish: HOSTADDR:HOSTPORT:CONTAINERPORT[/PROTO], e.g.
	// 127.0.0.1:18789:18789. A port without a host address would listen
	// on every interface and is refused unless AllowAllInterfaces.
	Publish            []string `yaml:"publish,omitempty"`
	AllowAllInterfaces bool     `yaml:"allow_all_interfaces,omitempty"`
	// Env is written into the image (docker --env-file): a variable
	// whose name looks like a secret (SecretEnvName) may have a value
	// only with firstboot.allow_baked_secrets.
	Env map[string]string `yaml:"env,omitempty"`
	// Volumes: HOSTPATH:CONTAINERPATH[:ro], absolute paths.
	Volumes []string `yaml:"volumes,omitempty"`
	// Command replaces the image's CMD.
	Command []string `yaml:"command,omitempty"`
	// Restart: always (default), on-failure or no (systemd's Restart=).
	Restart string `yaml:"restart,omitempty"`

	// Ports and Mounts are Publish and Volumes parsed (filled by
	// Defaults).
	Ports  []Publish `yaml:"-"`
	Mounts []Volume  `yaml:"-"`
}

// Gateway is the OpenClaw gateway, in the seed playbook's vocabulary. bake
// maps it to the gateway container's host publish address, the DOCKER-USER
// exception and the gateway's openclaw.json (written at first boot).
type Gateway struct {
	Container string `yaml:"container"`      // a name in containers
	Port      *int   `yaml:"port,omitempty"` // default 18789
	Mode      string `yaml:"mode,omitempty"` // local (default) | network
	Bind      string `yaml:"bind,omitempty"` // loopback (mode local) | lan (mode network)
	// TailscaleMode: serve (default with tailscale enabled: HTTPS on the
	// tailnet, with a certificate from the control server), serve-http
	// (plain HTTP on the tailnet at TailscaleHTTPPort, for control servers
	// that issue no certificates, headscale among them), off, or funnel
	// (public; needs AllowPublicExposure).
	TailscaleMode string `yaml:"tailscale_mode,omitempty"`
	// TailscaleHTTPPort is the tailnet port of serve-http (default 80).
	TailscaleHTTPPort   *int      `yaml:"tailscale_http_port,omitempty"`
	AllowPublicExposure bool      `yaml:"allow_public_exposure,omitempty"`
	AllowedNetworks     []Network `yaml:"allowed_networks,omitempty"`
	// Token is refused unless firstboot.allow_baked_secrets: the token
	// comes from the instance's seed or is generated at first boot.
	Token string `yaml:"token,omitempty"`
	// Settings are more of openclaw.json's settings, merged into the file
	// bake writes (top-level keys beside "gateway", and "gateway"'s own
	// keys into bake's). The image owns them: each image's first boot
	// renders them again on an old instance's volume (docs/state.md), so a
	// key removed here is gone after the upgrade. Refused: the keys bake
	// writes (gateway.mode, bind, port, auth, tailscale) and the token's
	// placeholder. No secrets: they are in the image.
	Settings map[string]any `yaml:"settings,omitempty"`

	// Filled by Defaults (never written in YAML): where the gateway's
	// files are, which the build writes and verify checks.

	// StateDir is the gateway's state directory on the host, which its
	// container mounts at appliance.GatewayContainerStateDir: the host
	// path the recipe mounts there itself, else ~USER/.openclaw of the
	// container's user when it is a user of the recipe, else
	// appliance.StateDir/CONTAINER (a UID:GID has no home).
	StateDir string `yaml:"-"`
	// ConfigPath is openclaw.json on the host, in StateDir: first boot
	// writes it.
	ConfigPath string `yaml:"-"`
	// Owner is the container's user (a name or UID:GID): it owns
	// StateDir and ConfigPath and runs the gateway.
	Owner string `yaml:"-"`
}

// Tailscale installs tailscaled and, given an auth key in the seed, joins
// the tailnet after the network is online.
type Tailscale struct {
	Enabled  bool   `yaml:"enabled"`
	Operator string `yaml:"operator,omitempty"` // default firstboot.admin_user
	// AuthKey is refused unless firstboot.allow_baked_secrets.
	AuthKey string `yaml:"auth_key,omitempty"`
	// LoginServer is the control server's URL (https://, e.g. a
	// headscale's server_url); "" is Tailscale's own.
	LoginServer string `yaml:"login_server,omitempty"`
	// CA is a PEM file of CA certificates, relative to the recipe, that
	// tailscaled trusts besides the system's: the login server's (and its
	// DERP servers') CA when that is a private one.
	CA string `yaml:"ca,omitempty"`
}

// Firstboot is the per-instance step at the first boot: seed, admin keys,
// gateway token.
type Firstboot struct {
	AdminUser string `yaml:"admin_user"`
	// Seed sources, in order of precedence: nocloud (a cidata/CIDATA
	// volume), credentials (systemd credentials, SMBIOS type 11),
	// cloud-init (installs cloud-init; the instance's user-data and
	// metadata). Default [nocloud, credentials].
	Seed []string `yaml:"seed,omitempty"`
	// AllowBakedSecrets permits gateway.token, tailscale.auth_key and
	// secret-looking containers[].env values in the recipe: every
	// instance then shares them. Warned about.
	AllowBakedSecrets bool `yaml:"allow_baked_secrets,omitempty"`
}

// State keeps an instance's state on a volume of its own, so that a new
// image can replace the old one without losing the instance (issue 15):
// first boot finds the volume, formats it when it is blank, copies each
// path onto it on first use and binds it over the root disk's copy before
// anything that reads it starts (docs/state.md).
type State struct {
	Volume StateVolume `yaml:"volume,omitempty"`
	// Partition, instead of Volume, keeps the state on a partition of the
	// root disk that first boot makes at the disk's end before root
	// grows (single-disk VMs; `bake upgrade DISK NEW` keeps it).
	Partition *StatePartition `yaml:"partition,omitempty"`
	// Paths are the instance-owned files and directories. A path whose
	// last component holds a * names the files it matches (host keys).
	// Default (see DefaultStatePaths): the appliance's identities and
	// data. /var/lib/bake/firstboot (the seed's once-per-instance stamp)
	// is always added: the seed applies once per state, not per image.
	Paths []string `yaml:"paths,omitempty"`
}

// StateVolume is how first boot finds the state disk: by its file system
// label, or by its virtio serial (/dev/disk/by-id/virtio-SERIAL). Only a
// disk found by serial is ever formatted (when blank); a label alone finds
// a volume already made.
type StateVolume struct {
	Label  string `yaml:"label,omitempty"` // default bake-state
	Serial string `yaml:"serial,omitempty"`
}

// StatePartition is the state partition of a single-disk instance: at
// its first boot, before the root partition grows, first boot adds a GPT
// partition named Label of Size at the end of the disk (in free space
// after the last partition only) and formats it ext4 with the same label.
type StatePartition struct {
	Label string `yaml:"label,omitempty"` // default bake-state (GPT name and ext4 label)
	Size  string `yaml:"size"`            // e.g. 2GiB; whole MiB, at least 64MiB
	// SizeBytes is Size in bytes (Defaults).
	SizeBytes int64 `yaml:"-"`
}
