package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

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
}

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

// OK reports a zero exit status.
func (r cmdResult) OK() bool { return r.Exit == 0 }

// Run runs cmd (a shell command line) with stdin, bounded by timeout and
// ctx. A command that fails is not an error: its exit status is in the
// result. Errors are for the connection.
func (s *sshSession) Run(ctx context.Context, cmd string, stdin []byte, timeout time.Duration) (cmdResult, error) {
	res := cmdResult{Cmd: cmd, Exit: -1}
	sess, err := s.client.NewSession()
	if err != nil {
		return res, fmt.Errorf("ssh session: %w", err)
	}
	defer sess.Close()
	var out, errb limitedBuffer
	out.max, errb.max = 4<<20, 1<<20
	sess.Stdout, sess.Stderr = &out, &errb
	if stdin != nil {
		sess.Stdin = bytes.NewReader(stdin)
	}
	if err := sess.Start(cmd); err != nil {
		return res, fmt.Errorf("ssh start %q: %w", cmd, err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		return res, ctx.Err()
	case <-time.After(timeout):
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		res.Stdout, res.Stderr = out.String(), errb.String()
		res.Stderr += fmt.Sprintf("\n(bake verify: no answer after %s; command killed)", timeout)
		return res, nil
	}
	res.Stdout, res.Stderr = out.String(), errb.String()
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

type limitedBuffer struct {
	bytes.Buffer
	max       int
	truncated bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room < len(p) {
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		b.truncated = true
		return len(p), nil
	}
	return b.Buffer.Write(p)
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
