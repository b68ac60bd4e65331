//go:build vm

package vmtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/verify"
)

// TestVerifyNegative: a verifier that cannot fail proves nothing. From the
// good test appliance (applianceImage) bake itself bakes a broken one, with
// ordinary recipe steps on the good image as a cloud-image base (extract,
// files, reassemble: about a minute), carrying twelve defects at once:
//
//  1. password login allowed: an sshd drop-in that sorts before bake's
//     00-bake.conf (sshd keeps the first value it reads);
//  2. no Docker isolation: DOCKER-USER and the loopback guard emptied (the
//     rule files bake-docker-user.service loads), so published container
//     ports bypass ufw, as with docker_isolation off;
//  3. the gateway published on 0.0.0.0 and
//  5. run as root (uid 0, Docker's default capabilities): one drop-in
//     replacing the ExecStart of bake-container-openclaw-gateway.service;
//  4. a token baked into the disk (a Tailscale auth key in a file);
//  6. the admin in the docker group: an ExecStartPre in the same drop-in
//     (usermod -aG docker, as root), and another that copies openclaw.json
//     (with the token) to a world-readable openclaw.json.last-good (the
//     name of OpenClaw's own backup, allowed only as private as the
//     config: secrets.seed-copies);
//  7. a UDP port open past ufw: an iptables ACCEPT for 9999/udp added
//     after ufw starts (a drop-in of ufw.service), which `ufw status`
//     does not list (firewall.rules passes) and only the UDP sweep sees;
//  8. cloud-init's stored user-data kept: the scrub unit's ExecStart
//     replaced by /bin/true (a drop-in), so user-data.txt and obj.pkl
//     keep verify's canary;
//  9. (not a step: the image's record of its claims is the broken
//     recipe's, not the recipe verify is given);
//  10. the metadata block without its DNS exception: of DOCKER-USER only
//     a DROP of 168.63.129.16 is left over IPv4 (port 53 included), so
//     containers lose the resolver a cloud puts there, while
//     169.254.169.254 stays reachable (2);
//  11. one identity for every instance: a machine-id on the kernel
//     command line (systemd.machine_id=) and an SSH host key copied into
//     /etc/ssh before bake-hostkeys runs (a drop-in), as an image with
//     its build's identity baked in would have; it needs two instances,
//     so this verify runs the default two and a reboot;
//  12. a funnel entry in tailscaled's serve configuration: a drop-in of
//     bake-tailscale-up.service whose ExecStartPost, right after first
//     boot's join and its serve-http, marks the served host for funnel
//     (AllowFunnel, written with `tailscale serve set-raw`, the way a
//     careless image or admin would: the CLI's `tailscale funnel` asks
//     the control server first). In the join unit itself, not a unit
//     after it, so the entry is there when the unit is done, which is
//     when verify reads the serve status (no race). headscale grants no
//     funnel, so nothing reaches the internet: the entry is what verify
//     must catch. For it this verify runs with --tailnet-* against a
//     headscale of the test's, as TestVerifyAppliance does (bake verify in
//     a namespace with only headscale's loopback); the last instance
//     (bios-1, the rebooted one) joins.
//
// bake verify (--recipe: the claims of the good recipe) must exit 1 with
// exactly the checks below failing, each with the evidence of its defect,
// and every other check passing: the failures are specific, not a boot
// gone wrong.
//
// One combined image, verified once, because of cost: under TCG a verify
// boots the appliance and runs an nmap of all 65535 ports over IPv4 and
// IPv6 (minutes each); five images would be five builds and five verifies,
// and make test must stay under an hour. Combining is sound because the
// defects change disjoint things and the checks observe them separately:
// sshd's settings and logins (ssh.*), the container's port bindings and
// sockets (gateway.listen), its processes' /proc status (gateway.process),
// bytes on the disk (secrets.disk), INPUT's UDP path measured by the
// guest's counters (network.udp), the DOCKER-USER path measured with
// verify's own probe containers (isolation.*), which do not involve the
// gateway at all, and tailscaled's serve configuration (tailscale.serve),
// which no other defect touches: the join, the key's removal and the same
// node after the reboot (tailscale.joined, key-gone, reboot) must pass. The one overlap is deliberate and named: the gateway on
// 0.0.0.0 is reachable from outside only because isolation is gone too, so
// network.scan (18789/tcp open) fails from 2 and 3 together, and
// gateway.listen reports the binding (3) and, besides, the reachability.
// The checks that must still pass (SSH key login, a settled system, ufw,
// tailscaled, the gateway's config, token auth and offline start, the
// probe containers on loopback, the tailnet join) show the broken image is
// otherwise whole;
// the good image passes every one of these checks (TestVerifyAppliance).
func TestVerifyNegative(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	dir := applianceImage(t)
	requireTools(t, "nmap", "dnsmasq", "ip")
	t0 := time.Now()
	good := filepath.Join(dir, "openclaw-test.qcow2")
	recipePath := filepath.Join(repoRoot(), applianceRecipe)
	rec, err := recipe.LoadIn(repoRoot(), recipePath, map[string]string{"gateway_image": applImg.ref})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := verify.SpecFromRecipe(rec)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Gateway == nil {
		t.Fatal("the test recipe has no gateway")
	}
	imageID := containerImageID(t, filepath.Join(dir, "openclaw-test.manifest.json"), spec.Gateway.Container)

	work := t.TempDir()
	token := fakeTailscaleKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	hostKey, hostPub := sharedHostKey(t)
	out, _, buildTime := bakeRecipeText(t, ctx, work, "broken", brokenRecipe(good, fileSum(t, good), spec, imageID, token, hostKey, hostPub))
	t.Logf("bake build of the broken image: %s", buildTime)
	img := filepath.Join(out, "openclaw-broken.raw")

	// Defect 12: bios-1 joins a headscale of the test's, as in
	// TestVerifyAppliance (bake verify in its namespace).
	hs, hsUser := startHostHeadscale(t, ctx)

	tv := time.Now()
	// No check may be skipped: a skip fails the run (fail closed; --strict
	// is a no-op alias). Two instances and a reboot (the default), for
	// defect 11; the last one joins the tailnet, for defect 12. The seeds
	// as in TestVerifyAppliance: bios-0's NoCloud volume (whose user-data,
	// with verify's canary, cloud-init keeps for defect 8), bios-1's SMBIOS
	// credentials, the tailnet's included: cloud-init has no datasource
	// there and does not run, about a third of an appliance boot's CPU
	// on its first boot and again on its reboot (BENCHMARKS.md, session 24).
	run := runVerifyIn(t, ctx, hs.netns, img, "--recipe", recipePath, "--set", "gateway_image="+applImg.ref,
		"--firmware", "bios", "--instances", "2", "--seed-via", "nocloud,smbios", "--strict", "--timeout", "35m",
		"--tailnet-login-server", hs.URL, "--tailnet-authkey-file", hs.keyFile, "--tailnet-ca", hs.CA.CertFile)
	t.Logf("output:\n%s", run.out)
	t.Logf("times: build %s, verify %s, test %s", buildTime, since(tv), since(t0))
	if run.code != 1 {
		t.Errorf("exit status %d, want 1 (the image fails): %s", run.code, run.report.Verdict)
	}
	if run.report.HostError != "" {
		t.Errorf("host error: %s", run.report.HostError)
	}

	// Each failing check, with what its evidence must say: the defect it
	// caught, not some other trouble.
	wantFail := map[string][]string{
		// 1. password login
		"bios/ssh.effective-config": {`passwordauthentication is "yes"`},
		"bios/ssh.password-refused": {"admin logged in with the right password"},
		// sshd offers password authentication to root too; root itself
		// is still refused (PermitRootLogin no stays): checked below.
		"bios/ssh.root-refused": {"offers password"},
		// 2. no Docker isolation
		"bios/isolation.outside":          {"reachable from outside"},
		"bios/isolation.loopback-via-mac": {"answered a packet from outside to 127.0.0.1"},
		"bios/isolation.metadata": {"a container reached 169.254.169.254:80",
			// 10. the metadata block without its DNS exception
			"a container cannot resolve at the cloud resolver 168.63.129.16:53"},
		// 3. the gateway on 0.0.0.0 (and, with 2, reachable from outside)
		"bios/gateway.listen": {`published on "0.0.0.0"`},
		"bios/network.scan":   {fmt.Sprintf("%d/tcp is open", spec.Gateway.Port)},
		// 4. a token in the image (and 11's host key, kept on the disk
		// for the drop-in to copy)
		"image/secrets.disk": {"FOUND tailscale-auth-key", "FOUND private-key"},
		// 5. the gateway as root
		"bios/gateway.process": {"runs as root"},
		// 6. the admin in the docker group (the same drop-in adds it)
		"bios/isolation.docker-group": {spec.AdminUser + " is in the docker group"},
		// 7. 9999/udp accepted behind ufw's back
		"bios/network.udp": {"9999/udp passed the firewall"},
		// 8. cloud-init's copies of the user-data not scrubbed
		"bios/secrets.seed-copies": {"the canary of the seed's user-data", "has a copy in /var/lib/cloud/instances/",
			// 6 too: the drop-in leaves a world-readable
			// openclaw.json.last-good (the backup OpenClaw keeps, allowed
			// only as private as openclaw.json)
			spec.Gateway.ConfigPath + verify.LastGoodSuffix + ": mode 644 owner uid"},
		// 9. the image was built from another recipe (the broken one,
		// with no firewall or gateway section): its record of its
		// claims differs from the recipe verify was given.
		"image/image.claims": {"differs", "firewall:", "gateway:"},
		// 11. every instance with the same machine-id and host key
		"bios/identity.unique": {"bios-0 and bios-1 share machine-id " + sharedMachineID, "share the SSH host key"},
		// 12. a funnel entry for the served host (serve-http's port), in
		// the serve status as tailscaled stores it; the problem is the
		// funnel alone (checked below).
		"bios/tailscale.serve": {"funnel is on for ", fmt.Sprintf(":%d (the gateway would be served to the internet)", spec.TailscaleServeHTTP),
			`"AllowFunnel"`},
	}
	var failed []string
	seen := map[string]bool{}
	for _, x := range run.report.Results {
		key := x.Firmware + "/" + x.ID
		if x.Firmware == "" {
			key = "image/" + x.ID
		}
		seen[key] = true
		t.Logf("%-34s %-4s %6.1fs", key, x.Status, x.Seconds)
		switch {
		case wantFail[key] != nil:
			if x.Status != "fail" {
				t.Errorf("%s: %s, want fail (its defect went unnoticed)\n%s", key, x.Status, x.Evidence)
				continue
			}
			failed = append(failed, key)
			for _, s := range wantFail[key] {
				if !strings.Contains(x.Evidence, s) {
					t.Errorf("%s failed, but its evidence does not say %q:\n%s", key, s, x.Evidence)
				}
			}
		default:
			if x.Status != "pass" {
				t.Errorf("%s: %s, want pass (no defect of the image touches it)\n%s", key, x.Status, x.Evidence)
			}
		}
		if key == "bios/ssh.root-refused" && strings.Contains(x.Evidence, "root logged in") {
			t.Errorf("root logged in on the broken image: PermitRootLogin no was not touched\n%s", x.Evidence)
		}
		if strings.Contains(x.Evidence, token) {
			t.Errorf("%s: the report shows the baked token unredacted", key)
		}
	}
	// A shared identity is kept over a reboot, and first boot still
	// applied the seed once: identity.reboot passes (the default case
	// above), with first boot's "nothing to do" in its evidence.
	for _, x := range run.report.Results {
		if x.ID == "identity.reboot" && !strings.Contains(x.Evidence, "nothing to do") {
			t.Errorf("identity.reboot evidence lacks first boot's \"nothing to do\":\n%s", x.Evidence)
		}
	}
	for _, id := range verify.PlanTailnet(spec, 2, true) {
		if !seen["bios/"+id] {
			t.Errorf("bios/%s: no result", id)
		}
	}
	// Defect 12 is the funnel entry and nothing else: serve's one problem
	// is it (the recipe's serve-http entry is there, proxied to the
	// gateway), and the join, the key's removal and the same node after
	// the reboot pass; headscale agrees (one node, the one verify names;
	// the key in no output).
	if ev := run.report.evidence("bios", "tailscale.serve"); ev != "" {
		problems, status, _ := strings.Cut(ev, "\n\n")
		lines := strings.Split(problems, "\n")
		host, _, _ := strings.Cut(strings.TrimPrefix(lines[0], "funnel is on for "), " ")
		switch {
		case len(lines) != 1 || !strings.HasPrefix(lines[0], "funnel is on for "):
			t.Errorf("bios/tailscale.serve: want the funnel entry as its one problem, got %q", lines)
		case strings.Count(status, strconv.Quote(host)) < 2:
			// The funnelled host is the served one: a Web entry and an
			// AllowFunnel entry in the status as tailscaled stores it.
			t.Errorf("bios/tailscale.serve: the funnelled host %q is not both served and funnelled in the serve status:\n%s", host, status)
		default:
			t.Logf("bios/tailscale.serve fails on the funnel entry alone: %s", lines[0])
		}
	}
	for _, id := range []string{"tailscale.joined", "tailscale.key-gone", "tailscale.reboot"} {
		if st := run.report.status("bios", id); st != "pass" {
			t.Errorf("bios/%s: %q, want pass (defect 12 is the funnel entry only)\n%s", id, st, run.report.evidence("bios", id))
		}
	}
	checkVerifyTailnet(t, ctx, run, hs, hsUser, []string{"bios"})
	for k := range wantFail {
		if !seen[k] {
			t.Errorf("%s: no result", k)
		}
	}
	sort.Strings(failed)
	t.Logf("failing checks: %s", strings.Join(failed, ", "))
	for k := range wantFail {
		if !slices.Contains(failed, k) {
			continue
		}
		if !strings.Contains(run.report.Verdict, k) {
			t.Errorf("the verdict does not name %s: %q", k, run.report.Verdict)
		}
	}
	assertVerifyCleanedUp(t, run.out)
}

