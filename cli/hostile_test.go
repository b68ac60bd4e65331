package cli

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bake inspect, bake verify and bake convert refuse hostile images with one line and a
// failure exit status, at once (issue 12): a FIFO does not hang them, a
// qcow2 naming a host file as its backing file is never followed, a
// header claiming a 32 GiB L1 table allocates nothing.
func TestInspectVerifyRefuseHostileImages(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.qcow2")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	qcow := func(name string, mutate func(h []byte)) string { return craftQcow2(t, dir, name, mutate) }
	backing := qcow("backing.qcow2", func(h []byte) {
		binary.BigEndian.PutUint64(h[8:], 200)
		binary.BigEndian.PutUint32(h[16:], 11)
		copy(h[200:], "/etc/shadow")
	})
	hugeL1 := qcow("l1.qcow2", func(h []byte) {
		binary.BigEndian.PutUint32(h[36:], 1<<32-1)
		binary.BigEndian.PutUint64(h[40:], 1<<62)
	})
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", fifo}, 1, "not a regular file (a FIFO)"},
		{[]string{"inspect", backing}, 1, `backing file ("/etc/shadow")`},
		{[]string{"inspect", hugeL1}, 1, "L1 table of 4294967295 entries"},
		{[]string{"verify", fifo}, 2, "not a regular file (a FIFO)"},
		{[]string{"convert", fifo, "-f", "vhd", "-o", filepath.Join(dir, "out")}, 2, "not a regular file (a FIFO)"},
		{[]string{"convert", backing, "-f", "vhd", "-o", filepath.Join(dir, "out")}, 2, `backing file ("/etc/shadow")`},
		{[]string{"convert", hugeL1, "-f", "vhd", "-o", filepath.Join(dir, "out")}, 2, "L1 table of 4294967295 entries"},
	} {
		done := make(chan struct{})
		var errs string
		var code int
		go func() {
			_, errs, code = run(t, c.args...)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("bake %s: still running after 30 s", strings.Join(c.args, " "))
		}
		if code != c.code || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
			t.Errorf("bake %s: exit %d, stderr %q; want %d and one line with %q", strings.Join(c.args, " "), code, errs, c.code, c.want)
		}
	}
}

// craftQcow2 writes a minimal qcow2 v3 header (1 MiB virtual, 512-byte
// clusters, one L1 entry) changed by mutate, as dir/name.
func craftQcow2(t *testing.T, dir, name string, mutate func(h []byte)) string {
	t.Helper()
	h := make([]byte, 3*512)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[20:], 9)
	binary.BigEndian.PutUint64(h[24:], 1<<20)
	binary.BigEndian.PutUint32(h[36:], 32)
	binary.BigEndian.PutUint64(h[40:], 2*512)
	binary.BigEndian.PutUint64(h[48:], 512)
	binary.BigEndian.PutUint32(h[56:], 1)
	binary.BigEndian.PutUint32(h[100:], 104)
	mutate(h)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, h, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
