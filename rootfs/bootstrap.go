package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/apt"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/safepath"
	"github.com/bakeimg/bake/internal/sweep"
)

// BootstrapOptions describe a Debian root tree made from packages.
type BootstrapOptions struct {
	Suite      string   // e.g. bookworm
	Variant    string   // mmdebstrap variant; default minbase
	Components []string // default [main]
	// Packages are installed in the same mmdebstrap run as the base
	// system: one dependency resolution and one dpkg run is much faster
	// than a second apt step in a chroot.
	Packages []string
	// Mirror is the Debian archive the image's own apt sources name, and
	// the one packages are fetched from when BuildMirror is empty. May be
	// empty: the image gets no Debian sources entry then.
	Mirror string
	// BuildMirror is used only while building and never reaches the image.
	BuildMirror string
	// CacheDir keeps downloaded .debs between builds; empty disables it.
	CacheDir string
	// TreeCache keeps finished trees keyed by every input, the archive's
	// state included (treecache.go); empty disables it.
	TreeCache string
	// Notes receives one line about the tree cache (hit, stored, or why it
	// was not used); may be nil.
	Notes io.Writer
	// Tree is the directory to create; it must be missing or empty.
	Tree   string
	Runner execx.Runner // default execx.Default
	// Log also receives mmdebstrap's output; leave it nil when Runner
	// already logs (execx.Host{Log: ...}), or lines appear twice.
	Log io.Writer
}

// bootstrapTempPrefix names Bootstrap's temp dir beside the tree: the
// essential hook script, and mmdebstrap's TMPDIR.
const bootstrapTempPrefix = ".bake-bootstrap-"

// DivertSuffix marks the dpkg diversions bake makes while building; Sysprep
// undoes exactly those.
const DivertSuffix = ".bake-diverted"

// bootHookBinaries are the tools kernel and GRUB maintainer scripts call to
// install a boot loader or regenerate grub.cfg. In a chroot they inspect the
// build host: grub-probe reports the host's root device, grub-install writes
// to the host's disks or wants /boot/efi mounted, update-grub writes a
// grub.cfg naming the host's disk. bake writes grub.cfg and installs the boot
// loader itself from the tree's grub-mkimage (not diverted) when it
// assembles the disk.
var bootHookBinaries = []string{
	"/usr/sbin/update-grub",
	"/usr/sbin/grub-mkconfig",
	"/usr/sbin/grub-probe",
	"/usr/sbin/grub-install",
}

// divertScript diverts each boot hook binary with dpkg-divert --local
// --rename (so a package that ships it later installs it under the diverted
// name) and puts a no-op in its place. Idempotent. Runs inside the tree.
func divertScript() string {
	var b strings.Builder
	b.WriteString("set -eu\n")
	b.WriteString("for f in " + strings.Join(bootHookBinaries, " ") + "; do\n")
	b.WriteString(`  if [ "$(dpkg-divert --truename "$f")" = "$f` + DivertSuffix + `" ]; then continue; fi
  dpkg-divert --quiet --local --rename --divert "$f` + DivertSuffix + `" --add "$f"
  printf '#!/bin/sh\n# bake: %s does nothing while the image is built (see rootfs.DivertBootHooks); sysprep restores it.\nexit 0\n' "$f" > "$f"
  chmod 0755 "$f"
done
`)
	return b.String()
}

// noopMarker identifies the no-op scripts divertScript writes.
const noopMarker = "# bake: "

// DivertBootHooks neutralises the boot hook binaries in a tree that already
// has packages (a cloud image base), before packages that trigger them are
// installed. Bootstrap does the same through an mmdebstrap essential hook.
func DivertBootHooks(ctx context.Context, ch *Chroot) error {
	return ch.Run(ctx, "/bin/sh", "-c", divertScript())
}

