//go:build vm

package vmtest

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/vm"
)

// TestApplianceNetIfnames0 boots the appliance with the kernel's own NIC
// names (net.ifnames=0: eth0 instead of ens3/enp0s9) and shows that the
// firewall and Docker isolation hold there too: no rule of the appliance
// names an interface. The image is made from the test appliance with bake
// itself (cloud-image base, kernel.cmdline added: grub.cfg rewritten), so
// the appliance is not baked twice.
//
// The same boot proves the FAT seed (it was TestApplianceFATSeed's own
// boot): the seed is a FAT volume labelled CIDATA with the admin's key only
// in user-data, and the NIC an e1000 in PCI slot 7 (eth0 all the same:
// other NIC names are TestBootBIOSVirtioAnySlot's and every verify boot's).
func TestApplianceNetIfnames0(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	dir := applianceImage(t)
	good := filepath.Join(dir, "openclaw-test.qcow2")
	work := t.TempDir()
	rec := fmt.Sprintf(`apiVersion: bake/v1
name: openclaw-ifnames
description: the test appliance booting with the kernel's NIC names
base:
  image:
    path: %s
    sha256: %s
kernel:
  cmdline: net.ifnames=0
outputs: [qcow2]
`, good, fileSum(t, good))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out, log, took := bakeRecipeText(t, ctx, work, "ifnames", rec)
	t.Logf("bake build from the appliance with net.ifnames=0: %s", took)
	if !strings.Contains(log, "net.ifnames=0") {
		t.Errorf("the build does not say it added net.ifnames=0 to the kernel command line:\n%s", log)
	}

	requireTools(t, "mkfs.vfat", "mcopy")
	token := "fat-" + hex.EncodeToString([]byte(time.Now().String()))[:40]
	g := bootApplianceDisk(t, filepath.Join(out, "openclaw-ifnames.qcow2"), vm.BIOS, token, "fat")
	if cmdline := g.must("cat /proc/cmdline"); !strings.Contains(cmdline, "net.ifnames=0") {
		t.Fatalf("kernel command line: %s", cmdline)
	}
	nics := strings.Fields(g.must("ip -o link show | awk -F': ' '$2 !~ /^(lo|docker|br-|veth|tailscale)/ {print $2}'"))
	t.Logf("NICs: %v", nics)
	if len(nics) != 1 || nics[0] != "eth0" {
		t.Fatalf("NICs %v, want eth0 only", nics)
	}
	if addr := g.must("ip -4 -o addr show dev eth0"); !strings.Contains(addr, "inet ") {
		t.Errorf("eth0 has no IPv4 address (DHCP on any NIC name):\n%s", addr)
	}
	if state := g.waitRunning(8 * time.Minute); state != "running" {
		o, _ := g.run("systemctl --failed --no-legend")
		t.Errorf("systemctl is-system-running = %q\n%s", state, o)
	}
	checkFATSeed(t, g, token)
	if o := g.must("sudo ufw status"); !strings.Contains(o, "Status: active") {
		t.Errorf("ufw: %s", o)
	}
	g.must("for i in $(seq 120); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && exit 0; sleep 2; done; exit 1")
	checkIsolation(t, g)
}