// brokenRecipe is the recipe of the broken image: the good one as its base
// and the defects as files.
func brokenRecipe(base, sum string, spec verify.Spec, imageID, token, hostKey, hostPub string) string {
	g := spec.Gateway
	// What bake's unit runs (appliance.ContainerSpec.RunArgs), with the
	// gateway published on every address and run as root with Docker's
	// default capabilities (as root with --cap-drop ALL it could not even
	// read its 0600 config, owned by its user: it would not start, and
	// the test would prove less).
	execStart := strings.Join([]string{"/usr/bin/docker", "run", "--rm", "--name", g.Container,
		"--user", "0:0", "--security-opt", "no-new-privileges",
		"--publish", fmt.Sprintf("0.0.0.0:%d:%d", g.Port, g.Port),
		"--volume", filepath.Dir(g.ConfigPath) + ":/home/node/.openclaw",
		imageID}, " ")
	// Over IPv4 one rule is left (defect 10): 168.63.129.16 dropped
	// whole, its resolver's port 53 with it.
	noIsolation := `# DOCKER-USER returns everything to Docker; no loopback guard.
*raw
:BAKE-LOCALNET - [0:0]
COMMIT
*filter
:DOCKER-USER - [0:0]
%s-A DOCKER-USER -j RETURN
COMMIT
`
	noIsolation4 := fmt.Sprintf(noIsolation, "-A DOCKER-USER -d 168.63.129.16/32 -j DROP\n")
	noIsolation6 := fmt.Sprintf(noIsolation, "")
	return fmt.Sprintf(`apiVersion: bake/v1
name: openclaw-broken
description: the test appliance with twelve defects bake verify must find
base:
  image:
    path: %s
    sha256: %s
kernel:
  cmdline: systemd.machine_id=%s
files:
  - path: /usr/local/lib/broken/ssh_host_ed25519_key
    mode: "0600"
    content: |
%s
  - path: /usr/local/lib/broken/ssh_host_ed25519_key.pub
    content: |
%s
  - path: /etc/systemd/system/bake-hostkeys.service.d/90-shared.conf
    content: |
      [Service]
      ExecStartPre=/bin/cp /usr/local/lib/broken/ssh_host_ed25519_key /usr/local/lib/broken/ssh_host_ed25519_key.pub /etc/ssh/
  - path: /etc/ssh/sshd_config.d/0-allow-password.conf
    content: |
      # sorts before 00-bake.conf: sshd keeps the first value
      PasswordAuthentication yes
      KbdInteractiveAuthentication yes
      AuthenticationMethods any
  - path: /etc/bake/docker-user.rules.v4
    content: |
%s
  - path: /etc/bake/docker-user.rules.v6
    content: |
%s
  - path: /etc/systemd/system/bake-container-%s.service.d/90-exposed-root.conf
    content: |
      [Service]
      ExecStartPre=+/usr/sbin/usermod -aG docker %s
      ExecStartPre=+/bin/sh -c 'cp %s %s%s && chmod 0644 %s%s'
      ExecStart=
      ExecStart=%s
  - path: /etc/openclaw/deploy.env
    mode: "0600"
    content: |
      TS_AUTHKEY=%s
  - path: /etc/systemd/system/ufw.service.d/90-udp-hole.conf
    content: |
      [Service]
      ExecStartPost=/usr/sbin/iptables -w -I INPUT -p udp --dport 9999 -j ACCEPT
  - path: /etc/systemd/system/bake-cloud-init-scrub.service.d/90-off.conf
    content: |
      [Service]
      ExecStart=
      ExecStart=/bin/true
  - path: /usr/local/lib/broken/funnel
    mode: "0755"
    content: |
%s
  - path: /etc/systemd/system/bake-tailscale-up.service.d/90-funnel.conf
    content: |
      [Service]
      ExecStartPost=/usr/local/lib/broken/funnel
outputs: [raw]
`, base, sum, sharedMachineID, indent(hostKey, 6), indent(hostPub, 6), indent(noIsolation4, 6), indent(noIsolation6, 6), g.Container, spec.AdminUser, g.ConfigPath, g.ConfigPath, verify.LastGoodSuffix, g.ConfigPath, verify.LastGoodSuffix, execStart, token,
		indent(funnelScript, 6))
}

