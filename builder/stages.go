package builder

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/claims"
	"github.com/bakeimg/bake/convert"
	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/dpkg"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/safepath"
	"github.com/bakeimg/bake/internal/sourcedate"
	"github.com/bakeimg/bake/rootfs"
)

func (p *Plan) stageBootstrap(ctx context.Context, s *State) error {
	deb := p.Recipe.Base.Debian
	cache, trees := "", ""
	if s.Opts.CacheDir != "" {
		cache = filepath.Join(s.Opts.CacheDir, "apt", deb.Suite)
		if !s.Opts.NoBootstrapCache {
			trees = filepath.Join(s.Opts.CacheDir, "bootstrap")
		}
	}
	return rootfs.Bootstrap(ctx, rootfs.BootstrapOptions{
		Suite:       deb.Suite,
		Variant:     deb.Variant,
		Components:  deb.Components,
		Packages:    p.bootstrapPackages,
		Mirror:      deb.Mirror,
		BuildMirror: deb.BuildMirror,
		CacheDir:    cache,
		TreeCache:   trees,
		Notes:       noteWriter{s},
		Tree:        s.Tree,
		Runner:      s.Runner,
	})
}

// noteWriter sends a stage's note lines to the build log and, indented, to
// the progress output.
type noteWriter struct{ s *State }

func (w noteWriter) Write(p []byte) (int, error) {
	w.s.Log.Write(p)
	if w.s.Opts.Stdout != nil {
		w.s.Opts.Stdout.Write(append([]byte("      "), p...))
	}
	return len(p), nil
}

// withChroot opens a chroot of the tree (proc, sys, a private /dev, no
// daemon may start) for one stage and always closes it, so the next stage
// starts with nothing mounted.
func withChroot(ctx context.Context, s *State, fn func(*rootfs.Chroot) error) (err error) {
	ch, err := rootfs.Open(ctx, s.Tree, rootfs.WithRunner(s.Runner))
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ch.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(ch)
}

func (p *Plan) stagePackages(ctx context.Context, s *State) error {
	r := p.Recipe
	if err := p.addRepositories(ctx, s, true); err != nil {
		return err
	}
	if len(p.chrootPackages) == 0 {
		return nil
	}
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		cache := ""
		if s.Opts.CacheDir != "" {
			suite := "image"
			if r.Base.Debian != nil {
				suite = r.Base.Debian.Suite
			}
			cache = filepath.Join(s.Opts.CacheDir, "apt", suite)
		}
		return rootfs.InstallPackages(ctx, ch, p.chrootPackages, cache)
	})
}

// addRepositories writes the recipe's apt repositories into the tree. While
// building (build=true) a repository's build_uri and build_key, when set,
// stand in for its uri and key (a local mirror); sysprep calls it again with
// build=false so the image names the real repository and trusts its key.
func (p *Plan) addRepositories(ctx context.Context, s *State, build bool) error {
	r := p.Recipe
	for _, repo := range r.Apt.Repositories {
		uri, keyRel := repo.URI, repo.Key
		if build && repo.BuildURI != "" {
			uri = repo.BuildURI
			if repo.BuildKey != "" {
				keyRel = repo.BuildKey
			}
		} else if !build && repo.BuildURI == "" {
			continue
		}
		key, err := r.Resolve(keyRel)
		if err != nil {
			return err
		}
		if err := rootfs.AddAptRepository(ctx, s.Tree, rootfs.AptRepository{
			Name: repo.Name, URI: uri, Suite: repo.Suite, Components: repo.Components,
			KeyFile: key, Runner: s.Runner,
		}); err != nil {
			return fmt.Errorf("repository %s: %w", repo.Name, err)
		}
	}
	return nil
}

func (p *Plan) stageSystem(ctx context.Context, s *State) error {
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.BaseSystem(ctx, ch)
	})
}

