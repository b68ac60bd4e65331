package rootfs

import (
	"os"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// This package's tests mount file systems: they run in a mount namespace of
// their own, out of reach of other packages' `ip netns exec` copies
// (testenv.MainInPrivateMounts).
func TestMain(m *testing.M) { os.Exit(testenv.MainInPrivateMounts(m)) }
