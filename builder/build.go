package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/claims"
	"github.com/bakeimg/bake/disk"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/rootfs"
)

// Compile turns a validated recipe, with its defaults applied (recipe.Load
// and Parse do both), into a plan. It decides everything a build will do
// (packages bake adds, sizes, identifiers) so `bake plan` shows it before
// any work. It reads the recipe's defaults and parsed values and never
// works them out again.
func Compile(r *recipe.Recipe, opts Options) (*Plan, error) {
	if !r.HasDefaults() {
		return nil, errors.New("recipe " + r.Path + ": its defaults are not applied (load it with recipe.Load or recipe.Parse, or call Validate and Defaults)")
	}
	for _, c := range r.Containers {
		if c.Build != nil {
			if err := checkBuildApp(c.Build); err != nil {
				return nil, fmt.Errorf("container %s: %w", c.Name, err)
			}
		}
	}
	p, err := compile(r, opts)
	if err != nil {
		return nil, err
	}
	// What the stages must leave as it is (modelUnchanged).
	if p.model, err = json.Marshal(p.JSON()); err != nil {
		return nil, err
	}
	return p, nil
}

func compile(r *recipe.Recipe, opts Options) (*Plan, error) {
	p := &Plan{Recipe: r, Opts: opts}
	if r.Base.Image != nil {
		return compileImage(p)
	}
	deb := r.Base.Debian
	if deb == nil {
		return nil, errors.New("recipe has no base")
	}
	bios, uefi := r.Disk.BIOS, r.Disk.UEFI

	// Packages bake adds so the image boots and is a usable machine; the
	// recipe may name its own kernel.
	added := rootfs.BasePackages()
	hasKernel := false
	for _, pk := range append(append([]string{}, deb.Packages...), r.Apt.Packages...) {
		if strings.HasPrefix(pk, "linux-image-") {
			hasKernel = true
		}
	}
	if !hasKernel {
		added = append(added, "linux-image-amd64")
	}
	if bios {
		added = append(added, "grub-pc-bin")
	}
	if uefi {
		added = append(added, "grub-efi-amd64-bin")
	}
	for _, u := range r.Users {
		if u.Sudo != "" {
			added = append(added, "sudo")
		}
	}
	added = append(added, p.appliancePackages()...)
	added = uniqueSorted(added)
	p.Notes = append(p.Notes, "bake adds packages: "+list(added))

	// apt.packages join the bootstrap (one resolver run, faster) unless
	// they may come from a repository the recipe adds later.
	boot := append(append([]string{}, deb.Packages...), added...)
	if len(r.Apt.Repositories) == 0 {
		boot = append(boot, r.Apt.Packages...)
	} else {
		p.chrootPackages = uniqueSorted(r.Apt.Packages)
	}
	p.bootstrapPackages = uniqueSorted(boot)

	fetch := "the build host's apt sources"
	if deb.BuildMirror != "" {
		fetch = deb.BuildMirror + " (build only)"
	} else if deb.Mirror != "" {
		fetch = deb.Mirror
	}
	imageSrc := "none"
	if deb.Mirror != "" {
		imageSrc = deb.Mirror
	}
	add := func(name string, inputs []string, run func(context.Context, *State) error) {
		p.Stages = append(p.Stages, Stage{Name: name, Inputs: inputs, Run: run})
	}
	add("bootstrap", []string{
		"mmdebstrap suite=" + deb.Suite + " variant=" + deb.Variant + " components=" + list(deb.Components),
		"fetch from: " + fetch,
		"image apt source: " + imageSrc,
		"packages: " + list(p.bootstrapPackages),
	}, p.stageBootstrap)
	if len(r.Apt.Repositories) > 0 || len(p.chrootPackages) > 0 {
		var in []string
		for _, repo := range r.Apt.Repositories {
			in = append(in, fmt.Sprintf("repository %s: %s %s %s (key %s)", repo.Name, q(repo.URI), q(repo.Suite), list(repo.Components), q(repo.Key)))
		}
		in = append(in, "packages: "+list(p.chrootPackages))
		add("packages", in, p.stagePackages)
	}
	add("system", []string{"networkd DHCPv4+RA on every ethernet NIC, resolved, timesyncd, grow root at first boot"}, p.stageSystem)
	p.addCustomizeStages(add)
	add("sysprep", []string{"machine-id, host keys, seeds, logs, apt lists and caches, build host settings; clamp times to SOURCE_DATE_EPOCH", "the image's claims for bake verify: " + claims.RecordPath}, p.stageSysprep)
	layout := p.layout()
	size := "content + headroom (decided after sysprep)"
	if r.Disk.Size != "" {
		size = r.Disk.Size
	}
	var fw []string
	if bios {
		fw = append(fw, "bios")
	}
	if uefi {
		fw = append(fw, "uefi")
	}
	add("assemble", []string{
		"GPT: p14 BIOS boot 1MiB, p15 ESP " + r.Disk.ESPSize + ", p1 root ext4 (mkfs.ext4 -d), no loop device",
		"firmware: " + strings.Join(fw, "+") + " (GRUB from the tree's grub-mkimage)",
		"kernel command line: root=UUID=" + layout.RootFSUUID + " ro " + strings.Join(r.Kernel.Args, " "),
		"size: " + size,
		"disk GUID " + layout.DiskGUID + ", root fs UUID " + layout.RootFSUUID,
	}, p.stageAssemble)
	add("outputs", outputsInputs(r), p.stageOutputs)
	return p, nil
}

