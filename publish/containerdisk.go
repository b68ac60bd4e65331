package publish

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/imgfile"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// KubeVirt's virt-launcher runs QEMU as uid and gid 107 ("qemu"); a
// containerDisk's file must be readable by it (KubeVirt's docs build one
// with `ADD --chown=107:107 image.qcow2 /disk/`).
const (
	DiskUID = 107
	DiskGID = 107
	// DiskDir is where KubeVirt looks for the disk in a containerDisk.
	DiskDir = "disk/"
	// diskMode: read-only for the owner and group. QEMU only ever reads a
	// containerDisk (KubeVirt puts a writable overlay on top of it).
	diskMode = 0o440
	dirMode  = 0o755
)

// LabelPrefix starts the labels bake puts in the image config (the same
// prefix as the labels of the container images bake builds).
const LabelPrefix = "io.github.bakeimg."

// BuildManifest is the part of NAME.manifest.json (written by bake build,
// see builder.Manifest) that publishing reads. Only fields that say what
// the image is become labels: the base's mirror or URL may carry
// credentials and is left out.
type BuildManifest struct {
	Bake   string `json:"bake_version"`
	Recipe struct {
		Name   string `json:"name"`
		SHA256 string `json:"sha256"`
	} `json:"recipe"`
	Base            map[string]any `json:"base"`
	SourceDateEpoch int64          `json:"source_date_epoch"`
	Packages        []struct {
		Name string `json:"name"`
		Arch string `json:"arch"`
	} `json:"packages"`
	Containers []struct {
		Name     string            `json:"name"`
		Digest   string            `json:"digest"`
		Versions map[string]string `json:"versions"`
	} `json:"containers"`
	Outputs []struct {
		File        string `json:"file"`
		Format      string `json:"format"`
		SHA256      string `json:"sha256"`
		VirtualSize int64  `json:"virtual_size"`
	} `json:"outputs"`
}

// ManifestPath is where bake build writes the manifest of IMAGE:
// NAME.manifest.json beside it, NAME being IMAGE's name without its
// extension.
func ManifestPath(image string) string {
	base := filepath.Base(image)
	if ext := filepath.Ext(base); ext != "" {
		base = strings.TrimSuffix(base, ext)
	}
	return filepath.Join(filepath.Dir(image), base+".manifest.json")
}

// ReadManifest reads and checks a build manifest.
func ReadManifest(path string) (*BuildManifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no build manifest: publish takes an image that bake build wrote (its labels and SOURCE_DATE_EPOCH come from NAME.manifest.json beside it)", path)
		}
		return nil, err
	}
	var m BuildManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: not a bake build manifest: %w", path, err)
	}
	if m.Recipe.Name == "" || m.SourceDateEpoch <= 0 {
		return nil, fmt.Errorf("%s: not a bake build manifest (no recipe name or source_date_epoch)", path)
	}
	return &m, nil
}

// Arch is the image's architecture in OCI terms: the one most of its
// packages are built for (amd64 when the manifest lists none).
func (m *BuildManifest) Arch() string {
	n := map[string]int{}
	best := "amd64"
	for _, p := range m.Packages {
		if p.Arch != "" && p.Arch != "all" {
			n[p.Arch]++
			if n[p.Arch] > n[best] {
				best = p.Arch
			}
		}
	}
	return best
}

// DiskLayer is a containerDisk's one layer: an uncompressed tar holding
// disk/ and disk/NAME, both owned 107:107 and dated SOURCE_DATE_EPOCH, so
// that the same image always gives the same layer digest. It is not
// compressed: a qcow2 written by bake is compressed already (gzip would
// gain little and cost a pass over the image), and an uncompressed tar is
// the same bytes whatever gzip implementation would have made them.
type DiskLayer struct {
	path  string
	name  string // the file's name in the layer, under disk/
	size  int64
	mtime time.Time

	digest      v1.Hash
	tarSize     int64
	imageSHA256 string
}

var _ v1.Layer = (*DiskLayer)(nil)

