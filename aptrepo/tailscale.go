package aptrepo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/bakeimg/bake/internal/flock"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// DefaultTailscaleVersion is the tailscale.com module version that the
// tests and scripts/tailscale-mirror.sh package: the newest release whose
// go.mod the project's Go (1.26.8) satisfies without a toolchain download
// (v1.102.5 needs go >= 1.26.6; v1.104.x needs 1.27.3).
const DefaultTailscaleVersion = "1.102.5"

// tailscalePackaging is bumped whenever the .deb layout below changes, so
// that cached packages are rebuilt (the cached binaries are kept).
const tailscalePackaging = 1

const tailscaleArch = "amd64"

var versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)

// BuildTailscaleDeb builds tailscale and tailscaled from the tailscale.com
// Go module at version (e.g. "1.102.5" or "v1.102.5", fetched through the Go
// module proxy) with CGO_ENABLED=0, and packages them for linux/amd64 the way
// Tailscale's own .deb is laid out (release/dist/unixpkgs in the module):
//
//	/usr/bin/tailscale
//	/usr/sbin/tailscaled
//	/lib/systemd/system/tailscaled.service           the module's unit, verbatim
//	/lib/systemd/system/tailscale-online.target      (when the module has them)
//	/lib/systemd/system/tailscale-wait-online.service
//	/etc/default/tailscaled                          conffile: PORT="41641", FLAGS=""
//	postinst/prerm/postrm                            the module's release/deb scripts
//
// The postinst enables tailscaled.service with deb-systemd-helper (the
// debhelper way: a symlink in multi-user.target.wants, even in a chroot) and
// starts it only when systemd is running, through deb-systemd-invoke, which
// honours policy-rc.d (exit 101: nothing starts).
//
// Binaries and the .deb are cached under cacheDir, keyed by the version, the
// Go version and the packaging revision; a warm call only copies the cached
// .deb. The .deb is copied to outDir (or, when outDir is "", its cached path
// is returned). Concurrent calls on one cacheDir wait for each other.
func BuildTailscaleDeb(ctx context.Context, version, cacheDir, outDir string) (debPath string, err error) {
	v := strings.TrimPrefix(version, "v")
	if !versionRE.MatchString(v) {
		return "", fmt.Errorf("aptrepo: tailscale version %q: want MAJOR.MINOR.PATCH", version)
	}
	if cacheDir == "" {
		return "", fmt.Errorf("aptrepo: tailscale: a cache directory is required")
	}
	cacheDir, err = filepath.Abs(cacheDir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	goVersion, err := goEnv(ctx, cacheDir, "GOVERSION")
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s-%s-linux-%s", v, goVersion, tailscaleArch)
	entry := filepath.Join(cacheDir, key)
	unlock, err := lockFile(ctx, entry+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()

	name := fmt.Sprintf("tailscale_%s_%s.deb", v, tailscaleArch)
	cached := filepath.Join(entry, fmt.Sprintf("deb-r%d", tailscalePackaging), name)
	if _, err := os.Stat(cached); err != nil {
		if err := buildTailscale(ctx, v, entry, cached); err != nil {
			return "", fmt.Errorf("aptrepo: tailscale %s: %w", v, err)
		}
	}
	if outDir == "" {
		return cached, nil
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	debPath = filepath.Join(outDir, name)
	if err := linkOrCopy(cached, debPath); err != nil {
		return "", err
	}
	return debPath, nil
}

func buildTailscale(ctx context.Context, v, entry, deb string) error {
	mod, err := downloadModule(ctx, filepath.Dir(entry), "tailscale.com@v"+v)
	if err != nil {
		return err
	}
	bin := filepath.Join(entry, "bin")
	if !exists(filepath.Join(bin, "tailscale")) || !exists(filepath.Join(bin, "tailscaled")) {
		tmpBin := bin + ".tmp"
		os.RemoveAll(tmpBin)
		if err := os.MkdirAll(tmpBin, 0o755); err != nil {
			return err
		}
		// As Tailscale's build_dist.sh stamps release builds; without it the
		// binaries call themselves "1.x.y-ERR-BuildInfo" (a module build has no
		// VCS information).
		ldflags := fmt.Sprintf("-X tailscale.com/version.longStamp=%s-gomod -X tailscale.com/version.shortStamp=%s", v, v)
		err := run(ctx, execx.Cmd{
			Name: "go",
			Args: []string{"install", "-trimpath", "-ldflags=" + ldflags,
				"tailscale.com/cmd/tailscale@v" + v, "tailscale.com/cmd/tailscaled@v" + v},
			Dir: filepath.Dir(entry),
			Env: []string{"GOBIN=" + tmpBin, "CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + tailscaleArch, "GOWORK=off"},
		})
		if err != nil {
			return err
		}
		os.RemoveAll(bin)
		if err := os.Rename(tmpBin, bin); err != nil {
			return err
		}
	}
	return packageTailscale(ctx, v, bin, mod.Dir, mod.Time, deb)
}

// packageTailscale writes the .deb from built binaries and the module's
// unit files and maintainer scripts. Files get the module's release time as
// mtime (and SOURCE_DATE_EPOCH), so the same inputs make the same .deb.
func packageTailscale(ctx context.Context, v, bin, modDir string, modTime time.Time, deb string) error {
	work, err := os.MkdirTemp(filepath.Dir(filepath.Dir(deb)), "pkg-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	type file struct {
		src, dst string
		mode     os.FileMode
		optional bool
	}
	files := []file{
		{filepath.Join(bin, "tailscale"), "usr/bin/tailscale", 0o755, false},
		{filepath.Join(bin, "tailscaled"), "usr/sbin/tailscaled", 0o755, false},
		{filepath.Join(modDir, "cmd/tailscaled/tailscaled.service"), "lib/systemd/system/tailscaled.service", 0o644, false},
		{filepath.Join(modDir, "cmd/tailscaled/tailscale-online.target"), "lib/systemd/system/tailscale-online.target", 0o644, true},
		{filepath.Join(modDir, "cmd/tailscaled/tailscale-wait-online.service"), "lib/systemd/system/tailscale-wait-online.service", 0o644, true},
		{filepath.Join(modDir, "cmd/tailscaled/tailscaled.defaults"), "etc/default/tailscaled", 0o644, false},
		{filepath.Join(modDir, "release/deb/debian.postinst.sh"), "DEBIAN/postinst", 0o755, false},
		{filepath.Join(modDir, "release/deb/debian.prerm.sh"), "DEBIAN/prerm", 0o755, false},
		{filepath.Join(modDir, "release/deb/debian.postrm.sh"), "DEBIAN/postrm", 0o755, false},
	}
	var installed int64
	for _, f := range files {
		data, err := os.ReadFile(f.src)
		if f.optional && os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		dst := filepath.Join(root, f.dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(dst, f.mode); err != nil { // not subject to umask
			return err
		}
		if !strings.HasPrefix(f.dst, "DEBIAN/") {
			installed += (int64(len(data)) + 1023) / 1024
		}
	}
	control := fmt.Sprintf(`Package: tailscale
Version: %s
Section: net
Priority: optional
Architecture: %s
Maintainer: bake <tailscale-mirror@bake.invalid>
Installed-Size: %d
Depends: iptables
Recommends: iproute2
Conflicts: tailscale-relay
Replaces: tailscale-relay
Homepage: https://www.tailscale.com
Description: The easiest, most secure, cross platform way to use WireGuard + oauth2 + 2FA/SSO
 Unofficial build: tailscale and tailscaled built by bake from the
 tailscale.com Go module v%s with CGO_ENABLED=0, packaged like Tailscale's
 own .deb for a local mirror of pkgs.tailscale.com.
`, v, tailscaleArch, installed, v)
	for name, content := range map[string]string{
		"DEBIAN/control":   control,
		"DEBIAN/conffiles": "/etc/default/tailscaled\n",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if modTime.IsZero() {
		modTime = time.Unix(0, 0)
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.Chmod(p, 0o755); err != nil {
				return err
			}
		}
		return os.Chtimes(p, modTime, modTime)
	})
	if err != nil {
		return err
	}
	tmpDeb := filepath.Join(work, filepath.Base(deb))
	err = run(ctx, execx.Cmd{
		Name: "dpkg-deb",
		// gzip, like Tailscale's packages (nfpm): xz would cost half a
		// minute on ~60 MB of binaries and save little.
		Args: []string{"--root-owner-group", "-Zgzip", "--build", root, tmpDeb},
		Env:  []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(modTime.Unix(), 10)},
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(deb), 0o755); err != nil {
		return err
	}
	return os.Rename(tmpDeb, deb)
}

type module struct {
	Dir   string
	Time  time.Time
	Error string
}

// downloadModule fetches path@version into the module cache (a no-op once
// there) and returns its directory and release time.
func downloadModule(ctx context.Context, dir, pathVersion string) (*module, error) {
	out, err := execx.Default.Output(ctx, execx.Cmd{
		Name: "go", Args: []string{"mod", "download", "-json", pathVersion},
		Dir: dir, Env: []string{"GOWORK=off"},
	})
	var m module
	if jerr := json.Unmarshal(out, &m); jerr == nil && m.Error != "" {
		return nil, fmt.Errorf("go mod download %s: %s", pathVersion, m.Error)
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("go mod download %s: %w", pathVersion, err)
	}
	if m.Dir == "" {
		return nil, fmt.Errorf("go mod download %s: no directory", pathVersion)
	}
	return &m, nil
}

func goEnv(ctx context.Context, dir, name string) (string, error) {
	out, err := execx.Default.Output(ctx, execx.Cmd{Name: "go", Args: []string{"env", name}, Dir: dir})
	if err != nil {
		return "", err
	}
	s := string(bytes.TrimSpace(out))
	if s == "" {
		return "", fmt.Errorf("go env %s: empty", name)
	}
	return s, nil
}

// lockFile takes an exclusive flock on path, waiting for ctx.
func lockFile(ctx context.Context, path string) (func(), error) { return flock.Lock(ctx, path) }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
