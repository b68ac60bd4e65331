package oci

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/safepath"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// recordScript runs in the sandbox: the gateway as the image starts it, on
// the sandbox's loopback, until it answers; `openclaw gateway health` (the
// probe bake verify runs); `openclaw --help`; then the gateway is stopped.
// Node's COMPILE_CACHE debug output names every module each of them
// compiles. The token is made here and never leaves the sandbox's tmpfs.
const recordScript = `set -eu
out=/tmp/bake-out
tok=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$HOME/.openclaw"
printf '{"gateway":{"mode":"local","bind":"lan","port":%d,"auth":{"mode":"token","token":"%s"},"tailscale":{"mode":"off"}}}\n' "$PORT" "$tok" >"$HOME/.openclaw/openclaw.json"
chmod 600 "$HOME/.openclaw/openclaw.json"
export NODE_COMPILE_CACHE=/tmp/bake-rec NODE_DEBUG_NATIVE=COMPILE_CACHE
"$@" >$out/gateway.out 2>$out/gateway.log &
gw=$!
i=0
until NODE_DEBUG_NATIVE= node -e "fetch('http://127.0.0.1:$PORT/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))" 2>/dev/null; do
	kill -0 $gw 2>/dev/null || { echo "bake: the gateway exited before it answered" >&2; exit 1; }
	i=$((i+1)); [ $i -lt 1200 ] || { echo "bake: no /healthz in 10 minutes" >&2; exit 1; }
	sleep 0.5
done
# The rest of its start (channels, sidecars) loads more, until "ready".
i=0
until grep -q '] ready' $out/gateway.out || [ $i -ge 240 ]; do i=$((i+1)); sleep 0.5; done
openclaw gateway health --url "ws://127.0.0.1:$PORT" --token "$tok" >$out/health.out 2>$out/health.log
grep -q OK $out/health.out || { echo "bake: gateway health did not say OK" >&2; exit 1; }
openclaw --help >/dev/null 2>$out/help.log
kill -TERM $gw
( sleep 30; kill -KILL $gw 2>/dev/null ) &
wait $gw || true
`

// openClawWorkers are added to the modules the recording saw: OpenClaw's
// state workers, entry points of threads the gateway starts under
// conditions a fresh gateway in the sandbox does not reach. In the
// appliance's VM every start ran agent database maintenance, whose
// state-lease heartbeat worker OpenClaw gives 5 seconds to load
// (BENCHMARKS.md); the sandbox's gateway never started it. The warm-up
// compiles what they import with them.
var openClawWorkers = []string{"openclaw/dist/state/*.worker.js"}

// cacheReadRE matches Node's COMPILE_CACHE debug line for a module it
// compiles (src/compile_cache.cc, ReadCacheFile).
var cacheReadRE = regexp.MustCompile(`\[compile cache\] reading cache from \S+ for (ESM|CommonJS) ([^\n]+?)\.\.\.`)

// RecordCompileCacheList writes the compile cache list of the OpenClaw
// gateway image that spec describes (spec.CompileCache.List): it builds the
// image without a compile cache, starts its gateway in the sandbox (the
// same as the warm-up's, with a loopback interface), asks it `openclaw
// gateway health`, stops it, and lists the modules of the app that Node
// compiled, sorted. The list is kept beside the lockfile and, like it,
// recorded again for a new version of the app.
func RecordCompileCacheList(ctx context.Context, spec BuildSpec, runner execx.Runner, log io.Writer) error {
	if spec.CompileCache == nil || spec.CompileCache.List == "" {
		return fmt.Errorf("image %s: no compile cache list to record", spec.Name)
	}
	if !compileCacheSupported() {
		return fmt.Errorf("recording the compile cache list runs the image's linux/amd64 Node")
	}
	listPath := spec.CompileCache.List
	s := spec
	s.CompileCache = nil
	if err := s.setDefaults(); err != nil {
		return err
	}
	if runner == nil {
		runner = execx.Default
	}
	if log == nil {
		log = io.Discard
	}
	img, _, err := Build(ctx, s, runner, log)
	if err != nil {
		return err
	}
	b := &builder{spec: s, runner: runner, log: &syncWriter{w: log}, cache: layerCache{dir: s.CacheDir}}
	tmp, err := b.tempDir("record-")
	if err != nil {
		return err
	}
	defer mounts.RemoveAllSafe(tmp)
	tree := filepath.Join(tmp, "root")
	if err := extractImage(img, tree, s.SourceDateEpoch); err != nil {
		return err
	}
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return err
	}
	if err := os.Chown(out, sandboxUID, sandboxUID); err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	gateway := slices.Clone(cf.Config.Entrypoint)
	if len(gateway) > 2 && gateway[1] == "--" && strings.HasSuffix(gateway[0], "/tini") {
		gateway = gateway[2:]
	}
	gateway = append(gateway, cf.Config.Cmd...)
	sb := sandbox{Root: tree, UID: sandboxUID, GID: sandboxUID, Dir: s.WorkDir,
		Env:   append(b.compileCacheEnv(), fmt.Sprintf("PORT=%d", GatewayPort)),
		Tmpfs: []string{s.Home}, Loopback: true, Timeout: 15 * time.Minute,
		Binds: []bind{{Host: out, Guest: "/tmp/bake-out", Writable: true}},
		Argv:  append([]string{"/bin/sh", "-c", recordScript, "record"}, gateway...)}
	start := time.Now()
	b.logf("compile cache list: running %q and `openclaw gateway health` in a sandbox", gateway)
	if err := b.runSandbox(ctx, sb); err != nil {
		for _, f := range []string{"gateway.out", "gateway.log", "health.out", "health.log"} {
			if t, _ := os.ReadFile(filepath.Join(out, f)); len(t) > 0 {
				err = fmt.Errorf("%w\n%s:\n%s", err, f, tail(t, 3000))
			}
		}
		return fmt.Errorf("compile cache list: %w", err)
	}
	mods, err := recordedModules(tree, out, "/"+appDir+"/")
	if err != nil {
		return err
	}
	if mods, err = addModules(tree, mods, "/"+appDir+"/node_modules", openClawWorkers); err != nil {
		return err
	}
	if err := writeFileAtomic(listPath, formatCompileCacheList(s.App, mods), 0o644); err != nil {
		return err
	}
	b.logf("compile cache list: %d modules in %s (%s)", len(mods), listPath, time.Since(start).Round(time.Second))
	return nil
}