// NewDiskLayer hashes image once (the layer's digest and the image's own
// SHA-256 in one pass) and returns its layer. The image must be a
// self-contained qcow2.
func NewDiskLayer(image string, epoch time.Time) (*DiskLayer, error) {
	f, fi, err := imgfile.OpenRegular(image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	in, err := imgfile.Sniff(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	if in.Format != imgfile.Qcow2 {
		return nil, fmt.Errorf("%s: not a qcow2: a containerDisk holds a qcow2 (a raw disk would be stored at its full size); make one with `bake convert %s --format qcow2`", image, image)
	}
	if err := in.Refuse(); err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	l := &DiskLayer{path: image, name: filepath.Base(image), size: fi.Size(), mtime: epoch.UTC().Truncate(time.Second)}
	lh, ih := sha256.New(), sha256.New()
	cw := &countWriter{w: lh}
	if err := l.writeTar(cw, f, ih); err != nil {
		return nil, err
	}
	l.tarSize = cw.n
	l.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(lh.Sum(nil))}
	l.imageSHA256 = hex.EncodeToString(ih.Sum(nil))
	return l, nil
}

// DiskPath is the disk's path in the container: /disk/NAME.
func (l *DiskLayer) DiskPath() string { return "/" + DiskDir + l.name }

// ImageSHA256 is the SHA-256 of the image file (hex).
func (l *DiskLayer) ImageSHA256() string { return l.imageSHA256 }

// writeTar writes the layer from f (at its start) to w; the file's bytes
// also go to fileHash.
func (l *DiskLayer) writeTar(w io.Writer, f *os.File, fileHash io.Writer) error {
	tw := tar.NewWriter(w)
	// No user or group names: only the numbers mean anything in a pod.
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: DiskDir, Mode: dirMode, Uid: DiskUID, Gid: DiskGID, ModTime: l.mtime}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: DiskDir + l.name, Mode: diskMode, Uid: DiskUID, Gid: DiskGID, ModTime: l.mtime, Size: l.size}); err != nil {
		return err
	}
	var src io.Reader = io.NewSectionReader(f, 0, l.size)
	if fileHash != nil {
		src = io.TeeReader(src, fileHash)
	}
	n, err := io.Copy(tw, src)
	if err != nil {
		return fmt.Errorf("reading %s: %w", l.path, err)
	}
	if n != l.size {
		return fmt.Errorf("%s changed while it was being published (%d bytes read, %d expected)", l.path, n, l.size)
	}
	return tw.Close()
}

