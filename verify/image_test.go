package verify

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/vm"
)

// crafted qcow2 headers bake verify must refuse before QEMU or qemu-img
// reads the file (issue 12): the disk it boots and the raw file its secret
// scan reads would otherwise be host files the image names.
func craftedQcow2(t *testing.T, dir, name string, mutate func(h []byte)) string {
	t.Helper()
	h := make([]byte, 3*512)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[20:], 9)     // 512-byte clusters
	binary.BigEndian.PutUint64(h[24:], 1<<20) // 1 MiB
	binary.BigEndian.PutUint32(h[36:], 32)    // L1 entries
	binary.BigEndian.PutUint64(h[40:], 2*512) // L1 offset
	binary.BigEndian.PutUint64(h[48:], 512)   // refcount table
	binary.BigEndian.PutUint32(h[56:], 1)     // ... of one cluster
	binary.BigEndian.PutUint32(h[96:], 4)     // refcount_order
	binary.BigEndian.PutUint32(h[100:], 104)  // header_length
	mutate(h)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, h, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImageRefused(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newRunner := func(img string) *runner {
		return &runner{o: Options{Image: img, Spec: DefaultSpec(), Firmwares: []string{vm.BIOS}, Instances: 1}, rep: &Report{}}
	}
	if r := newRunner(craftedQcow2(t, dir, "ok.qcow2", func([]byte) {})); r.imageRefused(ctx) {
		t.Fatalf("a self-contained qcow2 was refused: %+v", r.rep.Results)
	}
	for _, c := range []struct {
		name, want string
		mutate     func(h []byte)
	}{
		{"backing", `backing file ("/etc/shadow")`, func(h []byte) {
			binary.BigEndian.PutUint64(h[8:], 200)
			binary.BigEndian.PutUint32(h[16:], 11)
			copy(h[200:], "/etc/shadow")
		}},
		{"data file", "external data file", func(h []byte) { h[79] |= 4 }},
		{"snapshots", "internal snapshot", func(h []byte) { binary.BigEndian.PutUint32(h[60:], 1) }},
		{"huge L1", "L1 table of", func(h []byte) { binary.BigEndian.PutUint32(h[36:], 1<<32-1) }},
		{"shared L2", "already used", func(h []byte) {
			for i := 0; i < 32; i++ {
				binary.BigEndian.PutUint64(h[2*512+8*i:], 512*2) // the L1 table itself
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRunner(craftedQcow2(t, dir, c.name+".qcow2", c.mutate))
			if !r.imageRefused(ctx) {
				t.Fatal("accepted")
			}
			r.rep.Finish(time.Now())
			var got *Result
			for i := range r.rep.Results {
				if r.rep.Results[i].ID == "image.format" {
					got = &r.rep.Results[i]
				}
			}
			if got == nil || got.Status != Fail || !strings.Contains(got.Evidence, c.want) {
				t.Fatalf("image.format: %+v, want Fail with %q", got, c.want)
			}
			if r.rep.ExitCode != ExitFail || r.rep.HostError != "" {
				t.Errorf("exit %d, host error %q: want %d (the image's failure)", r.rep.ExitCode, r.rep.HostError, ExitFail)
			}
		})
	}
}

// The image's hash and the secret scan open the file without blocking and
// refuse anything but a regular file.
func TestImageReadersRefuseFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "image.raw")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"fileSHA256": func() error { _, _, err := fileSHA256(context.Background(), fifo); return err },
		"ScanFile":   func() error { return NewScanner().ScanFile(context.Background(), fifo) },
		"imageRefused": func() error {
			r := &runner{o: Options{Image: fifo, Spec: DefaultSpec(), Firmwares: []string{vm.BIOS}, Instances: 1}, rep: &Report{}}
			if !r.imageRefused(context.Background()) {
				return nil
			}
			return errString(r.rep.Results[0].Evidence)
		},
	} {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s blocked on a FIFO", name)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
