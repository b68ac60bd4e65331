//go:build integration

package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/execx"
)

// What the init starts as root (QEMU, here a shell that reports what it
// got): DefaultRunAs's uid and gid everywhere, no group, every capability
// set empty, no_new_privs, cwd /, a /proc of its own PID namespace, the
// descriptors Start passed at the numbers Cmdline names and no other, a
// root-only file readable through its memfd copy and not by its path.
func TestInitStartsUnprivileged(t *testing.T) {
	uid, gid := rootAndRunAs(t)
	d := t.TempDir()
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	cred := filepath.Join(d, "cred")
	disk := filepath.Join(d, "disk")
	if err := os.WriteFile(cred, []byte("secret-cred"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, []byte("disk-data"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A descriptor bake inherited without close-on-exec must not reach QEMU.
	leak, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	p := newFDPlan(uid, gid)
	defer p.closeAll()
	if err := p.addProc(cred); err != nil {
		t.Fatal(err)
	}
	if err := p.addSet(disk, os.O_RDONLY); err != nil {
		t.Fatal(err)
	}
	script := `grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs):' /proc/self/status
echo "procs: $(ls /proc | grep -E '^[0-9]+$' | wc -l)"
echo "fds: $(ls /proc/self/fd | sort -n | tr '\n' ' ')"
echo "memfd: $(cat /proc/self/fd/4)"
echo "set: $(cat <&5)"
cat /proc/self/fd/5 >/dev/null 2>&1 && echo "reopen: readable" || echo "reopen: denied"
cat ` + disk + ` >/dev/null 2>&1 && echo "path: readable" || echo "path: denied"
echo "cwd: $(pwd)"
`
	// Keep the leaked descriptor open across exec, as an inherited one is.
	if _, err := unix.FcntlInt(leak.Fd(), unix.F_SETFD, 0); err != nil {
		t.Fatal(err)
	}
	cmd, lifeR, lifeW, err := initCommand([]string{"/bin/sh", "-c", script}, uid, gid, p.files, false)
	if err != nil {
		t.Fatal(err)
	}
	defer lifeW.Close()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	child, err := execx.StartPinned(cmd)
	lifeR.Close()
	p.closePassed()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Wait(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	got := out.String()
	t.Logf("%s", got)
	u, g := strconv.Itoa(uid), strconv.Itoa(gid)
	for _, want := range []string{
		"Uid:\t" + u + "\t" + u + "\t" + u + "\t" + u + "\n", "Gid:\t" + g + "\t" + g + "\t" + g + "\t" + g + "\n",
		"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
		"CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1",
		"memfd: secret-cred", "set: disk-data", "reopen: denied", "path: denied", "cwd: /",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q", want)
		}
	}
	if !strings.Contains(got, "Groups:\t\n") && !strings.Contains(got, "Groups:\t \n") {
		t.Error("supplementary groups left")
	}
	// 0-2, 4 and 5 (the plan), and ls's own directory descriptor.
	if i := strings.Index(got, "fds: "); i < 0 || !strings.HasPrefix(got[i:], "fds: 0 1 2 3 4 5 \n") {
		t.Errorf("descriptors: want 0-2, the plan's 4 and 5 and ls's own 3")
	}
	var procs int
	for _, l := range strings.Split(got, "\n") {
		if n, ok := strings.CutPrefix(l, "procs: "); ok {
			procs, _ = strconv.Atoi(n)
		}
	}
	if procs < 2 || procs > 8 {
		t.Errorf("the /proc QEMU sees lists %d processes, want its namespace's few (init, sh, a pipeline)", procs)
	}
}

// The init turns the host's transparent huge pages off for what it starts
// when Start asks (Config.HostTHP: off under TCG), and leaves the kernel's
// default otherwise: the flag QEMU's own /proc status shows.
func TestInitHostTHP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (run the integration tier as root)")
	}
	if b, err := os.ReadFile("/proc/self/status"); err != nil || !strings.Contains(string(b), "\nTHP_enabled:\t1\n") {
		t.Fatalf("this process's THP_enabled is not 1 (kernel before 5.0, or turned off by whatever started the test): %v", err)
	}
	for _, noTHP := range []bool{true, false} {
		cmd, lifeR, lifeW, err := initCommand([]string{"/bin/grep", "^THP_enabled:", "/proc/self/status"}, -1, -1, nil, noTHP)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		child, err := execx.StartPinned(cmd)
		lifeR.Close()
		if err != nil {
			lifeW.Close()
			t.Fatal(err)
		}
		err = child.Wait()
		lifeW.Close()
		if err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		want := "THP_enabled:\t1\n"
		if noTHP {
			want = "THP_enabled:\t0\n"
		}
		if out.String() != want {
			t.Errorf("noTHP %v: the child's status says %q, want %q", noTHP, out.String(), want)
		}
	}
}

// A file system mounted from a loop device when a VM starts does not stay
// pinned by the VM's mount namespace: once bake's side unmounts it, the
// loop device is released while the VM (here a sleep) still runs.
func TestInitDoesNotPinLoopMounts(t *testing.T) {
	uid, gid := rootAndRunAs(t)
	d := t.TempDir()
	img, mnt := filepath.Join(d, "fs.img"), filepath.Join(d, "mnt")
	for _, c := range [][]string{{"truncate", "-s", "32M", img}, {"mkfs.ext4", "-q", img}, {"mkdir", mnt}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	backing := filepath.Join("/sys/block", filepath.Base(loop), "loop/backing_file")
	if out, err := exec.Command("mount", loop, mnt).CombinedOutput(); err != nil {
		exec.Command("losetup", "-d", loop).Run()
		t.Fatalf("mount: %v\n%s", err, out)
	}
	// Autoclear: the device goes with its last user.
	exec.Command("losetup", "-d", loop).Run()
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	}()

	cmd, lifeR, lifeW, err := initCommand([]string{"/bin/sh", "-c", "echo started; exec sleep 30"}, uid, gid, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, _ := os.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	child, err := execx.StartPinned(cmd)
	lifeR.Close()
	pw.Close()
	if err != nil {
		lifeW.Close()
		t.Fatal(err)
	}
	defer func() {
		lifeW.Close() // the init kills the sleep when bake's end goes
		child.Wait()
	}()
	buf := make([]byte, 64)
	if n, _ := pr.Read(buf); !strings.Contains(string(buf[:n]), "started") {
		t.Fatalf("the child did not start: %q", buf[:n])
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	mounted = false
	for i := 0; ; i++ {
		b, err := os.ReadFile(backing)
		if err != nil || strings.TrimSpace(string(b)) != img {
			break // released (or already someone else's)
		}
		if i == 50 {
			t.Fatalf("%s still attached to %s 5 s after the unmount, with the VM's init running", loop, img)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rootAndRunAs fails t unless it runs as root, and returns DefaultRunAs's
// uid and gid (the account the init starts QEMU as).
func rootAndRunAs(t *testing.T) (uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root (run the integration tier as root)")
	}
	uid, gid, err := runAsUID(DefaultRunAs)
	if err != nil {
		t.Fatal(err)
	}
	return uid, gid
}
