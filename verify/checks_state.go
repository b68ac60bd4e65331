package verify

import (
	"context"
	"fmt"
	"strings"

	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/vm"
)

// checkStateNoVolume: an image that keeps its state on a volume
// (state: {volume: ...}), booted without one, as every run but an upgrade
// run boots it. docs/state.md promises a loud warning and an instance
// that runs from its root disk; before this check a boot of its own in
// test/vm proved it (TestStateVolume's fifth boot, folded here).
var checkStateNoVolume = Check{ID: "state.no-volume", Scope: ScopeFirmware, Needs: "an SSH session, a state: {volume: ...} section in the image",
	claim: func(s Spec, _ *GatewaySpec) string {
		return fmt.Sprintf("without its state volume (%s; no run but an upgrade run attaches one) the instance warns on the console and in bake-state's journal that its state will be lost with the image, runs from its root disk (state status missing, nothing bound from a volume, bake-state not failed) and starts its services", stateVolumeWhat(s.StateVolume))
	},
	planned: func(s Spec, _ int) bool { return s.StateVolume != nil },
	run:     (*checker).stateNoVolume, ssh: true}

// stateVolumeWhat names the disk first boot looks for, in the words of
// bake-state's warning (firstboot/state.sh).
func stateVolumeWhat(v *StateVolumeSpec) string {
	switch {
	case v == nil:
		return "a state volume"
	case v.Serial != "":
		return fmt.Sprintf("a disk with serial %s (/dev/disk/by-id/virtio-%s)", v.Serial, v.Serial)
	default:
		return "a disk labelled " + v.Label
	}
}

// stateNoVolumeScript prints what stateNoVolume judges: the state status,
// whether bake-state failed, every state path (and the state mount) that
// is a mount point, bake-state's journal of this boot, and the state of
// the units the state guards.
func stateNoVolumeScript() string {
	return fmt.Sprintf(`echo "status=$(cat %[1]s 2>&1)"
echo "bake-state=$(systemctl is-failed %[2]s 2>&1)"
PATHS=$(. %[3]s >/dev/null 2>&1; printf '%%s' "$PATHS")
for p in %[4]s $PATHS; do case $p in *'*'*) continue ;; esac; mountpoint -q "$p" 2>/dev/null && echo "mounted=$p"; done
for u in docker.service tailscaled.service; do systemctl cat "$u" >/dev/null 2>&1 && echo "unit=$u $(systemctl is-active "$u" 2>&1)"; done
echo "journal:"
journalctl -b --no-pager -o cat -u %[2]s 2>&1 | tail -n 40`,
		firstboot.StateStatusFile, firstboot.StateUnitName, firstboot.StateConfigPath, firstboot.StateMount)
}

// stateWarning is the line bake-state prints when the volume is missing.
func stateWarning(v *StateVolumeSpec) string {
	return "bake-state: warning: NO STATE VOLUME: no " + strings.TrimPrefix(stateVolumeWhat(v), "a ")
}

// judgeStateNoVolume judges stateNoVolumeScript's output and the serial
// console's end.
func judgeStateNoVolume(out, console string, v *StateVolumeSpec) []string {
	var problems []string
	status, failed := "", ""
	var mounted, units []string
	journal := ""
	if head, j, ok := strings.Cut(out, "journal:\n"); ok {
		out, journal = head, j
	} else {
		problems = append(problems, "no journal of bake-state in the output")
	}
	for _, l := range strings.Split(out, "\n") {
		k, val, _ := strings.Cut(strings.TrimSpace(l), "=")
		switch k {
		case "status":
			status = val
		case "bake-state":
			failed = val
		case "mounted":
			mounted = append(mounted, val)
		case "unit":
			units = append(units, val)
		}
	}
	if status != "missing" {
		problems = append(problems, fmt.Sprintf("state status %q, want \"missing\" (no volume is attached)", status))
	}
	if failed == "failed" || failed == "" {
		problems = append(problems, fmt.Sprintf("%s is %q (systemctl is-failed), want it not failed: a missing volume is a warning", firstboot.StateUnitName, failed))
	}
	if len(mounted) > 0 {
		problems = append(problems, "bound or mounted from a state volume that is not there: "+strings.Join(mounted, ", "))
	}
	for _, u := range units {
		if strings.HasSuffix(u, " failed") {
			problems = append(problems, "a unit the state guards failed: "+u)
		}
	}
	warn := stateWarning(v)
	const lost = "will be LOST when the image is replaced"
	if !strings.Contains(journal, strings.TrimPrefix(warn, "bake-state: warning: ")) || !strings.Contains(journal, lost) {
		problems = append(problems, fmt.Sprintf("bake-state's journal does not warn %q ... %q", strings.TrimPrefix(warn, "bake-state: warning: "), lost))
	}
	if !strings.Contains(console, warn) {
		problems = append(problems, fmt.Sprintf("the console does not carry %q", warn))
	}
	return problems
}

func (c *checker) stateNoVolume(ctx context.Context) (Status, string) {
	v := c.spec.StateVolume
	res, err := c.in.sudo(ctx, stateNoVolumeScript())
	if err != nil {
		return Fail, err.Error()
	}
	var ev evidence
	ev.cmd(res)
	console, err := vm.ReadTail(c.in.serial, vm.SerialTailMax)
	if err != nil {
		return Fail, "reading the serial console: " + err.Error() + "\n\n" + ev.String()
	}
	problems := judgeStateNoVolume(res.Stdout, string(console), v)
	for _, l := range strings.Split(string(console), "\n") {
		if strings.Contains(l, "bake-state:") {
			ev.add("console: %s", strings.TrimSpace(l))
			break
		}
	}
	return verdict(problems, ev, fmt.Sprintf("no state volume: warned on the console and in the journal (%s); state status missing, nothing bound, the services started", stateVolumeWhat(v)))
}
