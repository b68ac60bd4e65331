//go:build vm

package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testcache"
)

// TestDefaultRecipe bakes recipes/openclaw.yaml exactly as the README's
// first command does (scripts/make-image.sh: the gateway image built from
// OpenClaw's npm release with the lockfile beside the recipe, Tailscale
// from a local signed mirror because pkgs.tailscale.com is unreachable
// here) and runs `bake verify` on it with the recipe's claims: the real
// gateway must come up in the VM from the image in the disk, with no route
// out, as the openclaw uid, published on 127.0.0.1:18789 only, answer
// `openclaw gateway health` with the seed's token and refuse a wrong one
// with the mismatch error, next to every other check of the appliance.
//
// Part of `make test`: 13 minutes on a quiet host (build 4 min: the gateway image from npm,
// cached by its lockfile, preloaded into Docker's store in the disk by the
// image's own dockerd, so nothing is loaded at first boot; the gateway
// answering 3m54s after power-on; verify 8m46s). Under software emulation
// the gateway was the fragile part: OpenClaw gives its state-lease
// heartbeat worker a fixed 5 seconds to start, which a TCG guest missed
// whenever the host was busy or slow; the gateway then exited and systemd
// started it again, about 2 minutes per attempt (12 attempts in 20 minutes
// on the machine of session 17). The image's patch (recipes/openclaw-
// gateway/patches) makes it 60 s, and this test requires the gateway's
// unit to have started once (verify's gateway.process evidence:
// "unit restarts 0"). --gateway-timeout 15m bounds the test's time in CI.
// Alone: `go test -tags vm -run TestDefaultRecipe -v ./test/vm/`.
//
// One instance under SeaBIOS: the test appliance covers two instances and
// the reboot, and UEFI is booted by the other appliance tests; this one is
// about the real gateway.
//
// In the first phase (firstPhase, the package doc): beside no other
// appliance test, only the light interrupt tests, one at a time, with
// verify's own choice of two vCPUs. Session 17 tried it holding one VM
// slot from the start, beside the other slot's appliance tests, once the
// patch had ended the restart loop: it passed (gateway after 10m0s, one
// start), but its two-vCPU guest burned 1395 s of CPU there against 870 s
// alone, more than the idle core it filled, and its neighbours slowed
// (BENCHMARKS.md, "The gateway's 5-second lease worker"). Session 18 tried
// it there with one vCPU: the VM tier took as long (3022 s, against 3030 s
// in the CI run before), the test 1427 s (gateway 8m55s after power-on,
// 1125 s of guest CPU) and the whole tier's guests 6% more CPU
// (BENCHMARKS.md, "The first phase, again").
func TestDefaultRecipe(t *testing.T) {
	firstPhase(t, false)
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "go", "npm", "nmap", "dnsmasq")
	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Minute)
	defer cancel()
	out := t.TempDir()

	// The mirror must live inside the recipe's context (the repository);
	// test/vm/.cache is git-ignored. Its tailscale build is the one the
	// other tests cache.
	mirror, err := os.MkdirTemp(filepath.Join(repoRoot(), "test/vm/.cache"), "tailscale-mirror-")
	if os.IsNotExist(err) {
		os.MkdirAll(filepath.Join(repoRoot(), "test/vm/.cache"), 0o755)
		mirror, err = os.MkdirTemp(filepath.Join(repoRoot(), "test/vm/.cache"), "tailscale-mirror-")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(mirror)
	relMirror, _ := filepath.Rel(repoRoot(), mirror)

	t0 := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "scripts/make-image.sh")
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(),
		"BAKE="+bake(t), "OUT="+out, "RECIPE=recipes/openclaw.yaml",
		"BAKE_CACHE_DIR="+cacheDir(),
		"BAKE_CACHE="+filepath.Dir(testcache.Dir("tailscale")),
		"TAILSCALE_MIRROR="+relMirror)
	cmd.WaitDelay = time.Minute
	b, err := cmd.CombinedOutput()
	t.Logf("scripts/make-image.sh (%s):\n%s", since(t0), tailLines(string(b), 60))
	if err != nil {
		t.Fatalf("baking the default recipe: %v", err)
	}
	// make-image.sh stops its mirror server on exit.
	if pid, err := os.ReadFile(filepath.Join(mirror, "serve.pid")); err == nil {
		if _, err := os.Stat("/proc/" + strings.TrimSpace(string(pid))); err == nil {
			t.Errorf("the mirror server (pid %s) outlived make-image.sh", strings.TrimSpace(string(pid)))
		}
	}
	img := filepath.Join(out, "openclaw.qcow2")

	// The build manifest names the gateway image it baked.
	var m struct {
		Containers []struct {
			Name, Digest string
			ImageID      string `json:"image_id"`
		} `json:"containers"`
	}
	mb, err := os.ReadFile(filepath.Join(out, "openclaw.manifest.json"))
	if err == nil {
		err = json.Unmarshal(mb, &m)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Containers) != 1 || m.Containers[0].Name != "openclaw-gateway" || !strings.HasPrefix(m.Containers[0].Digest, "sha256:") {
		t.Errorf("manifest containers: %+v", m.Containers)
	}

	run := runVerify(t, ctx, img, "--recipe", filepath.Join(repoRoot(), "recipes/openclaw.yaml"),
		"--firmware", "bios", "--instances", "1", "--timeout", "40m", "--gateway-timeout", "15m",
		"--cpus", "0") // verify's own choice: alone on the host, two vCPUs
	t.Logf("bake verify:\n%s", run.out)
	if run.code != 0 {
		t.Errorf("bake verify exit %d, want 0 (every check passes on the default image)", run.code)
	}
	for _, id := range []string{"gateway.config", "gateway.process", "gateway.listen", "gateway.auth", "gateway.offline",
		"ssh.key-login", "system.running", "network.scan", "isolation.outside", "state.no-volume"} {
		if st := run.report.status("bios", id); st != "pass" {
			t.Errorf("%s: %q, want pass", id, st)
		}
	}
	for _, x := range run.report.Results {
		switch x.ID {
		case "gateway.auth":
			// The real gateway's own answers to bake verify's protocol
			// client (internal/gwprobe), on both paths: its hello-ok and
			// health for the token, its refusals of a wrong one and of none.
			for _, want := range []string{"through the published port", "inside the container",
				"connect accepted: hello-ok (server ", "; health: ok", "gateway token mismatch", "NOT_PAIRED"} {
				if !strings.Contains(x.Evidence, want) {
					t.Errorf("gateway.auth evidence lacks %q:\n%s", want, x.Evidence)
				}
			}
		case "gateway.process":
			if !strings.Contains(x.Evidence, "openclaw") {
				t.Errorf("gateway.process does not name the openclaw user:\n%s", x.Evidence)
			}
			// The gateway started once: the image's patch of OpenClaw's
			// 5-second lease worker start (recipes/openclaw-gateway/
			// patches) holds under TCG. Before it, the container exited
			// and systemd restarted it up to 12 times in this test.
			if !strings.Contains(x.Evidence, "bake-container-openclaw-gateway.service unit restarts 0)") {
				t.Errorf("the gateway's unit was restarted before it answered (or verify did not say):\n%s", x.Evidence)
			}
		case "gateway.offline":
			if len(m.Containers) == 1 && !strings.Contains(x.Evidence, m.Containers[0].ImageID) {
				t.Errorf("gateway.offline does not show the baked image %s:\n%s", m.Containers[0].ImageID, x.Evidence)
			}
		}
	}
	// The default recipe keeps its state on a volume labelled bake-state
	// (issue 15); verify attaches none, so the instance runs from its
	// root disk (every check above passed that way) and says so on the
	// console, as docs/state.md promises.
	if serial, err := os.ReadFile(filepath.Join(run.dir, "serial-bios-0.log")); err != nil {
		t.Errorf("serial log: %v", err)
	} else if !strings.Contains(string(serial), "bake-state: warning: NO STATE VOLUME: no disk labelled bake-state") {
		t.Errorf("the console of an instance with no state volume does not carry bake-state's warning")
	}
	for _, x := range run.report.Results {
		switch x.ID {
		case "gateway.process":
			t.Logf("%s: %s", x.ID, firstLine(x.Evidence))
		case "gateway.auth":
			// Whole: each probe's answer and time, and the tries while
			// the gateway settled (BENCHMARKS.md reads them from CI).
			t.Logf("%s:\n%s", x.ID, x.Evidence)
		}
	}
	if t.Failed() {
		// The whole evidence (the summary cuts it) and the serial console,
		// so that a failure in CI can be understood from its log.
		for _, x := range run.report.Results {
			if x.Status == "fail" {
				t.Logf("%s/%s evidence:\n%s", x.Firmware, x.ID, x.Evidence)
			}
		}
		logs, _ := filepath.Glob(filepath.Join(run.dir, "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			t.Logf("%s (last 150 lines):\n%s", filepath.Base(l), tailLines(string(b), 150))
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
