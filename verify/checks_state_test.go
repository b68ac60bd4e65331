package verify

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/bakeimg/bake/firstboot"
)

// What bake-state prints without its volume (firstboot/state.sh), for the
// label-only and the serial form of the volume.
const (
	stateMissingLabel  = "bake-state: warning: NO STATE VOLUME: no disk labelled bake-state. This instance runs from its root disk: its state (host keys, tokens, identities) will be LOST when the image is replaced. Attach the state volume and reboot to keep it."
	stateMissingSerial = "bake-state: warning: NO STATE VOLUME: no disk with serial st0 (/dev/disk/by-id/virtio-st0). This instance runs from its root disk: its state (host keys, tokens, identities) will be LOST when the image is replaced. Attach the state volume and reboot to keep it."
)

func stateOut(status, isFailed string, extra, journal string) string {
	return "status=" + status + "\nbake-state=" + isFailed + "\n" + extra + "unit=docker.service active\nunit=tailscaled.service active\njournal:\n" + journal + "\n"
}

func TestStateNoVolumeVerdict(t *testing.T) {
	label := &StateVolumeSpec{Label: "bake-state"}
	serial := &StateVolumeSpec{Label: "bake-state", Serial: "st0"}
	console := "[  12.1] systemd[1]: Starting bake-state.service\r\n" + stateMissingLabel + "\r\nDebian GNU/Linux 12 appliance ttyS0\n"
	good := stateOut("missing", "inactive", "", stateMissingLabel)
	for _, tc := range []struct {
		name, out, console string
		v                  *StateVolumeSpec
		want               string // "" = pass; else a word of the one problem
	}{
		{"warned, from the root disk", good, console, label, ""},
		{"bake-state active (oneshot, RemainAfterExit)", stateOut("missing", "active", "", stateMissingLabel), console, label, ""},
		{"by serial", stateOut("missing", "inactive", "", stateMissingSerial), stateMissingSerial + "\n", serial, ""},
		{"the serial form judged against a label-only claim", stateOut("missing", "inactive", "", stateMissingSerial), stateMissingSerial, label, "journal"},
		{"a volume was found", stateOut("ok", "inactive", "", "bake-state: state volume /dev/vdb (label bake-state)"), "", label, "status"},
		{"bake-state failed", stateOut("missing", "failed", "", stateMissingLabel), console, label, "not failed"},
		{"no answer from systemctl", stateOut("missing", "", "", stateMissingLabel), console, label, "not failed"},
		{"a path bound anyway", stateOut("missing", "inactive", "mounted=/home/openclaw/.openclaw\n", stateMissingLabel), console, label, "bound or mounted"},
		{"a guarded unit failed", strings.Replace(good, "unit=docker.service active", "unit=docker.service failed", 1), console, label, "guards failed"},
		{"silent on the console", good, "Debian GNU/Linux 12 appliance ttyS0\n", label, "console"},
		{"silent in the journal", stateOut("missing", "inactive", "", "bake-state: state volume missing"), console, label, "journal"},
		{"no journal section", "status=missing\nbake-state=inactive\n", console, label, "no journal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := judgeStateNoVolume(tc.out, tc.console, tc.v)
			if tc.want == "" {
				if len(p) != 0 {
					t.Errorf("problems %q, want none", p)
				}
				return
			}
			if len(p) == 0 || !strings.Contains(strings.Join(p, "\n"), tc.want) {
				t.Errorf("problems %q, want one about %q", p, tc.want)
			}
		})
	}
}

// The warning the check looks for is bake-state's own, word for word:
// the script's template (firstboot/state.sh) expanded as the shell does.
func TestStateWarningIsBakeStates(t *testing.T) {
	script := firstboot.StateScript()
	for _, frag := range []string{
		`msg="NO STATE VOLUME: no disk $what. This instance runs from its root disk: its state (host keys, tokens, identities) will be LOST when the image is replaced.`,
		`what="labelled $LABEL"`,
		`what="with serial $SERIAL (/dev/disk/by-id/virtio-$SERIAL)"`,
		`echo "bake-state: warning: $msg" >/dev/console`,
	} {
		if !strings.Contains(script, frag) {
			t.Fatalf("firstboot/state.sh no longer has %q: the check's words must follow it", frag)
		}
	}
	for v, line := range map[*StateVolumeSpec]string{
		{Label: "bake-state"}:                stateMissingLabel,
		{Label: "bake-state", Serial: "st0"}: stateMissingSerial,
	} {
		if w := stateWarning(v); !strings.HasPrefix(line, w+".") {
			t.Errorf("stateWarning %q is not the start of bake-state's line %q", w, line)
		}
	}
}

func TestStateNoVolumeScriptParses(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sh, "-n", "-c", stateNoVolumeScript()).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s\n%s", err, out, stateNoVolumeScript())
	}
}
