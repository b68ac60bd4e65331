//go:build vm

package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/vm"
)

// cloudFixture is one image made by fixtures/make-cloud-images.sh.
type cloudFixture struct {
	name string
	path string
	env  map[string]string
}

var (
	cloudOnce sync.Once
	cloudFx   []cloudFixture
	cloudErr  string
)

// cloudFixtures builds (or finds in the cache) the Debian- and
// Ubuntu-shaped cloud images, once per run.
func cloudFixtures(t *testing.T) []cloudFixture {
	t.Helper()
	requireTools(t, "mmdebstrap", "losetup", "grub-install", "mkfs.vfat", "mcopy", "qemu-img", "qemu-system-x86_64", "sgdisk", "blkid", "debugfs")
	cloudOnce.Do(func() {
		cache := filepath.Join(filepath.Dir(cacheDir()), "cloudimg")
		if d := os.Getenv("BAKE_TEST_CACHE"); d != "" {
			cache = filepath.Join(d, "cloudimg")
		}
		t0 := time.Now()
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "test/vm/fixtures/make-cloud-images.sh"), cache)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			s := stderr.String()
			if len(s) > 4000 {
				s = s[len(s)-4000:]
			}
			cloudErr = fmt.Sprintf("make-cloud-images.sh: %v\n%s", err, s)
			return
		}
		t.Logf("cloud fixtures ready in %s", since(t0))
		for i, p := range strings.Fields(string(out)) {
			env := map[string]string{}
			b, err := os.ReadFile(strings.TrimSuffix(p, ".qcow2") + ".env")
			if err != nil {
				cloudErr = err.Error()
				return
			}
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					env[k] = v
				}
			}
			cloudFx = append(cloudFx, cloudFixture{name: []string{"debian", "ubuntu"}[i], path: p, env: env})
		}
	})
	if cloudErr != "" {
		t.Fatal(cloudErr)
	}
	return cloudFx
}

// bootToLogin boots a disk under the firmware and waits for the login
// prompt on the serial console.
func bootToLogin(t *testing.T, diskPath, format, firmware, hostname string, expect ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	serial := filepath.Join(t.TempDir(), "serial-"+firmware+".log")
	t0 := time.Now()
	v, err := vm.Start(ctx, vm.Config{
		Firmware: firmware, Disk: diskPath, DiskFormat: format, Snapshot: true,
		MemoryMiB: 1024, SerialLog: serial,
	})
	if err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	defer stopVM(t, firmware, v)
	if err := v.WaitSerial(ctx, hostname+" login:", 8*time.Minute); err != nil {
		b, _ := os.ReadFile(serial)
		tail := string(b)
		if len(tail) > 3000 {
			tail = tail[len(tail)-3000:]
		}
		t.Fatalf("%s: no %q prompt: %v\n--- serial tail\n%s", firmware, hostname+" login:", err, tail)
	}
	t.Logf("%s %s: login prompt after %s", filepath.Base(diskPath), firmware, since(t0))
	b, _ := v.Serial()
	for _, e := range expect {
		if !strings.Contains(string(b), e) {
			t.Errorf("%s: serial console lacks %q", firmware, e)
		}
	}
	stopVM(t, firmware, v)
}

// identity is what must survive a reassembly: sgdisk's view of the table
// and blkid's view of each filesystem.
func identity(t *testing.T, raw string, l *cloudimg.Layout, rootGrown bool) map[string]string {
	t.Helper()
	id := map[string]string{}
	out, err := exec.Command("sgdisk", "-p", raw).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk -p: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Disk identifier (GUID):") {
			id["disk"] = line
		}
	}
	for _, p := range l.Table.Partitions {
		out, err := exec.Command("sgdisk", "-i", fmt.Sprint(p.Number), raw).CombinedOutput()
		if err != nil {
			t.Fatalf("sgdisk -i %d: %v\n%s", p.Number, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, k := range []string{"Partition GUID code:", "Partition unique GUID:", "First sector:", "Partition name:", "Attribute flags:"} {
				if strings.HasPrefix(line, k) {
					id[fmt.Sprintf("p%d %s", p.Number, k)] = line
				}
			}
			if strings.HasPrefix(line, "Last sector:") && !(rootGrown && p.Number == l.Root) {
				id[fmt.Sprintf("p%d Last sector:", p.Number)] = line
			}
		}
		if p.FS.Type == "" {
			continue
		}
		out, err = exec.Command("blkid", "-p", "-o", "export", "-O", fmt.Sprint(p.Offset), raw).Output()
		if err != nil {
			t.Fatalf("blkid partition %d: %v", p.Number, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, k := range []string{"UUID=", "LABEL=", "TYPE="} {
				if strings.HasPrefix(line, k) {
					id[fmt.Sprintf("p%d %s", p.Number, k)] = line
				}
			}
		}
	}
	return id
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// debianFixture is the Debian-shaped cloud fixture (fails t without it).
func debianFixture(t *testing.T) cloudFixture {
	t.Helper()
	var fx cloudFixture
	for _, f := range cloudFixtures(t) {
		if f.name == "debian" {
			fx = f
		}
	}
	if fx.path == "" {
		t.Fatal("no Debian-shaped cloud fixture")
	}
	return fx
}
