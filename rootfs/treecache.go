package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/apt"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/flock"
	"github.com/bakeimg/bake/internal/sweep"
)

// The bootstrap tree cache (BootstrapOptions.TreeCache, BAKE_CACHE_DIR/
// bootstrap by default) keeps the finished tree of a bootstrap, keyed by
// everything that decides its contents:
//
//   - the options (suite, variant, components, the package list as a set,
//     the image's mirror, the build sources as mmdebstrap gets them),
//   - the boot-hook diversion script and SOURCE_DATE_EPOCH,
//   - mmdebstrap's version,
//   - the digest of each build source's InRelease file, fetched afresh for
//     every build: InRelease carries the hashes of every package index, and
//     the indexes carry the hash of every .deb, so the same InRelease bytes
//     mean the same packages at the same versions. When the archive
//     changes (a point release, a security update), the key changes and
//     the next build bootstraps anew.
//
// A build whose key is cached copies the tree (cp -a: owners, modes,
// hard links, xattrs and device nodes kept) instead of running mmdebstrap:
// about 80 s of dpkg becomes a few seconds of copying. This is mkosi's
// Incremental= cache, with the archive's state in the key so that a cached
// tree is never older than a fresh bootstrap would be. When an InRelease
// cannot be fetched (or a source is not http(s) or a local path), the cache
// is not used and the build bootstraps as usual, saying why in its log.
//
// Builds share the cache: a lock per key means that two builds needing the
// same tree bootstrap it once (the second waits, then copies). An entry is
// made in a staging directory named after the building process and renamed
// into place whole, so an interrupted build never leaves a partial entry;
// staging directories of processes that are gone are removed by the next
// build. The cache keeps the treeCacheKeep most recently used trees.

const (
	// treeCacheVersion changes when what Bootstrap does to a tree changes
	// in a way the other inputs do not show.
	treeCacheVersion = "1"
	// treeCacheKeep is how many trees the cache keeps (each ~0.5-1 GiB).
	treeCacheKeep       = 4
	treeCacheStage      = ".stage-"
	treeCacheInputsFile = "inputs.json"
	// releaseFileMax bounds a fetched InRelease (Debian's is ~150 KiB).
	releaseFileMax = 8 << 20
	releaseTimeout = 60 * time.Second
)

// treeCacheInputs are what a cached tree's key is the digest of; they are
// kept beside the tree (inputs.json) so that a user can see why a key
// changed.
type treeCacheInputs struct {
	Version         string            `json:"version"`
	Mmdebstrap      string            `json:"mmdebstrap"`
	Suite           string            `json:"suite"`
	Variant         string            `json:"variant"`
	Components      []string          `json:"components"`
	Packages        []string          `json:"packages"`
	Mirror          string            `json:"mirror"`
	Sources         []string          `json:"sources"`
	DivertScript    string            `json:"divert_script_sha256"`
	SourceDateEpoch string            `json:"source_date_epoch,omitempty"`
	Releases        map[string]string `json:"releases"` // InRelease URL -> sha256
}

func (in *treeCacheInputs) key() string {
	b, _ := json.Marshal(in) // map keys are sorted: stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// treeCache is one build's use of the cache: its key, held locked.
type treeCache struct {
	dir    string
	key    string
	inputs *treeCacheInputs
	unlock func()
}

func (c *treeCache) entry() string { return filepath.Join(c.dir, c.key) }
func (c *treeCache) tree() string  { return filepath.Join(c.entry(), "tree") }

// openTreeCache works out the key of the tree o describes and takes its
// lock (waiting while another build makes the same tree). It fails when the
// key cannot be known; the caller then bootstraps without the cache.
func openTreeCache(ctx context.Context, o BootstrapOptions, sources []string) (*treeCache, error) {
	dir, err := filepath.Abs(o.TreeCache)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	in := &treeCacheInputs{
		Version:         treeCacheVersion,
		Suite:           o.Suite,
		Variant:         o.Variant,
		Components:      o.Components,
		Packages:        dedupe(o.Packages),
		Mirror:          o.Mirror,
		Sources:         sources,
		SourceDateEpoch: os.Getenv("SOURCE_DATE_EPOCH"),
		Releases:        map[string]string{},
	}
	slices.Sort(in.Packages)
	ds := sha256.Sum256([]byte(divertScript()))
	in.DivertScript = hex.EncodeToString(ds[:])
	out, err := o.Runner.Output(ctx, execx.Cmd{Name: "mmdebstrap", Args: []string{"--version"}})
	if err != nil {
		return nil, fmt.Errorf("mmdebstrap --version: %w", err)
	}
	in.Mmdebstrap = strings.TrimSpace(string(out))
	proxies := proxyMap(apt.HostProxies(ctx, o.Runner))
	for _, s := range sources {
		u, err := inReleaseURL(s)
		if err != nil {
			return nil, err
		}
		sum, err := fetchDigest(ctx, u, proxies, releaseFileMax)
		if err != nil {
			return nil, fmt.Errorf("the archive's state (%s): %w", u, err)
		}
		in.Releases[u] = sum
	}
	c := &treeCache{dir: dir, key: in.key(), inputs: in}
	removeStaleStages(dir)
	unlock, err := flock.Lock(ctx, filepath.Join(dir, c.key+".lock"))
	if err != nil {
		return nil, err
	}
	c.unlock = unlock
	return c, nil
}

// hit reports whether the key's tree is in the cache, and marks it used.
func (c *treeCache) hit() bool {
	f := filepath.Join(c.entry(), treeCacheInputsFile)
	if _, err := os.Stat(f); err != nil {
		return false
	}
	if st, err := os.Lstat(c.tree()); err != nil || !st.IsDir() {
		return false
	}
	now := time.Now()
	os.Chtimes(f, now, now)
	return true
}

// restore copies the cached tree into tree (an empty directory).
func (c *treeCache) restore(ctx context.Context, r execx.Runner, tree string) error {
	return copyTree(ctx, r, c.tree(), tree)
}

// store copies tree into a staging directory and renames it into place.
func (c *treeCache) store(ctx context.Context, r execx.Runner, tree string) (err error) {
	stage, err := sweep.MkdirTemp(c.dir, treeCacheStage)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(stage) // a copy of a tree: nothing is mounted there
		}
	}()
	dst := filepath.Join(stage, "tree")
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	if err := copyTree(ctx, r, tree, dst); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c.inputs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, treeCacheInputsFile), append(b, '\n'), 0o600); err != nil {
		return err
	}
	// A broken entry (no inputs.json) may be in the way: replace it.
	if _, serr := os.Lstat(c.entry()); serr == nil {
		if err := os.RemoveAll(c.entry()); err != nil {
			return err
		}
	}
	if err := os.Rename(stage, c.entry()); err != nil {
		return err
	}
	c.evict()
	return nil
}