// Uncompressed streams the layer, reading the image again. Its size is
// checked against the first pass; a changed content changes the digest,
// which the registry checks on upload.
func (l *DiskLayer) Uncompressed() (io.ReadCloser, error) {
	f, fi, err := imgfile.OpenRegular(l.path)
	if err != nil {
		return nil, err
	}
	if fi.Size() != l.size {
		f.Close()
		return nil, fmt.Errorf("%s changed while it was being published (size %d, was %d)", l.path, fi.Size(), l.size)
	}
	pr, pw := io.Pipe()
	go func() {
		err := l.writeTar(pw, f, nil)
		f.Close()
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// Compressed is the blob as stored: the same uncompressed tar.
func (l *DiskLayer) Compressed() (io.ReadCloser, error) { return l.Uncompressed() }
func (l *DiskLayer) Digest() (v1.Hash, error)           { return l.digest, nil }
func (l *DiskLayer) DiffID() (v1.Hash, error)           { return l.digest, nil }
func (l *DiskLayer) Size() (int64, error)               { return l.tarSize, nil }
func (l *DiskLayer) MediaType() (types.MediaType, error) {
	return types.OCIUncompressedLayer, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Labels are the image config's labels: the OCI ones and bake's, from
// the build manifest.
func Labels(m *BuildManifest, l *DiskLayer) map[string]string {
	lb := map[string]string{
		LabelPrefix + "recipe.name":       m.Recipe.Name,
		LabelPrefix + "recipe.sha256":     m.Recipe.SHA256,
		LabelPrefix + "bake.version":      m.Bake,
		LabelPrefix + "source-date-epoch": strconv.FormatInt(m.SourceDateEpoch, 10),
		LabelPrefix + "disk.path":         l.DiskPath(),
		LabelPrefix + "disk.format":       "qcow2",
		LabelPrefix + "disk.sha256":       l.imageSHA256,
	}
	for _, o := range m.Outputs {
		if o.File == l.name && o.VirtualSize > 0 {
			lb[LabelPrefix+"disk.virtual-size"] = strconv.FormatInt(o.VirtualSize, 10)
		}
	}
	if d, ok := m.Base["debian"].(map[string]any); ok {
		for _, k := range []string{"suite", "variant"} {
			if s, ok := d[k].(string); ok && s != "" {
				lb[LabelPrefix+"base.debian."+k] = s
			}
		}
	}
	if im, ok := m.Base["image"].(map[string]any); ok {
		if s, ok := im["digest"].(string); ok && s != "" {
			lb[LabelPrefix+"base.image.digest"] = s
		}
	}
	for _, c := range m.Containers {
		if c.Digest != "" {
			lb[LabelPrefix+"container."+c.Name+".digest"] = c.Digest
		}
		for k, v := range c.Versions {
			lb[LabelPrefix+"container."+c.Name+"."+k] = v
		}
	}
	for k, v := range Annotations(m, l) {
		lb[k] = v
	}
	for k, v := range lb {
		if v == "" {
			delete(lb, k)
		}
	}
	return lb
}

// Annotations are the manifest's org.opencontainers.image.* annotations.
func Annotations(m *BuildManifest, l *DiskLayer) map[string]string {
	return map[string]string{
		"org.opencontainers.image.created":     time.Unix(m.SourceDateEpoch, 0).UTC().Format(time.RFC3339),
		"org.opencontainers.image.title":       m.Recipe.Name,
		"org.opencontainers.image.description": fmt.Sprintf("bake appliance image %s (%s) as a KubeVirt containerDisk", m.Recipe.Name, l.DiskPath()),
	}
}

// ContainerDisk builds the containerDisk image: OCI media types, one
// layer, the config dated SOURCE_DATE_EPOCH. Nothing in it depends on when
// or where it is built, so the same image gives the same digest.
func ContainerDisk(m *BuildManifest, l *DiskLayer) (v1.Image, error) {
	created := v1.Time{Time: time.Unix(m.SourceDateEpoch, 0).UTC()}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg := &v1.ConfigFile{
		Architecture: m.Arch(),
		OS:           "linux",
		Created:      created,
		Config:       v1.Config{Labels: Labels(m, l)},
		RootFS:       v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   l,
		History: v1.History{Created: created, CreatedBy: fmt.Sprintf("bake publish: %s at %s, owner %d:%d, mode %04o", l.name, l.DiskPath(), DiskUID, DiskGID, diskMode)},
	})
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, Annotations(m, l)).(v1.Image), nil
}

// checkListed refuses an image whose SHA-256 differs from what its build
// manifest (or the SHA256SUMS beside it, for an image bake convert wrote)
// says: the image changed after it was built.
func checkListed(image string, m *BuildManifest, sum string) error {
	name := filepath.Base(image)
	for _, o := range m.Outputs {
		if o.File == name {
			if o.SHA256 != sum {
				return fmt.Errorf("%s: SHA-256 %s, but its build manifest says %s: the image changed after it was built", image, sum, o.SHA256)
			}
			return nil
		}
	}
	sums := filepath.Join(filepath.Dir(image), "SHA256SUMS")
	if b, err := os.ReadFile(sums); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			s, f, ok := strings.Cut(line, "  ")
			if ok && f == name {
				if s != sum {
					return fmt.Errorf("%s: SHA-256 %s, but %s says %s: the image changed after it was made", image, sum, sums, s)
				}
				return nil
			}
		}
	}
	var files []string
	for _, o := range m.Outputs {
		files = append(files, o.File)
	}
	sort.Strings(files)
	return fmt.Errorf("%s: neither its build manifest (outputs: %s) nor %s lists it: publish takes an image bake wrote", image, strings.Join(files, ", "), sums)
}
