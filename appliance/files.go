// Package appliance is the appliance stage: pure functions that render, for
// each layer of the OpenClaw security architecture (DESIGN.md section 2),
// the files a root tree needs: the sshd drop-in and host-key unit (SSH),
// ufw or iptables-persistent rules (layer 1), the DOCKER-USER unit and the
// loopback guard (layer 2), one systemd unit per container running a pinned
// image stored in the disk with no capabilities (layers 3 and 4), the
// gateway's config template, Tailscale's join unit, Docker and journald
// log limits. Nothing here runs a daemon or touches a live firewall: the
// files take effect at the image's first boot. The builder writes them with
// Write and runs the checks (sshd -T) in a chroot of the tree.
package appliance

import (
	"fmt"
	"io/fs"
	"strings"

	"github.com/bakeimg/bake/internal/safepath"
)

// Header starts every file bake writes, so an operator on the instance can
// tell where a file came from.
const Header = "# Written by bake (appliance stage); the image is rebuilt, not edited.\n"

// Directories bake uses in the image.
const (
	LibDir    = "/usr/lib/bake"             // scripts
	EtcDir    = "/etc/bake"                 // configuration read at boot
	UnitDir   = "/etc/systemd/system"       // units
	StateDir  = "/var/lib/bake"             // per-instance state
	SecretDir = "/var/lib/bake/secrets"     // secrets waiting to be used once (0700)
	ShareDir  = "/usr/share/bake"           // records of the build (image digests)
	LogPrefix = "bake"                      // syslog identifier prefix
	rootOwner = ""                          // root:root
	unitMode  = fs.FileMode(0o644)          // units and configuration
	execMode  = fs.FileMode(0o755)          // scripts
	privMode  = fs.FileMode(0o600)          // secrets
	dirMarker = fs.ModeDir | fs.FileMode(0) // File.Mode of a directory entry
)

// File is one file (or directory, when Mode has fs.ModeDir) to put into
// the tree.
type File struct {
	Path    string // absolute path in the image
	Content []byte
	Mode    fs.FileMode
	// Owner is "user[:group]" in the image; "" is root:root.
	Owner string
}

func (f File) String() string { return fmt.Sprintf("%s %v %s", f.Path, f.Mode, orRoot(f.Owner)) }

func orRoot(o string) string {
	if o == "" {
		return "root:root"
	}
	return o
}

func file(path, content string, mode fs.FileMode) File {
	return File{Path: path, Content: []byte(content), Mode: mode}
}

// Lookup resolves an owner ("user[:group]", "" for root) to ids in the
// image, e.g. rootfs.LookupOwner against the tree.
type Lookup func(owner string) (uid, gid int, err error)

// Write puts files into the tree. Every path resolves inside the tree
// (package safepath), parents are created root-owned 0755, and each file
// or directory gets exactly its Mode and Owner.
func Write(tree string, files []File, lookup Lookup) error {
	root, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, f := range files {
		uid, gid := 0, 0
		if f.Owner != "" {
			if uid, gid, err = lookup(f.Owner); err != nil {
				return fmt.Errorf("%s: %w", f.Path, err)
			}
		}
		if !strings.HasPrefix(f.Path, "/") {
			return fmt.Errorf("%s: not an absolute path", f.Path)
		}
		if f.Mode.IsDir() {
			if err := root.MkdirAll(f.Path, f.Mode.Perm()|f.Mode&(fs.ModeSticky|fs.ModeSetgid), uid, gid); err != nil {
				return err
			}
			// MkdirAll leaves an existing directory alone: set what
			// the appliance needs (the gateway's state dir is 0700).
			if err := root.Chmod(f.Path, f.Mode.Perm()|f.Mode&(fs.ModeSticky|fs.ModeSetgid)); err != nil {
				return err
			}
			if err := root.Lchown(f.Path, uid, gid); err != nil {
				return err
			}
			continue
		}
		if err := root.WriteFile(f.Path, f.Content, f.Mode, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// Dir is a directory entry for Write.
func Dir(path string, perm fs.FileMode, owner string) File {
	return File{Path: path, Mode: fs.ModeDir | perm, Owner: owner}
}

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// unitQuote quotes one argument for a systemd Exec line: inside double
// quotes backslash and quote are escaped, and % and $ are doubled so
// systemd neither expands specifiers nor environment variables.
func unitQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+", r))
	}) < 0 {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "$", "$$")
	return `"` + r.Replace(s) + `"`
}
