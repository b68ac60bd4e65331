package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/rootfs"
)

// The overlay copy of the files stage takes the recipe's Sources.Skip:
// .git and what the context's .bakeignore names are never opened (a FIFO
// there would block or fail the copy if it were), and nothing of them
// reaches the image.
func TestOverlaySkipsIgnored(t *testing.T) {
	ctx := t.TempDir()
	files := map[string]string{
		".bakeignore":         "*.key\nsecret/\n",
		"r.yaml":              "apiVersion: bake/v1\nname: s\nbase: {debian: {suite: bookworm}}\noverlays: [{source: o}]\n",
		"o/etc/motd":          "hello\n",
		"o/etc/ssh/host.key":  "PRIVATE",
		"o/etc/ssh/host.pub":  "public",
		"o/.git/config":       "[http] extraheader = AUTHORIZATION: token",
		"o/srv/secret/readme": "s",
	}
	for p, c := range files {
		full := filepath.Join(ctx, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(ctx, "o/srv/secret/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := recipe.LoadIn(ctx, filepath.Join(ctx, "r.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srcs, err := r.Sources()
	if err != nil {
		t.Fatal(err)
	}
	src, err := r.Resolve(r.Overlays[0].Source)
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	if err := rootfs.CopyOverlay(tree, rootfs.OverlayOptions{Source: src, Target: "/", UID: os.Getuid(), GID: os.Getgid(), Skip: srcs.Skip}); err != nil {
		t.Fatal(err)
	}
	var got []string
	filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(tree, p)
			got = append(got, rel)
		}
		return nil
	})
	slices.Sort(got)
	if want := []string{"etc/motd", "etc/ssh/host.pub"}; !slices.Equal(got, want) {
		t.Errorf("the image got %v, want %v", got, want)
	}
	// Without Skip the same copy takes the secrets (and fails on the FIFO):
	// the check above is not vacuous.
	err = rootfs.CopyOverlay(t.TempDir(), rootfs.OverlayOptions{Source: src, Target: "/", UID: os.Getuid(), GID: os.Getgid()})
	if err == nil || !strings.Contains(err.Error(), "fifo") {
		t.Errorf("without Skip: %v", err)
	}
}