// funnelScript is defect 12: run by the join unit after its serve, it
// marks every served host for funnel and writes the configuration back
// raw (tailscaled stores it as given; `tailscale funnel` would first ask
// the control server for the funnel attribute, which headscale never
// grants).
const funnelScript = `#!/usr/bin/python3
# A careless image: the gateway's serve entry funnelled to the internet.
import json, subprocess, sys
out = subprocess.run(["tailscale", "serve", "status", "--json"], check=True, capture_output=True).stdout
cfg = json.loads(out or b"{}")
hosts = sorted(cfg.get("Web") or {})
if not hosts:
    sys.exit("no serve entry to funnel: " + out.decode())
cfg["AllowFunnel"] = {h: True for h in hosts}
subprocess.run(["tailscale", "serve", "set-raw"], input=json.dumps(cfg).encode(), check=True)
print("funnel on for", ", ".join(hosts))
`

// sharedMachineID is defect 11's machine-id, the same on every instance.
const sharedMachineID = "b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5"

// sharedHostKey is defect 11's SSH host key (made per run), as the
// private key file and its .pub line.
func sharedHostKey(t *testing.T) (string, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "broken-shared")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " root@broken-shared"
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = pad + l
	}
	return strings.Join(lines, "\n")
}

// containerImageID is the image ID the good image's unit runs, from its
// build manifest.
func containerImageID(t *testing.T, manifest, name string) string {
	t.Helper()
	b, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Containers []struct {
			Name    string `json:"name"`
			ImageID string `json:"image_id"`
		} `json:"containers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Containers {
		if c.Name == name && strings.HasPrefix(c.ImageID, "sha256:") {
			return c.ImageID
		}
	}
	t.Fatalf("%s: no image ID for container %s", manifest, name)
	return ""
}

// fakeTailscaleKey is a made-up auth key of the real shape (made per run:
// no key-like string sits in the source).
func fakeTailscaleKey(t *testing.T) string {
	t.Helper()
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	pick := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alnum))))
			if err != nil {
				t.Fatal(err)
			}
			b[i] = alnum[k.Int64()]
		}
		return string(b)
	}
	// Upper and lower case and digits in the secret part, as in a real key.
	return "tskey-auth-k" + pick(9) + "-Ab3" + pick(37)
}
