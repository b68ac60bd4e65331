// Package testenv decides what a unit test does when the machine lacks an
// external tool it drives (qemu-img, gpg, sfdisk, ...). It owns no build
// stage: it is test plumbing.
//
// `make test` sets BAKE_TEST_STRICT=1 after installing every tool
// (scripts/install-deps.sh): there a missing tool fails the test, because a
// check that did not run is a failure, never a pass. A plain `go test ./...`
// on a developer's machine without those tools skips such a test instead,
// and says which tool to install. Integration and VM tiers always fail.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// StrictEnv is the variable `make test` sets.
const StrictEnv = "BAKE_TEST_STRICT"

// Strict reports whether a missing tool must fail the test.
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// NeedTools fails (under make test) or skips (elsewhere) t unless every
// tool is on PATH.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Missing(t, tool+" is not installed (scripts/install-deps.sh installs it)")
			return
		}
	}
}

// Missing ends t for a missing prerequisite described by why.
func Missing(t testing.TB, why string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s; %s=1 (make test): a test that cannot run is a failure", why, StrictEnv)
	} else {
		t.Skip("skipped: " + why)
	}
}
