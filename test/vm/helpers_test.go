//go:build vm

// Package vmtest is bake's end-to-end tier: it builds images with the real
// bake binary (mmdebstrap, mkfs, grub-mkimage) and boots them in QEMU under
// SeaBIOS and OVMF. Run with `go test -tags vm ./test/vm/` as root.
//
// Two phases, to keep `make test` inside CI's time on a 2-core machine
// where each VM runs in software emulation:
//   - first, one at a time: the tests that compare the host's mounts, loop
//     devices or network namespaces before and after (a build interrupted,
//     a verify killed, the boot image's build), the default recipe (the
//     real gateway's first start is the most load-sensitive thing here),
//     and TestApplianceBIOS, which bakes the appliance image the others
//     share;
//   - then the tests marked t.Parallel, two at a time (`-parallel 2`):
//     they only boot, bake into their own directories and verify, each
//     with its own QEMU, ports and namespaces named after its process.
package vmtest

import (
	"bytes"
	"context"
	"github.com/bakeimg/bake/internal/testcache"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain removes, once every test is done, the boot image this run baked
// (about 1.1 GiB in $TMPDIR; each run used to leave its copy behind), unless
// something is still mounted below it.
func TestMain(m *testing.M) {
	code := m.Run()
	if dir := bootImgTemp; dir != "" {
		mi, err := os.ReadFile("/proc/self/mountinfo")
		if err == nil && !bytes.Contains(mi, []byte(" "+dir+"/")) && !bytes.Contains(mi, []byte(" "+dir+" ")) {
			os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

var (
	bakeOnce sync.Once
	bakeBin  string
	bakeErr  error
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// requireRoot fails (not skips) when the tier cannot run: in this project a
// skipped VM test would be a check that silently does not happen.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("VM tests need root (mmdebstrap chroot, QEMU); run `make test` as root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/install-deps.sh", tool)
		}
	}
}

// bake returns the path of a bake binary built from this checkout, once per
// test run.
func bake(t *testing.T) string {
	t.Helper()
	bakeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bake-vmtest-bin-")
		if err != nil {
			bakeErr = err
			return
		}
		bakeBin = filepath.Join(dir, "bake")
		cmd := exec.Command("go", "build", "-o", bakeBin, "./cmd/bake")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			bakeErr = err
			bakeErr = &buildError{string(out), err}
		}
	})
	if bakeErr != nil {
		t.Fatalf("building bake: %v", bakeErr)
	}
	return bakeBin
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// cacheDir is shared with `make test` (BAKE_CACHE_DIR) so apt archives are
// downloaded once per machine.
func cacheDir() string {
	if d := os.Getenv("BAKE_CACHE_DIR"); d != "" {
		return d
	}
	return testcache.Dir("bake")
}

// runBake runs the bake binary and returns combined output and exit code.
func runBake(t *testing.T, ctx context.Context, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bake(t), args...)
	cmd.Env = append(os.Environ(), "BAKE_CACHE_DIR="+cacheDir())
	// From the repository root, as a user runs it (make image): a
	// recipe's context may reach up to the working directory, and the
	// test recipes' context is the repository.
	cmd.Dir = repoRoot()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			t.Fatalf("running bake: %v", err)
		}
	}
	return buf.String(), code
}

// mounts returns the host's mount points (to prove none is left behind).
func mounts(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			m[f[4]] = true
		}
	}
	return m
}

func loopDevices(t *testing.T) string {
	out, _ := exec.Command("losetup", "-a").CombinedOutput()
	return strings.TrimSpace(string(out))
}

func newMounts(before, after map[string]bool) []string {
	var n []string
	for m := range after {
		if !before[m] {
			n = append(n, m)
		}
	}
	return n
}

func since(t0 time.Time) string { return time.Since(t0).Round(100 * time.Millisecond).String() }

// bakeRecipeText writes recipe text into dir as name.yaml, bakes it into
// dir/out and fails the test when the build fails. It returns the output
// dir, the build's output and how long it took.
func bakeRecipeText(t *testing.T, ctx context.Context, dir, name, text string) (out, log, took string) {
	t.Helper()
	recipeFile := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(recipeFile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(dir, "out")
	t0 := time.Now()
	log, code := runBake(t, ctx, "build", recipeFile, "-o", out)
	if code != 0 {
		t.Fatalf("bake build of %s failed (%d):\n%s", recipeFile, code, log)
	}
	return out, log, since(t0)
}
