//go:build integration

package cloudimg

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"golang.org/x/sys/unix"
)

// Fixture is one cloud-image fixture made by test/vm/fixtures/make-cloud-images.sh.
type fixture struct {
	Path string
	Env  map[string]string // NAME.env: DISK_GUID, ROOT_UUID, KERNEL, ...
}

var (
	fixturesOnce sync.Once
	fixturesErr  error
	debianFx     fixture
	ubuntuFx     fixture
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), ".."))
}

func fixtureCache() string {
	if d := os.Getenv("BAKE_TEST_CACHE"); d != "" {
		return filepath.Join(d, "cloudimg")
	}
	return filepath.Join(repoRoot(), ".cache", "cloudimg")
}

func readEnv(p string) (map[string]string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// fixtures builds (or finds cached) the two cloud-image fixtures.
func fixtures(t *testing.T) (fixture, fixture) {
	t.Helper()
	requireRoot(t)
	fixturesOnce.Do(func() {
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "test/vm/fixtures/make-cloud-images.sh"), fixtureCache())
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			tail := stderr.String()
			if len(tail) > 4000 {
				tail = tail[len(tail)-4000:]
			}
			fixturesErr = errors.New("make-cloud-images.sh: " + err.Error() + "\n" + tail)
			return
		}
		lines := strings.Fields(string(out))
		if len(lines) != 2 {
			fixturesErr = errors.New("make-cloud-images.sh printed " + string(out))
			return
		}
		for i, fx := range []*fixture{&debianFx, &ubuntuFx} {
			fx.Path = lines[i]
			if fx.Env, err = readEnv(strings.TrimSuffix(fx.Path, ".qcow2") + ".env"); err != nil {
				fixturesErr = err
				return
			}
		}
	})
	if fixturesErr != nil {
		t.Fatal(fixturesErr)
	}
	return debianFx, ubuntuFx
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the integration tier needs root (loop devices, mounts): run `make test` as root")
	}
	for _, tool := range []string{"mmdebstrap", "losetup", "mount", "cp", "getcap", "debugfs", "qemu-img", "grub-install", "mcopy", "mkfs.vfat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/install-deps.sh", tool)
		}
	}
}

func sha(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// loopsOf lists the loop devices whose backing file is p.
func loopsOf(t *testing.T, p string) []string {
	t.Helper()
	out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	var l []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[1] == p {
			l = append(l, f[0])
		}
	}
	return l
}

// extractMounts lists mounts made by Extract (its temporary mount points).
func extractMounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var m []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.Contains(f[4], "/bake-extract-") {
			m = append(m, f[4])
		}
	}
	return m
}

