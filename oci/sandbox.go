package oci

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// sandbox runs a program of an image on the build host: code from npm,
// while bake runs as root. What it gets:
//
//   - the image's tree (a throwaway copy that bake extracted) as its root,
//     read-only, through chroot;
//   - a uid and gid of its own (65534 by default), no supplementary groups,
//     no capabilities, no new privileges (setpriv --no-new-privs; chroot's
//     --userspec drops root before the program runs);
//   - new mount, network, PID, IPC and UTS namespaces (unshare): no
//     network at all (only a loopback interface, down unless Loopback), its
//     mounts are private and vanish with it, and its processes die with its
//     first process, which dies with bake (--kill-child);
//   - fresh tmpfs on /tmp, on the image's writable dirs (its HOME) and on
//     /dev (holding only null, zero, full, random and urandom), a new /proc;
//   - the binds it is given, and nothing else of the host;
//   - a hard time limit (timeout -s KILL), besides the caller's context.
//
// The command line is built by Cmd, a pure function of the sandbox.
type sandbox struct {
	Root     string // the tree, a host path
	UID, GID int
	// Env is the whole environment (env -i), e.g. the image config's.
	Env []string
	Dir string // working directory inside
	// Tmpfs are directories inside that get a fresh world-writable tmpfs
	// (besides /tmp): the image's HOME and writable dirs.
	Tmpfs []string
	Binds []bind
	// Loopback brings lo up (a server under test listens on it); else the
	// sandbox has no usable interface at all.
	Loopback bool
	Timeout  time.Duration
	Argv     []string
}

// bind mounts a host path into the sandbox.
type bind struct {
	Host, Guest string // Guest is created (below a tmpfs) if it is missing
	Writable    bool
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// sandboxOuter is the command bake runs: unshare in the background, and on
// SIGTERM or SIGINT (a cancelled context) SIGKILL to it at once. unshare
// --fork blocks SIGTERM while it waits for its child; killed, it takes its
// child (the sandbox's first process) with it through --kill-child, and the
// kernel then ends every process of the PID namespace.
const sandboxOuter = `unshare "$@" & p=$!
trap 'kill -KILL $p 2>/dev/null; wait $p; exit 143' TERM INT HUP
wait $p`

// Cmd returns the command that runs the sandbox.
func (s sandbox) Cmd() (execx.Cmd, error) {
	if !filepath.IsAbs(s.Root) || len(s.Argv) == 0 || s.UID == 0 || s.GID == 0 || s.Timeout <= 0 {
		return execx.Cmd{}, fmt.Errorf("sandbox: want an absolute root, a command, a uid and gid other than 0 and a time limit: %+v", s)
	}
	guest := func(p string) (string, error) {
		c := path.Clean("/" + p)
		if c == "/" || c != p || strings.ContainsAny(p, "\n\x00") {
			return "", fmt.Errorf("sandbox: %q: want a clean absolute path below /", p)
		}
		return c, nil
	}
	var b strings.Builder
	line := func(args ...string) { b.WriteString(strings.Join(args, " ") + "\n") }
	line("set -eu")
	line("r=" + shellQuote(s.Root))
	// The tree, read-only, in this mount namespace only.
	line(`mount --bind "$r" "$r"`)
	line(`mount -o remount,bind,ro,nosuid,nodev "$r"`)
	line(`mount -t proc -o nosuid,nodev,noexec proc "$r/proc"`)
	line(`mount -t tmpfs -o mode=0755,size=64k,nosuid,noexec tmpfs "$r/dev"`)
	line(`for d in null zero full random urandom; do : >"$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done`)
	for _, d := range append([]string{"/tmp"}, s.Tmpfs...) {
		g, err := guest(d)
		if err != nil {
			return execx.Cmd{}, err
		}
		line(`mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r"` + shellQuote(g))
	}
	for _, bd := range s.Binds {
		g, err := guest(bd.Guest)
		if err != nil {
			return execx.Cmd{}, err
		}
		if !filepath.IsAbs(bd.Host) {
			return execx.Cmd{}, fmt.Errorf("sandbox: bind %q: want an absolute host path", bd.Host)
		}
		ro := ",ro"
		if bd.Writable {
			ro = ""
		}
		line(`mkdir -p "$r"` + shellQuote(g))
		line("mount --bind -o nosuid,nodev"+ro, shellQuote(bd.Host), `"$r"`+shellQuote(g))
	}
	if s.Loopback {
		line("ip link set lo up")
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	run := []string{"timeout", "-s", "KILL", strconv.Itoa(int(s.Timeout.Round(time.Second) / time.Second)),
		"setpriv", "--no-new-privs", "chroot",
		"--userspec=" + strconv.Itoa(s.UID) + ":" + strconv.Itoa(s.GID), "--groups=" + strconv.Itoa(s.GID),
		s.Root, "/usr/bin/env", "-i", "-C", dir}
	run = append(run, s.Env...)
	run = append(run, s.Argv...)
	// The program runs as a child, not exec'd: this shell, PID 1 of the
	// namespace, keeps root and --kill-child's parent-death signal (a uid
	// change would clear it), so the namespace goes when unshare goes.
	line(shellJoin(run) + " &")
	line("wait $!")
	args := []string{"-c", sandboxOuter, "bake-sandbox",
		"--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child=SIGKILL", "--propagation", "private",
		"sh", "-c", b.String()}
	return execx.Cmd{Name: "sh", Args: args}, nil
}

// sandboxLeftovers lists processes whose root directory is the sandbox's
// tree: none may be left once the sandbox returned (its PID namespace is
// gone with its first process).
func sandboxLeftovers(root string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if r, err := os.Readlink("/proc/" + e.Name() + "/root"); err == nil && (r == root || strings.HasPrefix(r, root+"/")) {
			out = append(out, pid)
		}
	}
	return out
}