// drop removes the key's entry (a copy out of it failed).
func (c *treeCache) drop() { os.RemoveAll(c.entry()) }

// evict removes the least recently used trees beyond treeCacheKeep; an
// entry another build holds locked is left alone.
func (c *treeCache) evict() {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	type used struct {
		key string
		at  time.Time
	}
	var all []used
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		st, err := os.Stat(filepath.Join(c.dir, e.Name(), treeCacheInputsFile))
		if err != nil {
			continue
		}
		all = append(all, used{e.Name(), st.ModTime()})
	}
	if len(all) <= treeCacheKeep {
		return
	}
	slices.SortFunc(all, func(a, b used) int { return b.at.Compare(a.at) })
	for _, u := range all[treeCacheKeep:] {
		if u.key == c.key {
			continue
		}
		if unlock, ok := tryLock(filepath.Join(c.dir, u.key+".lock")); ok {
			os.RemoveAll(filepath.Join(c.dir, u.key))
			unlock()
		}
	}
}

// tryLock takes path's flock if it is free right now.
func tryLock(path string) (func(), bool) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // flock.Lock tries once before it looks at ctx
	unlock, err := flock.Lock(ctx, path)
	if err != nil {
		return nil, false
	}
	return unlock, true
}

// removeStaleStages removes staging directories whose process is gone
// (package sweep's one policy: the owner's PID in the name, as /proc shows
// it, even from inside bake build's own PID namespace).
func removeStaleStages(dir string) {
	sweep.Sweep{Dir: dir, Prefix: treeCacheStage}.Run()
}

// copyTree copies the contents of src into the existing directory dst
// with everything a root tree needs kept. cp never follows a symlink of
// the tree (-a implies -P).
func copyTree(ctx context.Context, r execx.Runner, src, dst string) error {
	return r.Run(ctx, execx.Cmd{Name: "cp", Args: []string{"-a", "--reflink=auto", "--", src + "/.", dst + "/"}})
}

// inReleaseURL is the InRelease file of a one-line source such as
// "deb [signed-by=K] http://deb.debian.org/debian bookworm main".
func inReleaseURL(source string) (string, error) {
	f := strings.Fields(source)
	if len(f) > 0 && f[0] == "deb" {
		f = f[1:]
	}
	if len(f) > 0 && strings.HasPrefix(f[0], "[") {
		for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
			f = f[1:]
		}
		if len(f) > 0 {
			f = f[1:]
		}
	}
	if len(f) < 2 {
		return "", fmt.Errorf("source %q: no URI and suite", source)
	}
	uri, suite := strings.TrimSuffix(f[0], "/"), f[1]
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("source %q: %w", source, err)
	}
	switch u.Scheme {
	case "http", "https", "file":
	default:
		return "", fmt.Errorf("source %q: the archive's state cannot be read from a %s: URI", source, u.Scheme)
	}
	if strings.HasSuffix(suite, "/") { // a flat repository
		return uri + "/" + strings.TrimPrefix(suite, "/") + "InRelease", nil
	}
	return uri + "/dists/" + suite + "/InRelease", nil
}

// proxyMap maps "http" and "https" to apt's proxy for them
// (apt.HostProxies' Acquire::SCHEME::Proxy=VALUE).
func proxyMap(opts []string) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		k, v, _ := strings.Cut(o, "=")
		scheme := strings.TrimSuffix(strings.TrimPrefix(k, "Acquire::"), "::Proxy")
		if v != "" && !strings.EqualFold(v, "DIRECT") {
			m[scheme] = v
		}
	}
	return m
}

// fetchDigest is the sha256 of what u holds, read through apt's proxy,
// refused above max bytes.
func fetchDigest(ctx context.Context, u string, proxies map[string]string, max int64) (string, error) {
	var body io.Reader
	if p, ok := strings.CutPrefix(u, "file://"); ok {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		defer f.Close()
		body = f
	} else {
		ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
		defer cancel()
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = func(req *http.Request) (*url.URL, error) {
			if p, ok := proxies[req.URL.Scheme]; ok {
				return url.Parse(p)
			}
			return nil, nil
		}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return "", err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		body = resp.Body
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(body, max+1))
	if err != nil {
		return "", err
	}
	if n > max {
		return "", fmt.Errorf("%s is larger than %d bytes", u, max)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
