package verify

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/vm"
)

func TestCappedBuffer(t *testing.T) {
	full := &overflow{C: make(chan struct{})}
	a := &cappedBuffer{max: 1000, full: full}
	b := &cappedBuffer{max: 1000, full: full}
	closed := func() bool {
		select {
		case <-full.C:
			return true
		default:
			return false
		}
	}
	for _, n := range []int{600, 400} {
		if k, err := a.Write(bytes.Repeat([]byte("a"), n)); k != n || err != nil {
			t.Fatalf("Write(%d) = %d, %v", n, k, err)
		}
	}
	if a.Cut() || closed() || len(a.String()) != 1000 {
		t.Fatalf("exactly at the cap: cut %v, full %v, %d bytes", a.Cut(), closed(), len(a.String()))
	}
	// One byte more: cut, the shared signal fires, the writer still hears
	// success (the SSH channel must keep draining).
	if k, err := a.Write([]byte("z")); k != 1 || err != nil {
		t.Fatalf("Write past the cap = %d, %v", k, err)
	}
	if !a.Cut() || !closed() || a.String() != strings.Repeat("a", 1000) {
		t.Fatalf("past the cap: cut %v, full %v, %d bytes", a.Cut(), closed(), len(a.String()))
	}
	if b.Cut() {
		t.Error("the other stream is not cut")
	}
	b.Write(make([]byte, 5000)) // firing again is harmless
	if !b.Cut() || len(b.String()) != 1000 {
		t.Errorf("b: cut %v, %d bytes", b.Cut(), len(b.String()))
	}

	// The real cap, from two writers at once: 8 MiB kept of 20 MiB.
	c := &cappedBuffer{max: maxCmdOutput}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chunk := make([]byte, 32<<10)
			for range 10 << 20 / len(chunk) {
				c.Write(chunk)
			}
		}()
	}
	wg.Wait()
	if len(c.String()) != 8<<20 || !c.Cut() {
		t.Errorf("kept %d bytes, cut %v", len(c.String()), c.Cut())
	}
}

// A cut result is never OK, says so in its evidence, and is an error.
func TestCutResultFails(t *testing.T) {
	out := &cappedBuffer{max: 10}
	errb := &cappedBuffer{max: 10}
	out.Write([]byte("ok ok ok ok ok ok"))
	res := cmdResult{Cmd: "ufw status verbose", Exit: 0, Stdout: out.String()}
	err := cutResult(&res, out, errb)
	if !errors.Is(err, errOutputCut) || !strings.Contains(err.Error(), `"ufw status verbose" printed more than 8 MiB on stdout`) {
		t.Errorf("err = %v", err)
	}
	if res.OK() || !res.Cut || res.Exit != -1 {
		t.Errorf("cut result %+v is OK or unmarked", res)
	}
	if ev := res.Evidence(); !strings.Contains(ev, "output CUT") || !strings.Contains(ev, "[exit -1]") {
		t.Errorf("evidence does not say it was cut:\n%s", ev)
	}
	// Nothing cut: no error, result untouched.
	out2, errb2 := &cappedBuffer{max: 10}, &cappedBuffer{max: 10}
	out2.Write([]byte("fine"))
	res2 := cmdResult{Cmd: "x", Exit: 0, Stdout: "fine"}
	if err := cutResult(&res2, out2, errb2); err != nil || !res2.OK() || res2.Cut {
		t.Errorf("uncut: %v %+v", err, res2)
	}
	// Even a zero exit status does not make a cut result OK.
	if (cmdResult{Exit: 0, Cut: true}).OK() {
		t.Error("cut result with exit 0 is OK")
	}
}

