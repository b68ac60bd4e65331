package rootfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/safepath"
	"golang.org/x/sys/unix"
)

// sysprepItem is one thing an image must not carry from its build into
// every instance made from it.
type sysprepItem struct {
	what string // what is removed and why
	do   func(r *safepath.Root, host sysprepHost) error
}

// sysprepHost is what sysprep knows of the build host.
type sysprepHost struct{ hostname string }

// SysprepItems describes, in order, what Sysprep does (for `bake plan`).
func SysprepItems() []string {
	var out []string
	for _, it := range sysprepTable {
		out = append(out, it.what)
	}
	return out
}

var sysprepTable = []sysprepItem{
	{"/etc/machine-id empty (present, size 0): systemd makes a new one per instance at first boot and treats the boot as a first boot",
		func(r *safepath.Root, _ sysprepHost) error {
			if !r.IsDir("/etc") {
				return nil
			}
			uid, gid := ownerOf(r, "/etc/machine-id")
			return r.WriteFile("/etc/machine-id", nil, 0o444, uid, gid)
		}},
	{"/var/lib/dbus/machine-id removed unless it is the symlink to /etc/machine-id: D-Bus would otherwise give every instance the build's id",
		func(r *safepath.Root, _ sysprepHost) error {
			if t, err := r.Readlink("/var/lib/dbus/machine-id"); err == nil && (t == "/etc/machine-id" || t == "../../../etc/machine-id") {
				return nil
			}
			return r.Remove("/var/lib/dbus/machine-id")
		}},
	{"SSH host keys /etc/ssh/ssh_host_* removed: every instance must have its own (made at first boot)",
		removeGlobs("/etc/ssh/ssh_host_*")},
	{"systemd random seed and credential secret removed: instances must not share entropy or the key of their encrypted credentials",
		removeGlobs("/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret")},
	{"/var/lib/cloud removed: cloud-init state from a build would make cloud-init skip an instance's first boot",
		removeGlobs("/var/lib/cloud")},
	{"/var/lib/tailscale removed: tailscaled state is a node identity (its private key)",
		removeGlobs("/var/lib/tailscale")},
	{"DHCP leases removed: they name the build network",
		removeGlobs("/var/lib/dhcp/*.leases", "/var/lib/dhcp/*.lease")},
	{"/usr/sbin/policy-rc.d removed: it stops every service from starting",
		removeGlobs("/usr/sbin/policy-rc.d")},
	{"boot-hook diversions undone (update-grub, grub-mkconfig, grub-probe, grub-install are real again)",
		func(r *safepath.Root, _ sysprepHost) error { return undoDiversions(r) }},
	{"logs under /var/log emptied (files truncated, rotated logs and journals removed, directories kept with their owners)",
		func(r *safepath.Root, _ sysprepHost) error { return emptyLogs(r, "/var/log") }},
	{"apt lists and caches removed: stale indexes; the image installs nothing at run time",
		func(r *safepath.Root, h sysprepHost) error {
			if err := r.RemoveContents("/var/lib/apt/lists"); err != nil {
				return err
			}
			return removeGlobs("/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb",
				"/var/cache/apt/archives/partial/*", "/var/cache/apt/archives/lock")(r, h)
		}},
	{"mmdebstrap's build-time dpkg and apt option files (99mmdebstrap) removed",
		removeGlobs("/etc/dpkg/dpkg.cfg.d/99mmdebstrap", "/etc/apt/apt.conf.d/99mmdebstrap")},
	{"dpkg and debconf backups (*-old) and the ldconfig aux cache removed: build leftovers that differ build to build",
		removeGlobs("/var/lib/dpkg/*-old", "/var/cache/debconf/*-old", "/var/cache/ldconfig/aux-cache")},
	{"shell and tool histories of root and home directories removed",
		removeGlobs(historyGlobs()...)},
	{"/tmp, /var/tmp and /run emptied (/run is a tmpfs at boot: files under it are dead weight)",
		func(r *safepath.Root, _ sysprepHost) error {
			for _, d := range []string{"/tmp", "/var/tmp", "/run"} {
				if err := r.RemoveContents(d); err != nil {
					return err
				}
			}
			return nil
		}},
	{"the build host's /etc/resolv.conf removed (a symlink, such as systemd-resolved's stub, is the image's and stays)",
		func(r *safepath.Root, _ sysprepHost) error {
			st, err := r.Lstat("/etc/resolv.conf")
			if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
				return nil
			}
			return r.Remove("/etc/resolv.conf")
		}},
	{"the build host's hostname in /etc/hostname replaced by localhost (DHCP or cloud-init name the instance)",
		func(r *safepath.Root, h sysprepHost) error {
			b, err := r.ReadFile("/etc/hostname")
			if err != nil || h.hostname == "" || strings.TrimSpace(string(b)) != h.hostname || h.hostname == "localhost" {
				return nil
			}
			uid, gid := ownerOf(r, "/etc/hostname")
			return r.WriteFile("/etc/hostname", []byte(defaultHostname), 0o644, uid, gid)
		}},
	{"apt proxy settings removed (/etc/apt/apt.conf, apt.conf.d files naming a proxy, mmdebstrap's 99mmdebstrap): a build proxy means nothing to an instance",
		func(r *safepath.Root, _ sysprepHost) error { return removeAptProxies(r) }},
}

