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

// BakeCacheDir is the BAKE_CACHE_DIR the tests' `bake build` runs use:
// BAKE_CACHE_DIR when set, else Dir("bake").
func BakeCacheDir() string {
	if d := os.Getenv("BAKE_CACHE_DIR"); d != "" {
		return d
	}
	return Dir("bake")
}

// OCIDownloads is where the gateway image's downloads (npm's cache, the
// Node tarball, the .debs; every file checked by hash on use) are kept for
// every test that builds it: the oci package's integration tests and the
// VM tier's `bake build` of the default recipe, which keeps them in
// BakeCacheDir()/oci-downloads (builder/gateway.go). One directory, so a
// cold `make test` fetches them from npm and Debian once, not once per tier.
func OCIDownloads() string {
	d := filepath.Join(BakeCacheDir(), "oci-downloads")
	os.MkdirAll(d, 0o755)
	return d
}