// compileImage plans a build from a cloud image: fetch and check the base,
// extract its root, run the same steps, and reassemble around the base's
// own boot chain.
func compileImage(p *Plan) (*Plan, error) {
	r := p.Recipe
	im := r.Base.Image
	add := func(name string, inputs []string, run func(context.Context, *State) error) {
		p.Stages = append(p.Stages, Stage{Name: name, Inputs: inputs, Run: run})
	}
	src := im.Path
	if src == "" {
		src = im.URL
	}
	p.chrootPackages = uniqueSorted(append(append([]string{}, r.Apt.Packages...), p.appliancePackages()...))
	add("base-image", []string{
		"image: " + q(src),
		"digest: " + imageDigest(im) + " (checked before anything else)",
		"qcow2 or raw -> sparse raw; refuses backing files, encryption, truncation, no Linux root",
	}, p.stageBaseImage)
	add("extract", []string{"root (and /boot) copied with owners, modes, hard links, device nodes, xattrs (read-only loop mount, ro,noload)"}, p.stageExtract)
	if len(r.Apt.Repositories) > 0 || len(p.chrootPackages) > 0 {
		var in []string
		for _, repo := range r.Apt.Repositories {
			in = append(in, fmt.Sprintf("repository %s: %s %s %s (key %s)", repo.Name, q(repo.URI), q(repo.Suite), list(repo.Components), q(repo.Key)))
		}
		in = append(in, "packages: "+list(p.chrootPackages))
		add("packages", in, p.stagePackages)
	}
	p.addCustomizeStages(add)
	add("sysprep", []string{"machine-id, host keys, seeds, logs, apt lists and caches, build host settings; clamp times to SOURCE_DATE_EPOCH", "the image's claims for bake verify: " + claims.RecordPath}, p.stageSysprep)
	size := "the base's size, or more when the tree needs it"
	if r.Disk.Size != "" {
		size = r.Disk.Size
	}
	add("reassemble", []string{
		"keep the base's GPT, disk and partition GUIDs, MBR boot code, BIOS boot partition, ESP, filesystem UUIDs and labels",
		"rebuild root (and /boot) with mkfs.ext4 -d from the tree; grub.cfg and loader images anew only if the steps changed kernel or GRUB",
		"kernel command line: the base's own" + map[bool]string{true: ", plus (grub.cfg made anew if it lacks one) " + strings.Join(r.Kernel.RecipeArgs, " "), false: ""}[len(r.Kernel.RecipeArgs) > 0],
		"size: " + size,
	}, p.stageReassemble)
	add("outputs", outputsInputs(r), p.stageOutputs)
	return p, nil
}