func (p *Plan) stageUsers(ctx context.Context, s *State) error {
	r := p.Recipe
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		for _, g := range r.Groups {
			if err := rootfs.AddGroup(ctx, ch, g.Name, g.GID, g.System); err != nil {
				return fmt.Errorf("group %s: %w", g.Name, err)
			}
		}
		for _, u := range r.Users {
			if err := rootfs.AddUser(ctx, ch, rootfs.UserOptions{
				Name: u.Name, UID: u.UID, Groups: u.Groups, Shell: u.Shell, Home: u.Home,
				System: u.System, SudoNopasswd: u.Sudo == "nopasswd", AuthorizedKeys: u.SSHAuthorizedKeys,
			}); err != nil {
				return fmt.Errorf("user %s: %w", u.Name, err)
			}
		}
		return nil
	})
}

func (p *Plan) stageFiles(ctx context.Context, s *State) error {
	r := p.Recipe
	// The one rule for what may be read from the context (.git and
	// .bakeignore): Resolve applies it to the paths the recipe names,
	// the overlay walk to every file below them.
	srcs, err := r.Sources()
	if err != nil {
		return err
	}
	for _, o := range r.Overlays {
		src, err := r.Resolve(o.Source)
		if err != nil {
			return err
		}
		uid, gid, err := rootfs.LookupOwner(s.Tree, o.Owner)
		if err != nil {
			return fmt.Errorf("overlay %s: %w", o.Source, err)
		}
		modes := map[string]fs.FileMode{}
		for pat, m := range o.Modes {
			mode, err := recipe.ParseMode(m)
			if err != nil {
				return fmt.Errorf("overlay %s: mode of %s: %w", o.Source, pat, err)
			}
			modes[pat] = mode
		}
		if err := rootfs.CopyOverlay(s.Tree, rootfs.OverlayOptions{
			Source: src, Target: o.Target, UID: uid, GID: gid, Modes: modes, Skip: srcs.Skip,
		}); err != nil {
			return fmt.Errorf("overlay %s: %w", o.Source, err)
		}
	}
	for _, f := range r.Files {
		content := []byte(f.Content)
		if f.Source != "" {
			src, err := r.Resolve(f.Source)
			if err != nil {
				return err
			}
			if content, err = os.ReadFile(src); err != nil {
				return err
			}
		}
		mode, err := recipe.ParseMode(f.Mode)
		if err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
		uid, gid, err := rootfs.LookupOwner(s.Tree, f.Owner)
		if err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
		if err := rootfs.WriteFile(s.Tree, f.Path, content, mode, uid, gid); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	return nil
}

func (p *Plan) stageUnits(ctx context.Context, s *State) error {
	sd := p.Recipe.Systemd
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.Systemd(ctx, ch, sd.Enable, sd.Disable, sd.Mask)
	})
}

func (p *Plan) stageSysprep(ctx context.Context, s *State) error {
	// The manifest reads the package list before sysprep empties apt's
	// lists (dpkg's status stays, but read it while everything is there).
	pkgs, err := dpkg.InstalledPackages(s.Tree)
	if err != nil {
		return err
	}
	s.Manifest = p.newManifest(s)
	for _, pk := range pkgs {
		s.Manifest.Packages = append(s.Manifest.Packages, ManifestPackage{Name: pk.Name, Version: pk.Version, Arch: pk.Arch})
	}
	// Sysprep removes SSH host keys; an image with sshd must make new ones
	// at boot (the ssh section of an appliance recipe brings its own).
	if p.Recipe.SSH == nil {
		if _, err := os.Lstat(filepath.Join(s.Tree, "usr/sbin/sshd")); err == nil {
			if err := writeFiles(s.Tree, appliance.HostKeyFiles()); err != nil {
				return err
			}
		}
	}
	// Build-only mirrors never reach the image.
	if err := p.addRepositories(ctx, s, false); err != nil {
		return err
	}
	if err := rootfs.Sysprep(s.Tree); err != nil {
		return err
	}
	// The image's record of its claims, for bake verify (package claims):
	// derived from the resolved recipe, no secret in it.
	spec, err := claims.FromRecipe(p.Recipe)
	if err != nil {
		return err
	}
	return writeFiles(s.Tree, []appliance.File{{Path: claims.RecordPath, Content: spec.Record(), Mode: 0o644}})
}

