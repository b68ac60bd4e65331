//go:build vm

package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/vm"
)

// TestApplianceNetworkMode bakes the test appliance in the gateway's
// network mode (published on 0.0.0.0, a DOCKER-USER exception for
// allowed_networks: 192.0.2.0/25) and shows from a network namespace in the
// guest, joined by a veth whose name nobody knew at build time, that the
// gateway port answers a client in the allowed network and no other: the
// same link carries 192.0.2.2 (allowed) and 192.0.2.200 (not), and IPv6.
// The rest of the appliance's isolation holds too (checkIsolation's probe
// of a published port; the guest's loopback guard).
func TestApplianceNetworkMode(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "go")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	work := t.TempDir()
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

	g := bootApplianceDisk(t, filepath.Join(out, "openclaw-network-test.qcow2"), vm.BIOS, "", "nocloud")
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
echo "allowed: $(sudo ip netns exec lan curl -s -o /dev/null -w '%{http_code}' -m 5 --interface 192.0.2.2 http://192.0.2.1:18789/healthz; true)"
echo "not-allowed: $(sudo ip netns exec lan curl -s -o /dev/null -w '%{http_code}' -m 5 --interface 192.0.2.200 http://192.0.2.1:18789/healthz; true)"
echo "ipv6: $(sudo ip netns exec lan curl -s -o /dev/null -w '%{http_code}' -m 5 'http://[fd77:2::1]:18789/healthz' || true)"
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
