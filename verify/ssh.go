package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/bakeimg/bake/internal/gwprobe"
	"golang.org/x/crypto/ssh"
)

// dialer opens a TCP connection to the guest's SSH port (from inside the
// outside namespace, or to a forwarded port on 127.0.0.1).
type dialer func(ctx context.Context, timeout time.Duration) (net.Conn, error)

// sshSession is a logged-in SSH connection to the guest.
type sshSession struct {
	client  *ssh.Client
	user    string
	addr    string
	hostKey ssh.PublicKey
}

// sshLogin connects and authenticates with methods. The server's host key
// is recorded, never checked: the instance made it a minute ago.
func sshLogin(ctx context.Context, dial dialer, addr, user string, timeout time.Duration, methods ...ssh.AuthMethod) (*sshSession, error) {
	conn, err := dial(ctx, timeout)
	if err != nil {
		return nil, err
	}
	var hostKey ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: user,
		Auth: methods,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			hostKey = k
			return nil
		},
		Timeout:       timeout,
		ClientVersion: "SSH-2.0-bake-verify",
	}
	conn.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &sshSession{client: ssh.NewClient(c, chans, reqs), user: user, addr: addr, hostKey: hostKey}, nil
}

func (s *sshSession) Close() error { return s.client.Close() }

// cmdResult is what a command printed and its exit status.
type cmdResult struct {
	Cmd    string
	Stdout string
	Stderr string
	Exit   int // -1: no exit status (killed, connection lost)
	// Cut: the command printed more than maxCmdOutput on stdout or stderr;
	// Stdout/Stderr hold the first maxCmdOutput bytes only, Stderr ends
	// with a note saying so, the command was killed, and Run returned an
	// error wrapping errOutputCut. A cut result is never OK.
	Cut bool
}

// maxCmdOutput is the most of a guest command's stdout, and of its stderr,
// that bake verify keeps (the guest is hostile: it can print without end).
// Beyond it the command is killed and its result is cut: cut evidence is
// never judged (a check passing on what is missing could pass on a lie),
// the check fails.
const maxCmdOutput = 8 << 20

// errOutputCut is wrapped by Run's error for a command whose output passed
// maxCmdOutput.
var errOutputCut = errors.New("output cut")

// Evidence renders the command and its output for a report.
func (r cmdResult) Evidence() string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ %s", r.Cmd)
	if r.Exit != 0 {
		fmt.Fprintf(&b, "   [exit %d]", r.Exit)
	}
	b.WriteString("\n")
	out := strings.TrimRight(r.Stdout, "\n")
	if out != "" {
		b.WriteString(out + "\n")
	}
	if e := strings.TrimRight(r.Stderr, "\n"); e != "" {
		b.WriteString(e + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

// OK reports a zero exit status and output that was not cut.
func (r cmdResult) OK() bool { return r.Exit == 0 && !r.Cut }

// Run runs cmd (a shell command line) with stdin, bounded by timeout and
// ctx. A command that fails is not an error: its exit status is in the
// result. Errors are for the connection, and for output beyond
// maxCmdOutput on stdout or stderr: the command is then killed at once and
// the error wraps errOutputCut (the result, marked Cut, keeps the first
// maxCmdOutput bytes of each stream as evidence).
func (s *sshSession) Run(ctx context.Context, cmd string, stdin []byte, timeout time.Duration) (cmdResult, error) {
	res := cmdResult{Cmd: cmd, Exit: -1}
	deadline := time.Now().Add(timeout)
	full := &overflow{C: make(chan struct{})}
	out := &cappedBuffer{max: maxCmdOutput, full: full}
	errb := &cappedBuffer{max: maxCmdOutput, full: full}
	sess, err := s.open(ctx, cmd, func(sess *ssh.Session) error {
		sess.Stdout, sess.Stderr = out, errb
		if stdin != nil {
			sess.Stdin = bytes.NewReader(stdin)
		}
		return nil
	}, deadline, timeout)
	if err != nil {
		return res, err
	}
	defer sess.Close()
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		return res, ctx.Err()
	case <-full.C:
		sess.Signal(ssh.SIGKILL)
		sess.Close()
	case <-timer.C:
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		res.Stdout, res.Stderr = out.String(), errb.String()
		res.Stderr += fmt.Sprintf("\n(bake verify: no answer after %s; command killed)", timeout)
		if err := cutResult(&res, out, errb); err != nil {
			return res, err
		}
		return res, nil
	}
	res.Stdout, res.Stderr = out.String(), errb.String()
	if err := cutResult(&res, out, errb); err != nil {
		return res, err
	}
	var ee *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case werr == nil:
		res.Exit = 0
	case errors.As(werr, &ee):
		res.Exit = ee.ExitStatus()
	case errors.As(werr, &missing):
		res.Exit = -1
	default:
		return res, werr
	}
	return res, nil
}

// open opens a session channel and starts cmd in it. Both wait for the
// guest's answer, which the SSH library waits for with no bound: a guest
// that keeps the connection up but never answers (hostile, or an sshd
// stalled under load: seen under TCG, bake verify then ignored Ctrl-C for
// minutes) would hold the run forever. They are bounded by ctx and
// deadline like the command itself; past either the connection is closed,
// the one way to unblock the library, and every later command on it fails
// (fail closed).
//
// wire connects the session's streams before the command starts.
func (s *sshSession) open(ctx context.Context, cmd string, wire func(*ssh.Session) error, deadline time.Time, timeout time.Duration) (*ssh.Session, error) {
	opened := make(chan struct{})
	guard := make(chan error, 1)
	go func() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-opened:
			guard <- nil
			return
		case <-ctx.Done():
			guard <- ctx.Err()
		case <-t.C:
			guard <- fmt.Errorf("ssh: the guest did not open a session for %q within %s: connection closed", cmd, timeout)
		}
		s.client.Close()
	}()
	sess, err := s.client.NewSession()
	if err == nil {
		if err = wire(sess); err != nil {
			sess.Close()
			err = fmt.Errorf("ssh session %q: %w", cmd, err)
		} else if err = sess.Start(cmd); err != nil {
			sess.Close()
			err = fmt.Errorf("ssh start %q: %w", cmd, err)
		}
	} else {
		err = fmt.Errorf("ssh session: %w", err)
	}
	close(opened)
	if gerr := <-guard; gerr != nil {
		if err == nil {
			sess.Close()
		}
		return nil, gerr
	}
	return sess, err
}