func historyGlobs() []string {
	var out []string
	for _, f := range []string{".bash_history", ".zsh_history", ".sh_history", ".python_history", ".lesshst", ".viminfo", ".wget-hsts", ".node_repl_history"} {
		out = append(out, "/root/"+f, "/home/*/"+f)
	}
	return out
}

// Sysprep removes from the tree what must not be shared by every instance
// made from the image (DESIGN 2.10): identity (machine-id, SSH host keys,
// random seed, credential secret, cloud-init and Tailscale state), build
// scaffolding (policy-rc.d, boot-hook diversions), and traces of the build
// host (logs, apt lists and caches, histories, temporary files, its
// resolv.conf, hostname and apt proxy). Each step is an entry of
// SysprepItems. Every path is resolved inside the tree. The tree must have
// no mounts (close the chroot first).
func Sysprep(tree string) error {
	h, _ := os.Hostname()
	return sysprep(tree, sysprepHost{hostname: h})
}

func sysprep(tree string, h sysprepHost) error {
	if m, err := mounts.Below(tree); err != nil {
		return err
	} else if len(m) > 0 {
		return fmt.Errorf("sysprep: %w %s: %s (close the chroot first)", mounts.ErrMounted, tree, strings.Join(m, ", "))
	}
	r, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, it := range sysprepTable {
		if err := it.do(r, h); err != nil {
			return fmt.Errorf("sysprep: %s: %w", it.what, err)
		}
	}
	return nil
}

