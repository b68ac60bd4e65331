//go:build vm

package vm

import (
	"archive/tar"
	"bytes"
	"fmt"
	"github.com/bakeimg/bake/internal/testcache"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// The VM tests boot Debian's own kernel (fetched once with apt-get download
// into a cache dir) with a tiny busybox initramfs written here in Go.

// Modules the initramfs loads for its NIC, in dependency order.
var initModules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
	"failover", "net_failover", "virtio_net", "e1000", "virtio_blk",
	"scsi_common", "scsi_mod", "libata", "libahci", "ahci", "cdrom", "sr_mod", "isofs",
}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "BAKE-INIT: up"
echo "BAKE-CPUFLAGS: $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) ."
for m in ` + "$MODULES" + `; do insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
# A NoCloud seed, if any: found by label as cloud-init does, read by the
# kernel's own iso9660 driver.
sleep 1
dev=$(findfs LABEL=cidata 2>/dev/null)
echo "BAKE-SEED-DEV: ${dev:-none}"
if [ -n "$dev" ]; then
  mkdir -p /seed && mount -t iso9660 -o ro "$dev" /seed && {
    echo "BAKE-SEED-LS: $(ls /seed | tr '\n' ' ')"
    echo "BAKE-SEED-META: $(cat /seed/meta-data | tr '\n' ' ')"
    umount /seed
  }
