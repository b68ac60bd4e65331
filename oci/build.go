package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/sweep"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// BuildSpec describes an image built from pinned inputs: a Debian base, a
// Node runtime and one npm application. The same spec (and the same
// Debian archive state: pin Mirror to snapshot.debian.org for that) gives
// the same image digest.
type BuildSpec struct {
	Name   string // image name, for labels and logs (e.g. openclaw-gateway)
	Debian DebianLayer
	Node   NodeRuntime
	App    NpmApp

	// User is the image's default user, "UID:GID" (default "1000:1000",
	// named "node" in /etc/passwd). The image works under any other uid:
	// everything it ships is root-owned and world-readable, and HOME and
	// the WritableDirs are world-writable with the sticky bit.
	User string
	// Home is HOME in the image (default /home/node); it is world-writable
	// (mode 1777) so that an arbitrary uid can keep state under it.
	Home string
	// WritableDirs are created with mode 1777 (e.g. /home/node/.openclaw,
	// where the runtime mounts the app's state and config).
	WritableDirs []string

	WorkDir      string   // default Home
	Entrypoint   []string // default ["/usr/bin/tini", "--", <the app's executable>]
	Cmd          []string
	Env          []string // added after PATH, HOME, NODE_ENV=production
	ExposedPorts []string // "18789/tcp"
	Labels       map[string]string
	Healthcheck  *v1.HealthConfig

	// SourceDateEpoch is every file's mtime and the image's creation time.
	SourceDateEpoch int64
	// CacheDir keeps layers by the hash of their inputs; the returned
	// image reads its layers from here, so it must outlive the image.
	// Default: the user's cache dir + /bake/oci.
	CacheDir string
	// DownloadDir keeps what was fetched (npm's cache, the Node tarball,
	// .debs); default CacheDir/downloads. Two builds with separate
	// CacheDirs may share it: everything in it is checked by hash.
	DownloadDir string

	// CompileCache, when set, warms Node's compile cache at build time
	// into a fourth layer, and sets NODE_COMPILE_CACHE to it.
	CompileCache *CompileCache
}

// LayerInfo describes one layer of a built image.
type LayerInfo struct {
	Name             string `json:"name"` // debian, node, app
	Digest           string `json:"digest"`
	DiffID           string `json:"diff_id"`
	Size             int64  `json:"size"`
	UncompressedSize int64  `json:"uncompressed_size"`
}

// BuildInfo is what the build manifest records about a built image.
type BuildInfo struct {
	Name   string `json:"name"`
	Digest string `json:"digest"` // sha256:... of the manifest
	// ImageID is the digest of the config: what `docker load` and
	// `docker inspect` report for the image (they do not keep the
	// manifest).
	ImageID string `json:"image_id"`
	// Size is the manifest, config and compressed layers; Uncompressed
	// the layer tars.
	Size             int64             `json:"size"`
	UncompressedSize int64             `json:"uncompressed_size"`
	Versions         map[string]string `json:"versions"` // debian suite, node, the app
	DebianPackages   []string          `json:"debian_packages"`
	NpmPackages      int               `json:"npm_packages"` // installed in the image
	Npm              string            `json:"npm"`          // npm version that installed the app
	// Patches applied to the app (NAME sha256:SUM, in order), also in the
	// image's label LabelPrefix+"npm.patches".
	Patches      []string          `json:"patches,omitempty"`
	Layers       []LayerInfo       `json:"layers"`
	CompileCache *CompileCacheInfo `json:"compile_cache,omitempty"`
	Duration     time.Duration     `json:"duration_ns"`
}

// Defaults for an image made from an npm app.
const (
	DefaultUser = "1000:1000"
	DefaultHome = "/home/node"
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

type builder struct {
	spec      BuildSpec
	runner    execx.Runner
	log       io.Writer
	cache     layerCache
	downloads string
	user      imageUser
}

func (b *builder) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "oci: "+format+"\n", args...)
}

// tempDirPrefix starts the names of the builder's temp dirs in
// CACHE/tmp: work-PID-KIND-RANDOM (sweep.Pattern), so that a build killed
// before it removed them (they hold whole Debian trees) is told from a
// running one and removeStaleTempDirs removes them at the next build.
const tempDirPrefix = "work-"

