package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/imgfile"
)

// A guest that floods its console: a test goroutine appends 100 MiB to the
// fake VM's serial log; the watcher stops QEMU at the default 64 MiB and
// every waiter says why.
func TestSerialLogLimitStopsVM(t *testing.T) {
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if v.Config.SerialLogMax != DefaultSerialLogMax || DefaultSerialLogMax != 64<<20 {
		t.Fatalf("SerialLogMax %d, default %d", v.Config.SerialLogMax, DefaultSerialLogMax)
	}
	f, err := os.OpenFile(v.SerialLog(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan int64, 1)
	go func() {
		defer f.Close()
		chunk := bytes.Repeat([]byte("flood flood flood flood flood flood flood flood flood flood flood\n"), (1<<20)/66)
		var n int64
		for n < 100<<20 {
			select {
			case <-v.Exited():
				written <- n
				return
			default:
			}
			k, err := f.Write(chunk)
			n += int64(k)
			if err != nil {
				break
			}
			time.Sleep(5 * time.Millisecond) // a console has a pace of its own
		}
		written <- n
	}()
	t0 := time.Now()
	select {
	case <-v.Exited():
	case <-time.After(60 * time.Second):
		t.Fatal("the VM still runs after its guest wrote 100 MiB to the console")
	}
	t.Logf("stopped after %s; the writer wrote %d MiB", time.Since(t0).Round(time.Millisecond), <-written>>20)

	want := "the guest wrote more than 64 MiB to its serial console"
	werr := v.Wait()
	if !errors.Is(werr, ErrSerialLogMax) || !strings.Contains(werr.Error(), want) {
		t.Errorf("Wait: %v, want %q wrapping ErrSerialLogMax", werr, want)
	}
	err = v.WaitSerial(t.Context(), "login:", time.Minute)
	if err == nil || !errors.Is(err, ErrSerialLogMax) || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), `before "login:" appeared`) || !strings.Contains(err.Error(), "flood flood") {
		t.Errorf("WaitSerial: %v", err)
	}
	if st, err := os.Stat(v.SerialLog()); err != nil || st.Size() < 64<<20 {
		t.Errorf("serial log: %v, %v", st, err)
	}
	pid := v.PID()
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("fake QEMU %d still there", pid)
	}
}

// The limit is the Config's; QEMU's own log has the same.
func TestQEMULogLimitStopsVM(t *testing.T) {
	c := fakeConfig(t)
	c.SerialLogMax = 1 << 20
	v, err := Start(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	f, err := os.OpenFile(v.qemuLog, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 2<<20))
	f.Close()
	select {
	case <-v.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("the VM still runs")
	}
	if err := v.Wait(); !errors.Is(err, ErrSerialLogMax) || !strings.Contains(err.Error(), "QEMU wrote more than 1 MiB to its own log") {
		t.Errorf("Wait: %v", err)
	}
	if len(v.QEMULog()) > SerialTailMax {
		t.Errorf("QEMULog returned %d bytes", len(v.QEMULog()))
	}
}

func numberedLines(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, "line %07d of the serial console, some padding to make it longer\n", i)
	}
	return b.Bytes()
}

func TestReadTail(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.log")
	data := numberedLines(60000) // ~4 MiB
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := ReadTail(big, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1<<20 || len(b) < 1<<20-100 {
		t.Errorf("tail of %d bytes", len(b))
	}
	if !bytes.HasPrefix(b, []byte("line ")) || !bytes.HasSuffix(data, b) {
		t.Errorf("tail does not start at a line or is not the file's end: %q...", b[:40])
	}
	if !bytes.HasSuffix(b, []byte("line 0059999 of the serial console, some padding to make it longer\n")) {
		t.Error("tail lacks the last line")
	}

	small := filepath.Join(dir, "small.log")
	os.WriteFile(small, []byte("a\nb\n"), 0o644)
	if b, err := ReadTail(small, 1<<20); err != nil || string(b) != "a\nb\n" {
		t.Errorf("small file: %q, %v", b, err)
	}
	// One long line, cut: its end is kept as it is.
	long := filepath.Join(dir, "long.log")
	os.WriteFile(long, bytes.Repeat([]byte("x"), 3000), 0o644)
	if b, err := ReadTail(long, 1000); err != nil || len(b) != 1000 {
		t.Errorf("long line: %d bytes, %v", len(b), err)
	}

	// A FIFO neither blocks nor is read.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadTail(fifo, 1<<20); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("ReadTail read a FIFO")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadTail blocked on a FIFO")
	}
}

