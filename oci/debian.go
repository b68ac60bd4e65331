package oci

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/internal/apt"
	"github.com/bakeimg/bake/internal/dpkg"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/flock"
	"github.com/bakeimg/bake/internal/mounts"
)

// DebianLayer is the image's base: a minimal Debian root made from
// packages with mmdebstrap.
type DebianLayer struct {
	Suite string // e.g. bookworm
	// Packages are installed on top of Debian's Essential set (which brings
	// a shell, coreutils and dpkg): for Node, libc6 libstdc++6 libgcc-s1,
	// and ca-certificates and tini.
	Packages []string
	// Mirror is the Debian archive (e.g. http://deb.debian.org/debian);
	// empty uses the build host's Debian apt sources mapped onto Suite.
	// A snapshot.debian.org URL pins the package versions for good, which
	// is what makes a rebuild months later give the same digest.
	Mirror string
	// SecurityMirror is the debian-security archive used with Mirror
	// (e.g. http://deb.debian.org/debian-security); empty: none.
	SecurityMirror string
}

// debianFormat names the shape of the Debian layer (mmdebstrap options,
// strip rules, the user entry); it is part of the cache key.
const debianFormat = "essential+merged-usr+nodoc/1"

// dpkgExcludes keep documentation, manuals and translations out of the tree
// (and out of anything dpkg installs later), as Debian's slim images do;
// copyright files stay.
var dpkgExcludes = []string{
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright",
	"path-exclude=/usr/share/info/*",
	"path-exclude=/usr/share/locale/*",
	"path-include=/usr/share/locale/locale.alias",
	"path-exclude=/usr/share/lintian/*",
	"path-exclude=/usr/share/linda/*",
}

// debianSkip says which paths of the bootstrapped tree stay out of the
// layer: what the container runtime provides (/dev, /proc, /sys, /run,
// resolv.conf, hostname), apt's state (the image has no apt), logs and
// caches, and dpkg's and debconf's backups. Directories in keepDirs stay,
// empty.
func debianSkip(name string, isDir bool) bool {
	switch name {
	case "dev", "proc", "sys", "run", "tmp", "var/tmp", "mnt", "media",
		"var/lib/apt/lists", "var/cache/apt", "var/log/apt":
		return isDir
	case "etc/resolv.conf", "etc/hostname", "etc/machine-id",
		"etc/apt/sources.list", "etc/apt/apt.conf.d/99mmdebstrap",
		"var/cache/ldconfig/aux-cache", "var/log/dpkg.log", "var/log/alternatives.log",
		"var/log/bootstrap.log":
		return true
	}
	base := filepath.Base(name)
	if (strings.HasPrefix(name, "var/lib/dpkg/") || strings.HasPrefix(name, "var/cache/debconf/")) &&
		strings.HasSuffix(base, "-old") {
		return true
	}
	return false
}

func debianKeepDir(name string) bool { return true }

// debianInputs is everything the Debian layer's bytes depend on.
type debianInputs struct {
	Format         string
	Suite          string
	Packages       []string
	Mirror         string
	SecurityMirror string
	Sources        []string // the build sources actually used
	Epoch          int64
	User           imageUser
}

// debianInfo is recorded with the cached layer: the build manifest wants
// the package versions.
type debianInfo struct {
	Packages []string // name=version, sorted
}

