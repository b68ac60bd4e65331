package builder

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/bakeimg/bake/firstboot"
)

// A recipe built on an image that already holds Docker, tailscaled and
// bake's container units (a re-bake of an appliance) names none of them,
// yet bake-state must guard them: found in the tree.
func TestTreeStateGuards(t *testing.T) {
	tree := t.TempDir()
	for _, f := range []string{
		"lib/systemd/system/docker.service",
		"usr/lib/systemd/system/tailscaled.service",
		"etc/systemd/system/bake-container-gw.service",
		"etc/systemd/system/bake-container-gw.service.d/10-x.conf",
		"etc/systemd/system/bake-firstboot.service",
	} {
		p := filepath.Join(tree, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("[Unit]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o, err := treeStateGuards(tree, firstboot.StateOptions{Guarded: []string{"docker.service"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"docker.service", "tailscaled.service", "bake-container-gw.service"}; !slices.Equal(o.Guarded, want) {
		t.Errorf("guarded %v, want %v", o.Guarded, want)
	}
	if want := []string{"bake-container-gw.service"}; !slices.Equal(o.Before, want) {
		t.Errorf("before %v, want %v", o.Before, want)
	}
	// An image with none of them: nothing added.
	o, err = treeStateGuards(t.TempDir(), firstboot.StateOptions{})
	if err != nil || len(o.Guarded)+len(o.Before) != 0 {
		t.Errorf("empty tree: %+v, %v", o, err)
	}
}
