//go:build vm

// Package vmtest is bake's end-to-end tier: it builds images with the real
// bake binary (mmdebstrap, mkfs, grub-mkimage) and boots them in QEMU under
// SeaBIOS and OVMF. Run with `go test -tags vm ./test/vm/` as root.
//
// Two phases, to keep `make test` inside CI's time on a 2-core machine
// where each VM runs in software emulation:
//   - first, through firstPhase(t): TestDefaultRecipe (its real gateway's
//     two-vCPU guest burns far more CPU beside another appliance test than
//     alone: 1395 s against 870 s in session 17) and, beside it, one at a
//     time, the light tests that
//     check what a build interrupted or a verify interrupted or killed
//     leaves behind (their checks are scoped to their own process trees,
//     mounts below their own dirs and namespaces named after their own
//     processes; run alone, they left the second core idle while
//     TestDefaultRecipe ran: BENCHMARKS.md, "Session 13");
//   - then every other test, through parallel(t): they only boot,
//     bake into their own directories and verify, each with its own QEMU,
//     ports and namespaces named after its process. vmSlots of them run at
//     once (two: one per core, each VM with one vCPU), and a free slot
//     goes to the waiting test with the largest budget (its warm time in
//     BENCHMARKS.md's budget table), so the longest start first and the
//     run does not end with one long test alone. go test's own -parallel
//     must be at least the number of these tests (make test: 64).
package vmtest

