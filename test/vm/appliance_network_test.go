//go:build vm

package vmtest

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/vm"
)

// TestApplianceNetworkModeIfnames0 is one image and one boot for what were
// two tests, each with its own build and boot (issue 11: nothing dropped,
// every assertion of both kept):
//
//   - TestApplianceNetworkMode (subtest "NetworkMode"): the test appliance
//     baked from packages in the gateway's network mode (published on
//     0.0.0.0, a DOCKER-USER exception for allowed_networks:
//     192.0.2.0/25); from a network namespace in the guest, joined by a
//     veth whose name nobody knew at build time, the gateway port answers a
//     client in the allowed network and no other: the same link carries
//     192.0.2.2 (allowed) and 192.0.2.200 (not), and IPv6.
//   - TestApplianceNetIfnames0 (subtest "NetIfnames0"): that image re-baked
//     with bake itself (image base, kernel.cmdline: net.ifnames=0, grub.cfg
//     rewritten) boots with the kernel's own NIC names (eth0 instead of
//     ens3/enp0s9), gets a DHCP lease on it, comes up whole, and the
//     firewall and Docker isolation hold there too (checkIsolation, from
//     an outside address no allowed network holds): no rule of the
//     appliance names an interface. It used to boot the loopback-mode test
//     appliance; network mode's rules are those plus the exception, and
//     the isolation probe runs over its own veth either way.
//   - TestApplianceFATSeed (subtest "FATSeed", folded into
//     TestApplianceNetIfnames0 in session 10): the seed is a FAT volume
//     labelled CIDATA with the admin's key only in user-data, and the NIC
//     an e1000 in PCI slot 7 (eth0 all the same: other NIC names are
//     TestBootBIOSVirtioAnySlot's and every verify boot's).
func TestApplianceNetworkModeIfnames0(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "go", "mkfs.vfat", "mcopy")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	work := t.TempDir()
	netImg := bakeNetworkModeAppliance(t, ctx, work)

	rec := fmt.Sprintf(`apiVersion: bake/v1
name: openclaw-ifnames
description: the network-mode test appliance booting with the kernel's NIC names
base:
  image:
    path: %s
    sha256: %s
kernel:
  cmdline: net.ifnames=0
outputs: [qcow2]
`, netImg, fileSum(t, netImg))
	out, log, took := bakeRecipeText(t, ctx, t.TempDir(), "ifnames", rec)
	t.Logf("bake build from the network-mode appliance with net.ifnames=0: %s", took)
	if !strings.Contains(log, "net.ifnames=0") {
		t.Errorf("the build does not say it added net.ifnames=0 to the kernel command line:\n%s", log)
	}

	token := "fat-" + hex.EncodeToString([]byte(time.Now().String()))[:40]
	g := bootApplianceDisk(t, filepath.Join(out, "openclaw-ifnames.qcow2"), vm.BIOS, token, "fat")

	t.Run("NetIfnames0", func(t *testing.T) {
		g.t = t
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
		if o := g.must("sudo ufw status"); !strings.Contains(o, "Status: active") {
			t.Errorf("ufw: %s", o)
		}
	})
	t.Run("FATSeed", func(t *testing.T) {
		g.t = t
		checkFATSeed(t, g, token)
	})
	t.Run("NetworkMode", func(t *testing.T) {
		g.t = t
		checkNetworkMode(t, g)
	})
	t.Run("isolation", func(t *testing.T) {
		g.t = t
		g.must("for i in $(seq 120); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && exit 0; sleep 2; done; exit 1")
		checkIsolation(t, g)
	})
}

