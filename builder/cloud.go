package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/sourcedate"
	"github.com/bakeimg/bake/rootfs"
)

// cloudState is what the cloud-image stages share: the base as a sparse raw
// file in the work dir, its layout and its boot chain before the steps.
type cloudState struct {
	raw    string
	layout *cloudimg.Layout
	before cloudimg.BootChain
	digest string
}

func imageSource(im *recipe.ImageBase) cloudimg.Source {
	return cloudimg.Source{Path: im.Path, URL: im.URL, SHA256: im.SHA256, SHA512: im.SHA512}
}

func imageDigest(im *recipe.ImageBase) string {
	if im.SHA512 != "" {
		return "sha512:" + im.SHA512
	}
	return "sha256:" + im.SHA256
}

// stageBaseImage fetches and checks the base before any other work: the
// digest first (a mismatch is refused before the file is parsed), then the
// format (backing files, encryption, truncation) and the layout (a Linux
// root must be there).
func (p *Plan) stageBaseImage(ctx context.Context, s *State) error {
	r := p.Recipe
	im := *r.Base.Image
	if im.Path != "" && !filepath.IsAbs(im.Path) {
		abs, err := r.Resolve(im.Path)
		if err != nil {
			return err
		}
		im.Path = abs
	}
	cache := ""
	if s.Opts.CacheDir != "" {
		cache = filepath.Join(s.Opts.CacheDir, "images")
	}
	// The Image reads the very file descriptor whose digest was checked.
	img, err := cloudimg.FetchOpen(ctx, imageSource(&im), cache, s.Opts.Stdout)
	if err != nil {
		return err
	}
	raw := filepath.Join(s.WorkDir, "base.raw")
	err = cloudimg.ToRaw(ctx, img, raw)
	img.Close()
	if err != nil {
		return err
	}
	layout, err := cloudimg.Inspect(ctx, raw, cloudimg.WithRunner(s.Runner))
	if err != nil {
		return err
	}
	if err := layout.Supported(); err != nil {
		return err
	}
	layout.Print(s.Log)
	s.cloud = &cloudState{raw: raw, layout: layout, digest: imageDigest(&im)}
	return nil
}

func (p *Plan) stageExtract(ctx context.Context, s *State) error {
	if err := cloudimg.Extract(ctx, s.cloud.raw, s.cloud.layout, s.Tree, cloudimg.WithRunner(s.Runner), cloudimg.WithLog(s.Log)); err != nil {
		return err
	}
	before, err := cloudimg.ReadBootChain(s.Tree)
	if err != nil {
		return err
	}
	s.cloud.before = before
	// The base has GRUB and kernel hooks installed; they would probe the
	// build host's disks when a package step triggers them.
	return withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		return rootfs.DivertBootHooks(ctx, ch)
	})
}

// stageReassemble keeps the base's boot chain and identifiers and rebuilds
// root (and /boot) from the tree; grub.cfg and the loader images are made
// anew only when the steps changed the kernel or the boot loader.
func (p *Plan) stageReassemble(ctx context.Context, s *State) error {
	r := p.Recipe
	after, err := cloudimg.ReadBootChain(s.Tree)
	if err != nil {
		return err
	}
	kernel, loader := s.cloud.before.Changes(after)
	// The recipe's kernel.cmdline reaches the kernel only through a
	// grub.cfg that names it: the base's is rewritten when it lacks one of
	// the arguments (as for a new kernel), else a recipe's no_timer_check
	// or console= would be dropped without a word. Only the recipe's own
	// arguments count: bake's DefaultCmdline is for disks it assembles,
	// and a base keeps the console settings its makers chose.
	missing := []string{}
	if extra := r.Kernel.RecipeArgs; len(extra) > 0 {
		cfg, err := safeRead(s.Tree, "boot/grub/grub.cfg")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = missingKernelArgs(cfg, extra)
	}
	if kernel || loader || len(missing) > 0 {
		k := ""
		if nk := s.cloud.before.NewKernels(after); len(nk) == 1 {
			k = nk[0]
		}
		if err := disk.PrepareCloudBoot(disk.CloudBootSpec{
			Tree: s.Tree, Layout: s.cloud.layout, Kernel: k, KernelCmdline: strings.Join(r.Kernel.RecipeArgs, " "),
			SourceDateEpoch: s.Opts.SourceDateEpoch, Log: s.Log,
		}); err != nil {
			return err
		}
		if len(missing) > 0 && !kernel && !loader {
			fmt.Fprintf(s.Opts.Stdout, "      kernel.cmdline adds %s: grub.cfg made anew\n", strings.Join(missing, " "))
		} else {
			fmt.Fprintf(s.Opts.Stdout, "      boot chain changed (kernel %v, loader %v): grub.cfg made anew\n", kernel, loader)
		}
	}
	if err := sourcedate.ClampTimes(s.Tree, time.Unix(s.Opts.SourceDateEpoch, 0)); err != nil {
		return err
	}
	res, err := disk.Reassemble(ctx, disk.ReassembleSpec{
		Base: s.cloud.raw, Layout: s.cloud.layout, Tree: s.Tree,
		Output: filepath.Join(s.WorkDir, r.Name+".raw"), Size: roundMiB(r.Disk.SizeBytes), RebuildBoot: loader,
		SourceDateEpoch: s.Opts.SourceDateEpoch, Runner: s.Runner, Log: s.Log,
	})
	if err != nil {
		return err
	}
	s.Raw = res.Output
	s.Manifest.diskSize = res.Size
	s.Manifest.Layout = s.cloud.layout
	s.Manifest.Base = map[string]any{"image": map[string]any{
		"path": r.Base.Image.Path, "url": r.Base.Image.URL, "digest": s.cloud.digest,
		"kernel_changed": kernel, "loader_rebuilt": loader, "cmdline_added": missing,
	}}
	fmt.Fprintf(s.Opts.Stdout, "      disk %d MiB (identifiers of the base kept)\n", res.Size>>20)
	return nil
}

// missingKernelArgs returns the arguments of want that the first linux
// line of a grub.cfg lacks (all of them when there is none).
func missingKernelArgs(grubCfg string, want []string) []string {
	var have []string
	for _, line := range strings.Split(grubCfg, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "linux" || f[0] == "linuxefi" || f[0] == "linux16") {
			have = f[2:]
			break
		}
	}
	missing := []string{}
	for _, a := range want {
		if !slices.Contains(have, a) {
			missing = append(missing, a)
		}
	}
	return missing
}
