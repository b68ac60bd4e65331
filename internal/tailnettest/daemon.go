package tailnettest

import (
	"os"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// daemon is a long-running process a test started (headscale, tailscaled)
// with its log file.
type daemon struct {
	Log   string // its stdout and stderr
	child *execx.Child
}

// LogTail returns the last n lines of the daemon's log.
func (d *daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.Log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PID is the daemon's process ID.
func (d *daemon) PID() int { return d.child.Cmd.Process.Pid }

// Close stops the daemon (SIGTERM, then SIGKILL after 5 s) and waits for
// it.
func (d *daemon) Close() error {
	if d.child == nil {
		return nil
	}
	d.child.Stop(5 * time.Second)
	return nil
}