// Bootstrap makes a Debian root tree at o.Tree with mmdebstrap (root mode,
// directory format).
//
// Sources: BuildMirror if set, else Mirror, else the build host's own Debian
// apt sources mapped onto o.Suite (apt.MapHostSources): bake never names a
// mirror host of its own. Afterwards the image's apt sources name only
// o.Mirror (debian.sources, deb822) and no build-only source, proxy or host
// file (resolv.conf, hostname) remains.
//
// Warm builds: with CacheDir, the .debs of earlier builds are synced into
// the tree's apt archive before the download (a setup hook), apt finds
// them there and fetches only what is missing (download/empty is skipped so
// they stay until the customize hook syncs them back out to CacheDir), so a
// second build downloads nothing but the indexes. mmdebstrap's cleanup then
// empties the tree's cache.
func Bootstrap(ctx context.Context, o BootstrapOptions) (err error) {
	if o.Suite == "" || o.Tree == "" {
		return errors.New("bootstrap: suite and tree are required")
	}
	if o.Runner == nil {
		o.Runner = execx.Default
	}
	if o.Variant == "" {
		o.Variant = "minbase"
	}
	if len(o.Components) == 0 {
		o.Components = []string{"main"}
	}
	if ents, err := os.ReadDir(o.Tree); err == nil && len(ents) > 0 {
		return fmt.Errorf("bootstrap: %s is not empty", o.Tree)
	}
	// mmdebstrap accepts an existing empty directory; making it here
	// gives it the usual root directory mode.
	if err := os.MkdirAll(o.Tree, 0o755); err != nil {
		return err
	}
	var sources []string
	switch {
	case o.BuildMirror != "":
		sources = apt.MirrorSources(o.BuildMirror, o.Suite, o.Components)
	case o.Mirror != "":
		sources = apt.MirrorSources(o.Mirror, o.Suite, o.Components)
	default:
		srcs, codename, err := apt.HostSources("/")
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		if sources, err = apt.MapHostSources(codename, o.Suite, o.Components, srcs); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}

	if o.TreeCache != "" {
		tc, err := openTreeCache(ctx, o, sources)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			o.note("bootstrap: tree cache not used: %v", err)
			return bootstrap(ctx, o, sources)
		}
		defer tc.unlock()
		if tc.hit() {
			t0 := time.Now()
			err := tc.restore(ctx, o.Runner, o.Tree)
			if err == nil {
				o.note("bootstrap: copied the cached tree %s (%s)", tc.key[:16], time.Since(t0).Round(100*time.Millisecond))
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A cache entry that cannot be copied is dropped and the tree
			// made afresh.
			o.note("bootstrap: the cached tree %s could not be copied (%v): dropped it", tc.key[:16], err)
			tc.drop()
			if err := emptyDir(o.Tree); err != nil {
				return fmt.Errorf("bootstrap: %w", err)
			}
		}
		if err := bootstrap(ctx, o, sources); err != nil {
			return err
		}
		if err := tc.store(ctx, o.Runner, o.Tree); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			o.note("bootstrap: tree not cached: %v", err)
		} else {
			o.note("bootstrap: cached the tree as %s", tc.key[:16])
		}
		return nil
	}
	return bootstrap(ctx, o, sources)
}

func (o BootstrapOptions) note(format string, args ...any) {
	if o.Notes != nil {
		fmt.Fprintf(o.Notes, format+"\n", args...)
	}
}

