package builder

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tidyDockerStore keeps only image/ and overlay2/ and removes the trust
// key dockerd made (a private key every instance would share), but never a
// key.json the image had before.
func TestTidyDockerStore(t *testing.T) {
	for _, hadKey := range []bool{false, true} {
		tree := t.TempDir()
		for _, d := range []string{"image/overlay2/imagedb", "overlay2/l", "containerd/daemon", "network/files", "volumes", "tmp", "buildkit"} {
			if err := os.MkdirAll(filepath.Join(tree, "var/lib/docker", d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		os.WriteFile(filepath.Join(tree, "var/lib/docker/network/files/local-kv.db"), []byte("x"), 0o600)
		os.MkdirAll(filepath.Join(tree, "etc/docker"), 0o755)
		os.WriteFile(filepath.Join(tree, "etc/docker/key.json"), []byte(`{"d":"private"}`), 0o600)
		if err := tidyDockerStore(tree, hadKey); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(filepath.Join(tree, "var/lib/docker"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if !slices.Equal(names, []string{"image", "overlay2"}) {
			t.Errorf("hadKey=%v: /var/lib/docker holds %v, want [image overlay2]", hadKey, names)
		}
		_, err := os.Stat(filepath.Join(tree, "etc/docker/key.json"))
		if hadKey && err != nil {
			t.Errorf("the image's own key.json was removed")
		}
		if !hadKey && err == nil {
			t.Errorf("dockerd's key.json was left in the image")
		}
	}
}

// A store without the image metadata or the layers is an error, not an
// image that would pull at boot.
func TestTidyDockerStoreIncomplete(t *testing.T) {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "var/lib/docker/image"), 0o700)
	err := tidyDockerStore(tree, false)
	if err == nil || !strings.Contains(err.Error(), "overlay2 is missing") {
		t.Errorf("err = %v, want overlay2 missing", err)
	}
}