func (s *DebianLayer) packages() []string {
	var out []string
	for _, p := range s.Packages {
		if p = strings.TrimSpace(p); p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// debianSources returns the apt sources mmdebstrap fetches from.
func debianSources(ctx context.Context, d DebianLayer) ([]string, error) {
	if d.Mirror == "" {
		srcs, codename, err := apt.HostSources("/")
		if err != nil {
			return nil, err
		}
		return apt.MapHostSources(codename, d.Suite, []string{"main"}, srcs)
	}
	out := apt.MirrorSources(d.Mirror, d.Suite, []string{"main"})
	if d.SecurityMirror != "" {
		out = append(out, "deb "+d.SecurityMirror+" "+d.Suite+"-security main")
	}
	return out, nil
}

// mmdebstrapArgs builds the command line. unshare mode as root keeps the
// user namespace but gives mmdebstrap a mount namespace of its own, so no
// mount it makes can outlive it, even on SIGKILL.
func mmdebstrapArgs(d DebianLayer, sources []string, proxies []string, debCache, tree string) []string {
	args := []string{
		"--mode=unshare",
		"--variant=essential",
		"--format=directory",
		"--components=main",
		// usr-is-merged instead of usrmerge, which would pull in perl.
		"--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
	}
	if pkgs := d.packages(); len(pkgs) > 0 {
		args = append(args, "--include="+strings.Join(pkgs, ","))
	}
	for _, o := range dpkgExcludes {
		args = append(args, "--dpkgopt="+o)
	}
	for _, opt := range proxies {
		k, v, _ := strings.Cut(opt, "=")
		args = append(args, fmt.Sprintf("--aptopt=%s %q", k, v))
	}
	if debCache != "" {
		args = append(args,
			"--skip=download/empty",
			`--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
			"--setup-hook=sync-in "+debCache+" /var/cache/apt/archives/",
			"--customize-hook=sync-out /var/cache/apt/archives "+debCache,
		)
	}
	args = append(args, d.Suite, tree)
	return append(args, sources...)
}

// debianLayer bootstraps the base tree and turns it into a layer, or
// returns the cached layer for the same inputs.
func (b *builder) debianLayer(ctx context.Context) (layerFile, debianInfo, error) {
	d := b.spec.Debian
	var info debianInfo
	sources, err := debianSources(ctx, d)
	if err != nil {
		return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
	}
	key := cacheKey("debian", debianInputs{
		Format: debianFormat, Suite: d.Suite, Packages: d.packages(), Mirror: d.Mirror,
		SecurityMirror: d.SecurityMirror, Sources: sources, Epoch: b.spec.SourceDateEpoch, User: b.user,
	})
	if lf, ok := b.cache.get(key, &info); ok {
		b.logf("debian layer: cached %s", lf.Digest)
		return lf, info, nil
	}
	tmp, err := b.tempDir("debian-")
	if err != nil {
		return layerFile{}, info, err
	}
	defer mounts.RemoveAllSafe(tmp)
	tree := filepath.Join(tmp, "root")
	debCache := filepath.Join(b.downloads, "debs", d.Suite)
	if strings.ContainsAny(debCache, " \t\n'\"\\") {
		debCache = "" // mmdebstrap's sync hooks cannot quote it
	} else if err := os.MkdirAll(debCache, 0o755); err != nil {
		return layerFile{}, info, err
	} else {
		// The sync hooks copy .debs in and out of debCache with tar, in
		// place: a build that synced in while another synced out could
		// read a half-written .deb. Builds that share the download dir
		// (a user's parallel builds, the oci tests and the VM tier's
		// builds) take turns.
		unlock, err := flock.Lock(ctx, debCache+".lock")
		if err != nil {
			return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
		}
		defer unlock()
	}
	b.logf("debian layer: mmdebstrap %s %s", d.Suite, strings.Join(d.packages(), " "))
	args := mmdebstrapArgs(d, sources, apt.HostProxies(ctx, b.runner), debCache, tree)
	// TMPDIR: mmdebstrap's main process makes its mmdebstrap.gpghome.XXXX
	// there and removes it only when it exits normally; killed, it leaves
	// it (see rootfs.Bootstrap). tmp is removed below, or swept by the next
	// build when this one is killed.
	cmd := execx.Cmd{Name: "mmdebstrap", Args: args, Stdout: b.log, Stderr: b.log,
		Env: []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(b.spec.SourceDateEpoch, 10), "TMPDIR=" + tmp}}
	if err := b.runner.Run(ctx, cmd); err != nil {
		return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
	}
	if err := addImageUser(tree, b.user); err != nil {
		return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
	}
	pkgs, err := dpkg.InstalledPackages(tree)
	if err != nil {
		return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
	}
	for _, p := range pkgs {
		info.Packages = append(info.Packages, p.Name+"="+p.Version)
	}
	es, err := treeEntries(tree, treeOptions{Skip: debianSkip, KeepDir: debianKeepDir})
	if err != nil {
		return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
	}
	lf, err := b.cache.put(key, es, b.spec.SourceDateEpoch, info)
	if err != nil {
		return layerFile{}, info, fmt.Errorf("debian layer: %w", err)
	}
	b.logf("debian layer: %d packages, %s", len(pkgs), lf.Digest)
	return lf, info, nil
}

// imageUser is the image's default user. The image must also work under
// any other uid (the appliance runs it as its own `openclaw` uid), so this
// entry only gives the default uid a name and a home.
type imageUser struct {
	Name     string
	UID, GID int
	Home     string
}

// lowerDir is the owner and mode a directory has in the Debian layer, for
// the parents the layers above it repeat (withParents): the user's home is
// 1777 and the user's (addImageUser); every other directory an upper layer
// reaches into (usr, usr/local/bin, home) is Debian's 0755 root:root.
func (b *builder) lowerDir(dir string) entry {
	if dir == strings.Trim(path.Clean(b.user.Home), "/") && b.user.UID != 0 {
		return dirEntry(dir, 0o1777, b.user.UID, b.user.GID)
	}
	return dirEntry(dir, 0o755, 0, 0)
}

// addImageUser adds the user and its group to the tree's passwd and group
// files (unless the uid or gid is there already) and makes its home, which
// is world-writable with the sticky bit, like /tmp, so that whatever uid
// the container runs as can keep state under $HOME.
func addImageUser(tree string, u imageUser) error {
	if u.UID == 0 {
		return nil
	}
	if err := appendEntry(filepath.Join(tree, "etc/group"), 2, u.GID,
		fmt.Sprintf("%s:x:%d:\n", u.Name, u.GID)); err != nil {
		return err
	}
	if err := appendEntry(filepath.Join(tree, "etc/passwd"), 2, u.UID,
		fmt.Sprintf("%s:x:%d:%d::%s:/bin/sh\n", u.Name, u.UID, u.GID, u.Home)); err != nil {
		return err
	}
	home := filepath.Join(tree, u.Home)
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	if err := os.Chown(home, u.UID, u.GID); err != nil {
		return err
	}
	return os.Chmod(home, 0o777|os.ModeSticky)
}

// appendEntry appends line to a colon-separated database unless an entry
// with the same name (field 0) or id (field idField) exists.
func appendEntry(file string, idField, id int, line string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	name, _, _ := strings.Cut(line, ":")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) > idField && (f[0] == name || f[idField] == strconv.Itoa(id)) {
			return nil
		}
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		line = "\n" + line
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