func removeGlobs(patterns ...string) func(*safepath.Root, sysprepHost) error {
	return func(r *safepath.Root, _ sysprepHost) error {
		for _, p := range patterns {
			names, err := globTree(r, p)
			if err != nil {
				return err
			}
			for _, n := range names {
				if err := r.RemoveAll(n); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// globTree expands a path.Match pattern inside the tree. Directories are
// listed inside the tree; the last component is never followed.
func globTree(r *safepath.Root, pattern string) ([]string, error) {
	comps := strings.Split(strings.TrimPrefix(safepath.Clean(pattern), "/"), "/")
	cur := []string{"/"}
	for i, c := range comps {
		var next []string
		last := i == len(comps)-1
		for _, dir := range cur {
			if !strings.ContainsAny(c, "*?[") {
				p := path.Join(dir, c)
				if ok, err := r.Exists(p); err != nil {
					return nil, err
				} else if ok && (last || r.IsDir(p)) {
					next = append(next, p)
				}
				continue
			}
			if !r.IsDir(dir) {
				continue
			}
			ents, err := r.ReadDir(dir)
			if err != nil {
				return nil, err
			}
			for _, e := range ents {
				if ok, _ := path.Match(c, e.Name()); ok {
					p := path.Join(dir, e.Name())
					if last || r.IsDir(p) {
						next = append(next, p)
					}
				}
			}
		}
		cur = next
	}
	return cur, nil
}

var rotatedLogRE = regexp.MustCompile(`(\.[0-9]+(\.gz|\.xz|\.zst|\.bz2)?|\.gz|\.xz|\.zst|\.bz2|\.old|\.journal~?)$`)

// emptyLogs truncates the logs below dir and removes rotated ones and
// journal files. Truncating (not removing) keeps files such as
// /var/log/wtmp, btmp and lastlog with the owner and mode their packages
// gave them.
func emptyLogs(r *safepath.Root, dir string) error {
	if !r.IsDir(dir) {
		return nil
	}
	if st, err := r.Lstat(dir); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil // a symlinked log dir is not ours to follow
	}
	ents, err := r.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		switch {
		case e.IsDir():
			if err := emptyLogs(r, p); err != nil {
				return err
			}
		case e.Type().IsRegular():
			if rotatedLogRE.MatchString(e.Name()) {
				if err := r.Remove(p); err != nil {
					return err
				}
			} else if err := r.Truncate(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// undoDiversions removes the local diversions bake made (see
// DivertBootHooks), the way `dpkg-divert --rename --remove` would: the
// package's real file goes back to its name over the no-op, and the entry
// leaves dpkg's database (/var/lib/dpkg/diversions: from, to, package, one
// per line; ":" is a local diversion).
func undoDiversions(r *safepath.Root) error {
	const db = "/var/lib/dpkg/diversions"
	b, err := r.ReadFile(db)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	if len(lines)%3 != 0 {
		return fmt.Errorf("%s: %d lines, not triples", db, len(lines))
	}
	var keep []string
	changed := false
	for i := 0; i < len(lines); i += 3 {
		from, to, pkg := lines[i], lines[i+1], lines[i+2]
		if pkg != ":" || to != from+DivertSuffix {
			keep = append(keep, from, to, pkg)
			continue
		}
		changed = true
		if ok, err := r.Exists(to); err != nil {
			return err
		} else if ok {
			if err := r.Rename(to, from); err != nil {
				return err
			}
		} else if cur, err := r.ReadFile(from); err == nil && bytes.Contains(cur, []byte(noopMarker)) {
			if err := r.Remove(from); err != nil {
				return err
			}
		}
	}
	if !changed {
		return nil
	}
	out := strings.Join(keep, "\n")
	if out != "" {
		out += "\n"
	}
	uid, gid := ownerOf(r, db)
	return r.WriteFile(db, []byte(out), 0o644, uid, gid)
}

// ownerOf is the owner of an existing file, or root's for a new one: a file
// rewritten by sysprep keeps the owner the image gave it.
func ownerOf(r *safepath.Root, name string) (int, int) {
	if st, err := r.Lstat(name); err == nil {
		return int(st.Uid), int(st.Gid)
	}
	return rootUID, rootGID
}

var proxyRE = regexp.MustCompile(`(?i)acquire\s*(::|\{)[^;]*proxy`)

func removeAptProxies(r *safepath.Root) error {
	if err := r.Remove("/etc/apt/apt.conf.d/99mmdebstrap"); err != nil {
		return err
	}
	names := []string{"/etc/apt/apt.conf"}
	if r.IsDir("/etc/apt/apt.conf.d") {
		ents, err := r.ReadDir("/etc/apt/apt.conf.d")
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				names = append(names, "/etc/apt/apt.conf.d/"+e.Name())
			}
		}
	}
	for _, n := range names {
		b, err := r.ReadFile(n)
		if err != nil {
			continue
		}
		if proxyRE.Match(stripAptComments(b)) {
			if err := r.Remove(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// stripAptComments drops // and # comment lines (apt.conf syntax) and joins
// the rest, so a nested "Acquire { http { Proxy ...; }; };" matches too.
func stripAptComments(b []byte) []byte {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "//") || strings.HasPrefix(t, "#") {
			continue
		}
		out = append(out, t)
	}
	return []byte(strings.Join(out, " "))
}