// testSSHLogin logs in to a test server at addr as admin, closed when t
// ends.
func testSSHLogin(t *testing.T, addr string) *sshSession {
	t.Helper()
	dial := func(ctx context.Context, timeout time.Duration) (net.Conn, error) {
		var d net.Dialer
		d.Timeout = timeout
		return d.DialContext(ctx, "tcp", addr)
	}
	s, err := sshLogin(t.Context(), dial, addr, "admin", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// serveTestSSH serves SSH on 127.0.0.1 until t ends (a fresh host key, any
// client let in, global requests discarded) and gives each channel a client
// opens to handle; it returns the address.
func serveTestSSH(t *testing.T, handle func(ssh.NewChannel)) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(signer)
	port := serveLoopback(t, func(c net.Conn) {
		_, chans, reqs, err := ssh.NewServerConn(c, cfg)
		if err != nil {
			return
		}
		go ssh.DiscardRequests(reqs)
		for nc := range chans {
			handle(nc)
		}
	})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// serveLoopback listens on 127.0.0.1 until the test ends and hands each
// connection to serve, closing it after; it returns the port.
func serveLoopback(t *testing.T, serve func(net.Conn)) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// testSSHServer answers "exec" requests: "hello" prints a line and exits
// 0; "flood-stdout" and "flood-stderr" print without end (up to 1 GiB)
// until the client closes the channel. sent counts what the floods wrote.
func testSSHServer(t *testing.T) (addr string, sent *atomic.Int64) {
	t.Helper()
	sent = new(atomic.Int64)
	exit := func(ch ssh.Channel, status uint32) {
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
		ch.Close()
	}
	run := func(ch ssh.Channel, cmd string) {
		var w interface{ Write([]byte) (int, error) } = ch
		switch cmd {
		case "hello":
			ch.Write([]byte("hello\n"))
			exit(ch, 0)
			return
		case "flood-stderr":
			w = ch.Stderr()
		case "flood-stdout":
		default:
			exit(ch, 127)
			return
		}
		chunk := bytes.Repeat([]byte("y\n"), 32<<10)
		for sent.Load() < 1<<30 {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
		exit(ch, 0)
	}
	return serveTestSSH(t, func(nc ssh.NewChannel) {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "no")
			return
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go func() {
			for req := range creqs {
				if req.Type != "exec" {
					req.Reply(false, nil)
					continue
				}
				var p struct{ Cmd string }
				ssh.Unmarshal(req.Payload, &p)
				req.Reply(true, nil)
				go run(ch, p.Cmd)
			}
		}()
	}), sent
}

// A guest command that prints without end is killed once it passes the
// cap: Run returns at once with the first 8 MiB, marked cut, and an error;
// the guest did not get to send much more than that.
func TestRunCapsCommandOutput(t *testing.T) {
	addr, sent := testSSHServer(t)
	s := testSSHLogin(t, addr)

	res, err := s.Run(t.Context(), "hello", nil, 10*time.Second)
	if err != nil || !res.OK() || res.Stdout != "hello\n" || res.Cut {
		t.Fatalf("hello: %+v, %v", res, err)
	}

	for _, stream := range []string{"stdout", "stderr"} {
		sent.Store(0)
		t0 := time.Now()
		res, err := s.Run(t.Context(), "flood-"+stream, nil, 5*time.Minute)
		d := time.Since(t0)
		if !errors.Is(err, errOutputCut) || !strings.Contains(err.Error(), "more than 8 MiB on "+stream) {
			t.Errorf("%s flood: err = %v", stream, err)
		}
		if !res.Cut || res.OK() {
			t.Errorf("%s flood: result not cut or OK: exit %d cut %v", stream, res.Exit, res.Cut)
		}
		kept := res.Stdout
		if stream == "stderr" {
			kept, _, _ = strings.Cut(res.Stderr, "\n(bake verify:")
		}
		if len(kept) != maxCmdOutput {
			t.Errorf("%s flood: kept %d bytes, want %d", stream, len(kept), maxCmdOutput)
		}
		if !strings.Contains(res.Stderr, "output CUT") {
			t.Errorf("%s flood: stderr lacks the note", stream)
		}
		if d > time.Minute {
			t.Errorf("%s flood: Run took %s (not killed at the cap)", stream, d)
		}
		time.Sleep(100 * time.Millisecond)
		if n := sent.Load(); n > 64<<20 {
			t.Errorf("%s flood: the guest sent %d MiB before the command was killed", stream, n>>20)
		}
		t.Logf("%s flood: Run returned after %s; the server wrote %d MiB", stream, d.Round(time.Millisecond), sent.Load()>>20)
	}
	// The session still works.
	if res, err := s.Run(t.Context(), "hello", nil, 10*time.Second); err != nil || !res.OK() {
		t.Errorf("hello after the floods: %+v, %v", res, err)
	}
}

// The serial tails verify shows read only the end of the log.
func TestSerialTailReadsTheEnd(t *testing.T) {
	dir := t.TempDir()
	in := &instance{fw: "bios", serial: filepath.Join(dir, "serial-bios-0.log")}
	var b bytes.Buffer
	b.WriteString("Debian GNU/Linux 12 bake-verify ttyS0\n\nbake-verify login: \n")
	for b.Len() < 5<<20 {
		b.WriteString("\x1b[0;32m  OK  \x1b[0m] Reached target something; cloud-init chatter chatter chatter\r\n")
	}
	b.WriteString("the last line\n")
	if err := os.WriteFile(in.serial, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	tail := in.serialTail(40)
	lines := strings.Split(tail, "\n")
	if len(lines) != 41 || lines[40] != "the last line" || strings.Contains(tail, "\x1b") || strings.Contains(tail, "\r") {
		t.Errorf("serialTail: %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	// The prompt is 5 MiB back: beyond the tail it reads.
	if in.sawLoginPrompt() {
		t.Error("sawLoginPrompt read past its tail")
	}
	f, _ := os.OpenFile(in.serial, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("\nbake-verify login: ")
	f.Close()
	if !in.sawLoginPrompt() {
		t.Error("sawLoginPrompt missed a prompt at the end")
	}

	// The copy for the report keeps at most the limit: the end.
	dst := filepath.Join(dir, "report-serial.log")
	if err := copyTail(in.serial, dst, 1<<20); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if len(got) != 1<<20 || !bytes.HasSuffix(got, []byte("the last line\n\nbake-verify login: ")) {
		t.Errorf("copy: %d bytes", len(got))
	}
	if vm.SerialTailMax != 1<<20 {
		t.Errorf("vm.SerialTailMax = %d", vm.SerialTailMax)
	}
}

// stallingSSHServer logs any client in and then stalls: "open" never
// answers a session channel's open, "exec" accepts the channel and never
// answers its exec request, the way a hostile guest (or an sshd stalled
// under load) keeps the connection up and answers nothing.
func stallingSSHServer(t *testing.T, stall string) string {
	t.Helper()
	return serveTestSSH(t, func(nc ssh.NewChannel) {
		if stall == "open" {
			return // neither accepted nor rejected
		}
		if _, creqs, err := nc.Accept(); err == nil {
			go func() {
				for range creqs { // never replied to
				}
			}()
		}
	})
}

// A guest that never answers the session's open or its exec request does
// not hold Run past its timeout or its context (bake verify ignored Ctrl-C
// for minutes on a TCG guest whose sshd had stalled).
func TestRunBoundedWhenTheGuestStalls(t *testing.T) {
	for _, stall := range []string{"open", "exec"} {
		for _, how := range []string{"timeout", "cancel"} {
			t.Run(stall+"/"+how, func(t *testing.T) {
				addr := stallingSSHServer(t, stall)
				s := testSSHLogin(t, addr)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				timeout := time.Hour
				if how == "timeout" {
					timeout = 300 * time.Millisecond
				} else {
					time.AfterFunc(300*time.Millisecond, cancel)
				}
				t0 := time.Now()
				res, err := s.Run(ctx, "hello", nil, timeout)
				if d := time.Since(t0); d > 5*time.Second {
					t.Errorf("Run returned after %s", d)
				}
				switch {
				case err == nil:
					t.Errorf("no error: %+v", res)
				case how == "cancel" && !errors.Is(err, context.Canceled):
					t.Errorf("cancelled: err = %v, want context.Canceled", err)
				case how == "timeout" && !strings.Contains(err.Error(), "did not open a session"):
					t.Errorf("timed out: err = %v", err)
				}
				if res.OK() {
					t.Errorf("result OK: %+v", res)
				}
				// The connection is closed: nothing more runs on it.
				if _, err := s.Run(t.Context(), "hello", nil, time.Second); err == nil {
					t.Error("a command ran on the closed connection")
				}
			})
		}
	}
}
