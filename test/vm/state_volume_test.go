//go:build vm

package vmtest

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/vm"
)

// TestStateVolume is the upgrade by replacing the image (issue 15) on a
// real boot: image A (the test appliance re-baked with a state section)
// boots with a seed and a blank second disk (virtio serial bake-state),
// which bake-state.service formats and fills; its host keys, machine ID,
// gateway token and a file in the gateway's state directory are recorded;
// it powers off. Image B (the same, plus a file: a visible change) boots on
// the same disk with no seed: the identities are unchanged, the admin logs
// in with the key the seed gave A, and B's file is there.
func TestStateVolume(t *testing.T) {
	parallel(t)
	requireTools(t, "qemu-img")
	dir := applianceImage(t)
	base := filepath.Join(dir, "openclaw-test.qcow2")
	sum := fileSum(t, base)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	recipe := func(name, extra string) string {
		return fmt.Sprintf(`apiVersion: bake/v1
name: %s
description: the test appliance with its state on a second disk
base:
  image:
    path: %s
    sha256: %s
state:
  volume: {serial: bake-state}
  paths:
    - /home/openclaw/.openclaw
    - /var/lib/tailscale
    - /etc/ssh/ssh_host_*
    - /home/admin/.ssh
    - /var/lib/docker/volumes
    - /etc/machine-id
%soutputs: [qcow2]
`, name, base, sum, extra)
	}
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	outA, logA, took := bakeRecipeText(t, ctx, filepath.Join(work, "a"), "state-a", recipe("state-a", ""))
	t.Logf("image A baked in %s", took)
	if !strings.Contains(logA, "] state ...") {
		t.Errorf("the build has no state stage:\n%s", logA)
	}
	outB, _, took := bakeRecipeText(t, ctx, filepath.Join(work, "b"), "state-b", recipe("state-b", "files:\n  - {path: /etc/bake-upgrade-test, content: image-b}\n"))
	t.Logf("image B baked in %s", took)

	vol := filepath.Join(work, "state.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", vol, "256M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	drives := []vm.Drive{{Path: vol, Format: "qcow2", Serial: "bake-state"}}
	const cfg = "/home/openclaw/.openclaw/openclaw.json"
	tokenOf := func(g *guest) string {
		return strings.TrimSpace(g.must("sudo grep -o '\"token\": *\"[^\"]*\"' " + cfg))
	}
	fingerprints := "for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done"

	// Image A: a seed, a blank volume.
	token := "state-" + hex.EncodeToString([]byte(time.Now().String()))[:40]
	a := bootApplianceWith(t, bootOpts{disk: filepath.Join(outA, "state-a.qcow2"), firmware: vm.BIOS, token: token, via: "nocloud", drives: drives})
	if st := strings.TrimSpace(a.must("cat /run/bake/state.status")); st != "ok" {
		t.Fatalf("image A: state status %q\n%s", st, a.must("sudo journalctl -b -u bake-state --no-pager"))
	}
	jA := a.must("sudo journalctl -b -u bake-state --no-pager")
	t.Logf("image A, bake-state:\n%s", jA)
	if !strings.Contains(jA, "formatting the blank disk") {
		t.Errorf("image A did not format the blank volume")
	}
	mnt := a.must("findmnt -rn -o TARGET | sort")
	for _, p := range []string{"/run/bake/state", "/home/openclaw/.openclaw", "/home/admin/.ssh", "/etc/ssh/ssh_host_ed25519_key", "/var/lib/bake/firstboot"} {
		if !contains(strings.Fields(mnt), p) {
			t.Errorf("image A: %s is not mounted:\n%s", p, mnt)
		}
	}
	fpA := a.must(fingerprints)
	midA := strings.TrimSpace(a.must("cat /etc/machine-id"))
	tokA := tokenOf(a)
	if !strings.Contains(tokA, token) {
		t.Errorf("image A: token %q, the seed gave %q", tokA, token)
	}
	a.must("sudo -u openclaw sh -c 'echo written-by-a > /home/openclaw/.openclaw/vmtest-marker'")
	a.must("sudo docker volume create vmtest-vol >/dev/null")
	if hk := a.hostKey; hk == "" {
		t.Fatal("no host key from A's login")
	}
	t.Logf("image A: host keys\n%smachine-id %s", fpA, midA)
	a.run("sync; sudo systemctl poweroff")
	select {
	case <-a.v.Exited():
	case <-time.After(3 * time.Minute):
		t.Fatal("image A did not power off in 3 minutes")
	}
	a.c.Close()

	// Image B: no seed, the same volume, the admin's key from A's seed.
	b := bootApplianceWith(t, bootOpts{disk: filepath.Join(outB, "state-b.qcow2"), firmware: vm.BIOS, via: "none", priv: a.priv, drives: drives})
	// -m: bake-state logs before it gives the machine ID back (journald
	// files those entries under the ID it started with). No -b:
	// journalctl refuses --boot with --merge, and B's root disk holds
	// B's boots only.
	jB := b.must("sudo journalctl -m -u bake-state --no-pager")
	t.Logf("image B, bake-state:\n%s", jB)
	if st := strings.TrimSpace(b.must("cat /run/bake/state.status")); st != "ok" {
		t.Fatalf("image B: state status %q", st)
	}
	if strings.Contains(jB, "formatting") || strings.Contains(jB, "first use") {
		t.Errorf("image B formatted or re-copied the volume")
	}
	if b.hostKey != a.hostKey {
		t.Errorf("host key changed: A %s, B %s", a.hostKey, b.hostKey)
	}
	if fp := b.must(fingerprints); fp != fpA {
		t.Errorf("host key fingerprints changed:\nA:\n%sB:\n%s", fpA, fp)
	}
	if mid := strings.TrimSpace(b.must("cat /etc/machine-id")); mid != midA {
		t.Errorf("machine-id changed: A %s, B %s", midA, mid)
	}
	if tok := tokenOf(b); tok != tokA {
		t.Errorf("gateway token changed: A %s, B %s", tokA, tok)
	}
	if m := strings.TrimSpace(b.must("sudo cat /home/openclaw/.openclaw/vmtest-marker")); m != "written-by-a" {
		t.Errorf("the gateway state file A wrote: %q", m)
	}
	if v := b.must("sudo docker volume ls -q"); !strings.Contains(v, "vmtest-vol") {
		t.Errorf("the Docker volume A made is gone: %q", v)
	}
	if c := strings.TrimSpace(b.must("cat /etc/bake-upgrade-test")); c != "image-b" {
		t.Errorf("image B's own change: %q", c)
	}
	if rec := b.must("sudo cat /run/bake/state/bake-state/image /run/bake/state/bake-state/format"); !strings.Contains(rec, "NAME=state-b") || !strings.Contains(rec, "\n1\n") {
		t.Errorf("the volume's record after B:\n%s", rec)
	}
	// Without -m: journald, restarted by bake-state, files what follows
	// under the instance's machine ID.
	if fb := b.must("sudo journalctl -b -u bake-firstboot --no-pager"); !strings.Contains(fb, "nothing to do") {
		m, _ := b.run("sudo journalctl -m -u bake-firstboot --no-pager")
		t.Errorf("first boot's journal under the instance's machine ID does not say it had nothing to do (the seed applies once per state):\n%s\nwith -m:\n%s", fb, m)
	}
	if state := b.waitRunning(8 * time.Minute); state != "running" {
		o, _ := b.run("systemctl --failed --no-legend")
		t.Errorf("image B: systemctl is-system-running = %q\n%s", state, o)
	}
	b.must("for i in $(seq 120); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && exit 0; sleep 2; done; exit 1")
}
