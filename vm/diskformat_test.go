package vm

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"
)

// DiskFormat tells raw from qcow2 by the magic (no qemu-img probing) and
// refuses a qcow2 that names another host file: QEMU would open it, as
// root, when booting the image (issue 12).
func TestDiskFormatRefusesIndirection(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A raw file is raw, whatever its bytes look like to qemu-img.
	raw := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(raw, []byte("KDMV\x01\x00\x00\x00 a vmdk header"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := DiskFormat(ctx, raw); err != nil || f != "raw" {
		t.Errorf("raw: %q %v", f, err)
	}

	// A crafted qcow2 header naming /etc/shadow as its backing file.
	h := make([]byte, 4096)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint64(h[8:], 512)
	binary.BigEndian.PutUint32(h[16:], 11)
	binary.BigEndian.PutUint32(h[20:], 16)
	copy(h[512:], "/etc/shadow")
	crafted := filepath.Join(dir, "crafted.qcow2")
	if err := os.WriteFile(crafted, h, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := DiskFormat(ctx, crafted)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `backing file ("/etc/shadow")`) {
		t.Errorf("crafted backing file: %v", err)
	}

	// A FIFO: refused at once, not a hang in open(2).
	fifo := filepath.Join(dir, "fifo.qcow2")
	if err := syscall.Mkfifo(fifo, 0o644); err == nil {
		done := make(chan error, 1)
		go func() { _, err := DiskFormat(ctx, fifo); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("FIFO: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("DiskFormat blocked on a FIFO")
		}
	}

	// Real qcow2 files from qemu-img: a plain one is accepted, one with
	// a backing file refused.
	testenv.NeedTools(t, "qemu-img")
	plain := filepath.Join(dir, "plain.qcow2")
	over := filepath.Join(dir, "over.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", plain, "16M"},
		{"create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", over, "16M"},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	if f, err := DiskFormat(ctx, plain); err != nil || f != "qcow2" {
		t.Errorf("plain qcow2: %q %v", f, err)
	}
	_, err = DiskFormat(ctx, over)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), raw) {
		t.Errorf("qcow2 over a backing file: %v", err)
	}
}

// TestStartRefusesBackingWithGivenFormat: a caller that names the disk's
// format skips DiskFormat's probe but not its refusal (verify once made
// its own overlay over the image and named it qcow2: QEMU, given
// descriptors, followed no backing name and the guest booted zeros).
func TestStartRefusesBackingWithGivenFormat(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	over := filepath.Join(dir, "over.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", over).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	c := fakeConfig(t)
	c.Disk, c.DiskFormat = over, "qcow2"
	v, err := Start(t.Context(), c)
	if err == nil {
		v.Stop()
		t.Fatal("Start took a qcow2 with a backing file")
	}
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), raw) {
		t.Errorf("error %v", err)
	}
}
