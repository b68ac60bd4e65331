// Package tailnettest runs a real Tailscale control plane for tests:
// headscale (github.com/juanfont/headscale, built from the Go module proxy
// and cached like the tailscale build) serving HTTPS with a certificate from
// a test CA, with its embedded DERP server and STUN, inside a network
// namespace the test creates; and tailscaled nodes, each in a namespace of
// its own, that join it with pre-auth keys. Nothing leaves the machine: the
// DERP map holds only the embedded region.
package tailnettest

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/flock"
)

// DefaultHeadscaleVersion is the headscale release the tests run. v0.29.0
// needs go >= 1.26.4 (the project's Go is 1.26.8).
const DefaultHeadscaleVersion = "0.29.0"

var versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)

// BuildHeadscale builds cmd/headscale from the github.com/juanfont/headscale
// module at version (fetched with `go mod download` through the Go module
// proxy) and returns the binary's path. The binary is cached under
// cacheDir/VERSION-GOVERSION-linux-amd64/bin/headscale; a warm call only
// stats it. Concurrent calls on one cacheDir wait for each other.
//
// `go install module@version` is not used: it asks the proxy for the
// module's version list (a deprecation check), which the proxy refuses here
// for this module; `go mod download` of the exact version works, and the
// build then runs in a writable copy of the module (the module cache is
// read-only), in module mode with its own go.sum.
func BuildHeadscale(ctx context.Context, version, cacheDir string) (string, error) {
	v := strings.TrimPrefix(version, "v")
	if !versionRE.MatchString(v) {
		return "", fmt.Errorf("tailnettest: headscale version %q: want MAJOR.MINOR.PATCH", version)
	}
	if cacheDir == "" {
		return "", fmt.Errorf("tailnettest: headscale: a cache directory is required")
	}
	cacheDir, err := filepath.Abs(cacheDir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	gv, err := execx.Default.Output(ctx, execx.Cmd{Name: "go", Args: []string{"env", "GOVERSION"}, Dir: cacheDir})
	if err != nil {
		return "", err
	}
	goVersion := strings.TrimSpace(string(gv))
	if goVersion == "" {
		return "", fmt.Errorf("tailnettest: go env GOVERSION: empty")
	}
	entry := filepath.Join(cacheDir, fmt.Sprintf("%s-%s-linux-amd64", v, goVersion))
	unlock, err := flock.Lock(ctx, entry+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	bin := filepath.Join(entry, "bin", "headscale")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := buildHeadscale(ctx, v, entry, bin); err != nil {
		return "", fmt.Errorf("tailnettest: headscale %s: %w", v, err)
	}
	return bin, nil
}

func buildHeadscale(ctx context.Context, v, entry, bin string) error {
	out, err := execx.Default.Output(ctx, execx.Cmd{
		Name: "go", Args: []string{"mod", "download", "-json", "github.com/juanfont/headscale@v" + v},
		Dir: filepath.Dir(entry), Env: []string{"GOWORK=off"},
	})
	var m struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &m); jerr == nil && m.Error != "" {
		return fmt.Errorf("go mod download: %s", m.Error)
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return fmt.Errorf("go mod download: no module directory (%v)", err)
	}
	if err := os.MkdirAll(entry, 0o755); err != nil {
		return err
	}
	src, err := os.MkdirTemp(entry, "src-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	if err := copyTree(m.Dir, src); err != nil {
		return err
	}
	tmp := bin + ".tmp"
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return err
	}
	os.Remove(tmp)
	if err := execx.Default.Run(ctx, execx.Cmd{
		Name: "go",
		Args: []string{"build", "-trimpath", "-buildvcs=false", "-o", tmp, "./cmd/headscale"},
		Dir:  src,
		Env:  []string{"GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOTOOLCHAIN=local"},
	}); err != nil {
		return err
	}
	return os.Rename(tmp, bin)
}

// copyTree copies the regular files and directories under src to dst
// (which exists), writable by their owner.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}
