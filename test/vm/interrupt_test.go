//go:build vm

package vmtest

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// descendantMounts returns the mount points below workRoot seen by any
// process in the process tree of pid (bake's namespaces are private, so the
// host cannot see them; the processes inside can).
func descendantMounts(pid int, under string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || !isDescendant(p, pid) {
			continue
		}
		f, err := os.Open(filepath.Join("/proc", e.Name(), "mountinfo"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) > 4 && strings.HasPrefix(fs[4], under) {
				found = append(found, fs[4])
			}
		}
		f.Close()
		if len(found) > 0 {
			return found
		}
	}
	return found
}

func isDescendant(p, ancestor int) bool {
	for i := 0; i < 64 && p > 1; i++ {
		if p == ancestor {
			return true
		}
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "stat"))
		if err != nil {
			return false
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		p, _ = strconv.Atoi(fields[1])
	}
	return false
}

// processGone reports whether no process of the tree of pid is left.
func anyDescendant(pid int) []int {
	var left []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err == nil && p != pid && isDescendant(p, pid) {
			left = append(left, p)
		}
	}
	return left
}

// TestInterruptedBuildLeavesNothing sends SIGINT, SIGTERM and SIGKILL to
// bake builds once their package step has mounted something, and checks that
// no mount remains anywhere, no process of the build survives, nothing
// appears at the output path, and a following build succeeds.
func TestInterruptedBuildLeavesNothing(t *testing.T) {
	firstPhase(t, true)
	requireTools(t, "mmdebstrap")
	bin := bake(t)
	out := t.TempDir()
	recipe := filepath.Join(repoRoot(), "test/vm/testdata/boot/recipe.yaml")
	hostBefore := mounts(t)

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			// --no-bootstrap-cache: mmdebstrap runs (about 80 s, with its
			// mounts in the tree), so the signal lands in the middle of
			// the package step. From the tree cache the whole build takes
			// seconds and its stages' mounts live for milliseconds.
			cmd := exec.CommandContext(ctx, bin, "build", "--no-bootstrap-cache", recipe, "-o", out)
			cmd.Env = append(os.Environ(), "BAKE_CACHE_DIR="+cacheDir())
			logPath := filepath.Join(t.TempDir(), "build.log")
			logf, _ := os.Create(logPath)
			defer logf.Close()
			cmd.Stdout, cmd.Stderr = logf, logf
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pid := cmd.Process.Pid
			// Whatever happens, end the tree we started.
			defer func() {
				for _, p := range anyDescendant(pid) {
					syscall.Kill(p, syscall.SIGKILL)
				}
				cmd.Process.Kill()
			}()
			deadline := time.Now().Add(8 * time.Minute)
			var seen []string
			for time.Now().Before(deadline) {
				if seen = descendantMounts(pid, filepath.Join(out, ".bake-work-")); len(seen) > 0 {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if len(seen) == 0 {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("the build never mounted anything below its work dir:\n%s", b)
			}
			t.Logf("build has mounts %v; sending %s", seen, sig)
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				t.Logf("bake exited: %v", err)
			case <-time.After(2 * time.Minute):
				t.Fatalf("bake did not exit within 2 minutes of %s", sig)
			}
			// Give the kernel a moment to reap a killed PID namespace.
			var left []int
			for i := 0; i < 50; i++ {
				if left = anyDescendant(pid); len(left) == 0 {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if len(left) > 0 {
				t.Errorf("processes of the build survive: %v", left)
			}
			// Only this test's mounts count: other tests on the machine may
			// mount their own things meanwhile.
			for _, m := range newMounts(hostBefore, mounts(t)) {
				if strings.HasPrefix(m, out) {
					t.Errorf("mount left on the host: %s", m)
				}
			}
			for _, f := range []string{"boottest.qcow2", "boottest.raw", "SHA256SUMS", "boottest.manifest.json"} {
				if _, err := os.Stat(filepath.Join(out, f)); err == nil {
					t.Errorf("%s exists after an interrupted build", f)
				}
			}
			b, _ := os.ReadFile(logPath)
			if sig != syscall.SIGKILL && !strings.Contains(string(b), "interrupted") {
				t.Errorf("bake did not say it was interrupted:\n%s", b)
			}
		})
	}

	// A build after all that succeeds in the same output dir, and removes the
	// work dir the SIGKILLed build left.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	log, code := runBake(t, ctx, "build", recipe, "-o", out)
	if code != 0 {
		t.Fatalf("build after interruptions failed (%d):\n%s", code, log)
	}
	left, _ := filepath.Glob(filepath.Join(out, ".bake-work-*"))
	if len(left) > 0 {
		t.Errorf("work dirs left after a successful build: %v", left)
	}
	if _, err := os.Stat(filepath.Join(out, "boottest.qcow2")); err != nil {
		t.Errorf("no image after the final build: %v", err)
	}
}