// recordedModules collects the modules below prefix (a directory of the
// image) that the debug logs in out name, that are files of the tree:
// sorted, each once.
func recordedModules(tree, out, prefix string) ([]cacheModule, error) {
	r, err := safepath.Open(tree)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	seen := map[cacheModule]bool{}
	logs, _ := filepath.Glob(filepath.Join(out, "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			return nil, err
		}
		for _, m := range cacheReadRE.FindAllSubmatch(b, -1) {
			cm := cacheModule{ESM: string(m[1]) == "ESM", Name: string(m[2])}
			p, err := cm.path()
			if err != nil || !strings.HasPrefix(p, prefix) {
				continue // [worker eval], data: URLs, ...
			}
			if st, err := r.Lstat(p); err != nil || st.Mode&0o170000 != 0o100000 {
				continue
			}
			seen[cm] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("compile cache list: Node's debug output names no module of %s", prefix)
	}
	mods := make([]cacheModule, 0, len(seen))
	for m := range seen {
		mods = append(mods, m)
	}
	slices.SortFunc(mods, func(a, b cacheModule) int { return strings.Compare(a.String(), b.String()) })
	return mods, nil
}

// addModules adds the files that match patterns (below dir, in the tree)
// to mods as ES modules, sorted: the app's package must be "type":
// "module" for its .js files to be ES modules.
func addModules(tree string, mods []cacheModule, dir string, patterns []string) ([]cacheModule, error) {
	seen := map[cacheModule]bool{}
	for _, m := range mods {
		seen[m] = true
	}
	for _, pat := range patterns {
		pkg, _, _ := strings.Cut(pat, "/")
		var pj struct{ Type string }
		if b, err := os.ReadFile(filepath.Join(tree, dir, pkg, "package.json")); err != nil || json.Unmarshal(b, &pj) != nil || pj.Type != "module" {
			return nil, fmt.Errorf("compile cache list: %s: want a package of ES modules (\"type\": \"module\")", pkg)
		}
		matches, err := filepath.Glob(filepath.Join(tree, dir, pat))
		if err != nil {
			return nil, err
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("compile cache list: no file matches %s", path.Join(dir, pat))
		}
		for _, m := range matches {
			if st, err := os.Lstat(m); err != nil || !st.Mode().IsRegular() {
				continue
			}
			rel, _ := filepath.Rel(tree, m)
			cm := cacheModule{ESM: true, Name: (&url.URL{Scheme: "file", Path: "/" + filepath.ToSlash(rel)}).String()}
			if !seen[cm] {
				seen[cm] = true
				mods = append(mods, cm)
			}
		}
	}
	slices.SortFunc(mods, func(a, b cacheModule) int { return strings.Compare(a.String(), b.String()) })
	return mods, nil
}

// extractImage writes the image's layers into dir (created), as
// extractLayers does (bake's layers: every time is epoch).
func extractImage(img v1.Image, dir string, epoch int64) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	return extractInto(dir, epoch, func(r *safepath.Root) error {
		for i, l := range layers {
			rc, err := l.Uncompressed()
			if err != nil {
				return err
			}
			err = extractTar(r, rc)
			rc.Close()
			if err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
		}
		return nil
	})
}
