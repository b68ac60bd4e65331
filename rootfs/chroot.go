package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/safepath"
	"golang.org/x/sys/unix"
)

// ChrootPath is the PATH commands in the chroot get (Debian's root default).
const ChrootPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// policyRCD makes invoke-rc.d refuse to start, stop or restart any service
// (exit 101 = "action forbidden"), so a package's maintainer script never
// starts a daemon on the build host.
const policyRCD = "#!/bin/sh\n# Written by bake while it builds the image: no service may start in the build chroot.\nexit 101\n"

// Chroot is a root tree prepared for running its own programs: maintainer
// scripts need /proc, /sys and a /dev, apt needs DNS, and nothing may start a
// daemon. Open prepares it; Close undoes every mount and file it made.
//
// Mounts are made on directories opened inside the tree with safepath (the
// mount target is the opened fd, /proc/self/fd/N), so a tree whose /dev is a
// symlink to the host's /dev cannot make bake mount over the host. /dev is a
// fresh tmpfs with a handful of device nodes, never a bind of the host's
// /dev: a bind left behind, then removed with the work dir, empties the
// host's /dev.
//
// The builder runs in a private mount namespace (builder.RunIsolated), so
// these mounts are invisible to the host and die with bake even on SIGKILL;
// Close still unmounts them, because the tree is used after the chroot.
type Chroot struct {
	tree   string
	root   *safepath.Root
	runner execx.Runner
	// mounts are host paths of mounts this Chroot made, in mount order.
	mounts []string

	log            io.Writer
	resolv         fileState
	resolvWritten  []byte
	policyRCDAdded bool
}

// ChrootOption configures Open.
type ChrootOption func(*Chroot)

// WithLog makes the chroot report what Close had to clean up (processes
// left running in the tree) to w.
func WithLog(w io.Writer) ChrootOption { return func(c *Chroot) { c.log = w } }

// WithRunner makes the chroot run commands through r (default execx.Default).
func WithRunner(r execx.Runner) ChrootOption { return func(c *Chroot) { c.runner = r } }

// fileState remembers a file so it can be put back as it was.
type fileState struct {
	exists   bool
	symlink  string // target when a symlink
	content  []byte
	mode     uint32
	uid, gid int
}

// Open prepares tree for chrooted commands: proc, a read-only sysfs, a
// minimal tmpfs /dev with devpts and /dev/shm, a tmpfs /run, the host's
// resolv.conf (apt needs DNS) and policy-rc.d. On error everything done so
// far is undone.
func Open(ctx context.Context, tree string, opts ...ChrootOption) (*Chroot, error) {
	abs := mounts.Canonical(tree)
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("chroot: %s is not a directory", abs)
	}
	if m, err := mounts.Below(abs); err != nil {
		return nil, err
	} else if len(m) > 0 {
		return nil, fmt.Errorf("chroot: %w %s already: %s", mounts.ErrMounted, abs, strings.Join(m, ", "))
	}
	root, err := safepath.Open(abs)
	if err != nil {
		return nil, err
	}
	c := &Chroot{tree: abs, root: root, runner: execx.Default}
	for _, o := range opts {
		o(c)
	}
	if err := c.setup(); err != nil {
		return nil, errors.Join(fmt.Errorf("chroot %s: %w", abs, err), c.Close())
	}
	return c, nil
}

// Tree is the host path of the chroot's root.
func (c *Chroot) Tree() string { return c.tree }

// Root is the tree opened for safe writes.
func (c *Chroot) Root() *safepath.Root { return c.root }