func (p *Plan) stageAssemble(ctx context.Context, s *State) error {
	r := p.Recipe
	spec := disk.Spec{
		Tree:            s.Tree,
		Output:          filepath.Join(s.WorkDir, r.Name+".raw"),
		Size:            roundMiB(r.Disk.SizeBytes),
		BIOS:            r.Disk.BIOS,
		UEFI:            r.Disk.UEFI,
		ESPSize:         roundMiB(r.Disk.ESPBytes),
		Layout:          p.layout(),
		KernelCmdline:   strings.Join(r.Kernel.Args, " "),
		SourceDateEpoch: s.Opts.SourceDateEpoch,
		Runner:          s.Runner,
		Log:             s.Log,
	}
	if err := disk.PrepareTree(spec); err != nil {
		return err
	}
	// Times last: everything written into the tree so far, PrepareTree's
	// files included, gets at most SOURCE_DATE_EPOCH.
	if err := sourcedate.ClampTimes(s.Tree, time.Unix(s.Opts.SourceDateEpoch, 0)); err != nil {
		return err
	}
	res, err := disk.Assemble(ctx, spec)
	if err != nil {
		return err
	}
	s.Raw = res.Output
	s.Manifest.Layout = res.Layout
	s.Manifest.TreeBytes = res.TreeBytes
	s.Manifest.diskSize = res.Size
	fmt.Fprintf(s.Opts.Stdout, "      disk %d MiB: root %d MiB, tree %d MiB\n", res.Size>>20, res.RootBlocks*4096>>20, res.TreeBytes>>20)
	return nil
}

func roundMiB(n int64) int64 { return (n + (1<<20 - 1)) &^ (1<<20 - 1) }

func (p *Plan) stageOutputs(ctx context.Context, s *State) error {
	r := p.Recipe
	var outs []ManifestOutput
	var files []string
	wantRaw := false
	// Formats made by package convert, proven there (guest bytes compared
	// with the raw image, the container read back) and already hashed.
	converted := map[string]*convert.Result{}
	for _, f := range r.Outputs {
		switch f {
		case "raw":
			wantRaw = true
		case "qcow2":
			name := r.Name + ".qcow2"
			if err := disk.ConvertQcow2(ctx, s.Runner, s.Raw, filepath.Join(s.WorkDir, name)); err != nil {
				return err
			}
			files = append(files, name)
		default:
			res, err := convert.Convert(ctx, s.Raw, convert.Format(f), p.convertOptions(s))
			if err != nil {
				return err
			}
			converted[res.File] = res
			files = append(files, res.File)
		}
	}
	if wantRaw {
		files = append(files, r.Name+".raw")
	} else {
		// Not an output: free the space before publishing.
		os.Remove(s.Raw)
	}
	for _, name := range files {
		if res, ok := converted[name]; ok {
			o := ManifestOutput{File: name, Format: string(res.Format), SHA256: res.SHA256, Bytes: res.Bytes, VirtualSize: res.VirtualSize}
			if res.Format == convert.VHD {
				// A fixed VHD is as sparse as the raw image it holds.
				if fi, err := os.Stat(filepath.Join(s.WorkDir, name)); err == nil {
					o.AllocatedBytes = allocated(fi)
				}
			}
			outs = append(outs, o)
			continue
		}
		path := filepath.Join(s.WorkDir, name)
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		sum, err := fileSHA256(path)
		if err != nil {
			return err
		}
		o := ManifestOutput{File: name, Format: strings.TrimPrefix(filepath.Ext(name), "."), SHA256: sum, Bytes: fi.Size(), VirtualSize: fi.Size()}
		if o.Format == "qcow2" {
			o.VirtualSize = s.Manifest.diskSize
		} else {
			o.AllocatedBytes = allocated(fi)
		}
		outs = append(outs, o)
	}
	s.Manifest.Outputs = outs
	s.Manifest.Tools = toolVersions(ctx, s.Runner, s.Tree)
	s.Manifest.BuildSeconds = time.Since(s.Started).Round(100 * time.Millisecond).Seconds()
	manifest := r.Name + ".manifest.json"
	if err := writeJSON(filepath.Join(s.WorkDir, manifest), s.Manifest); err != nil {
		return err
	}
	msum, err := fileSHA256(filepath.Join(s.WorkDir, manifest))
	if err != nil {
		return err
	}
	if err := writeSums(s.WorkDir, outs, map[string]string{manifest: msum}); err != nil {
		return err
	}
	// SHA256SUMS goes last: once it is at the output path, the set is whole.
	files = append(files, manifest, "SHA256SUMS")
	if err := p.modelUnchanged(); err != nil {
		return err
	}
	os.Remove(filepath.Join(s.Opts.OutputDir, "SHA256SUMS"))
	if err := publish(s.WorkDir, s.Opts.OutputDir, files); err != nil {
		return err
	}
	for _, f := range files {
		s.Files = append(s.Files, filepath.Join(s.Opts.OutputDir, f))
	}
	return nil
}

