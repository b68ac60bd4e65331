package imgfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestOpenRegular(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(p, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, fi, err := OpenRegular(p)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := f.Read(b); err != nil || string(b) != "hello" || fi.Size() != 5 {
		t.Errorf("read %q %v size %d", b, err, fi.Size())
	}
	f.Close()

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := OpenRegular(fifo); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotRegular) {
			t.Errorf("FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OpenRegular blocked on a FIFO")
	}
	for _, p := range []string{dir, "/dev/null", filepath.Join(dir, "missing")} {
		if _, _, err := OpenRegular(p); err == nil {
			t.Errorf("%s accepted", p)
		}
	}
}

func TestSniff(t *testing.T) {
	h := make([]byte, 512)
	copy(h, Qcow2Magic)
	binary.BigEndian.PutUint32(h[4:], 3)
	in, err := Sniff(bytes.NewReader(h))
	if err != nil || in.Format != Qcow2 || in.Refuse() != nil {
		t.Errorf("plain qcow2: %+v %v", in, err)
	}
	binary.BigEndian.PutUint64(h[8:], 200)
	binary.BigEndian.PutUint32(h[16:], 11)
	copy(h[200:], "/etc/shadow")
	in, _ = Sniff(bytes.NewReader(h))
	if err := in.Refuse(); !errors.Is(err, ErrIndirect) || in.Backing != "/etc/shadow" {
		t.Errorf("backing: %+v %v", in, err)
	}
	binary.BigEndian.PutUint64(h[8:], 0)
	h[79] |= 4
	in, _ = Sniff(bytes.NewReader(h))
	if err := in.Refuse(); !errors.Is(err, ErrIndirect) {
		t.Errorf("data file: %+v %v", in, err)
	}
	in, _ = Sniff(bytes.NewReader([]byte("vmdk-or-anything")))
	if in.Format != Raw {
		t.Errorf("not qcow2: %+v", in)
	}
}
