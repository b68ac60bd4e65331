package recipe

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// HostPath is a file or folder of the build host that building the recipe
// reads, as an absolute path (resolved through symlinks when it exists).
type HostPath struct {
	What string // recipe, context, overlay, file, apt key, base image, ...
	Path string
}

// HostPaths lists every host path a build of r reads, in recipe order:
// the recipe itself, its context, overlay and file sources, repository
// keys, a local base image, local container images, build lockfiles,
// compile cache lists and app patches, and file: mirrors. `bake plan` prints them so that a reviewer sees what
// a recipe takes from the machine that builds it.
func (r *Recipe) HostPaths() []HostPath {
	var out []HostPath
	add := func(what, p string) {
		if p != "" {
			out = append(out, HostPath{what, p})
		}
	}
	if r.Path != "" {
		if abs, err := filepath.Abs(r.Path); err == nil {
			add("recipe", realOr(abs))
		}
	}
	dir := r.Dir
	if dir == "" {
		dir = "."
	}
	dir, _ = filepath.Abs(dir)
	if root, err := r.contextDir(dir); err == nil {
		add("context", realOr(root))
		// Its .bakeignore (what bake never reads there), when it has one.
		if ig := filepath.Join(realOr(root), IgnoreFile); fileExists(ig) {
			add("ignore file", ig)
		}
	}
	local := func(what, rel string) {
		if rel == "" {
			return
		}
		if filepath.IsAbs(rel) {
			add(what, realOr(filepath.Clean(rel)))
			return
		}
		if real, err := r.Resolve(rel); err == nil {
			add(what, real)
			return
		}
		add(what, filepath.Join(dir, rel))
	}
	fileURL := func(what, s string) {
		if u, err := url.Parse(s); err == nil && u.Scheme == "file" {
			add(what, u.Path)
		}
	}
	if d := r.Base.Debian; d != nil {
		fileURL("mirror", d.Mirror)
		fileURL("build mirror", d.BuildMirror)
	}
	if im := r.Base.Image; im != nil {
		local("base image", im.Path)
	}
	for _, repo := range r.Apt.Repositories {
		fileURL("apt repository "+repo.Name, repo.URI)
		local("apt key "+repo.Name, repo.Key)
		fileURL("apt build repository "+repo.Name, repo.BuildURI)
		local("apt build key "+repo.Name, repo.BuildKey)
	}
	for _, o := range r.Overlays {
		local("overlay", o.Source)
	}
	for _, f := range r.Files {
		local("file", f.Source)
	}
	if t := r.Tailscale; t != nil {
		local("tailscale CA", t.CA)
	}
	for _, c := range r.Containers {
		for _, prefix := range []string{"docker-archive:", "oci-layout:"} {
			rest, ok := strings.CutPrefix(c.Image, prefix)
			if !ok {
				continue
			}
			if i := strings.LastIndex(rest, "@"); i >= 0 {
				rest = rest[:i]
			}
			file := rest
			if _, err := r.Resolve(file); err != nil {
				if i := strings.LastIndex(rest, ":"); i > 0 {
					if _, err2 := r.Resolve(rest[:i]); err2 == nil {
						file = rest[:i]
					}
				}
			}
			local("container image "+c.Name, file)
		}
		if c.Build != nil && c.Build.Lockfile != "" {
			lock := c.Build.Lockfile
			local("lockfile "+c.Name, lock)
			// Beside it, the modules whose compile cache the image gets
			// (oci.CompileCacheListName).
			local("compile cache list "+c.Name, filepath.Join(filepath.Dir(lock), "compile-cache.txt"))
			// And the patches applied to the installed app
			// (oci.PatchDirName/*.patch).
			if real, err := r.Resolve(lock); err == nil {
				ps, _ := filepath.Glob(filepath.Join(filepath.Dir(real), "patches", "*.patch"))
				for _, p := range ps {
					local("app patch "+c.Name, filepath.Join(filepath.Dir(lock), "patches", filepath.Base(p)))
				}
			}
		}
	}
	return out
}

// realOr is p resolved through symlinks, or p when it does not resolve.
func realOr(p string) string {
	if real, err := filepath.EvalSymlinks(p); err == nil {
		return real
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