// relay starts cmd in the guest and returns its stdout and stdin as one
// stream: for a byte relay (bash's /dev/tcp) to a port that only the guest,
// or one of its containers, reaches, over which the host then speaks a
// protocol itself. What cmd prints on stderr is kept, capped, for the
// evidence. Closing the stream kills cmd and closes the session; the
// caller bounds the stream's use by ctx (gwprobe.Probe closes it when its
// context ends).
func (s *sshSession) relay(ctx context.Context, cmd string, timeout time.Duration) (net.Conn, *cappedBuffer, error) {
	errb := &cappedBuffer{max: 64 << 10, full: &overflow{C: make(chan struct{})}}
	var stdin io.WriteCloser
	var stdout io.Reader
	sess, err := s.open(ctx, cmd, func(sess *ssh.Session) error {
		var err error
		sess.Stderr = errb
		if stdin, err = sess.StdinPipe(); err != nil {
			return err
		}
		stdout, err = sess.StdoutPipe()
		return err
	}, time.Now().Add(timeout), timeout)
	if err != nil {
		return nil, nil, err
	}
	return gwprobe.StreamConn(stdout, stdin, func() error {
		stdin.Close()
		sess.Signal(ssh.SIGKILL)
		return sess.Close()
	}), errb, nil
}

// cutResult marks res as cut when either stream passed its cap, with a
// note at the end of Stderr, and returns the error Run returns for it.
func cutResult(res *cmdResult, out, errb *cappedBuffer) error {
	var cut []string
	for _, b := range []struct {
		name string
		buf  *cappedBuffer
	}{{"stdout", out}, {"stderr", errb}} {
		if b.buf.Cut() {
			cut = append(cut, b.name)
		}
	}
	if len(cut) == 0 {
		return nil
	}
	what := strings.Join(cut, " and ")
	res.Cut, res.Exit = true, -1
	res.Stderr += fmt.Sprintf("\n(bake verify: the command printed more than %d MiB on %s: killed, its output CUT there; nothing is judged on cut output)", maxCmdOutput>>20, what)
	return fmt.Errorf("the guest command %q printed more than %d MiB on %s: killed, output cut, so it proves nothing: %w", res.Cmd, maxCmdOutput>>20, what, errOutputCut)
}

// cappedBuffer keeps the first max bytes written to it and counts, without
// keeping, the rest; the first write past max fires full (which a
// command's two streams share, so that Run kills the command at once). The
// SSH library writes stdout and stderr from goroutines of their own, which
// can still be running when Run gives up on a command: it is locked.
type cappedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	max   int
	total int64     // bytes written, kept or not
	full  *overflow // optional
}

// overflow is closed (C) once, by the first buffer that overflows.
type overflow struct {
	once sync.Once
	C    chan struct{}
}

func (o *overflow) fire() { o.once.Do(func() { close(o.C) }) }

// Write always reports success (a failing writer would make the SSH
// library stop reading the channel, and the guest's writes would block
// rather than end).
func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += int64(len(p))
	if room := b.max - b.buf.Len(); room < len(p) {
		if room > 0 {
			b.buf.Write(p[:room])
		}
		if b.full != nil {
			b.full.fire()
		}
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

// String is what was kept: the first max bytes at most.
func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Cut reports whether more than max bytes were written.
func (b *cappedBuffer) Cut() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total > int64(b.max)
}

var attemptedRE = regexp.MustCompile(`attempted methods \[([^\]]*)\]`)

// authAttempt is the outcome of one login attempt that should fail.
type authAttempt struct {
	LoggedIn  bool
	Attempted []string // methods the client tried, from the error
	Err       string
}

// tryLogin attempts a login meant to be refused and reports what happened.
// x/crypto/ssh only tries a method the server lists as allowed, so
// Attempted says which of ours the server offered: ["none"] alone means it
// never offered password or keyboard-interactive at all.
func tryLogin(ctx context.Context, dial dialer, addr, user string, timeout time.Duration, methods ...ssh.AuthMethod) (authAttempt, error) {
	s, err := sshLogin(ctx, dial, addr, user, timeout, methods...)
	if err == nil {
		s.Close()
		return authAttempt{LoggedIn: true}, nil
	}
	if ctx.Err() != nil {
		return authAttempt{}, ctx.Err()
	}
	msg := err.Error()
	a := authAttempt{Err: msg}
	m := attemptedRE.FindStringSubmatch(msg)
	if m == nil {
		// Not an authentication refusal: a connection problem.
		return a, err
	}
	a.Attempted = strings.Fields(m[1])
	return a, nil
}

// passwordMethods answers a password prompt and a keyboard-interactive
// challenge with pw.
func passwordMethods(pw string) []ssh.AuthMethod {
	return []ssh.AuthMethod{
		ssh.Password(pw),
		ssh.KeyboardInteractive(func(name, instruction string, questions []string, echos []bool) ([]string, error) {
			answers := make([]string, len(questions))
			for i := range answers {
				answers[i] = pw
			}
			return answers, nil
		}),
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@,+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
