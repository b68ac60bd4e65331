//go:build vm

package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/vm"
)

var (
	runPIDRE = regexp.MustCompile(`QEMU pid (\d+) .*work dir (\S+), VM dir (\S+)`)
	runSSHRE = regexp.MustCompile(`ssh -p (\d+) ([a-z_][a-z0-9_.-]*)@127\.0\.0\.1`)
)

// TestBakeRun: `bake run IMAGE` boots the image with stdin not a terminal,
// prints the ssh command, and the key the test gave (--admin-key) logs in
// over the forwarded port; the guest's serial console reaches bake's
// stdout. SIGINT powers the guest off: bake exits promptly (130), its
// QEMU is gone, its work dir (seed, FIFOs, QMP socket) and its VM dir
// (the overlay) are removed, and the image is byte-identical.
//
// The image is the Debian cloud fixture (cloud-init, sshd, the default
// user debian), not the boot-test image: that one has no sshd
// (TestVerifyPlainImage relies on it), so nothing could log in. The
// fixture has no manifest beside it, so the admin is --admin's.
func TestBakeRun(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "qemu-img", "qemu-system-x86_64")
	fx := debianFixture(t)
	dir := t.TempDir()
	// A copy: the fixture is shared by other tests, and this one proves
	// that bake run leaves its image as it was.
	img := filepath.Join(dir, "debian.qcow2")
	if out, err := exec.Command("cp", "--sparse=always", fx.path, img).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	before := fileSum(t, img)

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "admin.pub")
	if err := os.WriteFile(keyFile, ssh.MarshalAuthorizedKey(sp), 0o644); err != nil {
		t.Fatal(err)
	}

	// First a guest that cannot power off yet: SIGINT a second after
	// QEMU starts (firmware or early boot: nothing handles the ACPI power
	// button) stops QEMU once --grace has passed.
	graceStop(t, img, keyFile)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.Command(bake(t), "run", img, "--admin-key", keyFile, "--admin", "debian",
		"--cpus", strconv.Itoa(vmCPUs(vm.BIOS)), "--memory", "1024")
	cmd.Dir = repoRoot()
	cmd.Stdin = nil // /dev/null: not a terminal
	var stdout, stderr lockedBuffer
	cmd.Stdout = &stdout
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	sshLine := make(chan []string, 1)
	pidLine := make(chan []string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			stderr.Write([]byte(sc.Text() + "\n"))
			if m := runPIDRE.FindStringSubmatch(sc.Text()); m != nil {
				pidLine <- m
			}
			if m := runSSHRE.FindStringSubmatch(sc.Text()); m != nil {
				sshLine <- m
			}
		}
		io.Copy(io.Discard, pr)
	}()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.Close(); exited <- err }()
	finished := false
	defer func() {
		if !finished { // a failure before the end: bake and its QEMU (Pdeathsig) go
			cmd.Process.Kill()
			<-exited
			t.Logf("bake run's stderr:\n%s\nconsole (last 3000 bytes):\n%s", stderr.String(), tail(stdout.String(), 3000))
		}
	}()

	var pids []string
	select {
	case pids = <-pidLine:
	case err := <-exited:
		exited <- err
		t.Fatalf("bake run exited (%v) before it started QEMU", err)
	case <-ctx.Done():
		t.Fatal("no QEMU pid line")
	}
	qemuPID, _ := strconv.Atoi(pids[1])
	workDir, vmDir := pids[2], pids[3]
	var m []string
	select {
	case m = <-sshLine:
	case <-time.After(time.Minute):
		t.Fatal("no ssh command printed")
	}
	port, _ := strconv.Atoi(m[1])
	user := m[2]
	if user != "debian" {
		t.Errorf("ssh command names %q, want debian (--admin)", user)
	}
	t.Logf("QEMU pid %d; %s after %s", qemuPID, m[0], since(t0))
	for _, d := range []string{workDir, vmDir} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("while it runs: %v", err)
		}
	}
	// Log in with the key given, over the forwarded port.
	deadline := time.Now().Add(10 * time.Minute)
	var client *ssh.Client
	for {
		client, err = dialSSH(port, user, ssh.PublicKeys(signer))
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("bake run exited (%v) before SSH answered", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SSH login as %s on 127.0.0.1:%d: %v", user, port, err)
		}
		time.Sleep(3 * time.Second)
	}
	t.Logf("logged in after %s", since(t0))
	// Checked only now: bake prints the console line after the ssh
	// command, and the scanner may not have reached it when the ssh line
	// arrived (CI after session 17 failed on that race).
	if !strings.Contains(stderr.String(), "stdin is not a terminal") {
		t.Errorf("bake run did not say stdin is not a terminal")
	}
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.CombinedOutput("id -un; echo bake-run-$((6*7))")
	sess.Close()
	client.Close()
	if err != nil || string(out) != "debian\nbake-run-42\n" {
		t.Errorf("command over SSH: %v, output %q; want \"debian\\nbake-run-42\\n\"", err, out)
	}
	// The serial console reaches bake's stdout: the kernel's banner, and
	// the serial getty's prompt, which a cloud image prints only once
	// cloud-init's config stage is done (SSH can answer before that:
	// CI found the prompt missing when it looked right after the login).
	consoleDeadline := time.Now().Add(5 * time.Minute)
	for {
		con := stdout.String()
		if strings.Contains(con, "Linux version") && strings.Contains(con, "login:") {
			break
		}
		if time.Now().After(consoleDeadline) {
			t.Errorf("bake run's stdout does not show the guest's serial console (kernel banner and login prompt) 5 min after the login:\n%s", tail(con, 2000))
			break
		}
		time.Sleep(2 * time.Second)
	}

	// SIGINT: the guest is powered off, everything goes.
	t1 := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	var werr error
	select {
	case werr = <-exited:
	case <-time.After(3 * time.Minute):
		t.Fatalf("bake run still running %s after SIGINT", since(t1))
	}
	<-scanDone
	finished = true
	took := time.Since(t1)
	t.Logf("bake run exited (%v) %s after SIGINT; stderr:\n%s", werr, since(t1), stderr.String())
	if took > time.Minute {
		t.Errorf("bake run took %s to exit after SIGINT", since(t1))
	}
	if ee, ok := werr.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Errorf("exit %v, want status 130 (interrupted)", werr)
	}
	if !strings.Contains(stderr.String(), "powering the guest off") {
		t.Errorf("bake run did not say it powers the guest off")
	}
	if strings.Contains(stderr.String(), "stopping QEMU") {
		t.Errorf("the guest did not power off on its own: QEMU was stopped")
	}
	if err := syscall.Kill(qemuPID, 0); err == nil {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", qemuPID))
		if bytes.Contains(cmdline, []byte("qemu")) {
			t.Errorf("QEMU (pid %d) is still running after bake run: %s", qemuPID, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
	}
	for _, d := range []string{workDir, vmDir} {
		if _, err := os.Lstat(d); err == nil {
			t.Errorf("%s left behind", d)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("bake-*-%d-*", cmd.Process.Pid))); len(left) > 0 {
		t.Errorf("bake run (pid %d) left %v", cmd.Process.Pid, left)
	}
	if after := fileSum(t, img); after != before {
		t.Errorf("the image changed: sha256 %s before, %s after", before, after)
	}
}

// graceStop runs bake run with --grace 3s and sends SIGINT a second after
// QEMU started: bake must stop QEMU after the grace period, exit 130 and
// leave nothing.
func graceStop(t *testing.T, img, keyFile string) {
	t.Helper()
	cmd := exec.Command(bake(t), "run", img, "--admin-key", keyFile, "--admin", "debian",
		"--cpus", strconv.Itoa(vmCPUs(vm.BIOS)), "--memory", "1024", "--grace", "3s")
	cmd.Dir = repoRoot()
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var m []string
	for deadline := time.Now().Add(2 * time.Minute); m == nil; {
		select {
		case err := <-exited:
			t.Fatalf("bake run exited (%v) before QEMU started:\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		m = runPIDRE.FindStringSubmatch(out.String())
		if m == nil && time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			t.Fatalf("no QEMU pid line:\n%s", out.String())
		}
	}
	time.Sleep(time.Second)
	t0 := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	var err error
	select {
	case err = <-exited:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("bake run still running a minute after SIGINT with --grace 3s:\n%s", out.String())
	}
	t.Logf("--grace 3s: bake run exited (%v) %s after SIGINT:\n%s", err, since(t0), out.String())
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Errorf("exit %v, want status 130", err)
	}
	if d := time.Since(t0); d < 3*time.Second || d > 20*time.Second {
		t.Errorf("bake run exited %s after SIGINT; want --grace (3s) plus at most QEMU's stop", since(t0))
	}
	if !strings.Contains(out.String(), "still up after 3s: stopping QEMU") {
		t.Errorf("bake run did not say it stops QEMU after the grace period")
	}
	pid, _ := strconv.Atoi(m[1])
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte("qemu")) {
		t.Errorf("QEMU (pid %d) is still running", pid)
	}
	for _, d := range m[2:4] {
		if _, err := os.Lstat(d); err == nil {
			t.Errorf("%s left behind", d)
		}
	}
}

// lockedBuffer is a bytes.Buffer written by one goroutine and read by
// another.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