// Serial returns the end of a large log, never all of it.
func TestSerialReturnsTheEnd(t *testing.T) {
	v, err := Start(t.Context(), fakeConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := v.WaitSerial(t.Context(), "Linux version", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(v.SerialLog(), os.O_WRONLY|os.O_APPEND, 0)
	f.Write(numberedLines(100000)) // ~6.5 MiB
	f.Write([]byte("the very end\n"))
	f.Close()
	b, err := v.Serial()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > SerialReadMax || !bytes.HasSuffix(b, []byte("the very end\n")) || bytes.Contains(b, []byte("SeaBIOS")) {
		t.Errorf("Serial: %d bytes, ends %q", len(b), b[max(0, len(b)-20):])
	}
	// The timeout error carries the tail too.
	err = v.WaitSerial(t.Context(), "never printed", 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "the very end") || len(err.Error()) > 64<<10 {
		t.Errorf("timeout error: %d bytes", len(err.Error()))
	}
}

// The scanner behind WaitSerial reads incrementally, keeps a bounded
// window and still finds a match split across reads and chunks.
func TestSerialScannerBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`BAKE-LEASE: (\S+)\n`)
	match := func(b []byte) ([]string, int) {
		if len(b) > serialWindow {
			t.Fatalf("window of %d bytes", len(b))
		}
		loc := re.FindSubmatchIndex(b)
		if loc == nil {
			return nil, 0
		}
		return []string{string(b[loc[0]:loc[1]]), string(b[loc[2]:loc[3]])}, loc[1]
	}
	r, _, err := imgfile.OpenRegular(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w := serialScanner{}
	// 5 MiB of output, then the first half of the line, ending mid-chunk.
	junk := bytes.Repeat([]byte("junk junk junk junk junk junk junk junk junk junk junk junk junk\n"), 5*(1<<20)/64)
	f.Write(junk)
	f.Write([]byte("BAKE-LEASE: 10.77"))
	if m, _, err := w.scan(r, match); m != nil || err != nil {
		t.Fatalf("early match %q, %v", m, err)
	}
	// The rest arrives in a later read.
	f.Write([]byte(".0.51\nmore\n"))
	m, end, err := w.scan(r, match)
	if err != nil || m == nil || m[1] != "10.77.0.51" {
		t.Fatalf("split match: %q, %v", m, err)
	}
	if want := int64(len(junk) + len("BAKE-LEASE: 10.77.0.51\n")); end != want {
		t.Errorf("end %d, want %d", end, want)
	}
	if len(w.win) > serialWindow {
		t.Errorf("window %d bytes", len(w.win))
	}

	// A match straddling two chunks of one read, from an offset.
	path2 := filepath.Join(t.TempDir(), "serial2.log")
	pre := bytes.Repeat([]byte("x"), 3*serialChunk-7)
	os.WriteFile(path2, append(append(pre, "BAKE-LEASE: 1.2.3.4\n"...), junk...), 0o644)
	r2, _, err := imgfile.OpenRegular(path2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	w2 := serialScanner{off: 100, winStart: 100}
	m, end, err = w2.scan(r2, match)
	if err != nil || m == nil || m[1] != "1.2.3.4" || end != int64(len(pre)+len("BAKE-LEASE: 1.2.3.4\n")) {
		t.Errorf("straddling match: %q end %d, %v", m, end, err)
	}
}
