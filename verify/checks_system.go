package verify

import (
	"context"
	"fmt"
	"strings"
	"time"
)

func (c *checker) systemRunning(ctx context.Context) (Status, string) {
	script := `state=$(timeout 600 systemctl is-system-running --wait 2>&1)
echo "is-system-running: $state"
echo "failed units:"
systemctl --failed --no-legend --plain --no-pager
if command -v cloud-init >/dev/null 2>&1; then echo "cloud-init:"; cloud-init status --long 2>&1 | sed 's/^/  /'; fi`
	res, err := c.in.runT(ctx, "sudo -n sh -c "+shellQuote(script), nil, 11*time.Minute)
	if err != nil {
		return Fail, err.Error()
	}
	var ev evidence
	ev.cmd(res)
	problems, failed, ciStatus, note := judgeSystem(res.Stdout, c.in.via == seedNone)
	if note != "" {
		ev.add("%s", note)
	}
	for i, u := range failed {
		if i == 3 {
			break
		}
		if r, err := c.in.sudo(ctx, "systemctl status --no-pager -n 20 "+shellQuote(u)); err == nil {
			ev.cmd(r)
		}
	}
	return verdict(problems, ev, "the system is running: no failed units"+map[bool]string{true: "; cloud-init done", false: ""}[ciStatus == "done"])
}

var checkSystemRunning = Check{ID: "system.running", Scope: ScopeFirmware, Needs: "an SSH session",
	claim: func(Spec, *GatewaySpec) string {
		return "systemctl is-system-running is \"running\", no failed units, cloud-init (if any) not degraded"
	},
	run: (*checker).systemRunning, ssh: true}

// judgeSystem judges the output of systemRunning's script: the system
// state, the failed units and cloud-init's status. An instance booted with
// no seed (seedless: an upgrade run's instance on its state volume) finds
// no datasource, and ds-identify disables cloud-init for the boot: its
// "disabled" is then the expected state, noted, not a problem.
func judgeSystem(out string, seedless bool) (problems, failed []string, ciStatus, note string) {
	state := ""
	inFailed, inCI := false, false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "is-system-running: "):
			state = strings.TrimSpace(strings.TrimPrefix(l, "is-system-running: "))
		case l == "failed units:":
			inFailed = true
		case l == "cloud-init:":
			inFailed, inCI = false, true
		case inFailed && strings.TrimSpace(l) != "":
			failed = append(failed, strings.Fields(l)[0])
		case inCI && strings.HasPrefix(strings.TrimSpace(l), "status:"):
			ciStatus = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "status:"))
		}
	}
	if state != "running" {
		problems = append(problems, fmt.Sprintf("the system is %q, not \"running\"", state))
	}
	if len(failed) > 0 {
		problems = append(problems, "failed units: "+strings.Join(failed, ", "))
	}
	switch {
	case ciStatus == "disabled" && seedless:
		note = "cloud-init is disabled: the instance booted with no seed, so no datasource was found"
	case ciStatus != "" && ciStatus != "done":
		problems = append(problems, fmt.Sprintf("cloud-init status is %q, not \"done\"", ciStatus))
	}
	return problems, failed, ciStatus, note
}
