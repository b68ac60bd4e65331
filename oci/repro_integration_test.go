//go:build integration

package oci

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testcache"
)

// The gateway image's reproducibility record. TestOpenClawGatewayImage
// proves that two builds from empty layer caches give one digest. The
// second build costs about two minutes of CPU in every run; once two
// builds from empty caches have agreed, the digest is kept here under the
// hash of everything the image's bytes may depend on (reproKey), and a
// later run with the same inputs compares its one build from empty caches
// with it: the same proof, two builds from empty caches, made at different
// times by different processes. Inputs never seen before (a change to
// bake's code, the recipe, the Debian archive's versions, the build tools)
// make a new key, and that run builds twice again. An empty test cache
// (a cold run) always builds twice. A record that disagrees with a build
// of the same inputs fails the test: the build is not reproducible.

// reproRecord is what a run that built twice from empty caches keeps.
type reproRecord struct {
	Key      string      `json:"key"`
	Digest   string      `json:"digest"`
	ImageID  string      `json:"image_id"`
	Layers   []LayerInfo `json:"layers"`
	Recorded time.Time   `json:"recorded"`
}

func reproRecordPath(key string) string {
	return filepath.Join(testcache.Dir("oci-repro"), "gateway-"+key[:32]+".json")
}

// readReproRecord returns the record for key, if a run kept one.
func readReproRecord(t *testing.T, key string) (reproRecord, bool) {
	t.Helper()
	b, err := os.ReadFile(reproRecordPath(key))
	if err != nil {
		return reproRecord{}, false
	}
	var r reproRecord
	if err := json.Unmarshal(b, &r); err != nil || r.Key != key || !strings.HasPrefix(r.Digest, "sha256:") {
		t.Logf("ignoring the unreadable record %s: %v", reproRecordPath(key), err)
		return reproRecord{}, false
	}
	return r, true
}

func writeReproRecord(t *testing.T, key string, info BuildInfo) {
	t.Helper()
	b, _ := json.MarshalIndent(reproRecord{Key: key, Digest: info.Digest, ImageID: info.ImageID,
		Layers: info.Layers, Recorded: time.Now().UTC()}, "", "  ")
	p := reproRecordPath(key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

// reproKey hashes everything the image's bytes may depend on: the source
// of package oci and of every non-standard package it builds with (bake's
// own and the modules', at their versions), the app's recipe directory
// (lockfile, patches), the build spec but its cache paths, the tools that
// make the Debian tree (mmdebstrap, apt, dpkg, as installed), and what the
// build resolved: the Debian packages and versions, Node's and npm's
// versions, the app's packages and patches. Files are named by import
// path and module version, or relative to the module's root, so that
// clones and module caches in other places share a key.
func reproKey(t *testing.T, root string, spec BuildSpec, info BuildInfo) string {
	t.Helper()
	h := sha256.New()
	section := func(name string) { fmt.Fprintf(h, "\x00%s\x00", name) }

	section("go sources")
	cmd := exec.Command("go", "list", "-deps", "-f",
		"{{if not .Standard}}{{.ImportPath}}@{{with .Module}}{{.Version}}{{end}} {{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}", "./oci")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./oci: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		// The package's import path and module version name its files,
		// not where the module cache or the clone happens to be.
		pkg, dir := f[0], f[1]
		for _, name := range f[2:] {
			hashFile(t, h, pkg+"/"+name, filepath.Join(dir, name))
			n++
		}
	}
	if n < 10 {
		t.Fatalf("go list -deps ./oci named %d files: %s", n, out)
	}

	section("app recipe")
	appDir := filepath.Join(root, "recipes/openclaw-gateway")
	var files []string
	err = filepath.WalkDir(appDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return err
	})
	if err != nil || len(files) == 0 {
		t.Fatalf("%s: %d files, %v", appDir, len(files), err)
	}
	sort.Strings(files)
	for _, p := range files {
		rel, _ := filepath.Rel(root, p)
		hashFile(t, h, rel, p)
	}

	section("spec")
	s := spec
	s.CacheDir, s.DownloadDir = "", ""
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	h.Write([]byte(strings.ReplaceAll(string(b), root, "$ROOT")))

	section("tools")
	tools, err := exec.Command("dpkg-query", "-W", "-f", "${Package} ${Version}\n", "mmdebstrap", "apt", "dpkg").Output()
	if err != nil {
		t.Fatalf("dpkg-query mmdebstrap apt dpkg: %v", err)
	}
	h.Write(tools)

	section("resolved")
	b, err = json.Marshal(struct {
		Versions       map[string]string
		DebianPackages []string
		NpmPackages    int
		Npm            string
		Patches        []string
	}{info.Versions, info.DebianPackages, info.NpmPackages, info.Npm, info.Patches})
	if err != nil {
		t.Fatal(err)
	}
	h.Write(b)
	if len(info.DebianPackages) == 0 || info.NpmPackages == 0 {
		t.Fatalf("the build resolved %d Debian and %d npm packages", len(info.DebianPackages), info.NpmPackages)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func hashFile(t *testing.T, h io.Writer, name, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(h, "%s\x00", name)
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	h.Write([]byte{0})
}