// emptyDir removes what is in dir (a tree being made: nothing is mounted
// below it yet), keeping dir.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := mounts.RemoveAllSafe(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// bootstrap runs mmdebstrap into o.Tree and finishes the tree.
func bootstrap(ctx context.Context, o BootstrapOptions, sources []string) (err error) {
	// Bootstrap's own temp dir sits beside the tree (in a build, in its
	// work dir), never in the host's /tmp: a build killed with SIGKILL
	// cannot remove it, and there the next build removes the whole work
	// dir. Named after its owner, it is swept here too when another
	// caller's process died.
	parent := filepath.Dir(filepath.Clean(o.Tree))
	sweep.Sweep{Dir: parent, Prefix: bootstrapTempPrefix}.Run()
	tmp, err := sweep.MkdirTemp(parent, bootstrapTempPrefix)
	if err != nil {
		return err
	}
	defer mounts.RemoveAllSafe(tmp)
	// The essential hook runs after the essential packages are unpacked
	// and configured and before o.Packages (kernel, GRUB) are installed,
	// so their maintainer scripts already meet the no-op boot hooks.
	hook := filepath.Join(tmp, "divert-boot-hooks")
	script := "#!/bin/sh\nset -eu\nchroot \"$1\" /bin/sh -s <<'BAKE_EOF'\n" + divertScript() + "BAKE_EOF\n"
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		return err
	}

	args := []string{
		"--mode=root",
		"--format=directory",
		"--variant=" + o.Variant,
		"--components=" + strings.Join(o.Components, ","),
		"--essential-hook=" + hook,
		// dpkg fsyncs every file it unpacks; a build interrupted halfway
		// is thrown away anyway, so that safety only costs time.
		// mmdebstrap writes this to dpkg.cfg.d/99mmdebstrap, removed
		// below.
		"--dpkgopt=force-unsafe-io",
	}
	if pkgs := dedupe(o.Packages); len(pkgs) > 0 {
		args = append(args, "--include="+strings.Join(pkgs, ","))
	}
	// Build-only apt settings (the host's proxy) go to 99mmdebstrap,
	// which is removed below.
	for _, opt := range apt.HostProxies(ctx, o.Runner) {
		k, v, _ := strings.Cut(opt, "=")
		args = append(args, fmt.Sprintf("--aptopt=%s %q", k, v))
	}
	if o.CacheDir != "" {
		cache, aerr := filepath.Abs(o.CacheDir)
		if aerr != nil {
			return aerr
		}
		if strings.ContainsAny(cache, " \t\n'\"\\") {
			return fmt.Errorf("bootstrap: cache dir %q: mmdebstrap's sync hooks cannot take a path with spaces or quotes", cache)
		}
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return err
		}
		// Other builds share the cache: copy in from a snapshot, sync out
		// into a directory of this build's (see debcache.go).
		snap, serr := debCacheSnapshot(cache)
		if serr != nil {
			return fmt.Errorf("bootstrap: %w", serr)
		}
		defer os.RemoveAll(snap)
		incoming, ierr := debCacheIncoming(cache)
		if ierr != nil {
			return fmt.Errorf("bootstrap: %w", ierr)
		}
		// Even after a failure: what was fetched is good.
		defer func() {
			if _, perr := publishDebs(incoming, cache); perr != nil && err == nil {
				err = fmt.Errorf("bootstrap: %w", perr)
			}
		}()
		args = append(args,
			"--skip=download/empty",
			`--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
			"--setup-hook="+debCacheCopyInHook(snap),
			"--customize-hook=sync-out /var/cache/apt/archives "+incoming,
		)
	}
	args = append(args, o.Suite, o.Tree)
	args = append(args, sources...)
	// TMPDIR: mmdebstrap's main process makes mmdebstrap.gpghome.XXXX
	// there while it reads its options (to check the suite's keyring) and
	// removes it only when it exits normally (File::Temp's CLEANUP runs at
	// exit). Killed, it leaves it: by SIGKILL, and by the SIGTERM of an
	// interrupted build too, which its main process ignores while it waits
	// for its setup child, until the runner's grace time ends in SIGKILL.
	// So it goes into bake's own temp dir, never the host's /tmp.
	// (mmdebstrap points TMPDIR into the tree itself for what follows.)
	cmd := execx.Cmd{Name: "mmdebstrap", Args: args, Stdout: o.Log, Stderr: o.Log, Env: []string{"TMPDIR=" + tmp}}
	if err := o.Runner.Run(ctx, cmd); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return finishBootstrap(o)
}

// finishBootstrap replaces what mmdebstrap leaves for the build with what
// the image should have.
func finishBootstrap(o BootstrapOptions) error {
	root, err := safepath.Open(o.Tree)
	if err != nil {
		return err
	}
	defer root.Close()
	// The sources mmdebstrap used (possibly the build mirror or the
	// host's) are build-only.
	if err := root.Remove("/etc/apt/sources.list"); err != nil {
		return err
	}
	if o.Mirror != "" {
		if err := root.WriteFile("/etc/apt/sources.list.d/debian.sources",
			[]byte(apt.DebianSourcesFile(o.Mirror, o.Suite, o.Components)), 0o644, rootUID, rootGID); err != nil {
			return err
		}
	}
	// --aptopt settings (proxies) and --dpkgopt settings live here.
	for _, f := range []string{"/etc/apt/apt.conf.d/99mmdebstrap", "/etc/dpkg/dpkg.cfg.d/99mmdebstrap"} {
		if err := root.Remove(f); err != nil {
			return err
		}
	}
	// mmdebstrap copies the host's resolv.conf and hostname. A symlink
	// (systemd-resolved's stub) belongs to the image and stays.
	if st, err := root.Lstat("/etc/resolv.conf"); err == nil && st.Mode&0o170000 == 0o100000 {
		if err := root.Remove("/etc/resolv.conf"); err != nil {
			return err
		}
	}
	return root.WriteFile("/etc/hostname", []byte("localhost\n"), 0o644, rootUID, rootGID)
}

func dedupe(in []string) []string {
	var out []string
	for _, s := range in {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
