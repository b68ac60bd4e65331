//go:build vm

package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/internal/imgfile"
	"github.com/bakeimg/bake/internal/tailnettest"
	"github.com/bakeimg/bake/internal/testcache"
	"github.com/bakeimg/bake/verify"
	"github.com/bakeimg/bake/vm"
)

// verifyRun is one `bake verify` run.
type verifyRun struct {
	out    string // stdout and stderr
	code   int
	report verifyReport
	dir    string // the report directory (report.json, junit.xml, serial logs)
}

type verifyReport struct {
	Image       string `json:"image"`
	SHA256      string `json:"sha256"`
	HostError   string `json:"host_error"`
	Interrupted string `json:"interrupted"`
	ExitCode    int    `json:"exit_code"`
	Verdict     string `json:"verdict"`
	// Seeds: how each instance got its seed (--seed-via), by instance.
	Seeds   map[string]string `json:"seeds"`
	Tailnet string            `json:"tailnet"` // --tailnet-login-server
	// GuestCPU: the CPU seconds each instance's QEMU used, by instance.
	GuestCPU map[string]float64 `json:"guest_cpu_seconds"`
	Results  []struct {
		ID       string  `json:"id"`
		Firmware string  `json:"firmware"`
		Status   string  `json:"status"`
		Accepted string  `json:"accepted"` // a skip that fails nothing: "allow-skip" or "by-request"
		Evidence string  `json:"evidence"`
		Seconds  float64 `json:"seconds"`
	} `json:"results"`
}

func (r verifyReport) evidence(fw, id string) string {
	for _, x := range r.Results {
		if x.ID == id && x.Firmware == fw {
			return x.Evidence
		}
	}
	return ""
}

func (r verifyReport) status(fw, id string) string {
	for _, x := range r.Results {
		if x.ID == id && x.Firmware == fw {
			return x.Status
		}
	}
	return ""
}

// startVerify starts `bake verify ARGS --report DIR`; onLine sees each
// line of output as it comes. wait returns the run.
func startVerify(t *testing.T, ctx context.Context, onLine func(string), args ...string) (cmd *exec.Cmd, wait func() verifyRun) {
	t.Helper()
	return startVerifyIn(t, ctx, "", onLine, args...)
}

// startVerifyIn is startVerify in the network namespace netns ("": the
// test's own), through ip netns exec (which execs bake: cmd's process is
// bake's).
func startVerifyIn(t *testing.T, ctx context.Context, netns string, onLine func(string), args ...string) (cmd *exec.Cmd, wait func() verifyRun) {
	t.Helper()
	report := t.TempDir()
	// Each VM gets the test's share of the host's cores (vmCPUs), not
	// what verify would pick for a host it had to itself.
	if !slices.Contains(args, "--cpus") && !slices.Contains(args, vm.UEFI) && !slices.Contains(args, "both") {
		args = append(args, "--cpus", strconv.Itoa(vmCPUs(vm.BIOS)))
	}
	argv := append(append([]string{bake(t), "verify"}, args...), "--report", report)
	if os.Getenv("BAKE_VMTEST_VERIFY_KEEP") == "1" {
		// Debugging: verify keeps its work directory (seeds, the
		// throwaway key, serial logs; not the disks) and prints where.
		argv = append(argv, "--keep")
	}
	if netns != "" {
		argv = append([]string{"ip", "netns", "exec", netns}, argv...)
	}
	cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "BAKE_CACHE_DIR="+cacheDir())
	cmd.Dir = repoRoot() // see runBake
	cmd.WaitDelay = time.Minute
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var buf bytes.Buffer
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			mu.Lock()
			buf.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if onLine != nil {
				onLine(sc.Text())
			}
		}
		io.Copy(io.Discard, pr)
	}()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting bake verify: %v", err)
	}
	return cmd, func() verifyRun {
		err := cmd.Wait()
		pw.Close()
		<-done
		run := verifyRun{out: buf.String(), dir: report}
		if err != nil {
			ee, ok := err.(*exec.ExitError)
			if !ok {
				t.Fatalf("bake verify: %v\n%s", err, run.out)
			}
			run.code = ee.ExitCode()
		}
		b, err := os.ReadFile(filepath.Join(report, "report.json"))
		if err != nil {
			t.Fatalf("no report.json: %v\n%s", err, run.out)
		}
		if err := json.Unmarshal(b, &run.report); err != nil {
			t.Fatalf("report.json: %v", err)
		}
		if _, err := os.Stat(filepath.Join(report, "junit.xml")); err != nil {
			t.Errorf("no junit.xml: %v", err)
		}
		return run
	}
}

