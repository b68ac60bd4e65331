//go:build integration

package tailnettest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testcache"
)

// TestBuildHeadscale builds (or finds cached) headscale and checks that the
// binary runs, built by this Go, in the cache entry of the pinned version.
// (A build inside the module's copy has no module version to stamp:
// `headscale version` says "dev"; the cache key holds the version.)
func TestBuildHeadscale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 28*time.Minute)
	defer cancel()
	bin, err := BuildHeadscale(ctx, DefaultHeadscaleVersion, testcache.Dir("headscale"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	gv, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "built with: " + strings.TrimSpace(string(gv)) + " linux/amd64"; !strings.Contains(string(out), want) {
		t.Fatalf("%s version: want %q in:\n%s", bin, want, out)
	}
	if !strings.Contains(bin, "/"+DefaultHeadscaleVersion+"-"+strings.TrimSpace(string(gv))+"-linux-amd64/") {
		t.Fatalf("%s: not in the cache entry of headscale %s", bin, DefaultHeadscaleVersion)
	}
}