import (
	"bytes"
	"context"
	"fmt"
	mountsafe "github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/internal/testcache"
	"github.com/bakeimg/bake/internal/testreport"
	"github.com/bakeimg/bake/vm"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain removes, once every test is done, what this run made in
// $TMPDIR: the bake binary (bake), the boot image (bootImage, about 1.1
// GiB) and the appliance image (applianceImage, about 440 MiB), unless
// something is still mounted below them (mounts.RemoveAllSafe). The
// binary and the appliance image used to stay behind after every run.
// Before the tests it removes what earlier runs left when they were killed
// (a go test -timeout panic ends the binary without this cleanup): their
// dirs are named after their process (sweep.MkdirTemp), and go once it is
// gone.
//
// BAKE_VMTEST_KEEP_APPLIANCE=1 keeps the appliance image (marked kept, so
// no later run sweeps it) for BAKE_VMTEST_APPLIANCE_DIR to reuse.
func TestMain(m *testing.M) {
	if h := os.Getenv(privateHelperEnv); h != "" {
		os.Exit(runPrivateHelper(h)) // private_mounts_test.go
	}
	removeStaleTestDirs()
	code := m.Run()
	if applTemp != "" && applDir == applTemp && os.Getenv("BAKE_VMTEST_KEEP_APPLIANCE") == "1" {
		if err := os.WriteFile(filepath.Join(applTemp, keptMarker), nil, 0o644); err == nil {
			fmt.Fprintf(os.Stderr, "vmtest: kept %s (BAKE_VMTEST_APPLIANCE_DIR=%s reuses it; remove it when done)\n", applTemp, applTemp)
			applTemp = ""
		}
	}
	for _, dir := range []string{bakeBinDir, bootImgTemp, applTemp} {
		if dir != "" {
			if err := mountsafe.RemoveAllSafe(dir); err != nil {
				fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
			}
		}
	}
	os.Exit(code)
}

// The prefixes of this package's dirs in $TMPDIR.
const (
	binDirPrefix    = "bake-vmtest-bin-"
	bootDirPrefix   = "bake-vmtest-boot-"
	applDirPrefix   = "bake-vmtest-appliance-"
	applReusePrefix = "bake-vmtest-gw-"
	// keptMarker marks a dir kept on purpose: no sweep removes it.
	keptMarker = ".bake-vmtest-kept"
)

// removeStaleTestDirs sweeps the dirs of earlier runs that are gone (and
// those named before owners were recorded, once older than
// sweep.DefaultMaxAge), and the fixed bake-vmtest-appliance dir earlier
// versions of applianceImage left for the next run to empty.
func removeStaleTestDirs() {
	for _, prefix := range []string{binDirPrefix, bootDirPrefix, applDirPrefix, applReusePrefix} {
		rm, err := sweep.Sweep{Prefix: prefix, MaxAge: sweep.DefaultMaxAge, Keep: keptMarker}.Run()
		for _, d := range rm {
			fmt.Fprintf(os.Stderr, "vmtest: removed %s, left by a run that was killed\n", d)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		}
	}
	legacy := filepath.Join(os.TempDir(), "bake-vmtest-appliance")
	if _, err := os.Lstat(legacy); err == nil {
		if err := mountsafe.RemoveAllSafe(legacy); err != nil {
			fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		}
	}
}

var (
	bakeOnce   sync.Once
	bakeBin    string
	bakeBinDir string // removed by TestMain
	bakeErr    error
)

// vmSlots: VM tests running at once (BAKE_VMTEST_SLOTS, default 2).
func vmSlots() int {
	if n, err := strconv.Atoi(os.Getenv("BAKE_VMTEST_SLOTS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// vmCPUs is the vCPU count of the tests' own VMs and of the verify runs
// they start: the host's cores shared among the slots (under TCG a vCPU
// is a host thread that spins while the guest has work; two VMs of one
// vCPU each booted 15-20% faster on two cores than two of two). OVMF VMs
// get two: with one, OVMF under TCG never comes back from a guest reboot
// (verify.AutoCPUs).
func vmCPUs(firmware string) int {
	if firmware == vm.UEFI {
		return 2
	}
	return max(1, runtime.NumCPU()/vmSlots())
}

var sched = struct {
	mu      sync.Mutex
	busy    int
	gather  *time.Timer
	waiting []*slotWaiter
}{}

type slotWaiter struct {
	name   string
	weight time.Duration
	ready  chan struct{}
}

var (
	budgetOnce sync.Once
	budget     *testreport.Budget
)

// budgetWeight is t's line in BENCHMARKS.md's budget table: its warm time,
// else its cold time, else 5 minutes (a new test without a line; CI warns
// about it).
func budgetWeight(t *testing.T) time.Duration {
	budgetOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(repoRoot(), "BENCHMARKS.md"))
		if err == nil {
			budget = testreport.ParseBudget("BENCHMARKS.md", b)
		}
	})
	if budget != nil {
		if row, ok := budget.Find("github.com/bakeimg/bake/test/vm", t.Name()); ok {
			if row.Warm > 0 {
				return row.Warm
			}
			if row.Cold > 0 {
				return row.Cold
			}
		}
	}
	t.Logf("no budget line in BENCHMARKS.md: scheduled as a 5-minute test")
	return 5 * time.Minute
}

// parallel marks t parallel and waits for a VM slot, which it holds until
// t ends. All parallel tests are released together once the sequential
// ones end; the first grant waits a moment for all of them to queue up.
// A slot goes to the waiting test with the largest budget (budgetWeight).
func parallel(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	// The first phase ends first (firstPhase).
	phase1.Wait()
	weight := budgetWeight(t)
	w := &slotWaiter{name: t.Name(), weight: weight, ready: make(chan struct{})}
	sched.mu.Lock()
	sched.waiting = append(sched.waiting, w)
	if sched.gather == nil {
		sched.gather = time.AfterFunc(300*time.Millisecond, func() {
			sched.mu.Lock()
			defer sched.mu.Unlock()
			grantLocked()
		})
	} else {
		select {
		case <-gatherDone():
			grantLocked()
		default:
		}
	}
	sched.mu.Unlock()
	<-w.ready
	if d := time.Since(t0); d > time.Second {
		t.Logf("waited %s for a VM slot", since(t0))
	}
	t.Cleanup(func() {
		sched.mu.Lock()
		defer sched.mu.Unlock()
		sched.busy--
		grantLocked()
	})
}

// phase1 counts the first phase's tests still running; every test of
// parallel(t) waits for it. firstPhase's Add runs in a test's sequential
// part, before t.Parallel: go test runs every top-level test's sequential
// part before it lets any parallel one go on, so no Wait can start before
// the last Add (and with none, as under -run of phase-2 tests only, it
// returns at once).
var (
	phase1      sync.WaitGroup
	hostStateMu sync.Mutex
)

// firstPhase runs t in the first phase, before every test of parallel(t):
// TestDefaultRecipe (hostState false) beside the tests whose point is
// what an interrupted build or verify leaves on the host (hostState true),
// which run one at a time among themselves.
func firstPhase(t *testing.T, hostState bool) {
	phase1.Add(1)
	t.Cleanup(phase1.Done)
	t.Parallel()
	if hostState {
		t0 := time.Now()
		hostStateMu.Lock()
		t.Cleanup(hostStateMu.Unlock)
		// As parallel's: testreport takes the wait out of t's time.
		if d := time.Since(t0); d > time.Second {
			t.Logf("waited %s for a VM slot", since(t0))
		}
	}
}

var gatherClosed = make(chan struct{})
var gatherOnce sync.Once

// gatherDone is closed once the first grant has happened.
func gatherDone() <-chan struct{} { return gatherClosed }

// grantLocked gives free slots to the heaviest waiting tests.
func grantLocked() {
	gatherOnce.Do(func() { close(gatherClosed) })
	for sched.busy < vmSlots() && len(sched.waiting) > 0 {
		best := 0
		for i, w := range sched.waiting {
			if w.weight > sched.waiting[best].weight {
				best = i
			}
		}
		w := sched.waiting[best]
		sched.waiting = append(sched.waiting[:best], sched.waiting[best+1:]...)
		sched.busy++
		close(w.ready)
	}
}

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
		dir, err := sweep.MkdirTemp("", binDirPrefix)
		if err != nil {
			bakeErr = err
			return
		}
		bakeBinDir = dir
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
func cacheDir() string { return testcache.BakeCacheDir() }

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

// vmExits are the VMs whose exit line logVMExit logged.
var vmExits sync.Map

// logVMExit logs, once per VM, how long QEMU ran and the CPU time it used
// (vm.VM.ExitSummary), e.g. "bios: QEMU (pid 1234) exited after 3m12s,
// 95.3 s of CPU (1 vCPU)": testreport sums the CPU of these lines, and of
// bake verify's in the output the tests log, into each test's guest CPU
// (BENCHMARKS.md). v must have exited.
func logVMExit(t testing.TB, who string, v *vm.VM) {
	t.Helper()
	if _, logged := vmExits.LoadOrStore(v, true); !logged {
		t.Logf("%s: %s", who, v.ExitSummary())
	}
}

// stopVM stops v (vm.VM.Stop) and logs its exit line.
func stopVM(t testing.TB, who string, v *vm.VM) {
	t.Helper()
	v.Stop()
	logVMExit(t, who, v)
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