// convertOptions are what package convert needs to know of the image: how
// it boots (the OVF records it) and which OS it holds (the OVF's guest
// type), read from the built image's own sources, not assumed.
func (p *Plan) convertOptions(s *State) convert.Options {
	fw := convert.BIOS
	if s.cloud != nil && s.cloud.layout != nil {
		// A cloud base keeps its ESP (or has none).
		if s.cloud.layout.ESP != 0 {
			fw = convert.UEFI
		}
	} else if p.Recipe.Disk.UEFI {
		fw = convert.UEFI
	}
	id, pretty := treeOSRelease(s.Tree)
	return convert.Options{
		Name: p.Recipe.Name, Dir: s.WorkDir, Firmware: fw, OS: id, OSName: pretty,
		SourceDateEpoch: s.Opts.SourceDateEpoch, Runner: s.Runner, Log: noteWriter{s},
	}
}

// treeOSRelease reads ID and PRETTY_NAME from the tree's os-release
// (resolved inside the tree: /etc/os-release is a symlink). Empty when
// there is none.
func treeOSRelease(tree string) (id, pretty string) {
	root, err := safepath.Open(tree)
	if err != nil {
		return "", ""
	}
	defer root.Close()
	b, err := root.ReadFile("etc/os-release")
	if err != nil {
		if b, err = root.ReadFile("usr/lib/os-release"); err != nil {
			return "", ""
		}
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, "\"'")
		switch k {
		case "ID":
			id = v
		case "PRETTY_NAME":
			pretty = v
		}
	}
	return id, pretty
}

func (p *Plan) newManifest(s *State) *Manifest {
	r := p.Recipe
	base := map[string]any{}
	if d := r.Base.Debian; d != nil {
		base["debian"] = map[string]any{"suite": d.Suite, "variant": d.Variant, "mirror": d.Mirror, "packages": p.bootstrapPackages}
	}
	return &Manifest{
		Bake:            Version,
		Recipe:          ManifestRecipe{Name: r.Name, Path: r.Path, SHA256: r.Digest, Variables: r.Vars},
		Base:            base,
		SourceDateEpoch: s.Opts.SourceDateEpoch,
		Packages:        []ManifestPackage{},
		Containers:      s.containerRecords(),
	}
}

func toolVersions(ctx context.Context, run execx.Runner, tree string) map[string]string {
	v := map[string]string{}
	first := func(b []byte) string {
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		return line
	}
	if b, err := run.Output(ctx, execx.Cmd{Name: "mmdebstrap", Args: []string{"--version"}}); err == nil {
		v["mmdebstrap"] = first(b)
	}
	if b, err := run.Output(ctx, execx.Cmd{Name: "qemu-img", Args: []string{"--version"}}); err == nil {
		v["qemu-img"] = first(b)
	}
	if b, err := run.Output(ctx, execx.Cmd{Name: "dpkg-query", Args: []string{"-W", "-f=${Version}", "e2fsprogs"}}); err == nil {
		v["e2fsprogs"] = first(b)
	}
	v["go"] = goVersion()
	return v
}