func (c *Chroot) setup() error {
	const (
		nosuid = unix.MS_NOSUID
		nodev  = unix.MS_NODEV
		noexec = unix.MS_NOEXEC
	)
	steps := []struct {
		target, fstype, source string
		flags                  uintptr
		data                   string
	}{
		{"/proc", "proc", "proc", nosuid | nodev | noexec, ""},
		// Read-only: a maintainer script has no business changing the
		// build host's kernel settings through /sys.
		{"/sys", "sysfs", "sysfs", nosuid | nodev | noexec | unix.MS_RDONLY, ""},
		{"/dev", "tmpfs", "bake-dev", nosuid | noexec, "mode=0755,size=4m"},
	}
	for _, s := range steps {
		if err := c.mount(s.source, s.target, s.fstype, s.flags, s.data); err != nil {
			return err
		}
	}
	if err := c.makeDev(); err != nil {
		return err
	}
	// newinstance: the chroot gets its own pty namespace instead of the
	// host's /dev/pts (whose ptys it could otherwise open).
	if err := c.mount("devpts", "/dev/pts", "devpts", nosuid|noexec, "newinstance,ptmxmode=0666,mode=0620,gid=5"); err != nil {
		return err
	}
	if err := c.mount("bake-shm", "/dev/shm", "tmpfs", nosuid|nodev, "mode=1777"); err != nil {
		return err
	}
	// A tmpfs /run, as at boot: whatever packages leave there (pid files,
	// sockets) vanishes with it instead of being baked under the real
	// /run mount point, and postinst checks for /run/systemd/system see
	// no running systemd.
	if err := c.mount("bake-run", "/run", "tmpfs", nosuid|nodev, "mode=0755"); err != nil {
		return err
	}
	if err := c.root.MkdirAll("/run/lock", 0o777|fs.ModeSticky, rootUID, rootGID); err != nil {
		return err
	}
	if err := c.installResolvConf(); err != nil {
		return err
	}
	return c.installPolicyRCD()
}

// mount mounts fstype on target (a directory inside the tree, created if
// missing) through an fd opened inside the tree.
func (c *Chroot) mount(source, target, fstype string, flags uintptr, data string) error {
	if err := c.root.MkdirAll(target, 0o755, rootUID, rootGID); err != nil {
		return err
	}
	fd, err := c.root.OpenPath(target)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return c.mountFD(fd, source, target, fstype, flags, data)
}

func (c *Chroot) mountFD(fd int, source, target, fstype string, flags uintptr, data string) error {
	proc := "/proc/self/fd/" + strconv.Itoa(fd)
	host, err := os.Readlink(proc)
	if err != nil {
		return err
	}
	if !mounts.Within(host, c.tree) {
		return fmt.Errorf("mount target %s resolved to %s, outside the tree", target, host)
	}
	if err := unix.Mount(source, proc, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, host, err)
	}
	c.mounts = append(c.mounts, host)
	return nil
}

// BindMount binds the host directory src onto target inside the tree until
// the returned function is called (or Close). Used for the package cache.
func (c *Chroot) BindMount(src, target string) (unmount func() error, err error) {
	if err := c.root.MkdirAll(target, 0o755, rootUID, rootGID); err != nil {
		return nil, err
	}
	fd, err := c.root.OpenPath(target)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	// MS_PRIVATE first would need a mount of its own; a plain bind is
	// enough since the builder runs in a private namespace.
	if err := c.mountFD(fd, src, target, "", unix.MS_BIND, ""); err != nil {
		return nil, err
	}
	host := c.mounts[len(c.mounts)-1]
	return func() error { return c.unmount(host) }, nil
}