// requireAllPass logs the run's output and fails the test unless it exited
// 0 with every check passing.
func requireAllPass(t *testing.T, run verifyRun) {
	t.Helper()
	t.Logf("output:\n%s", run.out)
	if run.code != 0 {
		t.Errorf("exit status %d, want 0: %s", run.code, run.report.Verdict)
	}
	for _, x := range run.report.Results {
		if x.Status != "pass" {
			t.Errorf("%s/%s: %s\n%s", x.Firmware, x.ID, x.Status, x.Evidence)
		}
	}
}

func runVerify(t *testing.T, ctx context.Context, args ...string) verifyRun {
	t.Helper()
	return runVerifyIn(t, ctx, "", args...)
}

// runVerifyIn is runVerify with bake verify in the network namespace
// netns ("": the test's own).
func runVerifyIn(t *testing.T, ctx context.Context, netns string, args ...string) verifyRun {
	t.Helper()
	t0 := time.Now()
	_, wait := startVerifyIn(t, ctx, netns, nil, args...)
	run := wait()
	t.Logf("bake verify %s: exit %d after %s", strings.Join(args, " "), run.code, since(t0))
	return run
}

// fileSum is p's sha256 (a sparse raw's holes hashed from memory, as bake
// hashes its outputs: imgfile.HashSparse).
func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if err := imgfile.HashSparse(context.Background(), h, f, st.Size()); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var (
	verifyPIDRE  = regexp.MustCompile(`QEMU pid (\d+) .*netns (\S+), dnsmasq pid (\d+)`)
	verifyWorkRE = regexp.MustCompile(`work directory (\S+)`)
)

// assertVerifyCleanedUp: every QEMU and dnsmasq verify started is gone,
// and so are its namespaces (with their tap devices) and its work dir.
func assertVerifyCleanedUp(t *testing.T, out string) {
	t.Helper()
	ms := verifyPIDRE.FindAllStringSubmatch(out, -1)
	if len(ms) == 0 {
		t.Errorf("no QEMU was started (no \"QEMU pid\" line):\n%s", out)
	}
	netns, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	for _, m := range ms {
		for _, p := range []string{m[1], m[3]} {
			pid, _ := strconv.Atoi(p)
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				cmdline, _ := os.ReadFile("/proc/" + p + "/cmdline")
				t.Errorf("process %d is still alive after bake verify: %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
			}
		}
		if strings.Contains(string(netns), m[2]) {
			t.Errorf("network namespace %s (and its tap device) left behind", m[2])
		}
	}
	for _, m := range verifyWorkRE.FindAllStringSubmatch(out, -1) {
		if _, err := os.Stat(m[1]); err == nil {
			t.Errorf("work directory %s left behind", m[1])
		}
	}
}