// bakeNetworkModeAppliance bakes the test appliance recipe with the
// gateway in network mode (allowed_networks: 192.0.2.0/25) into work/out
// and returns the disk.
func bakeNetworkModeAppliance(t *testing.T, ctx context.Context, work string) string {
	t.Helper()
	in, err := startApplianceInputs(ctx, work, true)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()

	b, err := os.ReadFile(filepath.Join(repoRoot(), applianceRecipe))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for old, repl := range map[string]string{
		"name: openclaw-test\n": "name: openclaw-network-test\n",
		"  mode: local\n  bind: loopback\n": "  mode: network\n  allowed_networks:\n" +
			"    - {cidr: 192.0.2.0/25, comment: the allowed half of the test link}\n",
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("%s no longer has %q", applianceRecipe, old)
		}
		text = strings.Replace(text, old, repl, 1)
	}
	// The recipe's relative paths (context, overlays, the build key) hold
	// from test/vm/.cache as from test/vm/testdata: same depth.
	cache := filepath.Join(repoRoot(), "test/vm/.cache")
	os.MkdirAll(cache, 0o755)
	f, err := os.CreateTemp(cache, "openclaw-network-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t0 := time.Now()
	out := filepath.Join(work, "out")
	log, code := runBake(t, ctx, append(append([]string{"build", f.Name()}, in.sets...), "-o", out)...)
	t.Logf("bake build, gateway in network mode (%s)", since(t0))
	if code != 0 {
		t.Fatalf("bake build failed (%d):\n%s", code, log)
	}
	in.removeFiles()
	return filepath.Join(out, "openclaw-network-test.qcow2")
}

// checkNetworkMode: from a network namespace in the guest (a veth named
// at run time), the gateway port answers 192.0.2.2 (in allowed_networks)
// and not 192.0.2.200 on the same link, nor IPv6; it is published on
// 0.0.0.0 with a DOCKER-USER exception for 192.0.2.0/25.
func checkNetworkMode(t *testing.T, g *guest) {
	t.Helper()
	script := `set -e
for i in $(seq 120); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && break; sleep 2; done
sudo ip netns add lan
sudo ip link add lan9 type veth peer name lan9p netns lan
sudo ip addr add 192.0.2.1/24 dev lan9
sudo ip -6 addr add fd77:2::1/64 dev lan9 nodad
sudo ip link set lan9 up
sudo ip -n lan addr add 192.0.2.2/24 dev lan9p
sudo ip -n lan addr add 192.0.2.200/24 dev lan9p
sudo ip -n lan -6 addr add fd77:2::2/64 dev lan9p nodad
sudo ip -n lan link set lan9p up
sudo ip -n lan link set lo up
echo "loopback: $(curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:18789/healthz; true)"
# The three probes from the link at once, each into its own file (two
# expect no answer: a 5 s timeout each, was one after another).
p=$(mktemp -d)
sudo ip netns exec lan curl -s -o /dev/null -w '%{http_code}' -m 5 --interface 192.0.2.2 http://192.0.2.1:18789/healthz >"$p/allowed" &
sudo ip netns exec lan curl -s -o /dev/null -w '%{http_code}' -m 5 --interface 192.0.2.200 http://192.0.2.1:18789/healthz >"$p/not-allowed" &
sudo ip netns exec lan curl -s -o /dev/null -w '%{http_code}' -m 5 'http://[fd77:2::1]:18789/healthz' >"$p/ipv6" &
wait
echo "allowed: $(cat "$p/allowed")"
echo "not-allowed: $(cat "$p/not-allowed")"
echo "ipv6: $(cat "$p/ipv6")"
rm -rf "$p"
sudo ip netns del lan
`
	res := g.must(script)
	t.Logf("network-mode probe:\n%s", res)
	for _, want := range []string{"loopback: 200", "allowed: 200", "not-allowed: 000", "ipv6: 000"} {
		if !strings.Contains(res, want+"\n") {
			t.Errorf("want %q", want)
		}
	}
	// After the probe, which waited for the gateway to answer.
	if out := g.must("sudo docker port openclaw-gateway 2>&1; true"); !strings.Contains(out, "0.0.0.0:18789") {
		t.Errorf("the gateway is not published on 0.0.0.0:18789:\n%s", out)
	}
	if rules := g.must("sudo iptables -S DOCKER-USER"); !strings.Contains(rules, "-s 192.0.2.0/25") {
		t.Errorf("DOCKER-USER has no exception for 192.0.2.0/25:\n%s", rules)
	}
}