// tempDir makes a temp dir for kind ("debian-", "node-", "app-").
func (b *builder) tempDir(kind string) (string, error) {
	d := filepath.Join(b.cache.dir, "tmp")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(d, sweep.Pattern(tempDirPrefix)+kind)
}

// removeStaleTempDirs removes the temp dirs of builds that are gone
// (package sweep's policy), and those named before owners were recorded
// (KIND-RANDOM) once they are older than sweep.DefaultMaxAge.
func removeStaleTempDirs(cacheDir string) {
	d := filepath.Join(cacheDir, "tmp")
	sweep.Sweep{Dir: d, Prefix: tempDirPrefix}.Run()
	for _, kind := range []string{"debian-", "node-", "app-"} {
		sweep.Sweep{Dir: d, Prefix: kind, MaxAge: sweep.DefaultMaxAge}.Run()
	}
}

// Validate checks the spec without touching the network: every problem at
// once.
func (s BuildSpec) Validate() error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	if s.Debian.Suite == "" {
		errs = append(errs, errors.New("debian.suite is required"))
	}
	if _, err := parseVersion(s.Node.Version); err != nil {
		errs = append(errs, fmt.Errorf("node.version: %w", err))
	}
	if !strings.HasPrefix(s.Node.Integrity, "sha512-") {
		errs = append(errs, fmt.Errorf("node.integrity: want the npm dist.integrity (sha512-...), got %q", s.Node.Integrity))
	}
	if err := checkApp(s.App); err != nil {
		errs = append(errs, err)
	}
	if s.App.Lockfile == "" {
		errs = append(errs, errors.New("app.lockfile is required (write it with oci.Lock)"))
	}
	if s.User != "" {
		if _, err := parseUser(s.User, ""); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range append([]string{s.Home, s.WorkDir}, s.WritableDirs...) {
		if d != "" && !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("%q: paths in the image must be absolute", d))
		}
	}
	for _, p := range s.ExposedPorts {
		if _, err := parsePort(p); err != nil {
			errs = append(errs, err)
		}
	}
	if s.SourceDateEpoch < 0 {
		errs = append(errs, errors.New("source date epoch must not be negative"))
	}
	if cc := s.CompileCache; cc != nil {
		if cc.List == "" {
			errs = append(errs, errors.New("compile cache: the list is required (oci.RecordCompileCacheList records it)"))
		}
		if cc.Dir != "" && (!filepath.IsAbs(cc.Dir) || filepath.Clean(cc.Dir) == "/") {
			errs = append(errs, fmt.Errorf("compile cache: dir %q: want an absolute path below /", cc.Dir))
		}
		for _, u := range cc.UIDs {
			if u < 0 {
				errs = append(errs, fmt.Errorf("compile cache: uid %d", u))
			}
		}
	}
	return errors.Join(errs...)
}

func parseUser(s, home string) (imageUser, error) {
	u, g, ok := strings.Cut(s, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return imageUser{}, fmt.Errorf("user %q: want numeric UID:GID (the image must not depend on a name)", s)
	}
	return imageUser{Name: "node", UID: uid, GID: gid, Home: home}, nil
}

func parsePort(p string) (string, error) {
	num, proto, _ := strings.Cut(p, "/")
	if proto == "" {
		proto = "tcp"
	}
	if n, err := strconv.Atoi(num); err != nil || n < 1 || n > 65535 || (proto != "tcp" && proto != "udp") {
		return "", fmt.Errorf("exposed port %q: want PORT[/tcp|/udp]", p)
	}
	return num + "/" + proto, nil
}

func (s *BuildSpec) setDefaults() error {
	if s.User == "" {
		s.User = DefaultUser
	}
	if s.Home == "" {
		s.Home = DefaultHome
	}
	if s.WorkDir == "" {
		s.WorkDir = s.Home
	}
	if s.CacheDir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("no cache dir: %w", err)
		}
		s.CacheDir = filepath.Join(d, "bake", "oci")
	}
	if s.DownloadDir == "" {
		s.DownloadDir = filepath.Join(s.CacheDir, "downloads")
	}
	var err error
	if s.CacheDir, err = filepath.Abs(s.CacheDir); err != nil {
		return err
	}
	s.DownloadDir, err = filepath.Abs(s.DownloadDir)
	if cc := s.CompileCache; cc != nil {
		c := *cc
		if c.Dir == "" {
			c.Dir = DefaultCompileCacheDir
		}
		c.Dir = filepath.Clean(c.Dir)
		c.UIDs = slices.Clone(c.UIDs)
		s.CompileCache = &c
	}
	return err
}