// TestVerifyPlainImage: an image that is not an appliance (the boot test's:
// no sshd, no firewall, no Docker) makes bake verify exit 1 naming the
// failing checks, without a crash, within its timeout, leaving no QEMU,
// dnsmasq, namespace, tap device or work file behind and the image as it
// was.
func TestVerifyPlainImage(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	dir := bootImage(t)
	requireTools(t, "nmap", "dnsmasq", "ip")
	img := filepath.Join(dir, "boottest.qcow2")
	sum := fileSum(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// One instance: nothing logs in to this image, so identity could
	// not be checked anyway (listed as skipped by request).
	run := runVerify(t, ctx, img, "--instances", "1", "--timeout", "25m")
	t.Logf("output:\n%s", run.out)
	if run.code != 1 {
		t.Errorf("exit status %d, want 1 (the image fails)", run.code)
	}
	if strings.Contains(run.out, "panic:") || strings.Contains(run.out, "goroutine ") {
		t.Errorf("bake verify crashed")
	}
	r := run.report
	if r.SHA256 != sum || !strings.Contains(run.out, "sha256:"+sum) {
		t.Errorf("report names sha256 %q, the image's is %s", r.SHA256, sum)
	}
	if r.HostError != "" {
		t.Errorf("host error on a host that runs VMs: %s", r.HostError)
	}
	if st := r.status("bios", "ssh.key-login"); st != "fail" {
		t.Errorf("bios/ssh.key-login is %q, want fail (there is no sshd)", st)
	}
	if !strings.Contains(run.out, "FAIL  bios/ssh.key-login") || !strings.Contains(r.Verdict, "bios/ssh.key-login") {
		t.Errorf("the summary or verdict does not name bios/ssh.key-login: %q", r.Verdict)
	}
	// Concluded by the refusals after the login prompt (refusedGrace), not
	// by sshWaitMax's 15 minutes.
	if !strings.Contains(run.out, "nothing listens on the guest's port 22: connections refused for 1m0s after the console showed a login prompt") {
		t.Errorf("bios/ssh.key-login's evidence does not say that nothing listens on port 22 after the login prompt")
	}
	// Checks that need no login still run and see the image as it is:
	// systemd-resolved's LLMNR port is open, no SSH is.
	if st := r.status("bios", "network.scan"); st != "fail" {
		t.Errorf("bios/network.scan is %q, want fail", st)
	}
	if st := r.status("", "secrets.disk"); st != "pass" {
		t.Errorf("secrets.disk is %q, want pass", st)
	}
	if got := fileSum(t, img); got != sum {
		t.Errorf("the image changed: sha256 %s -> %s", sum, got)
	}
	// The one instance's QEMU: its exit line in the output, its CPU
	// seconds in the report, the same number.
	if m := verifyCPURE.FindStringSubmatch(run.out); m == nil {
		t.Errorf("no \"bios-0: QEMU (pid N) exited after ..., S s of CPU (N vCPU)\" line in the output")
	} else if cpu, said := r.GuestCPU["bios-0"], atof(m[1]); cpu <= 0 || math.Abs(cpu-said) > 0.051 {
		t.Errorf("report.json's guest_cpu_seconds %v, want bios-0's %s s > 0 as the output says", r.GuestCPU, m[1])
	}
	assertVerifyCleanedUp(t, run.out)
}

func atof(s string) float64 { f, _ := strconv.ParseFloat(s, 64); return f }

var verifyCPURE = regexp.MustCompile(`verify: bios-0: QEMU \(pid \d+\) exited after \S+, (\d+\.\d) s of CPU \(\d+ vCPUs?\)`)

// TestVerifyInterrupted: Ctrl-C while the VM boots stops bake verify at
// once with status 130, a report saying so, and nothing left behind.
func TestVerifyInterrupted(t *testing.T) {
	firstPhase(t, true)
	dir := bootImage(t)
	requireTools(t, "dnsmasq", "ip")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	started := make(chan struct{})
	var once sync.Once
	cmd, wait := startVerify(t, ctx, func(line string) {
		if strings.Contains(line, "QEMU pid") {
			once.Do(func() { close(started) })
		}
	}, filepath.Join(dir, "boottest.qcow2"), "--cpus", "0") // verify's own choice
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("QEMU never started")
	}
	time.Sleep(10 * time.Second) // booting
	t0 := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	run := wait()
	t.Logf("exit %d %s after SIGINT:\n%s", run.code, since(t0), run.out)
	if d := time.Since(t0); d > 90*time.Second {
		t.Errorf("bake verify took %s to stop after SIGINT", d)
	}
	if run.code != 130 || run.report.Interrupted == "" {
		t.Errorf("exit %d, interrupted %q; want 130 and a reason", run.code, run.report.Interrupted)
	}
	assertVerifyCleanedUp(t, run.out)
}

