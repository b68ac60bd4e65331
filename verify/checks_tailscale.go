package verify

import (
	"context"
	"fmt"
	"strings"
)

func (c *checker) tailscaled(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	res, err := c.in.sudo(ctx, "systemctl is-active tailscaled; systemctl show -p MainPID --value tailscaled")
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	lines := strings.Fields(res.Stdout)
	if len(lines) == 0 || lines[0] != "active" {
		problems = append(problems, "tailscaled is not active")
	}
	socks, sres, err := c.sockets(ctx)
	if err != nil {
		return Fail, err.Error()
	}
	var inodes []string
	var bound []listener
	for _, s := range socks {
		if strings.HasPrefix(s.Proto, "udp") && s.Addr.Port() == TailscalePort {
			bound = append(bound, s)
			inodes = append(inodes, s.Inode)
		}
	}
	own := c.owners(ctx, inodes)
	if len(bound) == 0 {
		problems = append(problems, fmt.Sprintf("nothing is bound to %d/udp", TailscalePort))
		ev.add("UDP sockets: %s", summarizeSockets(socks, "udp"))
		_ = sres
	}
	for _, s := range bound {
		o := own[s.Inode]
		ev.add("%s %s held by %s", s.Proto, s.Addr, orDash(o))
		if !strings.HasSuffix(o, "/tailscaled") {
			problems = append(problems, fmt.Sprintf("%s %s is held by %s, not tailscaled", s.Proto, s.Addr, orDash(o)))
		}
	}
	return verdict(problems, ev, fmt.Sprintf("tailscaled is active and holds %d/udp", TailscalePort))
}

func summarizeSockets(socks []listener, proto string) string {
	var s []string
	for _, l := range socks {
		if strings.HasPrefix(l.Proto, proto) {
			s = append(s, l.Proto+" "+l.Addr.String())
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

var checkTailscaleDaemon = Check{ID: "tailscale.daemon", Scope: ScopeFirmware, Needs: "an SSH session",
	claim: func(Spec, *GatewaySpec) string {
		return fmt.Sprintf("tailscaled is active and holds %d/udp", TailscalePort)
	},
	planned: func(s Spec, _ int) bool { return s.Tailscale },
	run:     (*checker).tailscaled, ssh: true}