fi
iface=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
echo "BAKE-INIT: nic=$iface"
if [ -n "$iface" ]; then
  ip link set "$iface" up
  udhcpc -i "$iface" -f -q -n -t 30 -T 1 -s /udhcpc.sh
  a=
  v6wait=$(sed -n 's/.*bake\.v6wait=\([0-9]*\).*/\1/p' /proc/cmdline)
  for i in $(seq 1 ${v6wait:-60}); do
    a=$(ip -6 addr show dev "$iface" scope global | sed -n 's/.*inet6 \([0-9a-f:]*\)\/64.*/\1/p' | head -n1)
    [ -n "$a" ] && break
    sleep 1
  done
  echo "BAKE-IPV6: $a"
  echo "BAKE-NIC-PATH: $(readlink -f /sys/class/net/$iface)"
  probe=$(sed -n 's/.*bake\.probe=\([0-9]*\).*/\1/p' /proc/cmdline)
  if [ -n "$probe" ]; then
    r=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 10.0.2.2 "$probe" 2>&1)
    case "$r" in *HTTP/*) echo "BAKE-PROBE: reached" ;; *) echo "BAKE-PROBE: blocked ($r)" ;; esac
  fi
  mkdir -p /www && echo bake-hello > /www/index.html
  httpd -p 8080 -h /www
fi
echo "BAKE-INIT: ready"
while true; do sleep 3600; done
`

const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
  ip addr add "$ip/${mask:-24}" dev "$interface"
  echo "BAKE-LEASE: $ip"
  ;;
esac
`

type kernelFixture struct {
	Kernel    string
	Initramfs string
	err       error
}

var (
	fixtureOnce sync.Once
	fixture     kernelFixture
)

// testKernel returns Debian's kernel and a busybox initramfs, or skips the
// test (with the reason) when they cannot be had.
func testKernel(t *testing.T) kernelFixture {
	t.Helper()
	fixtureOnce.Do(func() { fixture = buildKernelFixture() })
	if fixture.err != nil {
		t.Fatalf("no test kernel: %v", fixture.err)
	}
	return fixture
}

func cacheDir() (string, error) {
	return testcache.Dir("vmtest"), nil
}

// aptDownload fetches pkg's .deb into dir unless a matching one is there.
func aptDownload(dir, pkg string) (string, error) {
	glob := filepath.Join(dir, pkg+"_*.deb")
	if m, _ := filepath.Glob(glob); len(m) > 0 {
		return m[len(m)-1], nil
	}
	dl := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "download", pkg)
		cmd.Dir = dir
		return cmd.CombinedOutput()
	}
	if out, err := dl(); err != nil {
		// The package lists may be missing on a fresh machine.
		if uout, uerr := exec.Command("apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("apt-get download %s: %v\n%s\napt-get update: %v\n%s", pkg, err, out, uerr, uout)
		}
		if out, err := dl(); err != nil {
			return "", fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
		}
	}
	if m, _ := filepath.Glob(glob); len(m) > 0 {
		return m[len(m)-1], nil
	}
	return "", fmt.Errorf("apt-get download %s left no %s", pkg, glob)
}

var kernelPkgRE = regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-amd64)`)

func buildKernelFixture() kernelFixture {
	fail := func(err error) kernelFixture { return kernelFixture{err: err} }
	dir, err := cacheDir()
	if err != nil {
		return fail(err)
	}
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").CombinedOutput()
	if err == nil && !kernelPkgRE.Match(out) {
		exec.Command("apt-get", "update", "-qq").Run()
		out, err = exec.Command("apt-cache", "depends", "linux-image-amd64").CombinedOutput()
	}
	m := kernelPkgRE.FindSubmatch(out)
	if err != nil || m == nil {
		return fail(fmt.Errorf("apt-cache depends linux-image-amd64: %v\n%s", err, out))
	}
	kpkg := string(m[1])
	kernel := filepath.Join(dir, "vmlinuz-"+strings.TrimPrefix(kpkg, "linux-image-"))
	modDir := filepath.Join(dir, "modules-"+strings.TrimPrefix(kpkg, "linux-image-"))
	haveAll := true
	for _, mod := range initModules {
		if _, err := os.Stat(filepath.Join(modDir, mod+".ko")); err != nil {
			haveAll = false
		}
	}
	if !haveAll {
		deb, err := aptDownload(dir, kpkg)
		if err != nil {
			return fail(err)
		}
		want := map[string]string{}
		for _, mod := range initModules {
			want[mod+".ko"] = filepath.Join(modDir, mod+".ko")
		}
		if err := os.MkdirAll(modDir, 0o755); err != nil {
			return fail(err)
		}
		err = extractDeb(deb, func(name string) string {
			if strings.HasPrefix(name, "boot/vmlinuz-") {
				return kernel
			}
			if strings.HasPrefix(name, "lib/modules/") {
				return want[path.Base(name)]
			}
			return ""
		})
		if err != nil {
			return fail(err)
		}
		os.Remove(deb) // 70 MB; what the tests need is extracted
	}
	busybox := filepath.Join(dir, "busybox")
	if _, err := os.Stat(busybox); err != nil {
		deb, err := aptDownload(dir, "busybox-static")
		if err != nil {
			return fail(err)
		}
		if err := extractDeb(deb, func(name string) string {
			if name == "bin/busybox" {
				return busybox
			}
			return ""
		}); err != nil {
			return fail(err)
		}
	}
	for _, f := range []string{kernel, busybox} {
		if _, err := os.Stat(f); err != nil {
			return fail(err)
		}
	}

	// The initramfs: busybox, /init, the udhcpc hook and the NIC modules.
	var w cpioWriter
	for _, d := range []string{"bin", "dev", "etc", "lib", "lib/modules", "proc", "run", "sys", "tmp"} {
		w.dir(d)
	}
	w.chardev("dev/console", 5, 1)
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fail(err)
	}
	w.file("bin/busybox", 0o755, bb)
	w.file("init", 0o755, []byte(strings.ReplaceAll(initScript, "$MODULES", strings.Join(initModules, " "))))
	w.file("udhcpc.sh", 0o755, []byte(udhcpcScript))
	for _, mod := range initModules {
		b, err := os.ReadFile(filepath.Join(modDir, mod+".ko"))
		if err != nil {
			return fail(err)
		}
		w.file("lib/modules/"+mod+".ko", 0o644, b)
	}
	w.trailer()
	initramfs := filepath.Join(dir, "initramfs-test.cpio")
	if err := writeFixtureAtomic(initramfs, bytes.NewReader(w.buf.Bytes())); err != nil {
		return fail(err)
	}
	return kernelFixture{Kernel: kernel, Initramfs: initramfs}
}

// extractDeb writes the members of a .deb for which dest returns a path.
func extractDeb(deb string, dest func(name string) string) error {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	tr := tar.NewReader(pipe)
	var terr error
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			terr = err
			break
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		to := dest(strings.TrimPrefix(h.Name, "./"))
		if to == "" {
			continue
		}
		if err := writeFixtureAtomic(to, tr); err != nil {
			terr = err
			break
		}
	}
	io.Copy(io.Discard, pipe)
	if err := cmd.Wait(); err != nil && terr == nil {
		terr = fmt.Errorf("dpkg-deb --fsys-tarfile %s: %v: %s", deb, err, stderr.String())
	}
	return terr
}

// writeFixtureAtomic writes r to path through a unique temp file, so concurrent
// test processes sharing the cache never see a half-written file.
func writeFixtureAtomic(path string, r io.Reader) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o755)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	return err
}

// cpioWriter writes the "newc" cpio format the kernel unpacks as initramfs.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	w.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string) { w.entry(name, 0o040755, 0, 0, nil) }
func (w *cpioWriter) file(name string, perm uint32, b []byte) {
	w.entry(name, 0o100000|perm, 0, 0, b)
}
func (w *cpioWriter) chardev(name string, major, minor int) {
	w.entry(name, 0o020600, major, minor, nil)
}
func (w *cpioWriter) trailer() { w.entry("TRAILER!!!", 0, 0, 0, nil) }