// Build makes the image described by spec. Layers (Debian base, Node, app)
// are taken from spec.CacheDir when their inputs have not changed. Before
// anything slow runs, it checks what can fail cheaply: the lockfile pins
// the app's version, the app's engines.node accepts the Node version, and
// the Node tarball exists and matches its integrity. Command output and
// progress go to log.
func Build(ctx context.Context, spec BuildSpec, runner execx.Runner, log io.Writer) (v1.Image, BuildInfo, error) {
	start := time.Now()
	var info BuildInfo
	if err := spec.Validate(); err != nil {
		return nil, info, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	if err := spec.setDefaults(); err != nil {
		return nil, info, err
	}
	if runner == nil {
		runner = execx.Default
	}
	if log == nil {
		log = io.Discard
	}
	user, err := parseUser(spec.User, spec.Home)
	if err != nil {
		return nil, info, err
	}
	b := &builder{spec: spec, runner: runner, log: &syncWriter{w: log}, cache: layerCache{dir: spec.CacheDir},
		downloads: spec.DownloadDir, user: user}
	removeStaleTempDirs(spec.CacheDir)
	defer os.Remove(filepath.Join(spec.CacheDir, "tmp"))

	// Cheap checks first: a wrong pin fails in seconds, not after the
	// Debian bootstrap.
	lockb, err := os.ReadFile(spec.App.Lockfile)
	if err != nil {
		return nil, info, fmt.Errorf("image %s: %w (write it with oci.Lock)", spec.Name, err)
	}
	al, err := parseLockfile(lockb, spec.App)
	if err != nil {
		return nil, info, fmt.Errorf("image %s: %s: %w", spec.Name, spec.App.Lockfile, err)
	}
	if err := checkEngine(spec.App, al.Engine, spec.Node.Version); err != nil {
		return nil, info, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	patches, err := readPatches(spec.App.Patches)
	if err != nil {
		return nil, info, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	if len(spec.Entrypoint) == 0 && len(al.Bin) != 1 {
		return nil, info, fmt.Errorf("image %s: %s has %d executables; set the entrypoint", spec.Name, spec.App.spec(), len(al.Bin))
	}
	var (
		ccList  []byte
		ccMods  compileCacheList
		ccLayer = spec.CompileCache != nil && compileCacheSupported()
	)
	if cc := spec.CompileCache; cc != nil {
		if len(cc.UIDs) == 0 {
			cc.UIDs = []int{user.UID}
		}
		slices.Sort(cc.UIDs)
		cc.UIDs = slices.Compact(cc.UIDs)
		if ccList, err = os.ReadFile(cc.List); err != nil {
			return nil, info, fmt.Errorf("image %s: compile cache: %w (oci.RecordCompileCacheList records it)", spec.Name, err)
		}
		if ccMods, err = parseCompileCacheList(ccList, spec.App); err != nil {
			return nil, info, fmt.Errorf("image %s: compile cache list %s: %w", spec.Name, cc.List, err)
		}
		if !ccLayer {
			b.logf("compile cache: not warmed: it runs the image's linux/amd64 Node, this is %s/%s", runtime.GOOS, runtime.GOARCH)
		}
	}
	nodeLF, err := b.nodeLayer(ctx)
	if err != nil {
		return nil, info, fmt.Errorf("image %s: %w", spec.Name, err)
	}

	// The Debian bootstrap and npm ci are mostly waiting on the network:
	// run them side by side.
	var (
		debLF, appLF layerFile
		deb          debianInfo
		app          appInfo
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { debLF, deb, err = b.debianLayer(gctx); return })
	g.Go(func() (err error) { appLF, app, err = b.appLayer(gctx, lockb, al, patches); return })
	if err := g.Wait(); err != nil {
		return nil, info, fmt.Errorf("image %s: %w", spec.Name, err)
	}

	versions := map[string]string{
		"debian":         spec.Debian.Suite,
		"node":           spec.Node.Version,
		spec.App.Package: spec.App.Version,
	}
	created := time.Unix(spec.SourceDateEpoch, 0).UTC()
	type namedLayer struct {
		name string
		lf   layerFile
		by   string
	}
	layers := []namedLayer{
		{"debian", debLF, "bake: debian " + spec.Debian.Suite + " essential + " + strings.Join(spec.Debian.packages(), " ")},
		{"node", nodeLF, "bake: node " + spec.Node.Version + " from npm " + spec.Node.spec()},
		{"app", appLF, "bake: npm ci --omit=dev --ignore-scripts " + spec.App.spec()},
	}
	if ccLayer {
		lf, ci, err := b.compileCacheLayer(ctx, []layerFile{debLF, nodeLF, appLF}, ccList, ccMods)
		if err != nil {
			return nil, info, fmt.Errorf("image %s: %w", spec.Name, err)
		}
		info.CompileCache = &ci
		layers = append(layers, namedLayer{"compile-cache", lf,
			fmt.Sprintf("bake: node compile cache of %d modules at %s", ci.Modules, ci.Dir)})
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range layers {
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     fileLayer{l.lf},
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: l.by},
		})
		if err != nil {
			return nil, info, err
		}
		info.Layers = append(info.Layers, LayerInfo{Name: l.name, Digest: l.lf.Digest, DiffID: l.lf.DiffID,
			Size: l.lf.Size, UncompressedSize: l.lf.UncompressedSize})
		info.Size += l.lf.Size
		info.UncompressedSize += l.lf.UncompressedSize
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, info, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = imageConfig(spec, al, created, info.CompileCache != nil, app.Patches)
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, info, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, info, err
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, info, err
	}
	info.ImageID = id.String()
	man, _ := img.RawManifest()
	cfgb, _ := img.RawConfigFile()
	info.Name = spec.Name
	info.Digest = d.String()
	info.Size += int64(len(man) + len(cfgb))
	info.Versions = versions
	info.DebianPackages = deb.Packages
	info.NpmPackages = app.Packages
	info.Npm = app.Npm
	info.Patches = app.Patches
	info.Duration = time.Since(start)
	b.logf("image %s: %s (%s compressed, %s uncompressed) in %s", spec.Name, info.Digest,
		humanSize(info.Size), humanSize(info.UncompressedSize), info.Duration.Round(time.Second))
	return img, info, nil
}

// LabelPrefix starts the labels bake adds besides the OCI ones.
const LabelPrefix = "io.github.bakeimg."

// imageEnv is the image's environment, without NODE_COMPILE_CACHE.
func imageEnv(spec BuildSpec) []string {
	return append([]string{
		"PATH=" + defaultPath,
		"HOME=" + spec.Home,
		"NODE_ENV=production",
	}, spec.Env...)
}

func imageConfig(spec BuildSpec, al appLock, created time.Time, compileCache bool, patches []string) v1.Config {
	env := imageEnv(spec)
	if compileCache {
		env = append(env, "NODE_COMPILE_CACHE="+spec.CompileCache.Dir)
	}
	c := v1.Config{
		User:        spec.User,
		WorkingDir:  spec.WorkDir,
		Env:         env,
		Entrypoint:  spec.Entrypoint,
		Cmd:         spec.Cmd,
		Healthcheck: spec.Healthcheck,
		StopSignal:  "SIGTERM",
	}
	if len(c.Entrypoint) == 0 {
		for name := range al.Bin {
			c.Entrypoint = []string{"/usr/bin/tini", "--", name}
		}
	}
	if len(spec.ExposedPorts) > 0 {
		c.ExposedPorts = map[string]struct{}{}
		for _, p := range spec.ExposedPorts {
			pp, _ := parsePort(p)
			c.ExposedPorts[pp] = struct{}{}
		}
	}
	c.Labels = map[string]string{
		"org.opencontainers.image.title":   spec.Name,
		"org.opencontainers.image.version": spec.App.Version,
		"org.opencontainers.image.created": created.Format(time.RFC3339),
		LabelPrefix + "npm.package":        spec.App.Package,
		LabelPrefix + "npm.version":        spec.App.Version,
		LabelPrefix + "node.version":       spec.Node.Version,
		LabelPrefix + "debian.suite":       spec.Debian.Suite,
	}
	if len(patches) > 0 {
		// What bake changed in the app as npm installed it.
		c.Labels[LabelPrefix+"npm.patches"] = strings.Join(patches, ", ")
	}
	for k, v := range spec.Labels {
		c.Labels[k] = v
	}
	return c
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// syncWriter serialises writes from the layers built side by side.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
