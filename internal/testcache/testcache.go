// Package testcache locates the on-disk cache of expensive test fixtures
// (bootstrapped trees, cloud-image fixtures, the tailscale build, npm
// downloads, kernels). It lives outside the checkout so that CI, which runs
// in a fresh clone, reuses what an earlier run on the same machine built;
// every entry is keyed by its inputs, so a stale entry is never used.
package testcache

import (
	"os"
	"path/filepath"
)

// DefaultDir is used when BAKE_TEST_CACHE is not set.
const DefaultDir = "/var/cache/bake-test"

// Dir returns (and creates) the cache directory for one kind of fixture.
func Dir(sub string) string {
	base := os.Getenv("BAKE_TEST_CACHE")
	if base == "" {
		base = DefaultDir
	}
	d := filepath.Join(base, sub)
	os.MkdirAll(d, 0o755)
	return d
}
