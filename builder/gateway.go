package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/oci"
)

// gatewayEpoch is 2026-01-01T00:00:00Z.
const gatewayEpoch int64 = 1767225600

func init() { BuildContainerImage = buildContainerImage }

// buildContainerImage makes a container's image from its recipe build:
// block (issue 6) without a Docker daemon: a minimal Debian layer, Node from
// the npm registry (integrity-checked), the app installed from the
// lockfile kept beside the recipe, and Node's compile cache of the app
// (from the compile cache list beside the lockfile) for the container's
// uid. Layers are deterministic and cached by their inputs in the cache
// dir, so a rebuild is fast and gives the same digest. Today the app must
// be openclaw at the version bake pins (oci.OpenClawVersion); its lockfile
// is the recipe's.
//
//	build:
//	  app: openclaw@2026.9.6
//	  lockfile: openclaw-gateway/package-lock.json
func buildContainerImage(ctx context.Context, s *State, c recipe.Container) (v1.Image, error) {
	if c.Build == nil {
		return nil, fmt.Errorf("container %s has no build", c.Name)
	}
	if err := checkBuildApp(c.Build); err != nil {
		return nil, err
	}
	lock := c.Build.Lockfile
	lockPath, err := s.Recipe.Resolve(lock)
	if err != nil {
		return nil, fmt.Errorf("build.lockfile: %w", err)
	}
	// The image's file times come from SOURCE_DATE_EPOCH when it is set, and
	// otherwise from a fixed date (not the build's start), so the same
	// inputs give the same image digest and the layer cache is reused.
	epoch := gatewayEpoch
	if os.Getenv("SOURCE_DATE_EPOCH") != "" {
		epoch = s.Opts.SourceDateEpoch
	}
	spec := oci.OpenClawGatewaySpec(filepath.Dir(lockPath), epoch)
	spec.App.Lockfile = lockPath
	// The app's patches beside the lockfile (oci.PatchDirName/*.patch):
	// host files too, under the same rule.
	patches, err := oci.ListPatches(filepath.Dir(lockPath))
	if err != nil {
		return nil, fmt.Errorf("build.lockfile: patches: %w", err)
	}
	spec.App.Patches = nil
	for _, p := range patches {
		rel := filepath.Join(filepath.Dir(lock), oci.PatchDirName, filepath.Base(p))
		real, err := s.Recipe.Resolve(rel)
		if err != nil {
			return nil, fmt.Errorf("build.lockfile: patch %s: %w", rel, err)
		}
		spec.App.Patches = append(spec.App.Patches, real)
	}
	// The compile cache list beside the lockfile is a host file too: the
	// same rule (.git, .bakeignore) as every source.
	if cc := spec.CompileCache; cc != nil {
		if _, err := s.Recipe.Resolve(filepath.Join(filepath.Dir(lock), oci.CompileCacheListName)); errors.Is(err, recipe.ErrIgnored) {
			return nil, fmt.Errorf("build.lockfile: %w", err)
		}
	}
	// Node keeps its compile cache per uid, and the image's (warmed at
	// build time, read-only) has a directory for each uid it was made
	// for: the image's own user and the one this container runs as.
	uid, _, err := containerUser(s.Tree, c.User)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", c.User, err)
	}
	imageUID, _, _ := strings.Cut(oci.DefaultUser, ":")
	spec.CompileCache.UIDs = []int{uid}
	if n, err := strconv.Atoi(imageUID); err == nil {
		spec.CompileCache.UIDs = append(spec.CompileCache.UIDs, n)
	}
	if s.Opts.CacheDir != "" {
		spec.CacheDir = filepath.Join(s.Opts.CacheDir, "oci")
		spec.DownloadDir = filepath.Join(s.Opts.CacheDir, "oci-downloads")
	}
	img, info, err := oci.Build(ctx, spec, s.Runner, s.Log)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(s.Opts.Stdout, "      %s: built %s (%d MiB compressed, %s)\n", c.Name, info.Digest, info.Size>>20, info.Duration.Round(100e6))
	return img, nil
}

// checkBuildApp: the app bake can build today (the recipe's validation
// has checked the form; Compile calls this so that bake plan and bake
// build refuse another app before any work).
func checkBuildApp(b *recipe.ContainerBuild) error {
	name, version := b.Package()
	if name == "" {
		return fmt.Errorf("build.app %q: write PACKAGE@VERSION, e.g. openclaw@%s", b.App, oci.OpenClawVersion)
	}
	if name != "openclaw" || version != oci.OpenClawVersion {
		return fmt.Errorf("build.app %s: this bake builds openclaw@%s (its Node runtime and lockfile are pinned together); for another app use image: REF@sha256:...", b.App, oci.OpenClawVersion)
	}
	if b.Lockfile == "" {
		return fmt.Errorf("build.lockfile is missing: keep the package-lock.json of %s beside the recipe", b.App)
	}
	return nil
}
