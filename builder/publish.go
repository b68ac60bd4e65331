package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/internal/imgfile"
)

// Manifest is NAME.manifest.json: what went into an image and what came out.
type Manifest struct {
	Bake            string                      `json:"bake_version"`
	Recipe          ManifestRecipe              `json:"recipe"`
	Base            map[string]any              `json:"base"`
	SourceDateEpoch int64                       `json:"source_date_epoch"`
	Layout          any                         `json:"layout,omitempty"`
	Packages        []ManifestPackage           `json:"packages"`
	Containers      []appliance.ContainerRecord `json:"containers"`
	Outputs         []ManifestOutput            `json:"outputs"`
	TreeBytes       int64                       `json:"tree_bytes"`
	Tools           map[string]string           `json:"tools"`
	BuildSeconds    float64                     `json:"build_seconds"`

	diskSize int64
}

type ManifestRecipe struct {
	Name      string            `json:"name"`
	Path      string            `json:"path"`
	SHA256    string            `json:"sha256"`
	Variables map[string]string `json:"variables,omitempty"`
}

type ManifestPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

type ManifestOutput struct {
	File        string `json:"file"`
	Format      string `json:"format"`
	SHA256      string `json:"sha256"`
	Bytes       int64  `json:"bytes"`
	VirtualSize int64  `json:"virtual_size"`
	// AllocatedBytes is what a sparse raw really occupies on disk.
	AllocatedBytes int64 `json:"allocated_bytes,omitempty"`
}

// fileSHA256 hashes an output; a sparse raw's holes are hashed from
// memory, not read (imgfile.HashSparse).
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if err := imgfile.HashSparse(context.Background(), h, f, st.Size()); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeSums writes SHA256SUMS (sha256sum -c format) for the given files,
// which live in dir.
func writeSums(dir string, outs []ManifestOutput, extra map[string]string) error {
	var lines []string
	for _, o := range outs {
		lines = append(lines, fmt.Sprintf("%s  %s", o.SHA256, o.File))
	}
	for name, sum := range extra {
		lines = append(lines, fmt.Sprintf("%s  %s", sum, name))
	}
	sort.Strings(lines)
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// publish moves finished files from the work dir into the output dir. Each
// rename is atomic within one filesystem (the work dir is made beside the
// output dir for that reason), so a reader never sees a partial image; the
// images go first and SHA256SUMS last, so SHA256SUMS at the output path means
// the whole set is there.
func publish(workDir, outDir string, files []string) error {
	for _, f := range files {
		if err := os.Rename(filepath.Join(workDir, f), filepath.Join(outDir, f)); err != nil {
			return fmt.Errorf("publishing %s: %w", f, err)
		}
	}
	return nil
}

// allocated is the space a (sparse) file really takes.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

func goVersion() string { return runtime.Version() }