func toRaw(t *testing.T, fx fixture) string {
	t.Helper()
	img, err := Open(context.Background(), fx.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	raw := filepath.Join(t.TempDir(), "base.raw")
	t0 := time.Now()
	if err := ToRaw(context.Background(), img, raw); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (%s, %d MiB file, %d MiB disk) -> raw in %s", filepath.Base(fx.Path), img.Compression, img.FileSize>>20, img.Size>>20, time.Since(t0).Round(time.Millisecond))
	return raw
}

func TestFixturesInspectExtract(t *testing.T) {
	deb, ubu := fixtures(t)
	for _, c := range []struct {
		name string
		fx   fixture
	}{{"debian", deb}, {"ubuntu", ubu}} {
		t.Run(c.name, func(t *testing.T) {
			fx := c.fx
			before := sha(t, fx.Path)
			raw := toRaw(t, fx)
			rawSum := sha(t, raw)
			l, err := Inspect(context.Background(), raw)
			if err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			l.Print(&sb)
			t.Log("\n" + sb.String())
			checkLayout(t, c.name, l, fx.Env)

			tree := filepath.Join(t.TempDir(), "tree")
			t0 := time.Now()
			if err := Extract(context.Background(), raw, l, tree, WithRunner(execx.Host{}), WithLog(testLog{t})); err != nil {
				t.Fatal(err)
			}
			t.Logf("extracted in %s", time.Since(t0).Round(time.Millisecond))
			checkTree(t, tree, c.name == "ubuntu")
			if left := loopsOf(t, raw); len(left) > 0 {
				t.Errorf("loop devices left: %v", left)
			}
			if left := extractMounts(t); len(left) > 0 {
				t.Errorf("mounts left: %v", left)
			}
			if sha(t, raw) != rawSum {
				t.Error("Extract modified the raw base")
			}
			if sha(t, fx.Path) != before {
				t.Error("the qcow2 fixture was modified")
			}
			// The tree's boot chain, as the builder will compare it.
			bc, err := ReadBootChain(tree)
			if err != nil {
				t.Fatal(err)
			}
			if len(bc.Kernels) != 1 || bc.Kernels[0] != fx.Env["KERNEL"] || bc.Loader["grub-pc-bin"] == "" {
				t.Errorf("boot chain %+v", bc)
			}
			if k, ld := bc.Changes(bc); k || ld {
				t.Error("a boot chain differs from itself")
			}
		})
	}
}

func checkLayout(t *testing.T, name string, l *Layout, env map[string]string) {
	t.Helper()
	want := func(what, got, want string) {
		if got != want {
			t.Errorf("%s: %s = %q, want %q", name, what, got, want)
		}
	}
	want("disk GUID", l.Table.DiskGUID, env["DISK_GUID"])
	want("root PARTUUID", l.RootPartition().GUID, env["ROOT_PARTUUID"])
	want("root UUID", l.RootPartition().FS.UUID, env["ROOT_UUID"])
	want("root label", l.RootPartition().FS.Label, env["ROOT_LABEL"])
	want("ESP PARTUUID", l.ESPPartition().GUID, env["ESP_PARTUUID"])
	want("ESP UUID", l.ESPPartition().FS.UUID, env["ESP_UUID"])
	want("ESP label", l.ESPPartition().FS.Label, env["ESP_LABEL"])
	want("BIOS PARTUUID", l.BIOSBootPartition().GUID, env["BIOS_PARTUUID"])
	want("OS", l.OS.ID+" "+l.OS.VersionID, "debian 12")
	want("kernels", strings.Join(l.Kernels, " "), env["KERNEL"])
	if name == "debian" {
		want("root found by", l.RootFoundBy, "GPT type")
		if l.Boot != 0 || l.Root != 1 || l.ESP != 15 || l.BIOSBoot != 14 {
			t.Errorf("roles %d %d %d %d", l.Root, l.Boot, l.ESP, l.BIOSBoot)
		}
	} else {
		want("root found by", l.RootFoundBy, "label cloudimg-rootfs")
		if l.Boot != 16 || l.Root != 1 || l.ESP != 15 || l.BIOSBoot != 14 {
			t.Fatalf("roles %d %d %d %d", l.Root, l.Boot, l.ESP, l.BIOSBoot)
		}
		want("boot PARTUUID", l.BootPartition().GUID, env["BOOT_PARTUUID"])
		want("boot UUID", l.BootPartition().FS.UUID, env["BOOT_UUID"])
		want("boot label", l.BootPartition().FS.Label, env["BOOT_LABEL"])
	}
	if l.Packages < 150 {
		t.Errorf("%d packages", l.Packages)
	}
	// blkid agrees with the superblock reader.
	for _, p := range l.Table.Partitions {
		if p.FS.Type == "" {
			continue
		}
		out, err := exec.Command("blkid", "-p", "-o", "export", "-O", itoa(p.Offset), "-S", itoa(p.Size), l.Path).Output()
		if err != nil {
			t.Errorf("blkid partition %d: %v", p.Number, err)
			continue
		}
		got := string(out)
		if !strings.Contains(got, "UUID="+p.FS.UUID+"\n") || (p.FS.Label != "" && !strings.Contains(got, "LABEL="+p.FS.Label+"\n")) {
			t.Errorf("partition %d: blkid says\n%s\nbake read %+v", p.Number, got, p.FS)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func checkTree(t *testing.T, tree string, ubuntu bool) {
	t.Helper()
	out, err := exec.Command("getcap", filepath.Join(tree, "usr/bin/ping")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "cap_net_raw") {
		t.Errorf("getcap ping: %v %s", err, out)
	}
	for _, p := range []string{"usr/bin/passwd", "usr/bin/mount", "usr/bin/su", "usr/bin/chsh"} {
		fi, err := os.Lstat(filepath.Join(tree, p))
		if err != nil || fi.Mode()&os.ModeSetuid == 0 {
			t.Errorf("%s: not setuid (%v)", p, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(tree, "etc/shadow")); err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		if st.Gid != 42 || fi.Mode().Perm() != 0o640 {
			t.Errorf("/etc/shadow gid %d mode %v", st.Gid, fi.Mode())
		}
	} else {
		t.Error(err)
	}
	fx := filepath.Join(tree, "usr/local/share/bake-fixture")
	a, errA := os.Lstat(filepath.Join(fx, "hardlink-a"))
	b, errB := os.Lstat(filepath.Join(fx, "hardlink-b"))
	if errA != nil || errB != nil || !os.SameFile(a, b) || a.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Errorf("hard link pair not kept: %v %v", errA, errB)
	}
	for name, want := range map[string][3]uint32{"null": {syscall.S_IFCHR, 1, 3}, "loop7": {syscall.S_IFBLK, 7, 7}} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(fx, name), &st); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode&syscall.S_IFMT != want[0] || unix.Major(st.Rdev) != want[1] || unix.Minor(st.Rdev) != want[2] {
			t.Errorf("%s: mode %o rdev %d:%d", name, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(fx, "xattr-file"), "user.bake-fixture", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user xattr: %v %q", err, buf[:max(n, 0)])
	}
	if fi, err := os.Lstat(filepath.Join(tree, "bin")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("/bin is not the usrmerge symlink: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(tree, "lost+found")); err == nil {
		t.Error("lost+found copied")
	}
	if _, err := os.Stat(filepath.Join(tree, "boot/grub/grub.cfg")); err != nil {
		t.Errorf("no /boot/grub/grub.cfg: %v", err)
	}
	if ubuntu {
		if _, err := os.Lstat(filepath.Join(tree, "boot/lost+found")); err == nil {
			t.Error("/boot's lost+found copied")
		}
		if _, err := os.Stat(filepath.Join(tree, "etc/bake-fixture")); err != nil {
			t.Error(err)
		}
	}
}

// A cancelled extraction stops the copy and still unmounts and detaches.
func TestExtractCancelledCleansUp(t *testing.T) {
	deb, _ := fixtures(t)
	raw := toRaw(t, deb)
	l, err := Inspect(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &cancelOnCopy{cancel: cancel, after: 700 * time.Millisecond}
	tree := filepath.Join(t.TempDir(), "tree")
	t0 := time.Now()
	err = Extract(ctx, raw, l, tree, WithRunner(r))
	t.Logf("cancelled Extract returned after %s: %v", time.Since(t0).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("Extract succeeded although cancelled mid-copy")
	}
	if !r.sawCopy {
		t.Fatal("the copy never started")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v is not context.Canceled", err)
	}
	if left := loopsOf(t, raw); len(left) > 0 {
		t.Errorf("loop devices left: %v", left)
	}
	if left := extractMounts(t); len(left) > 0 {
		t.Errorf("mounts left: %v", left)
	}
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), "bake-extract-*")); len(m) > 0 {
		t.Logf("note: temp mount dirs present (maybe other runs): %v", m)
	}
}

// cancelOnCopy runs commands on the host and cancels the context a moment
// after the copy starts.
type cancelOnCopy struct {
	cancel  context.CancelFunc
	after   time.Duration
	sawCopy bool
}

func (c *cancelOnCopy) Run(ctx context.Context, cmd execx.Cmd) error {
	if cmd.Name == "cp" {
		c.sawCopy = true
		time.AfterFunc(c.after, c.cancel)
	}
	return execx.Host{}.Run(ctx, cmd)
}

func (c *cancelOnCopy) Output(ctx context.Context, cmd execx.Cmd) ([]byte, error) {
	return execx.Host{}.Output(ctx, cmd)
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
