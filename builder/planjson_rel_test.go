package builder

import (
	"testing"

	"github.com/bakeimg/bake/builder/recipe"
)

// TestRelativizerHostPathsOnly: host paths the recipe reads are written
// relative to its folder; the image's paths stay absolute wherever the
// recipe lives (a recipe under /home or /var printed /home/openclaw/... and
// /var/lib/... as ../.. paths before session 22).
func TestRelativizerHostPathsOnly(t *testing.T) {
	d := newRelativizer("/home/me/proj/recipes", []recipe.HostPath{
		{What: "recipe", Path: "/home/me/proj/recipes/openclaw.yaml"},
		{What: "context", Path: "/home/me/proj"},
		{What: "overlay", Path: "/home/me/proj/overlays/openclaw"},
	})
	for in, want := range map[string]string{
		"overlay /home/me/proj/overlays/openclaw -> /":                        "overlay ../overlays/openclaw -> /",
		"key /home/me/proj/recipes/keys/tailscale.asc":                        "key ./keys/tailscale.asc",
		"/home/me/proj/recipes":                                               ".",
		"state dir /home/openclaw/.openclaw (0700 openclaw)":                  "state dir /home/openclaw/.openclaw (0700 openclaw)",
		"preloaded into Docker's store (/var/lib/docker, by the image's own)": "preloaded into Docker's store (/var/lib/docker, by the image's own)",
		"https://pkgs.tailscale.com/stable/debian bookworm main":              "https://pkgs.tailscale.com/stable/debian bookworm main",
		"the context is /home/me/proj.":                                       "the context is ./...",
		"/home/me/other/file":                                                 "/home/me/other/file",
		"paths /home/me/proj/a /etc/ssh/ssh_host_* /home/admin/.ssh":          "paths ../a /etc/ssh/ssh_host_* /home/admin/.ssh",
	} {
		if got := d.text(in); got != want {
			t.Errorf("text(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"/home/me/proj/overlays/openclaw": "../overlays/openclaw",
		"/home/openclaw/.openclaw":        "/home/openclaw/.openclaw",
		"/var/lib/tailscale":              "/var/lib/tailscale",
		"relative/path":                   "relative/path",
	} {
		if got := d.path(in); got != want {
			t.Errorf("path(%q) = %q, want %q", in, got, want)
		}
	}
}
