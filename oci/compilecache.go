package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/safepath"
	"github.com/bakeimg/bake/internal/sourcedate"
	"github.com/klauspost/compress/gzip"
)

// CompileCache warms Node's compile cache when the image is built, so that
// the app's first start finds it (see compileCacheLayer for how, and
// DefaultCompileCacheDir for where it goes and why).
//
// What Node's compile cache holds, and so what this saves: for each module,
// V8's code cache made right after the module was compiled, before it ran:
// its parse and the bytecode of the functions V8 compiles eagerly. Functions
// compiled lazily when they first run are not in it. For the OpenClaw
// gateway that is about a fifth of the CPU time of a start and of a
// `gateway health` call (BENCHMARKS.md).
type CompileCache struct {
	// List names the modules to compile, one "esm URL" or "cjs PATH" a
	// line, in the order they are compiled, after a line "app
	// PACKAGE@VERSION" that must match the spec's app. It is recorded by
	// running the app (RecordCompileCacheList) and kept beside the lockfile.
	List string
	// Dir is where the cache goes in the image, and NODE_COMPILE_CACHE in
	// the image config. Default DefaultCompileCacheDir.
	Dir string
	// UIDs are the users the cache is laid out for. Node keeps a cache per
	// uid (a directory named VERSION-ARCH-V8TAG-UID) and cannot create one
	// in the read-only Dir, so any other uid runs without it (silently, as
	// without a cache). Default: the image's default uid. The appliance adds
	// the uid it runs the container as.
	UIDs []int
	// Probe, when set, is run once in the sandbox with NODE_COMPILE_CACHE
	// set, to learn which directories below it the app's processes use:
	// OpenClaw's launcher re-roots the cache to
	// $NODE_COMPILE_CACHE/openclaw/VERSION/MTIME-SIZE and starts the real
	// CLI in a child with that. The cache is laid out in each (hard links).
	Probe []string
}

// DefaultCompileCacheDir is where the warmed cache is in the image: next to
// the code it was made from, read-only like it, in a layer of its own.
//
// Why in the image and not in the app's state (the appliance's state volume,
// which bake could seed at build time): the image is then self-contained (a
// new image brings its own cache, and no stale one stays behind in a
// volume); the gateway's state stays state; `docker exec` and the
// healthcheck get it from the image's environment. The price: modules
// beyond the recorded list (loaded later in a gateway's life) are compiled
// again at each start, since Node cannot write here. Node then neither fails
// nor prints anything: it skips writing; nor does it run as a uid the cache
// has no directory for (checkCompileCache, in the oci integration test).
const DefaultCompileCacheDir = "/" + appDir + "/node-compile-cache"

// compileCacheFormat names how the compile cache layer is made (the
// warm-up script, Node's flags, the layout); it is part of the layer's key.
const compileCacheFormat = "bake-node-compile-cache/1"

// compileCacheWrapper is the warm-up's wrapper module (in the sandbox's
// /tmp): its own cache file is left out.
const compileCacheWrapper = "/tmp/bake-warm.mjs"

// sandboxUID runs the warm-up and the recording (nobody:nogroup).
const sandboxUID = 65534

// compileCacheNodeFlags run the warm-up. --expose-internals is a Node
// option (it gives the script the CommonJS loader's wrapSafe); the others
// are V8's, chosen because they leave V8's flag hash in its code cache
// (and so the cache directory's name) as it is for a plain `node`, whose
// caches they must be: --predictable (one thread: no concurrent compiling
// or collecting) and --random-seed (fixes the string hash seed) are left
// out of the hash on purpose, and heap sizes are not in it. A young
// generation of 512 MiB lets the whole warm-up run without a full garbage
// collection: see compileCacheLayer on determinism.
var compileCacheNodeFlags = []string{"--expose-internals", "--predictable", "--random-seed=1",
	"--max-semi-space-size=512", "--min-semi-space-size=512"}

