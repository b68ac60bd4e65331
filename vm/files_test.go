package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Start's descriptors for QEMU: one set per file, one descriptor per
// access mode, regular files only (a FIFO is refused without blocking);
// the QMP socket listens where bake connects, and refuses to replace a
// file that is not a socket.
func TestFDPlanFiles(t *testing.T) {
	d := t.TempDir()
	disk := filepath.Join(d, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newFDPlan(os.Getuid(), os.Getgid())
	defer p.closeAll()
	if err := p.addSet(disk, os.O_RDWR, os.O_RDONLY); err != nil {
		t.Fatal(err)
	}
	if err := p.addSet(disk, os.O_RDONLY); err != nil { // already there
		t.Fatal(err)
	}
	if got := strings.Join(p.addFD, " "); got != "fd=4,set=1 fd=5,set=1" {
		t.Errorf("addFD %q", got)
	}
	for i, want := range []int{unix.O_RDWR, unix.O_RDONLY} {
		fl, err := unix.FcntlInt(p.files[i].Fd(), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != want || fl&unix.O_NONBLOCK != 0 {
			t.Errorf("descriptor %d: flags %#o %v, want access mode %#o, blocking", i, fl, err, want)
		}
	}
	if s, err := p.setPath(disk); err != nil || s != "/dev/fdset/1" {
		t.Errorf("setPath: %q %v", s, err)
	}
	if _, err := p.setPath("/other"); err == nil {
		t.Error("setPath of a file not opened")
	}

	fifo := filepath.Join(d, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.addSet(fifo, os.O_RDONLY); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FIFO as a disk: %v", err)
	}

	sock := filepath.Join(d, "qmp.sock")
	f, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := os.Lstat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("QMP socket after listenUnix: %v %v", st, err)
	}
	if err := os.WriteFile(filepath.Join(d, "plain"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(filepath.Join(d, "plain")); err == nil {
		t.Error("listenUnix replaced a regular file")
	}
}

// A disk's nodes: the format node over a file node, "backing": null for
// a format that has one and no backing node given, refused formats.
func TestBlockdevArgs(t *testing.T) {
	a, err := blockdevArgs(blockNode{name: "d", file: "/dev/fdset/1", format: "vpc", readOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(a, " "); got != `-blockdev {"driver":"file","filename":"/dev/fdset/1","node-name":"d-file","read-only":true} -blockdev {"driver":"vpc","file":"d-file","node-name":"d","read-only":true}` {
		t.Errorf("vpc: %s", got)
	}
	if _, err := blockdevArgs(blockNode{name: "d", file: "/f", format: "host_device"}); err == nil {
		t.Error("format host_device accepted")
	}
	if _, err := blockdevArgs(blockNode{name: "d", file: "/f", format: "raw", backing: &blockNode{name: "b", file: "/g", format: "raw"}}); err == nil {
		t.Error("raw with a backing node accepted")
	}
}
