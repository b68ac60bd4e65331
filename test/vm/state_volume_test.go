//go:build vm

package vmtest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/oci"
	"github.com/bakeimg/bake/vm"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
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
// boots, on one state volume, from an image built from Debian packages to
// one built on a cloud image, with the instance on a real tailnet (issue
// 16: after an image upgrade the node is still the same node), driven by
// the user's proof run as TestVerifyAppliance runs it (in a namespace
// whose only network is headscale's loopback): `bake verify B
// --upgrade-from A --state-volume VOL --tailnet-login-server URL
// --tailnet-authkey-file F --tailnet-ca F` (verify/upgrade.go,
// docs/state.md):
//
//  1. image A (the test appliance, built from Debian packages, re-baked
//     with a state section) boots with verify's seed (the auth key, the
//     login server and headscale's CA among it) on a new blank volume
//     (raw, virtio serial bake-state); it formats and fills it and joins
//     the tailnet at first boot; its host keys, machine ID, gateway token,
//     Tailscale machine key, node (ID and node key), a file in the
//     gateway's state directory and a Docker volume are recorded
//     (upgrade.old-boot, upgrade.tailnet); it powers off.
//  2. image B, built on the Debian-shaped cloud image (the cloud fixture,
//     testdata/openclaw-cloud-test.yaml) with the same state section, the
//     fixture's kernel (linux-image-cloud-amd64, A runs the generic one)
//     and a different gateway image (the test gateway with another epoch:
//     another digest and image ID), boots on the volume with no seed, on
//     its own disk: all of them are unchanged (upgrade.identity), it is
//     the same node, running and online with no new login
//     (upgrade.tailnet), the instance's checks pass (ssh.*,
//     system.running, firewall, tailscaled, gateway.*), B's kernel and
//     gateway image are the ones running (upgrade.new-image). After its
//     power-off B's root disk is scanned (verify's scanner) for the token,
//     the host private keys, the Tailscale machine key, the auth key and
//     any private key (upgrade.root-disk-secrets).
//  3. rollback: A boots again (from its image, as a cloud relaunches it) on
//     the volume, no seed: the same identities and node, A's kernel and
//     gateway image, the gateway answers (upgrade.rollback,
//     upgrade.tailnet). headscale lists one node after the three boots.
//
// The test then checks the report's evidence against what it built (A's
// generic kernel, B's cloud one, each image's gateway image ID, the
// volume's record), writes a newer state format (2) into the kept volume
// (debugfs, as a newer bake would leave it) and boots:
//
//  4. A on that volume (with a seed, to log in): bake-state refuses it, on
//     the console and in the journal; Docker, tailscaled and the gateway
//     are not started; the volume is not mounted.
//
// An image with a state volume booted without one (the loud warning, on
// the console and in the journal; the root disk's state) was a fifth boot
// here until session 19: verify's state.no-volume proves it in every run
// of such an image, TestDefaultRecipe's (the default recipe's label-only
// volume) included; the serial form of the warning is firstboot's
// TestStateMissingVolume's, the same script.
func TestStateVolume(t *testing.T) {
	parallel(t)
	requireTools(t, "qemu-img", "debugfs", "dnsmasq", "ip", "go")
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
	diskB, idB, recipeB := bakeStateB(t, ctx, work)
	if idA == "" || idB == "" || idA == idB {
		t.Fatalf("gateway image IDs: A %q, B %q (want two different ones)", idA, idB)
	}

	// 1-3: the upgrade proof, as a user's CI runs it.
	vol := filepath.Join(work, "state.raw")
	sumA, sumB := fileSum(t, diskA), fileSum(t, diskB)
	// headscale and bake verify in a namespace of the test's, as
	// TestVerifyAppliance runs them: every boot reaches headscale (and
	// nothing else) through its outbound NIC.
	hs, _ := startHostHeadscale(t, ctx)
	// The claims are B's (its recipe: the cloud recipe's firewall backend
	// is iptables-persistent). The old boot's seed as SMBIOS credentials
	// (the admin's key, the token, the tailnet's key, server and CA): no
	// NoCloud volume, so cloud-init, whose path this test is not about,
	// does not run there (a third of a first boot's CPU: BENCHMARKS.md,
	// session 24); the new and rollback boots have no seed.
	run := runVerifyIn(t, ctx, hs.netns, append(append([]string{diskB}, recipeB...), "--upgrade-from", diskA, "--state-volume", vol, "--seed-via", "smbios", "--timeout", "50m",
		"--tailnet-login-server", hs.URL, "--tailnet-authkey-file", hs.keyFile, "--tailnet-ca", hs.CA.CertFile)...)
	requireAllPass(t, run)
	for _, id := range []string{"upgrade.old-boot", "upgrade.identity", "upgrade.new-image", "upgrade.root-disk-secrets", "upgrade.rollback", "upgrade.tailnet",
		"ssh.key-login", "system.running", "firewall.rules", "tailscale.daemon", "gateway.config", "gateway.auth"} {
		if st := run.report.status(vm.BIOS, id); st != "pass" {
			t.Errorf("bios/%s: %q, want pass", id, st)
		}
	}
	if fileSum(t, diskA) != sumA || fileSum(t, diskB) != sumB {
		t.Errorf("bake verify changed an image")
	}
	evidence := func(id string) string {
		for _, x := range run.report.Results {
			if x.ID == id {
				return x.Evidence
			}
		}
		t.Errorf("the report has no %s", id)
		return ""
	}
	evOld, evID, evNew, evRB := evidence("upgrade.old-boot"), evidence("upgrade.identity"), evidence("upgrade.new-image"), evidence("upgrade.rollback")
	kernelOf := func(ev, who string) string {
		m := regexp.MustCompile(who + `: state status ok, kernel (\S+),`).FindStringSubmatch(ev)
		if m == nil {
			t.Errorf("no kernel of %s in the evidence:\n%s", who, ev)
			return ""
		}
		return m[1]
	}
	if k := kernelOf(evOld, "old"); strings.Contains(k, "cloud") {
		t.Errorf("image A runs kernel %s: want the generic one", k)
	}
	if k := kernelOf(evNew, "new"); !strings.Contains(k, "cloud-amd64") {
		t.Errorf("image B runs kernel %s: want its own, the cloud flavour", k)
	}
	if kernelOf(evRB, "rollback") != kernelOf(evOld, "old") {
		t.Errorf("the rollback runs another kernel than A did")
	}
	if kA, kB := kernelOf(evOld, "old"), kernelOf(evNew, "new"); kA == "" || kA == kB {
		t.Errorf("A runs kernel %q, B %q: want two different ones", kA, kB)
	}
	checkUpgradeTailnet(t, ctx, run, hs, evidence("upgrade.tailnet"), evidence("upgrade.root-disk-secrets"))
	// Each boot runs its own image's gateway (verify holds each to its
	// image's containers.json; here, to the IDs the test built).
	for _, c := range []struct{ who, ev, want, other string }{{"A", evOld, idA, idB}, {"B", evNew, idB, idA}, {"the rollback to A", evRB, idA, idB}} {
		if !strings.Contains(c.ev, c.want) || strings.Contains(c.ev, c.other) {
			t.Errorf("%s: the running gateway image is not %s (and not %s):\n%s", c.who, c.want, c.other, c.ev)
		}
	}
	if !strings.Contains(evNew, "NAME=state-b") || !strings.Contains(evRB, "NAME=state-a") {
		t.Errorf("the volume's record does not name B after B, A after the rollback:\n%s\n%s", evNew, evRB)
	}
	if !strings.Contains(evOld, "formatting the blank disk") && !strings.Contains(evOld, "formatted and used the blank volume") {
		t.Errorf("image A did not format the blank volume:\n%s", evOld)
	}
	if !strings.Contains(evidence("upgrade.root-disk-secrets"), "looked for the gateway token") {
		t.Errorf("the root disk scan did not look for the token")
	}
	// openclaw.json: the image's settings on each boot (verify holds each
	// boot's file to its image's template with the instance's token), B's
	// applied by B's first boot on A's volume, A's back after the rollback.
	for _, c := range []struct {
		who, ev string
		b       bool
	}{{"A", evOld, false}, {"B", evNew, true}, {"the rollback to A", evRB, false}} {
		if !strings.Contains(c.ev, "openclaw.json is its image's template") {
			t.Errorf("%s: verify did not hold openclaw.json to its image's template:\n%s", c.who, c.ev)
		}
		if has := strings.Contains(c.ev, stateBLogging) && strings.Contains(c.ev, stateBEnv); has != c.b {
			t.Errorf("%s: openclaw.json has B's settings: %v, want %v:\n%s", c.who, has, c.b, c.ev)
		}
	}
	if !strings.Contains(evNew, "openclaw.json re-rendered from the new image's template") || !strings.Contains(evNew, "token kept") {
		t.Errorf("B's first boot did not re-render openclaw.json from B's template:\n%s", evNew)
	}
	// The volume after the rollback: A's template rendered with A's
	// token, A's template recorded as applied; the token in no output,
	// report or log of verify's.
	debugfsCat := func(p string) string {
		out, err := exec.CommandContext(ctx, "debugfs", "-R", "cat "+p, vol).Output()
		if err != nil {
			t.Fatalf("debugfs cat %s: %v", p, err)
		}
		return string(out)
	}
	cfgVol := debugfsCat("/data/home/openclaw/.openclaw/openclaw.json")
	tm := regexp.MustCompile(`"token": "([A-Za-z0-9._~+/=-]{16,})"`).FindStringSubmatch(cfgVol)
	if tm == nil {
		t.Fatalf("no token in the volume's openclaw.json (%d bytes)", len(cfgVol))
	}
	volToken := tm[1]
	tplA := debugfsCat("/data/var/lib/bake/firstboot/openclaw.json.in.applied")
	if !strings.Contains(tplA, `"token": "@BAKE_GATEWAY_TOKEN@"`) || strings.Contains(tplA, "logging") {
		t.Errorf("the volume's applied template is not A's:\n%s", tplA)
	}
	if want := strings.TrimRight(strings.Replace(tplA, "@BAKE_GATEWAY_TOKEN@", volToken, 1), "\n") + "\n"; cfgVol != want || strings.Contains(cfgVol, "logging") {
		t.Errorf("the volume's openclaw.json after the rollback is not A's template with the token (%d bytes, want %d)", len(cfgVol), len(want))
	}
	if strings.Contains(run.out, volToken) {
		t.Error("verify's output shows the gateway token")
	}
	filepath.WalkDir(run.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), volToken) {
				t.Errorf("%s holds the gateway token", p)
			}
		}
		return nil
	})
	hostKey := regexp.MustCompile(`presented host key (SHA256:\S+)`).FindStringSubmatch(evID)
	if hostKey == nil {
		t.Fatalf("no presented host key in upgrade.identity:\n%s", evID)
	}
	// The rollback ran A's root disk: B's file is not on it (verify boots
	// A from its unchanged image, checked above).
	rawA := filepath.Join(work, "a.raw")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-O", "raw", diskA, rawA).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	if _, err := cloudimg.ReadRootFile(ctx, rawA, "/etc/bake-upgrade-test", 1024); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("A's root disk has B's file /etc/bake-upgrade-test (or cannot be read): %v", err)
	}
	os.Remove(rawA)

	// A newer bake's format, as the image that wrote it would leave it.
	newer := filepath.Join(work, "format")
	os.WriteFile(newer, []byte("2\n"), 0o644)
	for _, req := range []string{"rm /bake-state/format", "write " + newer + " /bake-state/format"} {
		if out, err := exec.CommandContext(ctx, "debugfs", "-w", "-R", req, vol).CombinedOutput(); err != nil {
			t.Fatalf("debugfs -w -R %q: %v\n%s", req, err, out)
		}
	}
	if out, _ := exec.CommandContext(ctx, "debugfs", "-R", "cat /bake-state/format", vol).Output(); strings.TrimSpace(string(out)) != "2" {
		t.Fatalf("the volume's format after debugfs: %q", out)
	}
	drives := []vm.Drive{{Path: vol, Format: "raw", Serial: "bake-state"}}
	token := "state-" + hex.EncodeToString([]byte(time.Now().String()))[:40]

	// A on a volume of a newer format: refused. A seed lets the admin
	// in (the volume's keys are not used).
	n := bootApplianceWith(t, bootOpts{disk: diskA, firmware: vm.BIOS, token: token + "-n", via: "nocloud", drives: drives})
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
	if n.hostKey == hostKey[1] {
		t.Errorf("newer format: the volume's host key is in use")
	}
	powerOff(t, n, "A on a newer format")
	// A with no state volume (a loud warning, the root disk's state) was
	// a fifth boot here; verify's state.no-volume proves it in every run
	// of an image with a state volume, TestDefaultRecipe's included.
}