//go:embed compilecache.cjs
var compileCacheScript []byte

// cacheModule is one module of a compile cache list.
type cacheModule struct {
	ESM  bool   // else CommonJS
	Name string // the URL of an ES module, the path of a CommonJS one
}

func (m cacheModule) String() string {
	if m.ESM {
		return "esm " + m.Name
	}
	return "cjs " + m.Name
}

// key is the name of the module's file in Node's cache directory: the
// CRC-32 of its type (CachedCodeType: 0 CommonJS, 1 ESM, one byte) followed
// by its URL or path (src/compile_cache.cc, GetCacheKey).
func (m cacheModule) key() string {
	t := byte(0)
	if m.ESM {
		t = 1
	}
	c := crc32.Update(crc32.ChecksumIEEE([]byte{t}), crc32.IEEETable, []byte(m.Name))
	return fmt.Sprintf("%08x", c)
}

// path is the module's file in the image.
func (m cacheModule) path() (string, error) {
	if !m.ESM {
		return m.Name, nil
	}
	u, err := url.Parse(m.Name)
	if err != nil || u.Scheme != "file" || u.Host != "" {
		return "", fmt.Errorf("%q is not a file: URL", m.Name)
	}
	return u.Path, nil
}

// compileCacheList is a parsed list file.
type compileCacheList struct {
	App     string
	Modules []cacheModule
}

// parseCompileCacheList reads a list and checks it was recorded for app: a
// lockfile bumped without a new list is an error, not a build that quietly
// warms nothing.
func parseCompileCacheList(b []byte, app NpmApp) (compileCacheList, error) {
	var l compileCacheList
	seen := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, name, _ := strings.Cut(line, " ")
		bad := func(why string) error { return fmt.Errorf("line %d: %s: %q", i+1, why, line) }
		switch kind {
		case "app":
			if l.App != "" {
				return l, bad("a second app line")
			}
			l.App = name
			continue
		case "esm", "cjs":
		default:
			return l, bad(`want "app", "esm" or "cjs"`)
		}
		m := cacheModule{ESM: kind == "esm", Name: name}
		p, err := m.path()
		if err != nil {
			return l, bad(err.Error())
		}
		if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsAny(name, "\x00\r\t") {
			return l, bad("want a clean absolute path")
		}
		if seen[m.String()] {
			return l, bad("listed twice")
		}
		seen[m.String()] = true
		l.Modules = append(l.Modules, m)
	}
	if l.App != app.spec() {
		return l, fmt.Errorf("it was recorded for %q, the image has %s: record it again (oci.RecordCompileCacheList)", l.App, app.spec())
	}
	if len(l.Modules) == 0 {
		return l, errors.New("it names no module")
	}
	return l, nil
}