// addCustomizeStages appends the steps both bases share.
func (p *Plan) addCustomizeStages(add addStage) {
	r := p.Recipe
	if len(r.Groups)+len(r.Users) > 0 {
		var in []string
		for _, g := range r.Groups {
			in = append(in, "group "+g.Name)
		}
		for _, u := range r.Users {
			s := "user " + u.Name
			if u.System {
				s += " (system)"
			}
			if len(u.Groups) > 0 {
				s += " groups=" + strings.Join(u.Groups, ",")
			}
			if u.Sudo != "" {
				s += " sudo=" + u.Sudo
			}
			in = append(in, s)
		}
		add("users", in, p.stageUsers)
	}
	if len(r.Overlays)+len(r.Files) > 0 {
		var in []string
		for _, o := range r.Overlays {
			in = append(in, fmt.Sprintf("overlay %s -> %s", q(o.Source), q(o.Target)))
		}
		for _, f := range r.Files {
			in = append(in, fmt.Sprintf("file %s mode %s", q(f.Path), q(f.Mode)))
		}
		add("files", in, p.stageFiles)
	}
	p.addApplianceStages(add)
	if n := len(r.Systemd.Enable) + len(r.Systemd.Disable) + len(r.Systemd.Mask); n > 0 {
		add("units", []string{
			"enable: " + list(r.Systemd.Enable),
			"disable: " + list(r.Systemd.Disable),
			"mask: " + list(r.Systemd.Mask),
		}, p.stageUnits)
	}
}

// layout derives identifiers from the recipe digest so two builds of one
// recipe agree, then applies the recipe's overrides.
func (p *Plan) layout() disk.Layout {
	r := p.Recipe
	l := disk.DeriveLayout("bake/v1 " + r.Name + " " + r.Digest)
	if r.Disk.DiskGUID != "" {
		l.DiskGUID = r.Disk.DiskGUID
	}
	if r.Disk.RootUUID != "" {
		l.RootFSUUID = r.Disk.RootUUID
	}
	if r.Disk.RootPartUUID != "" {
		l.RootPartUUID = r.Disk.RootPartUUID
	}
	if r.Disk.ESPSerial != "" {
		l.ESPVolumeID = r.Disk.ESPVolumeID
	}
	return l
}

// Build runs the plan of r. It must run as root inside bake's namespaces
// (see RunIsolated).
func Build(ctx context.Context, r *recipe.Recipe, opts Options) (err error) {
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.SourceDateEpoch == 0 {
		opts.SourceDateEpoch = sourceDateEpoch()
	}
	p, err := Compile(r, opts)
	if err != nil {
		return err
	}
	outDir, err := filepath.Abs(opts.OutputDir)
	if err != nil {
		return err
	}
	opts.OutputDir = outDir
	p.Opts = opts
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	if opts.CacheDir != "" {
		if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
			return err
		}
	}
	removeStaleWorkDirs(outDir, opts.Stdout)
	// .bake-work-PID-NAME-RANDOM: the PID (the host's, though the build
	// runs in a PID namespace of its own: sweep.OwnerPID) and the lock
	// below tell a later build whether this one is still running.
	work, err := os.MkdirTemp(outDir, sweep.Pattern(workDirPrefix)+r.Name+"-")
	if err != nil {
		return err
	}
	lock, err := lockDir(work)
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(work, "build.log"))
	if err != nil {
		return err
	}
	s := &State{
		Recipe:  r,
		Opts:    opts,
		Runner:  execx.Host{Log: logf},
		Log:     logf,
		WorkDir: work,
		Tree:    filepath.Join(work, "tree"),
		Started: time.Now(),
	}
	// The work dir goes last, after every mount is undone; RemoveAllSafe
	// refuses to delete anything that still has a mount below it.
	s.Defer("work dir", func() error {
		defer lock.Close()
		if s.Failed && opts.KeepWork {
			fmt.Fprintf(opts.Stdout, "keeping work dir %s\n", work)
			return nil
		}
		if s.Failed {
			saveLog(logf.Name(), opts.CacheDir, r.Name, opts.Stdout)
		}
		logf.Close()
		return mounts.RemoveAllSafe(work)
	})
	fmt.Fprintf(opts.Stdout, "bake %s: building %s from %s\n", Version, r.Name, r.Path)
	err = runStages(ctx, opts.Stdout, p.Stages, s)
	if err == nil {
		fmt.Fprintf(opts.Stdout, "done in %.1fs: %s\n", time.Since(s.Started).Seconds(), strings.Join(s.Files, " "))
	}
	return err
}