// TestVerifyKilled: SIGKILL gives bake verify no chance to clean up. Its
// QEMU and dnsmasq die with it (Pdeathsig); its network namespace (with
// the tap device in it), its Link's dir, its VM's dir and its work dir
// stay, and the next bake verify removes them, because the PID in their
// names is gone.
// The next run here is one that stops at once (an image qemu-img cannot
// read, exit 2): the cleanup comes first, whatever the run turns out to be.
func TestVerifyKilled(t *testing.T) {
	firstPhase(t, true)
	dir := bootImage(t)
	requireTools(t, "dnsmasq", "ip")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var lines []string
	started := make(chan struct{})
	var once sync.Once
	cmd, _ := startVerify(t, ctx, func(line string) {
		mu.Lock()
		lines = append(lines, line)
		mu.Unlock()
		if strings.Contains(line, "QEMU pid") {
			once.Do(func() { close(started) })
		}
	}, filepath.Join(dir, "boottest.qcow2"))
	killed := false
	defer func() {
		if !killed { // a failure before the kill: let it clean up
			cmd.Process.Signal(syscall.SIGINT)
			cmd.Wait()
		}
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("QEMU never started")
	}
	time.Sleep(5 * time.Second) // booting
	// The QEMU about to be orphaned runs without root (its init started
	// it as bake-qemu): a uid change clears the death signal, so only its
	// init's (a PID namespace's PID 1, still root) can take it down with
	// bake.
	mu.Lock()
	m := verifyPIDRE.FindStringSubmatch(strings.Join(lines, "\n"))
	mu.Unlock()
	if m == nil {
		t.Fatal("no QEMU pid line before the kill")
	}
	st, err := os.ReadFile("/proc/" + m[1] + "/status")
	if err != nil {
		t.Fatalf("QEMU's status: %v", err)
	}
	uid := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`).FindStringSubmatch(string(st))
	nspid := regexp.MustCompile(`(?m)^NSpid:\s+\d+\s+\d+$`).MatchString(string(st))
	t.Logf("QEMU pid %s before the kill: Uid %v, in a PID namespace of its own: %v", m[1], uid, nspid)
	if uid == nil || uid[1] == "0" || uid[2] == "0" || uid[3] == "0" || uid[4] == "0" || !nspid {
		t.Fatalf("QEMU %s runs as root or not under its init (Uid %v, a PID namespace: %v): not the case this test is for", m[1], uid, nspid)
	}
	bakePID := cmd.Process.Pid
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait() // reaped: its PID is gone
	killed = true
	mu.Lock()
	out := strings.Join(lines, "\n")
	mu.Unlock()
	t.Logf("bake verify (pid %d) killed:\n%s", bakePID, out)
	m = verifyPIDRE.FindStringSubmatch(out)
	w := verifyWorkRE.FindStringSubmatch(out)
	if m == nil || w == nil {
		t.Fatalf("no QEMU or work directory line in the output")
	}
	qemuPID, _ := strconv.Atoi(m[1])
	dnsmasqPID, _ := strconv.Atoi(m[3])
	netns, work := m[2], w[1]
	if !strings.HasSuffix(netns, "-"+strconv.Itoa(bakePID)) {
		t.Fatalf("namespace %s is not named after bake's PID %d", netns, bakePID)
	}
	linkDirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-link-%d-*", bakePID)))
	// QEMU's own temp dir (vm.Start: its log), which only Stop removed.
	vmDirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-vm-%d-*", bakePID)))
	t.Cleanup(func() {
		// Should the next run not clean up (the test fails), this does.
		if _, err := os.Stat(filepath.Join("/run/netns", netns)); err == nil {
			exec.Command("ip", "netns", "delete", netns).Run()
		}
		for _, d := range append(append(linkDirs, vmDirs...), work) {
			os.RemoveAll(d)
		}
	})

	// QEMU and dnsmasq die with bake (Pdeathsig).
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range []int{qemuPID, dnsmasqPID} {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
	}
	// What SIGKILL leaves: the test is only worth something if it is there.
	if _, err := os.Stat(filepath.Join("/run/netns", netns)); err != nil {
		t.Fatalf("the killed run left no namespace %s (%v): nothing for the next run to clean up", netns, err)
	}
	if _, err := os.Stat(work); err != nil {
		t.Fatalf("the killed run left no work dir %s (%v)", work, err)
	}
	if len(vmDirs) == 0 {
		t.Errorf("the killed run left no VM dir bake-vm-%d-*", bakePID)
	}
	if len(linkDirs) == 0 {
		t.Errorf("the killed run left no link dir bake-link-%d-*", bakePID)
	}

	// The next run removes them.
	bad := filepath.Join(t.TempDir(), "unreadable.qcow2")
	os.WriteFile(bad, append([]byte("QFI\xfb\x00\x00\x00\x63"), make([]byte, 504)...), 0o644)
	next := runVerify(t, ctx, bad)
	t.Logf("next bake verify: exit %d\n%s", next.code, next.out)
	// A qcow2 of version 99 is the image's fault, refused before anything
	// boots: image.format fails, exit 1.
	if next.code != 1 || !strings.Contains(next.out, "FAIL image/image.format") {
		t.Errorf("exit %d for a qcow2 of version 99, want 1 with image.format failing", next.code)
	}
	for _, want := range []string{"removed network namespace " + netns, "removed " + work} {
		if !strings.Contains(next.out, want) {
			t.Errorf("the next run did not say %q", want)
		}
	}
	assertKilledRunGone(t, bakePID, netns, work, append(append(linkDirs, vmDirs...), work), qemuPID, dnsmasqPID)
}

// assertKilledRunGone: nothing of the killed run is left: no namespace
// (so no tap device: it lived in it), no dir, no process (QEMU, dnsmasq,
// or anything else that names its namespace or work dir).
func assertKilledRunGone(t *testing.T, bakePID int, netns, work string, dirs []string, pids ...int) {
	t.Helper()
	if list, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Contains(string(list), netns) {
		t.Errorf("namespace %s still listed", netns)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", netns)); err == nil {
		t.Errorf("namespace %s left behind", netns)
	}
	if out, err := exec.Command("ip", "-n", netns, "link", "show", "tap0").CombinedOutput(); err == nil {
		t.Errorf("tap0 of %s still exists:\n%s", netns, out)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s left behind", d)
		}
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("process %d of the killed run is alive", pid)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		c := string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
		if strings.Contains(c, netns) || strings.Contains(c, work) || strings.Contains(c, fmt.Sprintf("bake-link-%d-", bakePID)) {
			t.Errorf("process %d of the killed run is alive: %s", pid, c)
		}
	}
}

// TestVerifyAppliance: bake verify passes on the OpenClaw test image
// (appliance_test.go bakes it) under SeaBIOS and OVMF, with two instances
// each (identity and reboot), with every check the recipe calls for run:
// a skip is a failure (verify fails closed; --strict, kept here, is a
// no-op alias), as everywhere in this project. With --tailnet-* against a
// headscale of the test's on 127.0.0.1 of a namespace with nothing else, where bake verify runs (10.0.2.2 to the guest's
// second, user-mode NIC): the rebooted instance joins at first boot
// through its SMBIOS credentials, and tailscale.joined, key-gone, serve
// and reboot pass; headscale agrees (checkVerifyTailnet).
func TestVerifyAppliance(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	dir := applianceImage(t)
	requireTools(t, "nmap", "dnsmasq", "ip")
	// A copy of its own: the image must not change under verify, and the
	// shared image dir is emptied by the next run of the appliance tests.
	img := filepath.Join(t.TempDir(), "openclaw-test.qcow2")
	if out, err := exec.Command("cp", "--sparse=always", filepath.Join(dir, "openclaw-test.qcow2"), img).CombinedOutput(); err != nil {
		t.Fatalf("copying the image: %v %s", err, out)
	}
	sum := fileSum(t, img)
	recipePath := filepath.Join(repoRoot(), applianceRecipe)
	rec, err := recipe.LoadIn(repoRoot(), recipePath, map[string]string{"gateway_image": applImg.ref})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := verify.SpecFromRecipe(rec)
	if err != nil {
		t.Fatal(err)
	}
	plan := verify.PlanTailnet(spec, 2, true)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	defer cancel()
	// --tailnet-*: the rebooted instance joins a headscale of the test's,
	// which the guest reaches through its second NIC (QEMU's user-mode
	// network) as 10.0.2.2. bake verify runs in a namespace of the
	// test's whose only network is its loopback, where headscale listens:
	// QEMU's user-mode network takes the guest's traffic out through
	// that namespace's sockets, so the guest reaches headscale and
	// nothing else (its NTP or Tailscale's log uploads fail there, on
	// the host, instead of leaving the machine).
	hs, hsUser := startHostHeadscale(t, ctx)
	// BIOS only in make test (CI's 90 minutes): two instances and a
	// reboot already take ~25 min under TCG. The appliance under OVMF is
	// TestCloudApplianceVerify's (SMBIOS credentials on its instance 1);
	// bake's UEFI disk layout boots in TestBootUEFIE1000Grown;
	// BAKE_VMTEST_VERIFY_FIRMWARE=both (or uefi) runs the full matrix.
	firmware := "bios"
	if f := os.Getenv("BAKE_VMTEST_VERIFY_FIRMWARE"); f == "uefi" || f == "both" {
		firmware = f
	}
	fws := map[string][]string{"bios": {"bios"}, "uefi": {"uefi"}, "both": {"bios", "uefi"}}[firmware]
	run := runVerifyIn(t, ctx, hs.netns, img, "--recipe", recipePath, "--set", "gateway_image="+applImg.ref,
		"--firmware", firmware, "--strict", "--timeout", "80m", // the default: two instances and a reboot
		// Both seed paths in the one run: instance 0 a NoCloud volume,
		// instance 1 (the rebooted one) SMBIOS credentials only; its
		// login (ssh.key-login) and its gateway's token being the seed's
		// (identity.unique) prove the keys and token arrived that way.
		"--seed-via", "nocloud,smbios",
		// The tailnet reaches instance 1 through its SMBIOS credentials.
		"--tailnet-login-server", hs.URL, "--tailnet-authkey-file", hs.keyFile, "--tailnet-ca", hs.CA.CertFile)
	requireAllPass(t, run)
	checkVerifyTailnet(t, ctx, run, hs, hsUser, fws)
	// After the reboot the join unit did not run again: its condition
	// (the key file) false, the unit inactive, as systemctl shows them in
	// tailscale.reboot's evidence (tailscale.reboot fails on the first;
	// the second was TestApplianceBIOS's own reboot check, folded here).
	for _, fw := range fws {
		ev := run.report.evidence(fw, "tailscale.reboot")
		for _, want := range []string{"ActiveState=inactive\n", "ConditionResult=no\n"} {
			if !strings.Contains(ev+"\n", want) {
				t.Errorf("%s/tailscale.reboot's evidence lacks the join unit's %q after the reboot:\n%s", fw, strings.TrimSpace(want), ev)
			}
		}
	}
	for _, fw := range fws {
		if a, b := run.report.Seeds[fw+"-0"], run.report.Seeds[fw+"-1"]; a != "nocloud" || b != "smbios" {
			t.Errorf("%s seeds %q: want %s-0 nocloud, %s-1 smbios", fw, run.report.Seeds, fw, fw)
		}
		for _, x := range run.report.Results {
			if x.Firmware == fw && x.ID == "identity.unique" && !strings.Contains(x.Evidence, fw+"-1 (seed via smbios) was given a token: its gateway has it") {
				t.Errorf("%s/identity.unique evidence does not show the SMBIOS token arriving:\n%s", fw, x.Evidence)
			}
		}
	}
	// Every check of the plan ran, and the image scan.
	for _, fw := range fws {
		for _, id := range plan {
			if st := run.report.status(fw, id); st != "pass" {
				t.Errorf("%s/%s: %q", fw, id, st)
			}
		}
	}
	if st := run.report.status("", "secrets.disk"); st != "pass" {
		t.Errorf("secrets.disk: %q", st)
	}
	if run.report.SHA256 != sum || fileSum(t, img) != sum {
		t.Errorf("report sha256 %s, image %s (it must not change)", run.report.SHA256, sum)
	}
	assertVerifyCleanedUp(t, run.out)
}

// hostHeadscale is a headscale for bake verify --tailnet-*.
type hostHeadscale struct {
	*tailnettest.Headscale
	keyFile string // the pre-auth key, one line
	key     string
	netns   string // where headscale listens on 127.0.0.1, and bake verify runs
}

// startHostHeadscale starts headscale in a namespace of the test's with
// only its loopback, on 127.0.0.1, with its URL, certificate and DERP
// region at 10.0.2.2, that loopback as a guest on the user-mode network of
// a QEMU started in the namespace sees it, and makes a reusable pre-auth
// key (with --firmware both, each firmware's last instance joins).
func startHostHeadscale(t *testing.T, ctx context.Context) (*hostHeadscale, uint64) {
	t.Helper()
	bin, err := tailnettest.BuildHeadscale(ctx, tailnettest.DefaultHeadscaleVersion, testcache.Dir("headscale"))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := tailnettest.NewNetns(ctx, "verify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	dir := t.TempDir()
	hsDir := filepath.Join(dir, "hs")
	os.Mkdir(hsDir, 0o700)
	hs, err := tailnettest.StartHeadscale(ctx, tailnettest.HeadscaleConfig{Bin: bin, Netns: ns.Name, Addr: netip.MustParseAddr("127.0.0.1"),
		URLAddr: netip.MustParseAddr("10.0.2.2"), Dir: hsDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("headscale log (last 40 lines):\n%s", hs.LogTail(40))
		}
		hs.Close()
	})
	user, err := hs.CreateUser(ctx, "verify")
	if err != nil {
		t.Fatal(err)
	}
	key, err := hs.PreAuthKey(ctx, user, true)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostHeadscale{Headscale: hs, keyFile: filepath.Join(dir, "authkey"), key: key, netns: ns.Name}
	if err := os.WriteFile(h.keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("headscale %s (pid %d) on 127.0.0.1 in %s, for the guests %s", tailnettest.DefaultHeadscaleVersion, hs.PID(), ns.Name, hs.URL)
	return h, user
}

// checkVerifyTailnet: headscale's side of what verify's tailnet checks
// said: each firmware's last instance is a node of headscale's, the one
// tailscale.joined and tailscale.reboot name, and no other node (no
// re-auth after the reboot); the key is in no output or report.
func checkVerifyTailnet(t *testing.T, ctx context.Context, run verifyRun, hs *hostHeadscale, user uint64, fws []string) {
	t.Helper()
	nodes, err := hs.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("headscale's nodes after verify: %+v", nodes)
	if len(nodes) != len(fws) {
		t.Errorf("headscale lists %d nodes, want %d (one per firmware: no re-auth)", len(nodes), len(fws))
	}
	// Each firmware's tailnet instance is one of headscale's nodes: the
	// one whose tailnet address tailscale.joined and tailscale.reboot name
	// (Tailscale's status names the node by its addresses, and by its
	// stable ID, headscale's own to give). Matched by address, not name:
	// instance 1 is seeded by SMBIOS credentials, which carry no hostname,
	// so the node registers as the image's hostname ("localhost").
	for _, fw := range fws {
		var match []string
		for _, n := range nodes {
			if len(n.IPAddresses) == 0 {
				t.Errorf("headscale's node %s (%s) has no address", n.ID, n.Name)
				continue
			}
			if strings.Contains(run.report.evidence(fw, "tailscale.joined"), n.IPAddresses[0]+" ") {
				match = append(match, n.ID.String())
				if ev := run.report.evidence(fw, "tailscale.reboot"); !strings.Contains(ev, n.IPAddresses[0]+" ") {
					t.Errorf("%s/tailscale.reboot does not name headscale's node %s (%s):\n%s", fw, n.ID, n.IPAddresses[0], ev)
				}
			}
		}
		if len(match) != 1 {
			t.Errorf("%s/tailscale.joined names %d of headscale's nodes (%v), want 1:\n%s", fw, len(match), match, run.report.evidence(fw, "tailscale.joined"))
		} else {
			t.Logf("%s: headscale's node %s is the one tailscale.joined and tailscale.reboot name", fw, match[0])
		}
	}
	assertTailnetReport(t, run, hs)
}

// assertTailnetReport: the auth key is in neither verify's output nor its
// report files, and the report names the control server.
func assertTailnetReport(t *testing.T, run verifyRun, hs *hostHeadscale) {
	t.Helper()
	if strings.Contains(run.out, hs.key) {
		t.Error("verify's output shows the auth key")
	}
	for _, f := range []string{"report.json", "junit.xml"} {
		if b, err := os.ReadFile(filepath.Join(run.dir, f)); err != nil || strings.Contains(string(b), hs.key) {
			t.Errorf("%s holds the auth key (%v)", f, err)
		}
	}
	if run.report.Tailnet != hs.URL {
		t.Errorf("report tailnet %q, want %q", run.report.Tailnet, hs.URL)
	}
}
