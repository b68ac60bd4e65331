package verify

import (
	"context"
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"
)

// listener is a listening or bound socket from /proc/net.
type listener struct {
	Proto string // tcp, tcp6, udp, udp6
	Addr  netip.AddrPort
	Inode string
	// Connected: a UDP socket connected to one peer (state 01), which
	// takes datagrams from that peer only; unconnected ones are 07.
	Connected bool
}

// parseProcNet reads /proc/net/{tcp,tcp6,udp,udp6} content (concatenated,
// each preceded by a line "== NAME"); for TCP only LISTEN sockets.
func parseProcNet(s string) []listener {
	var out []listener
	proto := ""
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == "==" {
			proto = f[1]
			continue
		}
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		if strings.HasPrefix(proto, "tcp") && f[3] != "0A" {
			continue
		}
		ap, ok := procAddr(f[1])
		if !ok {
			continue
		}
		out = append(out, listener{Proto: proto, Addr: ap, Inode: f[9], Connected: strings.HasPrefix(proto, "udp") && f[3] == "01"})
	}
	return out
}

// procAddr decodes /proc/net's "0100007F:4965" (host-order 32-bit words).
func procAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), true
}

// socketsScript prints /proc/net/{tcp,tcp6,udp,udp6} for parseProcNet.
const socketsScript = "for f in tcp tcp6 udp udp6; do echo \"== $f\"; cat /proc/net/$f 2>/dev/null; done"

func (c *checker) sockets(ctx context.Context) ([]listener, cmdResult, error) {
	res, err := c.in.sudo(ctx, socketsScript)
	if err != nil {
		return nil, res, err
	}
	return parseProcNet(res.Stdout), res, nil
}

// owners maps socket inodes to "pid/comm".
func (c *checker) owners(ctx context.Context, inodes []string) map[string]string {
	if len(inodes) == 0 {
		return nil
	}
	res, err := c.in.sudo(ctx, ownersScript(inodes))
	if err != nil {
		return nil
	}
	want := map[string]bool{}
	for _, i := range inodes {
		want["["+i+"]"] = true
	}
	out := map[string]string{}
	for _, l := range strings.Split(res.Stdout, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && want[f[0]] {
			out[strings.Trim(f[0], "[]")] = f[1]
		}
	}
	return out
}

// ownersScript prints "[INODE] PID/COMM" for each socket of inodes that a
// process holds. One find lists every process's sockets (a readlink per
// descriptor, forked from a shell loop, took a minute under emulation);
// only the matching lines cost a cat. Without find, the shell loop.
func ownersScript(inodes []string) string {
	var re []string
	for _, i := range inodes {
		if strings.Trim(i, "0123456789") == "" && i != "" {
			re = append(re, i)
		}
	}
	pat := `^socket:\[(` + strings.Join(re, "|") + `)\] `
	return `if command -v find >/dev/null 2>&1; then
find /proc/[0-9]*/fd -maxdepth 1 -lname 'socket:*' -printf '%l %h\n' 2>/dev/null | grep -E '` + pat + `' |
while read -r l h; do p=${h#/proc/}; p=${p%/fd}; echo "${l#socket:} $p/$(cat /proc/$p/comm 2>/dev/null)"; done
else
for p in /proc/[0-9]*; do for fd in $p/fd/*; do l=$(readlink $fd 2>/dev/null) || continue; case "$l" in socket:*) echo "${l#socket:} ${p#/proc/}/$(cat $p/comm 2>/dev/null)";; esac; done; done
fi`
}