func sourceDateEpoch() int64 {
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		var n int64
		if _, err := fmt.Sscanf(v, "%d", &n); err == nil && n > 0 {
			return n
		}
	}
	return time.Now().Unix()
}

func saveLog(path, cacheDir, name string, out io.Writer) {
	if cacheDir == "" {
		return
	}
	dir := filepath.Join(cacheDir, "logs")
	if os.MkdirAll(dir, 0o755) != nil {
		return
	}
	dst := filepath.Join(dir, fmt.Sprintf("%s-%s.log", name, time.Now().Format("20060102-150405")))
	if b, err := os.ReadFile(path); err == nil && os.WriteFile(dst, b, 0o644) == nil {
		fmt.Fprintf(out, "build log: %s\n", dst)
	}
}

// lockDir holds an exclusive flock on DIR/.lock for the life of the build, so
// a later build can tell a stale work dir (its bake was killed) from a live one.
func lockDir(dir string) (*os.File, error) {
	// Locked under a temporary name and renamed: .lock exists only once
	// it is locked, so a .lock that is there and free means its owner
	// has ended (sweep.Sweep.Lock), however long the kernel takes to
	// finish the process (a killed build's PID namespace is torn down
	// after its files are closed).
	tmp := filepath.Join(dir, ".lock.new")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ".lock")); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// workDirPrefix starts the name of a build's work dir in the output dir.
const workDirPrefix = ".bake-work-"

// removeStaleWorkDirs deletes work dirs left by builds that were killed
// (SIGKILL leaves the directory, never a mount: mounts died with the
// namespace), with package sweep's policy: a dir whose lock is held, or
// whose owner's PID runs, belongs to a running build.
func removeStaleWorkDirs(outDir string, out io.Writer) {
	removed, err := sweep.Sweep{Dir: outDir, Prefix: workDirPrefix, Lock: ".lock", MaxAge: sweep.DefaultMaxAge}.Run()
	for _, m := range removed {
		fmt.Fprintf(out, "removed stale work dir %s\n", m)
	}
	if err != nil {
		fmt.Fprintf(out, "warning: %v\n", err)
	}
}

// outputsInputs describes the outputs stage. Formats other than raw and
// qcow2 come from package convert, each proven before it is published.
func outputsInputs(r *recipe.Recipe) []string {
	in := []string{"formats: " + list(r.Outputs)}
	var proven []string
	for _, f := range r.Outputs {
		if f != "raw" && f != "qcow2" {
			proven = append(proven, f)
		}
	}
	if len(proven) > 0 {
		in = append(in, strings.Join(proven, ", ")+": guest bytes compared with the raw image (qemu-img compare), container read back; firmware from the image, Secure Boot off")
	}
	return append(in, "SHA256SUMS, "+r.Name+".manifest.json, atomic rename into the output dir")
}
