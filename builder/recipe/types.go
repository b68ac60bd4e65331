// Package recipe owns the first stage of the pipeline: parsing and validating
// a bake recipe (apiVersion bake/v1). Decoding is strict (unknown keys, wrong
// types and extra documents are errors with file:line:col), and Validate
// collects every problem at once, each with its YAML position, so that a user
// fixes a recipe in one round. Only the CLI prints; this package returns
// Diagnostics.
package recipe

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
	// Default: the recipe's own folder.
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
	Outputs  []string  `yaml:"outputs,omitempty"` // raw, qcow2

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
	// Cmdline is appended after root=...; default "console=tty0 console=ttyS0,115200n8".
	Cmdline string `yaml:"cmdline,omitempty"`
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
}
