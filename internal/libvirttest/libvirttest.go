// Package libvirttest starts a private libvirtd for tests: Debian's
// libvirtd and virtlogd (scripts/install-deps.sh installs them) in a PID
// and mount namespace of their own, with their own configuration, state,
// run and log directories (overlays on /etc, /run and /var, so nothing of
// the host is written), the QEMU and storage drivers only (no network
// driver: no bridge, no firewall rule, never libvirt's default network),
// no cgroup controllers, no security driver, and a socket in the test's
// temp dir. Killing the namespace's first process (unshare's child, by
// PID) kills everything in it: libvirtd, virtlogd and QEMU.
package libvirttest

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"

	"github.com/bakeimg/bake/internal/execx"
)

// Daemon is a running private libvirtd.
type Daemon struct {
	Dir    string // everything it has: config, overlays, socket, log
	Socket string // its read-write socket
	URI    string // qemu:///system?socket=Socket
	Log    string
	child  *execx.Child
	nsPID  string // the pid namespace (its /proc/PID/ns/pid link)
}

const driverDir = "/usr/lib/x86_64-linux-gnu/libvirt"

// Start starts a private libvirtd; it is killed when the test ends, on
// every path, and the test fails if anything it started is left.
func Start(t testing.TB) *Daemon {
	t.Helper()
	for _, bin := range []string{"libvirtd", "virtlogd", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (scripts/install-deps.sh installs libvirt-daemon and libvirt-daemon-driver-qemu)", bin)
		}
	}
	dir := t.TempDir()
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "sock", "libvirt-sock"), Log: filepath.Join(dir, "daemon.log")}
	d.URI = (&url.URL{Scheme: "qemu", Path: "/system", RawQuery: url.Values{"socket": {d.Socket}}.Encode()}).String()
	mk := func(p string) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, p)
	}
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("sock")
	mk("conf")
	for _, o := range []string{"etc", "run", "var"} {
		mk("ov/" + o + "/u")
		mk("ov/" + o + "/w")
	}
	// Only the QEMU and storage drivers, and the dir pool's backend.
	drv, sb := mk("drivers"), mk("storage-backends")
	for _, l := range [][2]string{
		{driverDir + "/connection-driver/libvirt_driver_qemu.so", drv},
		{driverDir + "/connection-driver/libvirt_driver_storage.so", drv},
		{driverDir + "/storage-backend/libvirt_storage_backend_fs.so", sb},
	} {
		if _, err := os.Stat(l[0]); err != nil {
			t.Fatalf("libvirt driver: %v (scripts/install-deps.sh installs it)", err)
		}
		if err := os.Symlink(l[0], filepath.Join(l[1], filepath.Base(l[0]))); err != nil {
			t.Fatal(err)
		}
	}
	write("conf/libvirtd.conf", fmt.Sprintf(`unix_sock_dir = %q
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:stderr"
`, filepath.Dir(d.Socket)))
	// Debian's libvirtd runs QEMU as libvirt-qemu, which only the
	// libvirt-daemon-system package creates: the user exists here in the
	// namespace's /etc only (libvirtd looks it up before it reads
	// qemu.conf). Not root, as on a real host (and passt, on a libvirt
	// that has it, refuses to run as root and cannot write its PID file
	// in libvirt's directory as nobody). libvirtd
	// chowns the disks it starts a domain with to it (dynamic
	// ownership), so the pool's directories must be searchable. No
	// per-domain mount namespace (namespaces = []): libvirtd is in one
	// already, and its private /dev cannot move the /dev/kvm stand-in.
	write("conf/qemu.conf", `user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
`)
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("conf/virtlogd.conf", "log_outputs = \"3:stderr\"\n")
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	group, err := os.ReadFile("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(passwd, []byte("\nlibvirt-qemu:")) {
		passwd = append(passwd, "libvirt-qemu:x:64055:64055:libvirt qemu (bake test namespace):/var/lib/libvirt:/usr/sbin/nologin\n"...)
	}
	for _, g := range []string{"libvirt-qemu:x:64055:", "kvm:x:64056:", "libvirt:x:64057:"} {
		if !bytes.Contains(group, []byte("\n"+strings.SplitN(g, ":", 2)[0]+":")) {
			group = append(group, g+"\n"...)
		}
	}
	write("conf/passwd", string(passwd))
	write("conf/group", string(group))
	script := fmt.Sprintf(`set -e
for d in etc run var; do
  mount -t overlay overlay -o lowerdir=/$d,upperdir=%[1]s/ov/$d/u,workdir=%[1]s/ov/$d/w /$d
done
cp %[1]s/conf/passwd %[1]s/conf/group /etc/
# No KVM in here: domain type qemu (TCG) only. (A /dev/kvm root alone can
# open made libvirtd probe QEMU's capabilities again at every lookup:
# usable as root, not as the QEMU user.)
if [ -e /dev/kvm ]; then
  : > %[1]s/conf/nokvm
  chmod 0600 %[1]s/conf/nokvm
  mount --bind %[1]s/conf/nokvm /dev/kvm
fi
mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
cp %[1]s/conf/*.conf /etc/libvirt/
export LIBVIRT_DRIVER_DIR=%[1]s/drivers LIBVIRT_STORAGE_BACKEND_DIR=%[1]s/storage-backends
virtlogd -d -f /etc/libvirt/virtlogd.conf
# This shell stays the namespace's PID 1: its wait reaps every orphan
# (libvirtd's QEMU capability probes are daemonized; a zombie left
# unreaped makes libvirtd wait ~40 s for it to die).
libvirtd -f /etc/libvirt/libvirtd.conf &
wait
`, dir)
	write("conf/start.sh", script)
	logf, err := os.Create(d.Log)
	if err != nil {
		t.Fatal(err)
	}
	links := linkNames(t)
	// --fork --kill-child: the shell is the namespace's PID 1; unshare
	// SIGKILLs it when unshare dies (StartPinned's parent-death signal
	// kills unshare when the test process dies), and the kernel then
	// kills every process in the namespace.
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "sh", filepath.Join(dir, "conf/start.sh"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	child, err := execx.StartPinned(cmd)
	if err != nil {
		t.Fatal(err)
	}
	d.child = child
	t.Cleanup(func() {
		child.Stop(0)
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(d.Log)
			t.Logf("libvirtd log (tail):\n%s", tail(string(b), 60))
			logs, _ := filepath.Glob(filepath.Join(dir, "ov/var/u/log/libvirt/qemu/*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s (tail):\n%s", filepath.Base(l), tail(string(b), 30))
			}
		}
		if d.nsPID != "" {
			deadline := time.Now().Add(10 * time.Second)
			for {
				left := inNamespace(d.nsPID)
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("processes left in libvirtd's namespace after it was killed: %v", left)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		if now := linkNames(t); now != links {
			t.Errorf("libvirt's network links changed while libvirtd ran:\nbefore: %q\nafter:  %q", links, now)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if l, err := d.Connect(); err == nil {
			l.Disconnect()
			break
		} else if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.Log)
			t.Fatalf("libvirtd not up after 60s: %v\n%s", err, tail(string(b), 40))
		}
		select {
		case <-child.Done():
			b, _ := os.ReadFile(d.Log)
			t.Fatalf("libvirtd exited: %v\n%s", child.Wait(), tail(string(b), 40))
		case <-time.After(200 * time.Millisecond):
		}
	}
	// The namespace: the one the shell (unshare's only child) is in.
	if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)); err == nil {
		if f := strings.Fields(string(kids)); len(f) == 1 {
			d.nsPID, _ = os.Readlink("/proc/" + f[0] + "/ns/pid")
		}
	}
	if d.nsPID == "" {
		t.Fatal("cannot find libvirtd's PID namespace")
	}
	return d
}

// Connect opens a connection to the daemon.
func (d *Daemon) Connect() (*libvirt.Libvirt, error) {
	u, err := url.Parse(d.URI)
	if err != nil {
		return nil, err
	}
	return libvirt.ConnectToURI(u)
}

// DirPool creates (transient, active) a dir storage pool NAME at a new
// directory in the test's temp dir and returns that directory.
func (d *Daemon) DirPool(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(d.Dir, "pool-"+name)
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := d.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	if _, err := l.StoragePoolCreateXML(fmt.Sprintf("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>", name, path), 0); err != nil {
		t.Fatalf("creating pool %s: %v", name, err)
	}
	return path
}

// inNamespace lists the PIDs of processes in the PID namespace ns.
func inNamespace(ns string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err == nil && l == ns {
			cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			out = append(out, e.Name()+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
}

// linkNames lists the host's network links libvirt names (its bridges
// virbrN, its taps vnetN, macvtapN): one it made would show here. Links of
// other tests running beside this one have other names.
func linkNames(t testing.TB) string {
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			for _, p := range []string{"virbr", "vnet", "macvtap"} {
				if strings.HasPrefix(name, p) {
					names = append(names, name)
				}
			}
		}
	}
	return strings.Join(names, " ")
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