// stateBSettings are B's gateway.settings (A has none), and what
// openclaw.json holds of them (compact JSON, as verify shows the template).
const (
	stateBSettings = "  settings:\n    logging: {level: debug}\n    gateway: {controlUi: {environment: {label: state-b, color: teal}}}\n"
	stateBLogging  = `"logging":{"level":"debug"}`
	stateBEnv      = `"controlUi":{"environment":{"color":"teal","label":"state-b"}}`
)

// bakeStateB builds image B: the test appliance's recipe on the
// Debian-shaped cloud image (testdata/openclaw-cloud-test.yaml on the
// cloud fixture, whose kernel is linux-image-cloud-amd64) with the state
// section and the test gateway image made with another epoch (another
// digest and image ID), pushed to the test registry as :state-b. It
// returns the disk, B's gateway image ID and bake verify's arguments that
// give it B's recipe (--recipe and its --set, as TestCloudApplianceVerify
// passes them; the recipe file lives until the test ends).
func bakeStateB(t *testing.T, ctx context.Context, work string) (disk, id string, recipeArgs []string) {
	t.Helper()
	fx := debianFixture(t)
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
	src, err := os.ReadFile(filepath.Join(repoRoot(), cloudApplianceRecipe))
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	if old := "\nname: openclaw-cloud-test\n"; !strings.Contains(text, old) {
		t.Fatalf("%s has no %q", cloudApplianceRecipe, old)
	} else {
		text = strings.Replace(text, old, "\nname: state-b\n", 1)
	}
	// B's recipe owns more of openclaw.json than A's (gateway.settings):
	// first boot renders B's template on A's volume, with A's token, and
	// the rollback A's again (the key is gone).
	if old := "\ngateway:\n  container: openclaw-gateway\n"; !strings.Contains(text, old) {
		t.Fatalf("%s has no %q", cloudApplianceRecipe, old)
	} else {
		text = strings.Replace(text, old, old+stateBSettings, 1)
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
	baseSets := []string{"--set", "base_image=" + fx.path, "--set", "base_sha256=" + fileSum(t, fx.path)}
	sets := append(append([]string{}, in.sets...), baseSets...)
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
	t.Logf("image B (on the Debian-shaped cloud image, its cloud kernel, gateway %s) built in %s", digest, since(t0))
	return filepath.Join(out, "state-b.qcow2"), cfg.String(),
		append([]string{"--recipe", f.Name(), "--set", "gateway_image=" + repo + "@" + digest.String()}, baseSets...)
}

func powerOff(t *testing.T, g *guest, who string) {
	t.Helper()
	g.run("sync; sudo systemctl poweroff")
	select {
	case <-g.v.Exited():
	case <-time.After(3 * time.Minute):
		t.Fatalf("%s did not power off in 3 minutes", who)
	}
	logVMExit(t, who, g.v)
	g.c.Close()
}

// checkUpgradeTailnet: headscale's side of upgrade.tailnet. After the old
// boot, the new image's and the rollback, headscale lists exactly one
// node, the one the evidence names for all three boots (by its tailnet
// address, as checkVerifyTailnet matches them); the auth key is in no
// output or report, and the root disk scan looked for it.
func checkUpgradeTailnet(t *testing.T, ctx context.Context, run verifyRun, hs *hostHeadscale, ev, scanEv string) {
	t.Helper()
	nodes, err := hs.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("headscale's nodes after the upgrade run: %+v", nodes)
	if len(nodes) != 1 {
		t.Errorf("headscale lists %d nodes, want 1 (the instance, the same node after the upgrade and the rollback)", len(nodes))
	}
	for _, n := range nodes {
		if len(n.IPAddresses) == 0 {
			t.Errorf("headscale's node %s (%s) has no address", n.ID, n.Name)
			continue
		}
		for _, who := range []string{"old", "new", "rollback"} {
			found := false
			for _, l := range strings.Split(ev, "\n") {
				if strings.HasPrefix(l, who+": ") && strings.Contains(l, "tailscale status --json") && strings.Contains(l, n.IPAddresses[0]+" ") && strings.Contains(l, "backend Running") {
					found = true
				}
			}
			if !found {
				t.Errorf("upgrade.tailnet does not show the %s boot running as headscale's node %s (%s):\n%s", who, n.ID, n.IPAddresses[0], ev)
			}
		}
	}
	if !strings.Contains(scanEv, "the seed's Tailscale auth key") {
		t.Errorf("the root disk scan did not look for the auth key:\n%s", scanEv)
	}
	assertTailnetReport(t, run, hs)
}
