package oci

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// layerFormat is part of every layer cache key: bump it whenever the bytes
// a layer is made of change for the same inputs (tar writer, gzip level,
// strip rules), so stale cache entries are never reused.
const layerFormat = "bake-oci-layer/2"

// fileLayer is a v1.Layer backed by a gzip blob that bake wrote (or found
// in its cache) with both digests already known: gcr's LayerFromOpener would
// decompress the whole blob again to learn the diff ID.
type fileLayer struct{ f layerFile }

var _ v1.Layer = fileLayer{}

func (l fileLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.f.Digest) }
func (l fileLayer) DiffID() (v1.Hash, error) { return v1.NewHash(l.f.DiffID) }
func (l fileLayer) Size() (int64, error)     { return l.f.Size, nil }
func (l fileLayer) MediaType() (types.MediaType, error) {
	return types.OCILayer, nil
}
func (l fileLayer) Compressed() (io.ReadCloser, error) { return os.Open(l.f.Path) }
func (l fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.f.Path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{zr, f}, nil
}

// cacheKey hashes a layer's inputs (any JSON-encodable value) together with
// the layer format.
func cacheKey(kind string, inputs any) string {
	b, err := json.Marshal(struct {
		Format string
		Kind   string
		Inputs any
	}{layerFormat, kind, inputs})
	if err != nil {
		panic(err) // inputs are plain structs of strings
	}
	sum := sha256.Sum256(b)
	return kind + "-" + hex.EncodeToString(sum[:])[:32]
}

// layerCache keeps layer blobs by the hash of their inputs under
// DIR/layers: KEY.tar.gz and KEY.json (digests and what the layer holds).
type layerCache struct{ dir string }

type cacheMeta struct {
	layerFile
	Info json.RawMessage `json:",omitempty"`
}

func (c layerCache) paths(key string) (blob, meta string) {
	d := filepath.Join(c.dir, "layers")
	return filepath.Join(d, key+".tar.gz"), filepath.Join(d, key+".json")
}

// get returns a cached layer and decodes its info into info (may be nil).
// The blob's digest is checked: a truncated or altered cache entry is a
// miss, never a layer whose bytes do not match its digest.
func (c layerCache) get(key string, info any) (layerFile, bool) {
	if c.dir == "" {
		return layerFile{}, false
	}
	blob, metaPath := c.paths(key)
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return layerFile{}, false
	}
	var m cacheMeta
	if json.Unmarshal(b, &m) != nil {
		return layerFile{}, false
	}
	m.Path = blob
	if d, n, err := fileDigest(blob); err != nil || d != m.Digest || n != m.Size {
		return layerFile{}, false
	}
	if info != nil && len(m.Info) > 0 {
		if json.Unmarshal(m.Info, info) != nil {
			return layerFile{}, false
		}
	}
	return m.layerFile, true
}

// put writes entries as the layer for key and records info beside it.
func (c layerCache) put(key string, entries []entry, epoch int64, info any) (layerFile, error) {
	blob, metaPath := c.paths(key)
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return layerFile{}, err
	}
	lf, err := writeLayerFile(blob, entries, epoch)
	if err != nil {
		return layerFile{}, err
	}
	m := cacheMeta{layerFile: lf}
	if info != nil {
		if m.Info, err = json.Marshal(info); err != nil {
			return layerFile{}, err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return layerFile{}, err
	}
	if err := writeFileAtomic(metaPath, b, 0o644); err != nil {
		return layerFile{}, err
	}
	return lf, nil
}

func fileDigest(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return digestOf(h), n, nil
}

func writeFileAtomic(p string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// memLayer is a small layer held in memory (the test gateway's).
type memLayer struct {
	blob []byte
	f    layerFile
}

func newMemLayer(blob []byte, f layerFile) (v1.Layer, error) {
	if int64(len(blob)) != f.Size {
		return nil, fmt.Errorf("layer: %d bytes, want %d", len(blob), f.Size)
	}
	return memLayer{blob: blob, f: f}, nil
}

func (l memLayer) Digest() (v1.Hash, error)            { return v1.NewHash(l.f.Digest) }
func (l memLayer) DiffID() (v1.Hash, error)            { return v1.NewHash(l.f.DiffID) }
func (l memLayer) Size() (int64, error)                { return l.f.Size, nil }
func (l memLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l memLayer) Uncompressed() (io.ReadCloser, error) {
	zr, err := gzip.NewReader(bytes.NewReader(l.blob))
	if err != nil {
		return nil, err
	}
	return zr, nil
}
