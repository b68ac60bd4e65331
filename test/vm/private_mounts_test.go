//go:build vm

package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/internal/execx"
	mountsafe "github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/rootfs"
)

// The few steps of this package's tests that mount file systems themselves
// (a cloud image's partitions on a loop device, a chroot's /proc and apt
// cache) run in a process of their own, in a mount namespace of its own:
// this test binary, started again as a helper (privateHelperEnv).
//
// Why: other tests here start programs with `ip netns exec` (headscale, test
// nodes, bake verify in a namespace), which makes a mount namespace as a
// copy of this process's. A loop mount made here at that moment would be in
// the copy, where this test's unmount does not reach (the host's / is
// private), and its autoclear loop device would stay attached until that
// program ends: cloudimg.Extract fails when its loop device is still
// attached 60 s after the unmount (found in make test: TestCloudRebuiltBootNewKernel's
// extraction beside TestApplianceBIOS's headscale). bake build does the
// same in its own namespace (builder.RunIsolated).

// privateHelperEnv names the helper to run; privateArgsEnv its arguments
// (JSON).
const (
	privateHelperEnv = "BAKE_VMTEST_PRIVATE_HELPER"
	privateArgsEnv   = "BAKE_VMTEST_PRIVATE_ARGS"
)

// privateHelpers are what may run in a helper: each gets its arguments and
// returns an error for the test to report.
var privateHelpers = map[string]func(ctx context.Context, args []string) error{
	// extract RAW TREE: cloudimg.Extract of raw's root (and /boot) into
	// tree; no mount may be left at or below tree's parent afterwards, in
	// the helper's namespace, where the mounts were made.
	"extract": func(ctx context.Context, args []string) error {
		if len(args) != 2 {
			return fmt.Errorf("extract RAW TREE, got %q", args)
		}
		raw, tree := args[0], args[1]
		l, err := cloudimg.Inspect(ctx, raw)
		if err != nil {
			return err
		}
		if err := cloudimg.Extract(ctx, raw, l, tree); err != nil {
			return err
		}
		left, err := mountsafe.Under(filepath.Dir(tree))
		if err != nil {
			return err
		}
		if len(left) > 0 {
			return fmt.Errorf("mounts left by Extract: %s", strings.Join(left, " "))
		}
		return nil
	},
	// install-kernel TREE CACHE: linux-image-amd64 installed in a chroot of
	// tree (boot hooks diverted, as a build does), .debs from cache.
	"install-kernel": func(ctx context.Context, args []string) error {
		if len(args) != 2 {
			return fmt.Errorf("install-kernel TREE CACHE, got %q", args)
		}
		ch, err := rootfs.Open(ctx, args[0], rootfs.WithRunner(execx.Host{}))
		if err != nil {
			return err
		}
		err = rootfs.DivertBootHooks(ctx, ch)
		if err == nil {
			err = rootfs.InstallPackages(ctx, ch, []string{"linux-image-amd64"}, args[1])
		}
		if cerr := ch.Close(); err == nil {
			err = cerr
		}
		return err
	},
}

// runPrivateHelper is TestMain's path for a helper: it runs the one named
// by privateHelperEnv and returns the exit status.
func runPrivateHelper(name string) int {
	h := privateHelpers[name]
	if h == nil {
		fmt.Fprintf(os.Stderr, "vmtest: no helper %q\n", name)
		return 2
	}
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(privateArgsEnv)), &args); err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: helper %s: arguments: %v\n", name, err)
		return 2
	}
	if err := h(context.Background(), args); err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: helper %s: %v\n", name, err)
		return 1
	}
	return 0
}

// inPrivateMounts runs helper name with args in this test binary started
// again in a new mount namespace (/ recursively private), and fails t with
// its output when it fails. The helper dies with this process
// (execx.StartPinned's parent-death signal), and is killed when t's
// deadline comes.
func inPrivateMounts(t *testing.T, name string, args ...string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), privateHelperEnv+"="+name, privateArgsEnv+"="+string(a))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	child, err := execx.StartPinned(cmd)
	if err != nil {
		t.Fatalf("helper %s in a mount namespace of its own: %v", name, err)
	}
	var deadline <-chan struct{}
	if d, ok := t.Deadline(); ok {
		ctx, cancel := context.WithDeadline(context.Background(), d)
		defer cancel()
		deadline = ctx.Done()
	}
	select {
	case <-child.Done():
	case <-deadline:
		child.Stop(0)
	}
	if err := child.Wait(); err != nil {
		t.Fatalf("helper %s (%v): %s", name, err, strings.TrimSpace(out.String()))
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		t.Logf("helper %s: %s", name, s)
	}
}
