// Package execx is the one way bake runs external commands (mmdebstrap,
// mkfs.ext4, grub-mkimage, qemu-img, ...). Every stage goes through a Runner
// so that tests can record the commands a stage would run, and so that a
// failing command always reports its full command line and the tail of its
// output instead of a bare "exit status 1".
package execx

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
)

// Cmd describes one external command.
type Cmd struct {
	Name   string
	Args   []string
	Env    []string // added to the current environment
	Dir    string
	Stdin  io.Reader
	Stdout io.Writer // also receives output when set (e.g. a build log)
	Stderr io.Writer
}

func (c Cmd) String() string {
	return strings.TrimSpace(c.Name + " " + strings.Join(c.Args, " "))
}

// Runner runs commands. Output returns stdout.
type Runner interface {
	Run(ctx context.Context, c Cmd) error
	Output(ctx context.Context, c Cmd) ([]byte, error)
}

// Default is the Runner used outside tests.
var Default Runner = Host{}

// Host runs commands on the build host. Log, when set, receives every
// command line and its combined output (the build log).
type Host struct{ Log io.Writer }

// Error is returned when a command fails: it names the command and keeps the
// last lines of its output so the user sees why.
type Error struct {
	Cmd    string
	Err    error
	Output string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Cmd, e.Err)
	if e.Output != "" {
		msg += "\n" + indent(e.Output)
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 25 {
		lines = append([]string{"..."}, lines[len(lines)-25:]...)
	}
	for i := range lines {
		lines[i] = "    " + lines[i]
	}
	return strings.Join(lines, "\n")
}

func (h Host) command(ctx context.Context, c Cmd) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Dir = c.Dir
	cmd.Stdin = c.Stdin
	// A cancelled build sends SIGTERM first so that tools like mmdebstrap
	// can undo their own mounts, and only then SIGKILL.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10e9
	return cmd
}

// Run runs c and returns an *Error carrying the output tail on failure.
func (h Host) Run(ctx context.Context, c Cmd) error {
	cmd := h.command(ctx, c)
	var buf tailBuffer
	outs := []io.Writer{&buf}
	if h.Log != nil {
		fmt.Fprintf(h.Log, "+ %s\n", c)
		outs = append(outs, lockedWriter{w: h.Log, mu: &logMu})
	}
	if c.Stdout != nil {
		cmd.Stdout = io.MultiWriter(append(outs, c.Stdout)...)
	} else {
		cmd.Stdout = io.MultiWriter(outs...)
	}
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(append(outs, c.Stderr)...)
	} else {
		cmd.Stderr = io.MultiWriter(outs...)
	}
	if err := cmd.Run(); err != nil {
		return &Error{Cmd: c.String(), Err: err, Output: buf.String()}
	}
	return nil
}

// Output runs c and returns its stdout; stderr goes to the error on failure.
func (h Host) Output(ctx context.Context, c Cmd) ([]byte, error) {
	cmd := h.command(ctx, c)
	var stdout bytes.Buffer
	var stderr tailBuffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if h.Log != nil {
		fmt.Fprintf(h.Log, "+ %s\n", c)
		cmd.Stderr = io.MultiWriter(&stderr, lockedWriter{w: h.Log, mu: &logMu})
	}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &Error{Cmd: c.String(), Err: err, Output: stderr.String()}
	}
	return stdout.Bytes(), nil
}

// tailBuffer keeps the last 64 KiB written to it. exec.Cmd copies stdout
// and stderr in two goroutines, so writes are serialised.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 64<<10 {
		t.b = t.b[len(t.b)-64<<10:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// logMu serialises writes to build logs from concurrent output copiers.
var logMu sync.Mutex

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Recorder is a Runner for tests: it records commands and runs nothing.
type Recorder struct {
	Cmds []Cmd
	// Respond, when set, answers Output calls.
	Respond func(c Cmd) ([]byte, error)
}

func (r *Recorder) Run(_ context.Context, c Cmd) error {
	r.Cmds = append(r.Cmds, c)
	return nil
}

func (r *Recorder) Output(_ context.Context, c Cmd) ([]byte, error) {
	r.Cmds = append(r.Cmds, c)
	if r.Respond != nil {
		return r.Respond(c)
	}
	return nil, nil
}
