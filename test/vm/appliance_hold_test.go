//go:build vm && vmhold

package vmtest

// A debugging aid, not a check: `go test -tags 'vm vmhold' -run
// TestApplianceHold ./test/vm/` with BAKE_VMTEST_HOLD=20m boots the
// appliance and keeps it up. Behind its own tag so make test never shows
// it as skipped.

import (
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/vm"
)

// TestApplianceHold boots the appliance (or BAKE_VMTEST_HOLD_DISK) and keeps it up for manual
// inspection when BAKE_VMTEST_HOLD is set (a duration): the SSH port and
// key are printed. Not part of the suite otherwise.
func TestApplianceHold(t *testing.T) {
	hold, err := time.ParseDuration(os.Getenv("BAKE_VMTEST_HOLD"))
	if err != nil {
		t.Fatal("set BAKE_VMTEST_HOLD=20m to boot the appliance and keep it up")
	}
	// BAKE_VMTEST_HOLD_DISK: boot that image (e.g. make image's) instead.
	// BAKE_VMTEST_HOLD_SEED: how the seed reaches it, "nocloud" (the
	// default) or "smbios" (credentials only: no datasource for
	// cloud-init).
	via := os.Getenv("BAKE_VMTEST_HOLD_SEED")
	if via == "" {
		via = "nocloud"
	}
	var g *guest
	if disk := os.Getenv("BAKE_VMTEST_HOLD_DISK"); disk != "" {
		g = bootApplianceDisk(t, disk, vm.BIOS, "hold-0123456789abcdef", via)
	} else {
		g = bootAppliance(t, vm.BIOS, "hold-0123456789abcdef", via)
	}
	key := filepath.Join(os.TempDir(), "bake-vmtest-hold.key")
	block, _ := ssh.MarshalPrivateKey(g.priv, "")
	os.WriteFile(key, pem.EncodeToMemory(block), 0o600)
	t.Logf("ssh -i %s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null admin@127.0.0.1", key, g.port)
	fmt.Printf("HOLD ssh -i %s -p %d admin@127.0.0.1\n", key, g.port)
	time.Sleep(hold)
}
