package mounts

import (
	"fmt"
	"os"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// This package's tests mount file systems: they run in a mount namespace of
// their own, out of reach of other packages' `ip netns exec` copies
// (testenv.MainInPrivateMounts).
func TestMain(m *testing.M) { os.Exit(testenv.MainInPrivateMounts(m)) }

// The tests above run in a mount namespace that is neither the host's nor
// shared with anything but this test binary: its parent (the same binary,
// which re-executed it) is in another.
func TestMainInPrivateMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "a mount namespace of its own needs root")
	}
	if !testenv.InPrivateMounts() {
		t.Fatal("the tests run in the mount namespace they were started in")
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		t.Fatal(err)
	}
	if self == parent {
		t.Fatalf("mount namespace %s is the parent's", self)
	}
	t.Logf("mount namespace %s, the parent's %s", self, parent)
}