// makeDev populates the /dev tmpfs with the nodes programs expect.
// /dev/console is left out: it would hand the chroot the host's console.
func (c *Chroot) makeDev() error {
	fd, err := c.root.OpenPath("/dev")
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	nodes := []struct {
		name         string
		major, minor uint32
	}{
		{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
		{"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
	}
	for _, n := range nodes {
		if err := unix.Mknodat(fd, n.name, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", n.name, err)
		}
		// mknod applies the umask.
		if err := unix.Fchmodat(fd, n.name, 0o666, 0); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd",
		"stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := unix.Symlinkat(target, fd, name); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := unix.Mkdirat(fd, d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (c *Chroot) saveState(name string) (fileState, error) {
	var s fileState
	st, err := c.root.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	s.exists, s.mode, s.uid, s.gid = true, st.Mode, int(st.Uid), int(st.Gid)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		s.symlink, err = c.root.Readlink(name)
	case unix.S_IFREG:
		s.content, err = c.root.ReadFile(name)
	default:
		err = fmt.Errorf("%s is neither a file nor a symlink", name)
	}
	return s, err
}

func (c *Chroot) restoreState(name string, s fileState) error {
	if !s.exists {
		return c.root.Remove(name)
	}
	if s.symlink != "" {
		return c.root.Symlink(s.symlink, name, s.uid, s.gid)
	}
	return c.root.WriteFile(name, s.content, safepath.FileMode(s.mode), s.uid, s.gid)
}

// installResolvConf gives apt in the chroot the build host's DNS. The tree's
// own /etc/resolv.conf (often a symlink into /run for systemd-resolved) is
// put back by Close unless a package replaced ours meanwhile.
func (c *Chroot) installResolvConf() error {
	host, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("reading the build host's resolv.conf: %w", err)
	}
	if c.resolv, err = c.saveState("/etc/resolv.conf"); err != nil {
		return err
	}
	c.resolvWritten = append([]byte("# bake: build host's resolv.conf, removed after the build step\n"), host...)
	return c.root.WriteFile("/etc/resolv.conf", c.resolvWritten, 0o644, rootUID, rootGID)
}

// ensureResolvConf puts the build host's resolv.conf back in place if a
// package replaced it during this chroot session (systemd-resolved's
// postinst makes it a symlink into /run): the next apt run needs DNS. What
// the package put there becomes what Close restores.
func (c *Chroot) ensureResolvConf() error {
	if c.resolvWritten == nil {
		return nil
	}
	if st, err := c.root.Lstat("/etc/resolv.conf"); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		if cur, err := c.root.ReadFile("/etc/resolv.conf"); err == nil && bytes.Equal(cur, c.resolvWritten) {
			return nil
		}
	}
	saved, err := c.saveState("/etc/resolv.conf")
	if err != nil {
		return err
	}
	c.resolv = saved
	return c.root.WriteFile("/etc/resolv.conf", c.resolvWritten, 0o644, rootUID, rootGID)
}

// setResolvConfSymlink makes the image's /etc/resolv.conf a symlink to
// target. While the chroot holds the build host's copy, the symlink is what
// Close puts back, so apt keeps working until then.
func (c *Chroot) setResolvConfSymlink(target string) error {
	if c.resolvWritten != nil {
		c.resolv = fileState{exists: true, symlink: target}
		return nil
	}
	return c.root.Symlink(target, "/etc/resolv.conf", rootUID, rootGID)
}

func (c *Chroot) installPolicyRCD() error {
	if ok, err := c.root.Exists("/usr/sbin/policy-rc.d"); err != nil || ok {
		return err
	}
	if err := c.root.WriteFile("/usr/sbin/policy-rc.d", []byte(policyRCD), 0o755, rootUID, rootGID); err != nil {
		return err
	}
	c.policyRCDAdded = true
	return nil
}

// Run runs args in the chroot with a clean environment: PATH,
// DEBIAN_FRONTEND=noninteractive, LC_ALL/LANG=C.UTF-8 and HOME=/root, nothing
// of the host's (its proxies, locale, HOME or credentials must not leak into
// maintainer scripts or be recorded by them). stdin is /dev/null.
func (c *Chroot) Run(ctx context.Context, args ...string) error {
	return c.runner.Run(ctx, c.Cmd(args...))
}

// Output is Run returning stdout.
func (c *Chroot) Output(ctx context.Context, args ...string) ([]byte, error) {
	return c.runner.Output(ctx, c.Cmd(args...))
}

// Cmd is the command line Run uses: env -i ... chroot TREE args...
func (c *Chroot) Cmd(args ...string) execx.Cmd {
	a := []string{"-i",
		"PATH=" + ChrootPath,
		"DEBIAN_FRONTEND=noninteractive",
		"DEBCONF_NONINTERACTIVE_SEEN=true",
		"LC_ALL=C.UTF-8",
		"LANG=C.UTF-8",
		"HOME=/root",
		"/usr/sbin/chroot", c.tree,
	}
	return execx.Cmd{Name: "/usr/bin/env", Args: append(a, args...)}
}

