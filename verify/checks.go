package verify

import (
	"context"
	"fmt"
	"strings"
	"time"
)

func portList(ports []int) string {
	var s []string
	for _, p := range ports {
		s = append(s, fmt.Sprintf("%d/tcp", p))
	}
	return strings.Join(s, ", ")
}

// isolation: the image claims Docker isolation.
func isolation(s Spec) bool {
	return s.Docker && (s.Firewall == nil || s.Firewall.DockerIsolation)
}

// checker runs the checks of one instance.
type checker struct {
	r    *runner
	in   *instance
	spec Spec
	fw   string

	token string // the gateway's token as read from openclaw.json

	gwWaited bool     // waitGateway ran
	gwNote   evidence // how long it took, or the container's state and logs
}

func (c *checker) runAll(ctx context.Context) {
	planned := map[string]bool{}
	for _, id := range c.r.plan() {
		planned[id] = true
	}
	for _, k := range catalog {
		if k.run == nil || !planned[k.ID] {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		c.step(ctx, k)
	}
	if planned[checkIsolationLoopback.ID] && ctx.Err() == nil {
		c.isolation(ctx)
	}
}

func (c *checker) noSSH() string {
	return fmt.Sprintf("not run: no SSH session as %s (see %s)", c.spec.AdminUser, checkSSHKeyLogin.ID)
}

func (c *checker) step(ctx context.Context, k *Check) {
	t0 := time.Now()
	if k.ssh && c.in.sess == nil {
		c.r.record(c.fw, k.ID, Skip, c.noSSH(), 0)
		return
	}
	if k.outside && c.in.link == nil {
		c.r.record(c.fw, k.ID, Skip, "not run: "+c.r.outsideWhy, 0)
		return
	}
	st, ev := k.run(c, ctx)
	if ctx.Err() != nil {
		return // cut short: not a result (the run records why)
	}
	c.r.record(c.fw, k.ID, st, ev, time.Since(t0))
}

// evidence joins command results and notes.
type evidence []string

func (e *evidence) add(format string, args ...any) { *e = append(*e, fmt.Sprintf(format, args...)) }
func (e *evidence) cmd(r cmdResult)                { *e = append(*e, r.Evidence()) }
func (e evidence) String() string                  { return strings.Join(e, "\n") }

// verdict: the problems found (Fail), or Pass with summary (the first
// line of a pass) and the evidence.
func verdict(problems []string, ev evidence, summary string) (Status, string) {
	if len(problems) == 0 {
		if summary == "" {
			return Pass, ev.String()
		}
		return Pass, summary + "\n\n" + ev.String()
	}
	return Fail, strings.Join(problems, "\n") + "\n\n" + ev.String()
}
