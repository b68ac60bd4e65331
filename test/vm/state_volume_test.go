//go:build vm

package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/oci"
	"github.com/bakeimg/bake/verify"
	"github.com/bakeimg/bake/vm"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/curve25519"
)

// statePaths is the state section both images of TestStateVolume carry.
const statePaths = `state:
  volume: {serial: bake-state}
  paths:
    - /home/openclaw/.openclaw
    - /var/lib/tailscale
    - /etc/ssh/ssh_host_*
    - /home/admin/.ssh
    - /var/lib/docker/volumes
    - /etc/machine-id
`

// TestStateVolume is the upgrade by replacing the image (issue 15) on real
// boots, on one state volume (a blank qcow2, virtio serial bake-state):
//
//  1. image A (the test appliance re-baked with a state section) boots with
//     a seed; it formats and fills the volume; its host keys, machine ID,
//     gateway token, Tailscale machine key, a file in the gateway's state
//     directory and a Docker volume are recorded; it powers off.
//  2. image B, built from the test appliance's Debian recipe with the same
//     state section, a different kernel (linux-image-cloud-amd64) and a
//     different gateway image (the test gateway with another epoch: another
//     digest and image ID), boots on the volume with no seed, on its own
//     disk (no snapshot): all of them are unchanged, the gateway answers,
//     B's kernel and gateway image are the ones running. After its
//     power-off B's root disk is scanned (verify's scanner) for the token,
//     the host private keys, the Tailscale machine key and any private key.
//  3. rollback: A boots again (from its image, as a cloud relaunches it) on
//     the volume, no seed: the same identities, A's kernel and gateway
//     image, the gateway answers. It then writes a newer state format (2)
//     into the volume's record, as a newer bake would, and powers off.
//  4. A boots on that volume (with a seed, to log in): bake-state refuses
//     it, on the console and in the journal; Docker, tailscaled and the
//     gateway are not started; the volume is not mounted.
//  5. A boots with no second disk: the loud warning, on the console and in
//     the journal, and it runs from its root disk.
func TestStateVolume(t *testing.T) {
	parallel(t)
	requireTools(t, "qemu-img")
	dir := applianceImage(t)
	base := filepath.Join(dir, "openclaw-test.qcow2")
	sum := fileSum(t, base)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	if err := os.Mkdir(filepath.Join(work, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	outA, logA, took := bakeRecipeText(t, ctx, filepath.Join(work, "a"), "state-a", fmt.Sprintf(`apiVersion: bake/v1
name: state-a
description: the test appliance with its state on a second disk
base:
  image:
    path: %s
    sha256: %s
%soutputs: [qcow2]
`, base, sum, statePaths))
	t.Logf("image A baked in %s", took)
	if !strings.Contains(logA, "] state ...") {
		t.Errorf("the build has no state stage:\n%s", logA)
	}
	idA := applImg.id
	diskA := filepath.Join(outA, "state-a.qcow2")
	diskB, idB := bakeStateB(t, ctx, work)
	if idA == "" || idB == "" || idA == idB {
		t.Fatalf("gateway image IDs: A %q, B %q (want two different ones)", idA, idB)
	}

	vol := filepath.Join(work, "state.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", vol, "256M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	drives := []vm.Drive{{Path: vol, Format: "qcow2", Serial: "bake-state"}}

	// Image A: a seed, a blank volume.
	token := "state-" + hex.EncodeToString([]byte(time.Now().String()))[:40]
	a := bootApplianceWith(t, bootOpts{disk: diskA, firmware: vm.BIOS, token: token, via: "nocloud", drives: drives})
	if st := strings.TrimSpace(a.must("cat /run/bake/state.status")); st != "ok" {
		t.Fatalf("image A: state status %q\n%s", st, a.must("sudo journalctl -b -u bake-state --no-pager"))
	}
	jA := a.must("sudo journalctl -b -u bake-state --no-pager")
	t.Logf("image A, bake-state:\n%s", jA)
	if !strings.Contains(jA, "formatting the blank disk") {
		t.Errorf("image A did not format the blank volume")
	}
	mnt := a.must("findmnt -rn -o TARGET | sort")
	for _, p := range []string{"/run/bake/state", "/home/openclaw/.openclaw", "/home/admin/.ssh", "/etc/ssh/ssh_host_ed25519_key", "/var/lib/bake/firstboot", "/var/lib/tailscale"} {
		if !contains(strings.Fields(mnt), p) {
			t.Errorf("image A: %s is not mounted:\n%s", p, mnt)
		}
	}
	// tailscaled makes its machine key (the node's identity to its
	// control server) when asked to run; no control server answers here
	// (a closed port on the guest's loopback), so the node key, made at
	// a login that succeeds, never exists.
	a.run("sudo timeout 40 tailscale up --login-server=http://127.0.0.1:9 --timeout=15s")
	idsA := recordIdentity(a)
	if idsA.tailscale == "" {
		t.Errorf("image A: tailscaled wrote no machine key after tailscale up")
	}
	if !strings.Contains(idsA.token, token) {
		t.Errorf("image A: token %q, the seed gave %q", idsA.token, token)
	}
	checkImage(a, "A", idsA.kernel, idA, idB)
	if strings.Contains(idsA.kernel, "cloud") {
		t.Errorf("image A runs kernel %s: want the generic one", idsA.kernel)
	}
	a.must("sudo -u openclaw sh -c 'echo written-by-a > /home/openclaw/.openclaw/vmtest-marker'")
	a.must("sudo docker volume create vmtest-vol >/dev/null")
	if a.hostKey == "" {
		t.Fatal("no host key from A's login")
	}
	t.Logf("image A: kernel %s, host keys\n%smachine-id %s, tailscale %s", idsA.kernel, idsA.fingerprints, idsA.machineID, idsA.tailscale)
	powerOff(t, a, "A")

	// Image B: no seed, the same volume, the admin's key from A's seed,
	// its own root disk kept for the scan.
	b := bootApplianceWith(t, bootOpts{disk: diskB, firmware: vm.BIOS, via: "none", priv: a.priv, drives: drives, persist: true})
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
	idsB := recordIdentity(b)
	idsA.same(t, "B", idsB)
	if !strings.Contains(idsB.kernel, "cloud-amd64") {
		t.Errorf("image B runs kernel %s: want its own, the cloud flavour", idsB.kernel)
	}
	checkImage(b, "B", idsB.kernel, idB, idA)
	t.Logf("image B: kernel %s", idsB.kernel)
	if m := strings.TrimSpace(b.must("sudo cat /home/openclaw/.openclaw/vmtest-marker")); m != "written-by-a" {
		t.Errorf("the gateway state file A wrote: %q", m)
	}
	if v := b.must("sudo docker volume ls -q"); !strings.Contains(v, "vmtest-vol") {
		t.Errorf("the Docker volume A made is gone: %q", v)
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
	gatewayUp(t, b, "B")
	secrets := b.secretsOnVolume()
	powerOff(t, b, "B")
	scanRootDisk(t, ctx, diskB, work, idsA, secrets)

	// Rollback: A again (from its image), the same volume, no seed.
	r := bootApplianceWith(t, bootOpts{disk: diskA, firmware: vm.BIOS, via: "none", priv: a.priv, drives: drives})
	if st := strings.TrimSpace(r.must("cat /run/bake/state.status")); st != "ok" {
		t.Fatalf("rollback to A: state status %q\n%s", st, r.must("sudo journalctl -m -u bake-state --no-pager"))
	}
	jR := r.must("sudo journalctl -m -u bake-state --no-pager")
	if strings.Contains(jR, "formatting") || strings.Contains(jR, "first use") {
		t.Errorf("the rollback formatted or re-copied the volume:\n%s", jR)
	}
	if r.hostKey != a.hostKey {
		t.Errorf("host key changed: A %s, rollback %s", a.hostKey, r.hostKey)
	}
	idsR := recordIdentity(r)
	idsA.same(t, "the rollback to A", idsR)
	if idsR.kernel != idsA.kernel {
		t.Errorf("the rollback runs kernel %s, A ran %s", idsR.kernel, idsA.kernel)
	}
	checkImage(r, "the rollback to A", idsR.kernel, idA, idB)
	if m := strings.TrimSpace(r.must("sudo cat /home/openclaw/.openclaw/vmtest-marker")); m != "written-by-a" {
		t.Errorf("rollback: the gateway state file A wrote: %q", m)
	}
	if v := r.must("sudo docker volume ls -q"); !strings.Contains(v, "vmtest-vol") {
		t.Errorf("rollback: the Docker volume A made is gone: %q", v)
	}
	if _, err := r.run("test -e /etc/bake-upgrade-test"); err == nil {
		t.Errorf("rollback: B's file is on A's root disk")
	}
	if rec := r.must("sudo cat /run/bake/state/bake-state/image"); !strings.Contains(rec, "NAME=state-a") {
		t.Errorf("the volume's record after the rollback:\n%s", rec)
	}
	gatewayUp(t, r, "the rollback to A")
	// A newer bake's format, as the image that wrote it would leave it.
	r.must("sudo sh -c 'echo 2 > /run/bake/state/bake-state/format.new && mv /run/bake/state/bake-state/format.new /run/bake/state/bake-state/format && sync'")
	powerOff(t, r, "the rollback to A")

	// A on a volume of a newer format: refused. A seed lets the admin
	// in (the volume's keys are not used).
	n := bootApplianceWith(t, bootOpts{disk: diskA, firmware: vm.BIOS, token: token + "-n", via: "nocloud", priv: a.priv, drives: drives})
	if st := strings.TrimSpace(n.must("cat /run/bake/state.status")); st != "newer" {
		t.Errorf("newer format: state status %q, want newer", st)
	}
	const refusal = "state volume format 2 is newer than this image understands (1); it was last written by: state-a"
	if j := n.must("sudo journalctl -m -u bake-state --no-pager"); !strings.Contains(j, refusal) || !strings.Contains(j, "refusing to use it") {
		t.Errorf("newer format: the journal does not say why:\n%s", j)
	}
	if s, _ := n.v.Serial(); !strings.Contains(string(s), refusal) {
		t.Errorf("newer format: the console does not say why (last lines):\n%s", lastN(string(s), 40))
	}
	if out, _ := n.run("systemctl is-failed bake-state.service"); strings.TrimSpace(out) != "failed" {
		t.Errorf("newer format: bake-state.service is %q, want failed", strings.TrimSpace(out))
	}
	if out, _ := n.run("findmnt -rn /run/bake/state"); strings.TrimSpace(out) != "" {
		t.Errorf("newer format: the volume is mounted: %s", out)
	}
	// Give the boot its time: a guarded unit would have started by the
	// time the system settles.
	n.waitRunning(5 * time.Minute)
	for _, u := range []string{"docker.service", "tailscaled.service", "bake-container-openclaw-gateway.service"} {
		out, _ := n.run("systemctl is-active " + u)
		if st := strings.TrimSpace(out); st == "active" || st == "activating" {
			t.Errorf("newer format: %s is %s, want it not started", u, st)
		}
	}
	if n.hostKey == a.hostKey {
		t.Errorf("newer format: the volume's host key is in use")
	}
	powerOff(t, n, "A on a newer format")

	// A with no state volume: a loud warning, the root disk's state.
	m := bootApplianceWith(t, bootOpts{disk: diskA, firmware: vm.BIOS, token: token + "-m", via: "nocloud", priv: a.priv})
	if st := strings.TrimSpace(m.must("cat /run/bake/state.status")); st != "missing" {
		t.Errorf("no volume: state status %q, want missing", st)
	}
	const warning = "bake-state: warning: NO STATE VOLUME: no disk with serial bake-state"
	if j := m.must("sudo journalctl -b -u bake-state --no-pager"); !strings.Contains(j, warning) || !strings.Contains(j, "will be LOST when the image is replaced") {
		t.Errorf("no volume: the journal has no warning:\n%s", j)
	}
	if s, _ := m.v.Serial(); !strings.Contains(string(s), warning) {
		t.Errorf("no volume: the console has no warning (last lines):\n%s", lastN(string(s), 40))
	}
	if out, _ := m.run("systemctl is-failed bake-state.service"); strings.TrimSpace(out) == "failed" {
		t.Errorf("no volume: bake-state.service failed")
	}
	if tok := strings.TrimSpace(m.must(`sudo grep -o '"token": *"[^"]*"' /home/openclaw/.openclaw/openclaw.json`)); !strings.Contains(tok, token+"-m") {
		t.Errorf("no volume: the gateway's token is %q, want this boot's seed's (the root disk's state)", tok)
	}
	if out, _ := m.run("findmnt -rn /run/bake/state; findmnt -rn /home/openclaw/.openclaw"); strings.TrimSpace(out) != "" {
		t.Errorf("no volume: something is mounted from a state volume: %s", out)
	}
	// The guarded units are not held back (bake-state succeeded).
	if out, _ := m.run("systemctl show -p ActiveState,Result docker.service tailscaled.service"); strings.Contains(out, "ActiveState=failed") {
		t.Errorf("no volume: a guarded unit failed:\n%s", out)
	}
}

// bakeStateB builds image B: the test appliance's Debian recipe
// (testdata/openclaw-test.yaml) with the state section, the cloud kernel
// and the test gateway image made with another epoch (another digest and
// image ID), pushed to the test registry as :state-b. It returns the disk
// and B's gateway image ID.
func bakeStateB(t *testing.T, ctx context.Context, work string) (disk, id string) {
	t.Helper()
	inWork := filepath.Join(work, "inputs")
	if err := os.Mkdir(inWork, 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := startApplianceInputs(ctx, inWork, true)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	img, err := oci.BuildTestGatewayImage(ctx, filepath.Join(inWork, "testgateway"), 1700000000+86400)
	if err != nil {
		t.Fatal(err)
	}
	repo, _, _ := strings.Cut(in.ref, "@")
	tag, err := name.ParseReference(repo+":state-b", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		t.Fatalf("pushing B's gateway image: %v", err)
	}
	digest, _ := img.Digest()
	cfg, _ := img.ConfigName()
	src, err := os.ReadFile(filepath.Join(repoRoot(), applianceRecipe))
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	for old, repl := range map[string]string{
		"\nname: openclaw-test\n":                 "\nname: state-b\n",
		"packages: [ca-certificates, curl, sudo]": "packages: [ca-certificates, curl, sudo, linux-image-cloud-amd64]",
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("%s has no %q", applianceRecipe, old)
		}
		text = strings.Replace(text, old, repl, 1)
	}
	text += statePaths + "files:\n  - {path: /etc/bake-upgrade-test, content: image-b}\n"
	// Beside testdata (the same depth: the recipe's context and relative
	// paths hold), in the git-ignored cache.
	cache := filepath.Join(repoRoot(), "test/vm/.cache")
	os.MkdirAll(cache, 0o755)
	f, err := os.CreateTemp(cache, "state-b-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sets := append([]string{}, in.sets...)
	for i := range sets {
		if strings.HasPrefix(sets[i], "gateway_image=") {
			sets[i] = "gateway_image=" + repo + "@" + digest.String()
		}
	}
	out := filepath.Join(work, "b")
	t0 := time.Now()
	log, code := runBake(t, ctx, append([]string{"build", f.Name(), "-o", out}, sets...)...)
	if code != 0 {
		t.Fatalf("bake build of image B failed (%d):\n%s", code, log)
	}
	t.Logf("image B (Debian recipe, cloud kernel, gateway %s) built in %s", digest, since(t0))
	return filepath.Join(out, "state-b.qcow2"), cfg.String()
}

// instanceIDs is what an instance must keep across images.
type instanceIDs struct {
	fingerprints, machineID, token string
	// tailscale: the public part of tailscaled's machine key (and the
	// node key's when tailscaled has one); tsPriv: the stored private
	// forms, for the root disk scan.
	tailscale string
	tsPriv    []string
	kernel    string
}

func recordIdentity(g *guest) instanceIDs {
	g.t.Helper()
	var id instanceIDs
	id.fingerprints = g.must("for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done")
	id.machineID = strings.TrimSpace(g.must("cat /etc/machine-id"))
	id.token = strings.TrimSpace(g.must(`sudo grep -o '"token": *"[^"]*"' /home/openclaw/.openclaw/openclaw.json`))
	id.kernel = strings.TrimSpace(g.must("uname -r"))
	// tailscaled writes its state file at its start (its machine key);
	// the node key exists once it has logged in to a control server
	// (none here): recorded when the state holds a profile.
	raw, err := g.run("for i in $(seq 45); do sudo grep -q _machinekey /var/lib/tailscale/tailscaled.state && break; sleep 2; done; sudo cat /var/lib/tailscale/tailscaled.state")
	if err != nil {
		g.t.Logf("tailscaled wrote no state file (%v): no Tailscale key to compare", err)
		return id
	}
	var st map[string][]byte
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		g.t.Fatalf("tailscaled.state: %v\n%d bytes", err, len(raw))
	}
	keys := make([]string, 0, len(st))
	profile := false
	for k := range st {
		keys = append(keys, k)
		profile = profile || strings.HasPrefix(k, "profile-")
	}
	g.t.Logf("tailscaled.state's keys: %v", keys)
	mk, ok := st["_machinekey"]
	if !ok {
		g.t.Logf("tailscaled.state has no machine key: no Tailscale key to compare")
		return id
	}
	pub, err := machinePublic(string(mk))
	if err != nil {
		g.t.Fatal(err)
	}
	id.tailscale = "mkey:" + pub
	id.tsPriv = []string{string(mk), base64.StdEncoding.EncodeToString(mk)}
	var status struct {
		BackendState string
		Self         *struct{ PublicKey string }
	}
	if out, err := g.run("tailscale status --json"); err == nil && json.Unmarshal([]byte(out), &status) == nil {
		nk := ""
		if status.Self != nil {
			nk = status.Self.PublicKey
		}
		if profile && nk != "" && !strings.HasSuffix(nk, strings.Repeat("0", 64)) {
			id.tailscale += " " + nk
		}
		g.t.Logf("tailscale: backend %s, node key %q, kept: %s", status.BackendState, nk, id.tailscale)
	}
	return id
}

// machinePublic is the public part of tailscaled's stored machine key
// ("privkey:" and 64 hex digits; a Curve25519 key).
func machinePublic(stored string) (string, error) {
	h, ok := strings.CutPrefix(strings.TrimSpace(stored), "privkey:")
	if !ok {
		return "", fmt.Errorf("tailscaled's machine key is not in the form privkey:HEX (%d bytes)", len(stored))
	}
	priv, err := hex.DecodeString(h)
	if err != nil || len(priv) != 32 {
		return "", fmt.Errorf("tailscaled's machine key: %d bytes, %v", len(priv), err)
	}
	pub, err := curve25519.X25519(priv, curve25519.Basepoint)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(pub), nil
}

func (want instanceIDs) same(t *testing.T, who string, got instanceIDs) {
	t.Helper()
	for _, c := range []struct{ what, a, b string }{
		{"host key fingerprints", want.fingerprints, got.fingerprints},
		{"machine-id", want.machineID, got.machineID},
		{"gateway token", want.token, got.token},
		{"Tailscale key", want.tailscale, got.tailscale},
	} {
		if c.a != c.b {
			t.Errorf("%s: %s changed:\nA:\n%s\n%s:\n%s", who, c.what, c.a, who, c.b)
		}
	}
}

// checkImage: the gateway image in the guest's Docker store is want (not
// other).
func checkImage(g *guest, who, kernel, want, other string) {
	g.t.Helper()
	ids := g.must("sudo docker images --no-trunc -q")
	if !strings.Contains(ids, want) || strings.Contains(ids, other) {
		g.t.Errorf("%s: Docker's images %q, want %s and not %s", who, ids, want, other)
	}
}

func gatewayUp(t *testing.T, g *guest, who string) {
	t.Helper()
	if state := g.waitRunning(8 * time.Minute); state != "running" {
		o, _ := g.run("systemctl --failed --no-legend")
		t.Errorf("%s: systemctl is-system-running = %q\n%s", who, state, o)
	}
	if _, err := g.run("for i in $(seq 120); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && exit 0; sleep 2; done; exit 1"); err != nil {
		t.Errorf("%s: the gateway does not answer", who)
	}
	// The running container is from the image in the store.
	if out, err := g.run("sudo docker ps --no-trunc --format '{{.Image}} {{.Names}}'"); err == nil {
		t.Logf("%s: containers: %s", who, strings.TrimSpace(out))
	}
}

// secretsOnVolume are the private host keys' key material as the volume
// holds them (the base64 lines of the OpenSSH files).
func (g *guest) secretsOnVolume() []string {
	g.t.Helper()
	var out []string
	for _, l := range strings.Split(g.must("sudo cat /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ecdsa_key"), "\n") {
		if l = strings.TrimSpace(l); len(l) >= 40 && !strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	if len(out) < 2 {
		g.t.Fatalf("the host private keys have %d lines of key material", len(out))
	}
	return out
}

func powerOff(t *testing.T, g *guest, who string) {
	t.Helper()
	g.run("sync; sudo systemctl poweroff")
	select {
	case <-g.v.Exited():
	case <-time.After(3 * time.Minute):
		t.Fatalf("%s did not power off in 3 minutes", who)
	}
	g.c.Close()
}

// scanRootDisk scans B's root disk after the upgrade with verify's
// scanner (image/secrets.disk's: every data block, free ones too, and
// the compressed streams in them) for the token, the host private keys,
// tailscaled's machine key and any private key at all.
func scanRootDisk(t *testing.T, ctx context.Context, disk, work string, id instanceIDs, hostKeys []string) {
	t.Helper()
	raw := filepath.Join(work, "root-b.raw")
	t0 := time.Now()
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-O", "raw", disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	defer os.Remove(raw)
	tok := id.token
	if i := strings.LastIndex(tok, `"`); i > 0 {
		tok = tok[:i]
	}
	if i := strings.LastIndex(tok, `"`); i >= 0 {
		tok = tok[i+1:]
	}
	if len(tok) < 16 {
		t.Fatalf("the token %q is too short to look for", tok)
	}
	rules := []verify.Rule{verify.NeedleRule("gateway-token", tok)}
	for i, k := range hostKeys {
		rules = append(rules, verify.NeedleRule(fmt.Sprintf("host-key-line-%d", i), k))
	}
	for i, k := range id.tsPriv {
		rules = append(rules, verify.NeedleRule(fmt.Sprintf("tailscale-machine-key-%d", i), k))
	}
	s := verify.NewScanner(rules...)
	if err := s.ScanFile(ctx, raw); err != nil {
		t.Fatalf("scanning B's root disk: %v", err)
	}
	st := s.Stats()
	for _, f := range s.Findings() {
		t.Errorf("B's root disk: FOUND %s at %s: %s", f.Rule, f.Where, f.Excerpt)
	}
	if st.Findings > 0 || st.UnscannedCount > 0 || st.AfterBound > 0 {
		t.Errorf("B's root disk: %d finding(s), %d stream(s) not scanned to their end, %d after the bound", st.Findings, st.UnscannedCount, st.AfterBound)
	}
	sum := sha256.Sum256([]byte(tok))
	t.Logf("B's root disk scanned in %s: %d MiB of data, %d compressed streams; no token (sha256 %x...), host private key or Tailscale machine key", since(t0), st.RawBytes>>20, st.Streams, sum[:4])
}