// unmount unmounts one host path (lazily if it is busy) and forgets it.
func (c *Chroot) unmount(host string) error {
	err := unix.Unmount(host, unix.UMOUNT_NOFOLLOW)
	if err == unix.EBUSY {
		// A process still holds it (a daemon that escaped policy-rc.d):
		// detach now, the kernel frees it when the process is gone.
		err = unix.Unmount(host, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
	}
	if err == unix.EINVAL || err == unix.ENOENT {
		err = nil // not mounted any more
	}
	for i := len(c.mounts) - 1; i >= 0; i-- {
		if c.mounts[i] == host {
			c.mounts = append(c.mounts[:i], c.mounts[i+1:]...)
			break
		}
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", host, err)
	}
	return nil
}

// Close unmounts everything Open mounted (in reverse order), puts back the
// tree's resolv.conf, removes the policy-rc.d it added, and then checks
// /proc/self/mountinfo: anything still mounted below the tree (also mounts a
// maintainer script made itself) is detached, and if that fails Close
// returns mounts.ErrMounted. Close is safe to call twice.
func (c *Chroot) Close() error {
	if c == nil || c.root == nil {
		return nil
	}
	var errs []error
	if pids := c.killStragglers(); len(pids) > 0 && c.log != nil {
		fmt.Fprintf(c.log, "chroot %s: killed processes still running in it: %v\n", c.tree, pids)
	}
	for len(c.mounts) > 0 {
		if err := c.unmount(c.mounts[len(c.mounts)-1]); err != nil {
			errs = append(errs, err)
		}
	}
	// Mounts not made by us (for example binfmt_misc under /proc/sys):
	// detach them deepest first.
	if left, err := mounts.Below(c.tree); err != nil {
		errs = append(errs, err)
	} else {
		for i := len(left) - 1; i >= 0; i-- {
			_ = unix.Unmount(left[i], unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
		}
	}
	if c.resolvWritten != nil {
		if cur, err := c.root.ReadFile("/etc/resolv.conf"); err == nil && bytes.Equal(cur, c.resolvWritten) {
			if st, err := c.root.Lstat("/etc/resolv.conf"); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
				if err := c.restoreState("/etc/resolv.conf", c.resolv); err != nil {
					errs = append(errs, err)
				}
			}
		}
		c.resolvWritten = nil
	}
	if c.policyRCDAdded {
		if cur, err := c.root.ReadFile("/usr/sbin/policy-rc.d"); err == nil && string(cur) == policyRCD {
			if err := c.root.Remove("/usr/sbin/policy-rc.d"); err != nil {
				errs = append(errs, err)
			}
		}
		c.policyRCDAdded = false
	}
	if left, err := mounts.Below(c.tree); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("chroot: %w %s after close: %s", mounts.ErrMounted, c.tree, strings.Join(left, ", ")))
	}
	errs = append(errs, c.root.Close())
	c.root = nil
	return errors.Join(errs...)
}

// HostPath is the host path of a path inside the chroot.
func (c *Chroot) HostPath(name string) string { return filepath.Join(c.tree, safepath.Clean(name)) }

// killStragglers SIGKILLs every process whose root directory is the tree
// and waits for them to exit. A daemon a maintainer script started despite
// policy-rc.d (some call start-stop-daemon directly) would otherwise keep
// running on the build host, with the tree's binaries, and keep its mounts
// busy. Only processes chrooted into this tree are touched, by PID.
func (c *Chroot) killStragglers() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var killed []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		root, err := os.Readlink("/proc/" + e.Name() + "/root")
		if err != nil || !mounts.Within(root, c.tree) {
			continue
		}
		if unix.Kill(pid, unix.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range killed {
		for time.Now().Before(deadline) {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				break
			}
			// A zombie is gone for our purpose: it holds no mounts.
			if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && zombie(b) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return killed
}

func zombie(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
