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
// binary runs and names the pinned version.
func TestBuildHeadscale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	bin, err := BuildHeadscale(ctx, DefaultHeadscaleVersion, testcache.Dir("headscale"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	if !strings.Contains(string(out), "v"+DefaultHeadscaleVersion) {
		t.Fatalf("%s version: want v%s in:\n%s", bin, DefaultHeadscaleVersion, out)
	}
}