// formatCompileCacheList writes a list file.
func formatCompileCacheList(app NpmApp, mods []cacheModule) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Node's compile cache, warmed when the image is built (package oci,
# compilecache.go): the modules %s compiles when its gateway
# starts and answers `+"`openclaw gateway health`"+`, and its state workers
# (oci/record.go, openClawWorkers), sorted (the warm-up compiles them in this
# order). Recorded by running them, not by hand:
#   go test -tags integration -run TestRecordCompileCacheList ./oci -args -oci.relist
app %s
`, app.spec(), app.spec())
	for _, m := range mods {
		b.WriteString(m.String() + "\n")
	}
	return b.Bytes()
}

// CompileCacheInfo is what the build manifest records about the cache.
type CompileCacheInfo struct {
	Dir     string   `json:"dir"`
	Modules int      `json:"modules"` // the listed ones and their imports
	Bytes   int64    `json:"bytes"`   // once, not per uid and directory
	Tag     string   `json:"tag"`     // Node's cache version tag, e.g. v24.21.0-x64-964aae3f
	Scopes  []string `json:"scopes"`
	UIDs    []int    `json:"uids"`
}

type compileCacheInputs struct {
	Format    string
	Layers    []string // diff IDs of the layers below: the tree it runs in
	List      string   // sha256
	Script    string   // sha256
	NodeFlags []string
	Dir       string
	UIDs      []int
	Probe     []string
	Env       []string
	Epoch     int64
}

// compileCacheEnv is the environment the warm-up runs with: the image's,
// minus NODE_COMPILE_CACHE.
func (b *builder) compileCacheEnv() []string {
	var env []string
	for _, e := range imageEnv(b.spec) {
		if !strings.HasPrefix(e, "NODE_COMPILE_CACHE=") {
			env = append(env, e)
		}
	}
	return env
}

// compileCacheLayer warms Node's compile cache for the modules of the
// spec's list and lays it out in a layer of its own.
//
// How: the layers below are extracted into a throwaway tree, and the
// image's own Node runs in it in a sandbox (sandbox: no network, uid 65534,
// read-only tree), twice: the Probe (to learn the directories the app's
// processes use), then compilecache.cjs, which compiles each listed module
// the way Node's loaders do and runs none of them. Its cache files (one
// per module it compiled, named by Node's key: every listed module, which
// is checked, and what they import; not its wrapper's) are laid out,
// root-owned and read-only, in Dir/SCOPE/TAG-UID for every scope the probe
// found and every uid, as hard links to one copy.
//
// Determinism: the cache files are V8's code caches, which hold no time or
// path of the build, and which Node writes as it compiles each module. Two
// things in them are not a function of the sources alone. V8 seeds its
// string hashes at random (--random-seed=1 fixes that). And V8 13.6 copies
// the 4 bytes of padding in each bytecode array's header into the cache
// without ever clearing them (BytecodeArray::clear_padding clears only the
// tail): in memory that was used before they hold what was there, such as
// half of an old pointer, which depends on when the garbage collector ran.
// Measured on the gateway (5895 modules): with Node's default heap, a full
// collection ran twice while compiling and 5454 of the cache files differed
// from those of a run without one; ASLR alone changed one of them between
// two runs. So the warm-up runs where no full collection happens before the
// last module is compiled (a large young generation, everything kept
// reachable, single-threaded), and checks that none did (v8.GCProfiler):
// every bytecode array is then in fresh, zeroed memory. Three runs with
// address-space randomisation gave identical bytes, as did two builds from
// empty caches (TestOpenClawGatewayImage). The files still depend on the
// warm-up's own history (V8 numbers scripts as they are compiled), which
// is why the script, Node's flags and the list are in the layer's key.
func (b *builder) compileCacheLayer(ctx context.Context, lower []layerFile, list []byte, cl compileCacheList) (layerFile, CompileCacheInfo, error) {
	cc := b.spec.CompileCache
	info := CompileCacheInfo{Dir: cc.Dir, UIDs: cc.UIDs}
	listSum := sha256.Sum256(list)
	scriptSum := sha256.Sum256(compileCacheScript)
	in := compileCacheInputs{Format: compileCacheFormat, List: hex.EncodeToString(listSum[:]),
		Script: hex.EncodeToString(scriptSum[:]), NodeFlags: compileCacheNodeFlags, Dir: cc.Dir,
		UIDs: cc.UIDs, Probe: cc.Probe, Env: b.compileCacheEnv(), Epoch: b.spec.SourceDateEpoch}
	for _, l := range lower {
		in.Layers = append(in.Layers, l.DiffID)
	}
	key := cacheKey("compile-cache", in)
	if lf, ok := b.cache.get(key, &info); ok {
		b.logf("compile cache layer: cached %s", lf.Digest)
		return lf, info, nil
	}
	start := time.Now()
	tmp, err := b.tempDir("compile-cache-")
	if err != nil {
		return layerFile{}, info, err
	}
	defer mounts.RemoveAllSafe(tmp)
	tree := filepath.Join(tmp, "root")
	if err := extractLayers(tree, lower, b.spec.SourceDateEpoch); err != nil {
		return layerFile{}, info, fmt.Errorf("compile cache layer: extracting the image: %w", err)
	}
	if err := checkListedModules(tree, cl.Modules); err != nil {
		return layerFile{}, info, fmt.Errorf("compile cache layer: %s: %w", cc.List, err)
	}
	inDir, outDir := filepath.Join(tmp, "in"), filepath.Join(tmp, "out")
	for _, d := range []string{inDir, outDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return layerFile{}, info, err
		}
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(outDir, sandboxUID, sandboxUID); err != nil {
			return layerFile{}, info, err
		}
	}
	var lb bytes.Buffer
	for _, m := range cl.Modules {
		lb.WriteString(m.String() + "\n")
	}
	if err := os.WriteFile(filepath.Join(inDir, "list"), lb.Bytes(), 0o644); err != nil {
		return layerFile{}, info, err
	}
	if err := os.WriteFile(filepath.Join(inDir, "compilecache.cjs"), compileCacheScript, 0o644); err != nil {
		return layerFile{}, info, err
	}
	var guest strings.Builder
	guest.WriteString("set -e\n")
	if len(cc.Probe) > 0 {
		// The probe's own cache (in out/probe) only shows the layout.
		guest.WriteString("NODE_COMPILE_CACHE=/tmp/bake-out/probe " + shellJoin(cc.Probe) + " >/dev/null 2>/tmp/bake-out/probe.log\n")
	}
	guest.WriteString("exec " + shellJoin(append(append([]string{"node"}, compileCacheNodeFlags...),
		"/tmp/bake-in/compilecache.cjs", "/tmp/bake-in/list", "/tmp/bake-out/cache", compileCacheWrapper)) + "\n")
	sb := sandbox{Root: tree, UID: sandboxUID, GID: sandboxUID, Env: b.compileCacheEnv(), Dir: b.spec.WorkDir,
		Tmpfs: []string{b.spec.Home}, Timeout: 10 * time.Minute,
		Binds: []bind{{Host: inDir, Guest: "/tmp/bake-in"}, {Host: outDir, Guest: "/tmp/bake-out", Writable: true}},
		Argv:  []string{"/bin/sh", "-c", guest.String()}}
	b.logf("compile cache layer: compiling %d modules in a sandbox", len(cl.Modules))
	if err := b.runSandbox(ctx, sb); err != nil {
		if pl, _ := os.ReadFile(filepath.Join(outDir, "probe.log")); len(pl) > 0 {
			err = fmt.Errorf("%w\nprobe %q said:\n%s", err, cc.Probe, tail(pl, 4000))
		}
		return layerFile{}, info, fmt.Errorf("compile cache layer: %w", err)
	}
	es, err := b.compileCacheEntries(outDir, cl, &info)
	if err != nil {
		return layerFile{}, info, fmt.Errorf("compile cache layer: %w", err)
	}
	lf, err := b.cache.put(key, es, b.spec.SourceDateEpoch, info)
	if err != nil {
		return layerFile{}, info, fmt.Errorf("compile cache layer: %w", err)
	}
	b.logf("compile cache layer: %d modules, %s, %s in %s", info.Modules, humanSize(info.Bytes), lf.Digest,
		time.Since(start).Round(100*time.Millisecond))
	return lf, info, nil
}

// runSandbox runs the sandbox with the builder's runner, its output (bounded)
// into the build log, and checks that no process of it is left.
func (b *builder) runSandbox(ctx context.Context, sb sandbox) error {
	cmd, err := sb.Cmd()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, sb.Timeout+time.Minute)
	defer cancel()
	out := &limitWriter{w: b.log, n: 256 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	err = b.runner.Run(ctx, cmd)
	if left := sandboxLeftovers(sb.Root); len(left) > 0 {
		return fmt.Errorf("processes %v of the sandbox outlived it", left)
	}
	return err
}

// compileCacheEntries turns the warm-up's output into the layer's entries.
func (b *builder) compileCacheEntries(outDir string, cl compileCacheList, info *CompileCacheInfo) ([]entry, error) {
	cc := b.spec.CompileCache
	suffix := "-" + strconv.Itoa(sandboxUID)
	ents, err := os.ReadDir(filepath.Join(outDir, "cache"))
	if err != nil {
		return nil, err
	}
	if len(ents) != 1 || !ents[0].IsDir() || !strings.HasSuffix(ents[0].Name(), suffix) {
		return nil, fmt.Errorf("Node wrote %d entries into the cache directory, want one directory ending in %s", len(ents), suffix)
	}
	info.Tag = strings.TrimSuffix(ents[0].Name(), suffix)
	src := filepath.Join(outDir, "cache", ents[0].Name())
	// Where the app's processes look: below NODE_COMPILE_CACHE, the
	// directories named TAG-UID in the probe's cache.
	info.Scopes = []string{"."}
	if len(cc.Probe) > 0 {
		info.Scopes = nil
		probe := filepath.Join(outDir, "probe")
		err := filepath.WalkDir(probe, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == info.Tag+suffix {
				rel, _ := filepath.Rel(probe, filepath.Dir(p))
				info.Scopes = append(info.Scopes, filepath.ToSlash(rel))
				return filepath.SkipDir
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("probe %q: %w", cc.Probe, err)
		}
		if len(info.Scopes) == 0 {
			return nil, fmt.Errorf("probe %q made no %s directory below NODE_COMPILE_CACHE: does the app use Node's compile cache?", cc.Probe, info.Tag+suffix)
		}
		slices.Sort(info.Scopes)
	}
	base := strings.TrimPrefix(path.Clean(cc.Dir), "/")
	var es []entry
	dirs := map[string]bool{}
	addDir := func(d string) {
		for ; d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			if d == appDir {
				continue // the app layer's; withParents repeats it
			}
			es = append(es, dirEntry(d, 0o755, 0, 0))
		}
	}
	// Every module the warm-up compiled is kept: the listed ones and what
	// they import (a listed worker's own imports, say); not the wrapper.
	files, err := os.ReadDir(src)
	if err != nil {
		return nil, err
	}
	wrapper := cacheModule{ESM: true, Name: "file://" + compileCacheWrapper}.key()
	have := map[string]bool{}
	for _, f := range files {
		if f.Name() == wrapper || len(f.Name()) != 8 || !f.Type().IsRegular() {
			continue // the wrapper's, or a temporary file of Node's
		}
		have[f.Name()] = true
		p := filepath.Join(src, f.Name())
		st, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		info.Bytes += st.Size()
		var names []string
		for _, s := range info.Scopes {
			for _, uid := range cc.UIDs {
				names = append(names, path.Join(base, s, info.Tag+"-"+strconv.Itoa(uid), f.Name()))
			}
		}
		slices.Sort(names)
		for i, n := range names {
			addDir(path.Dir(n))
			if i == 0 {
				es = append(es, entry{Name: n, Type: tar.TypeReg, Mode: 0o644, Size: st.Size(), Open: opener(p)})
			} else {
				es = append(es, entry{Name: n, Type: tar.TypeLink, Mode: 0o644, Linkname: names[0]})
			}
		}
	}
	info.Modules = len(have)
	var missing []string
	for _, m := range cl.Modules {
		if !have[m.key()] {
			missing = append(missing, m.String())
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("Node cached %d of the %d listed modules; not: %s", len(cl.Modules)-len(missing),
			len(cl.Modules), strings.Join(missing[:min(len(missing), 5)], ", "))
	}
	return withParents(es, b.lowerDir), nil
}

// checkListedModules fails when a listed module is not a file of the tree:
// the list was recorded for another build of the app.
func checkListedModules(tree string, mods []cacheModule) error {
	r, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer r.Close()
	var missing []string
	for _, m := range mods {
		p, _ := m.path()
		st, err := r.Lstat(p)
		if err != nil || st.Mode&0o170000 != 0o100000 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%d of its %d modules are not files of the image (%s): record it again (oci.RecordCompileCacheList)",
			len(missing), len(mods), strings.Join(missing[:min(len(missing), 3)], ", "))
	}
	return nil
}

// extractLayers writes the layers, lowest first, into dir (created), as
// the image's filesystem: owners (when running as root), modes, symlinks,
// and every time set to epoch, as in the layers (writeTar): the app may
// look at them (OpenClaw names its compile cache directory after its
// package.json's mtime). A hard link becomes a copy. Every path resolves
// inside dir (safepath), so a symlink of a lower layer cannot redirect a
// write to the build host.
func extractLayers(dir string, layers []layerFile, epoch int64) error {
	return extractInto(dir, epoch, func(r *safepath.Root) error {
		for _, l := range layers {
			if err := extractLayer(r, l.Path); err != nil {
				return fmt.Errorf("%s: %w", filepath.Base(l.Path), err)
			}
		}
		return nil
	})
}

// extractInto makes dir, runs extract on it (every write resolved inside
// it), and clamps its times to epoch.
func extractInto(dir string, epoch int64, extract func(r *safepath.Root) error) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	r, err := safepath.Open(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := extract(r); err != nil {
		return err
	}
	return sourcedate.ClampTimes(dir, time.Unix(epoch, 0))
}

func extractLayer(r *safepath.Root, blob string) error {
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	defer zr.Close()
	return extractTar(r, zr)
}

// extractTar writes a layer's tar into the tree r.
func extractTar(r *safepath.Root, layer io.Reader) error {
	root := os.Geteuid() == 0
	owner := func(h *tar.Header) (int, int) {
		if root {
			return h.Uid, h.Gid
		}
		return os.Getuid(), os.Getgid()
	}
	type dirMode struct {
		name string
		mode fs.FileMode
	}
	var dirs []dirMode
	tr := tar.NewReader(layer)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name := safepath.Clean(h.Name)
		mode := safepath.FileMode(uint32(h.Mode))
		uid, gid := owner(h)
		switch h.Typeflag {
		case tar.TypeDir:
			// Created writable for now, its mode set once its children are in.
			if err := r.MkdirAll(name, 0o755, uid, gid); err != nil {
				return err
			}
			if err := r.Lchown(name, uid, gid); err != nil {
				return err
			}
			dirs = append(dirs, dirMode{name, mode})
		case tar.TypeReg:
			if err := r.WriteFrom(name, tr, mode, uid, gid); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := r.Symlink(h.Linkname, name, uid, gid); err != nil {
				return err
			}
		case tar.TypeLink:
			src, err := r.Open(safepath.Clean(h.Linkname))
			if err != nil {
				return err
			}
			err = r.WriteFrom(name, src, mode, uid, gid)
			src.Close()
			if err != nil {
				return err
			}
		default:
			// No device nodes or fifos in these layers, and the sandbox
			// makes its own /dev.
		}
	}
	for _, d := range dirs {
		if err := r.Chmod(d.name, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// limitWriter passes on the first n bytes and then says that it cut.
type limitWriter struct {
	w   io.Writer
	n   int64
	cut bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		if !l.cut {
			l.cut = true
			fmt.Fprintf(l.w, "\n[output cut]\n")
		}
		return len(p), nil
	}
	q := p
	if int64(len(q)) > l.n {
		q = q[:l.n]
	}
	l.n -= int64(len(q))
	if _, err := l.w.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// compileCacheSupported: the warm-up runs the image's Node (linux/amd64)
// on the build host, in namespaces only root can make.
func compileCacheSupported() bool { return runtime.GOOS == "linux" && runtime.GOARCH == "amd64" }
