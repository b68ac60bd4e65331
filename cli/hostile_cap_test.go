package cli

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"
)

// TestMain lets the test binary stand in for the bake binary: with
// BAKE_CLI_CHILD=main it runs bake's Main on its arguments (so a test can
// run bake in a process of its own, under limits, without building it);
// with BAKE_CLI_CHILD=alloc it touches 1 GiB of memory (the control that
// shows a limit holds).
func TestMain(m *testing.M) {
	switch os.Getenv("BAKE_CLI_CHILD") {
	case "main":
		os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	case "alloc":
		b := make([]byte, 1<<30)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		fmt.Println("allocated", len(b))
		os.Exit(0)
	}
	// Tests here mount file systems: they run in a mount namespace of their
	// own (testenv.MainInPrivateMounts).
	os.Exit(testenv.MainInPrivateMounts(m))
}

// capMemory is the memory cap of each capped run: RLIMIT_DATA, which
// bounds what a Go program can allocate (its heap is private writable
// mappings). RLIMIT_AS cannot be used: the Go runtime reserves far more
// address space than it uses and does not start under 512 MiB of it.
const capMemory = 512 << 20

// capped runs the test binary as bake (or as the allocation control) in a
// process of its own under capMemory and a 30-second deadline.
func capped(t *testing.T, child string, args ...string) (stderr string, code int, took time.Duration) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "prlimit", append([]string{fmt.Sprintf("--data=%d", capMemory), "--", self}, args...)...)
	cmd.Env = append(os.Environ(), "BAKE_CLI_CHILD="+child)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	t0 := time.Now()
	err = cmd.Run()
	took = time.Since(t0)
	if ctx.Err() != nil {
		t.Fatalf("bake %s: still running after 30 s (killed)", strings.Join(args, " "))
	}
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("bake %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	return errb.String(), code, took
}

// TestHostileInputsUnderMemoryCap: every class of hostile input of issue
// 12 (bake inspect, verify and convert on images: a FIFO does not hang
// them, a backing file naming a host file is never followed, a header
// claiming a 32 GiB L1 table allocates nothing; recipes: alias bombs,
// size, nesting), each crafted here, given to bake in a process of its own under a
// 512 MiB memory cap and a 30 s deadline: each is refused with one line
// and its exit status, within both. The control shows the cap holds: the
// same process touching 1 GiB dies.
func TestHostileInputsUnderMemoryCap(t *testing.T) {
	testenv.NeedTools(t, "prlimit")
	if errs, code, _ := capped(t, "alloc"); code == 0 {
		t.Fatalf("the control allocated 1 GiB under a %d MiB cap: the cap does not hold\n%s", capMemory>>20, errs)
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.qcow2")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	backing := craftQcow2(t, dir, "backing.qcow2", func(h []byte) {
		binary.BigEndian.PutUint64(h[8:], 200)
		binary.BigEndian.PutUint32(h[16:], 11)
		copy(h[200:], "/etc/shadow")
	})
	hugeL1 := craftQcow2(t, dir, "l1.qcow2", func(h []byte) {
		binary.BigEndian.PutUint32(h[36:], 1<<32-1)
		binary.BigEndian.PutUint64(h[40:], 1<<62)
	})
	hugeVirtual := craftQcow2(t, dir, "10tib.qcow2", func(h []byte) {
		binary.BigEndian.PutUint64(h[24:], 10<<40)
	})
	gpt := filepath.Join(dir, "gpt.raw")
	if err := os.WriteFile(gpt, hugeEntryGPT(), 0o644); err != nil {
		t.Fatal(err)
	}
	bomb := filepath.Join(dir, "bomb.yaml")
	var b strings.Builder
	b.WriteString("apiVersion: bake/v1\nname: bomb\nbase: {debian: {suite: bookworm}}\n")
	b.WriteString("users: [{name: app, system: true}]\ncontainers:\n  - name: c\n    user: app\n    build:\n")
	b.WriteString("      l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&b, "      l%d: &l%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 10), ", "))
	}
	os.WriteFile(bomb, []byte(b.String()), 0o644)
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, bytes.Repeat([]byte("# padding to 50 MB\n"), 50<<20/19), 0o644)
	deep := filepath.Join(dir, "deep.yaml")
	os.WriteFile(deep, []byte("apiVersion: bake/v1\nname: deep\nx: "+strings.Repeat("[", 100000)+strings.Repeat("]", 100000)+"\n"), 0o644)
	out := filepath.Join(dir, "out")

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", fifo}, 1, "not a regular file (a FIFO)"},
		{[]string{"inspect", backing}, 1, `backing file ("/etc/shadow")`},
		{[]string{"inspect", hugeL1}, 1, "L1 table of 4294967295 entries"},
		{[]string{"inspect", hugeVirtual}, 1, "virtual disk size 10995116277760 bytes"},
		{[]string{"inspect", gpt}, 1, "entry size of 2147483648 bytes"},
		{[]string{"verify", fifo}, 2, "not a regular file (a FIFO)"},
		{[]string{"convert", fifo, "-f", "vhd", "-o", out}, 2, "not a regular file (a FIFO)"},
		{[]string{"convert", backing, "-f", "vhd", "-o", out}, 2, `backing file ("/etc/shadow")`},
		{[]string{"convert", hugeL1, "-f", "vhd", "-o", out}, 2, "L1 table of 4294967295 entries"},
		{[]string{"validate", bomb}, 2, "expands the recipe past"},
		{[]string{"validate", big}, 2, "bytes"},
		{[]string{"validate", deep}, 2, "deep"},
		{[]string{"plan", bomb}, 2, "expands the recipe past"},
	} {
		errs, code, took := capped(t, "main", c.args...)
		lines := strings.Split(strings.TrimSpace(errs), "\n")
		// A recipe's problems come one per line with file:line:col;
		// the recipe cases have exactly one.
		if code != c.code || !strings.Contains(errs, c.want) || len(lines) > 2 {
			t.Errorf("bake %s: exit %d in %s, stderr %q; want %d and one problem with %q", strings.Join(c.args, " "), code, took.Round(time.Millisecond), errs, c.code, c.want)
			continue
		}
		t.Logf("bake %s %s: exit %d in %s", c.args[0], filepath.Base(c.args[1]), code, took.Round(time.Millisecond))
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused convert left %s", out)
	}
}

// hugeEntryGPT is a 34-sector disk whose GPT header (CRC right) declares
// partition entries of 2 GiB each.
func hugeEntryGPT() []byte {
	const sector = 512
	b := make([]byte, 34*sector)
	b[446+4] = 0xee
	binary.LittleEndian.PutUint32(b[446+8:], 1)
	binary.LittleEndian.PutUint32(b[446+12:], 33)
	b[510], b[511] = 0x55, 0xaa
	h := b[sector : 2*sector]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x10000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], 1)
	binary.LittleEndian.PutUint64(h[32:], 33)
	binary.LittleEndian.PutUint64(h[40:], 3)
	binary.LittleEndian.PutUint64(h[48:], 32)
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], 4)
	binary.LittleEndian.PutUint32(h[84:], 1<<31)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return b
}
