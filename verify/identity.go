package verify

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/cloudimg"
)

// ident is what makes an instance itself.
type ident struct {
	MachineID string
	BootID    string
	HostKeys  []string // fingerprints of /etc/ssh/ssh_host_*_key.pub
	Presented string   // fingerprint of the host key sshd presented
	Token     string   // gateway token ("" without a gateway)
}

var machineIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// identTokenMark precedes the gateway's configuration in collectIdentity's
// output.
const identTokenMark = "@@bake-verify-gateway-config@@"

func (r *runner) collectIdentity(ctx context.Context, in *instance) (ident, string, error) {
	var id ident
	// One command: the gateway's token is read with the rest (it was a
	// second sudo round trip).
	script := `echo "machine-id $(cat /etc/machine-id)"; echo "boot-id $(cat /proc/sys/kernel/random/boot_id)"
for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf "$f"; done`
	if r.o.Spec.Gateway != nil {
		script += "\necho " + identTokenMark + "\ncat " + shellQuote(r.o.Spec.Gateway.ConfigPath)
	}
	res, err := in.sudo(ctx, script)
	if err != nil {
		return id, "", err
	}
	head, config, _ := strings.Cut(res.Stdout, identTokenMark+"\n")
	for _, l := range strings.Split(head, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && f[0] == "machine-id":
			id.MachineID = f[1]
		case len(f) == 2 && f[0] == "boot-id":
			id.BootID = f[1]
		case len(f) >= 2 && strings.HasPrefix(f[1], "SHA256:"):
			id.HostKeys = append(id.HostKeys, f[1]+" "+f[len(f)-1])
		}
	}
	sort.Strings(id.HostKeys)
	if in.hostKey != nil {
		id.Presented = ssh.FingerprintSHA256(in.hostKey)
	}
	if m := tokenRE.FindStringSubmatch(config); r.o.Spec.Gateway != nil && m != nil {
		id.Token = m[1]
	}
	ev := fmt.Sprintf("%s: machine-id %s, host keys %s, gateway token %s", in.name(), orDash(id.MachineID), orDash(strings.Join(id.HostKeys, ", ")), redactOrNone(id.Token, r.o.Spec.Gateway != nil))
	return id, ev, nil
}

func redactOrNone(t string, want bool) string {
	if !want {
		return "(no gateway)"
	}
	if t == "" {
		return "NONE"
	}
	return redact(t)
}

// identity records identity.unique (the instances differ) and
// identity.reboot (the last instance keeps its identity over a reboot).
// It reports whether the last instance rebooted and has a session again.
func (r *runner) identity(ctx context.Context, fw string, insts []*instance) bool {
	t0 := time.Now()
	ids := make([]ident, len(insts))
	var ev evidence
	var problems []string
	// Every instance at once (each VM has its own vCPUs), judged in order.
	type collected struct {
		id   ident
		line string
		err  error
	}
	got := make([]collected, len(insts))
	var wg sync.WaitGroup
	for i, in := range insts {
		if in.sess == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i].id, got[i].line, got[i].err = r.collectIdentity(ctx, in)
		}()
	}
	wg.Wait()
	for i, in := range insts {
		if in.sess == nil {
			problems = append(problems, fmt.Sprintf("instance %s: no SSH login (%s)", in.name(), firstLine(in.loginEv)))
			continue
		}
		id, line, err := got[i].id, got[i].line, got[i].err
		if err != nil {
			problems = append(problems, fmt.Sprintf("instance %s: %v", in.name(), err))
			continue
		}
		ids[i] = id
		ev.add("%s", line)
		if !machineIDRE.MatchString(id.MachineID) {
			problems = append(problems, fmt.Sprintf("instance %s: machine-id %q is not 32 hex digits", in.name(), id.MachineID))
		}
		if len(id.HostKeys) == 0 {
			problems = append(problems, fmt.Sprintf("instance %s: no SSH host keys", in.name()))
		}
		if r.o.Spec.Gateway != nil && !ValidToken(id.Token) {
			problems = append(problems, fmt.Sprintf("instance %s: gateway token %s is not 64 characters of [A-Za-z0-9]", in.name(), redactOrNone(id.Token, true)))
		}
		if r.o.Spec.Gateway != nil && in.token != "" && id.Token != in.token {
			// The seed's token must arrive through every seed path.
			problems = append(problems, fmt.Sprintf("instance %s: gateway token %s is not the one its seed (via %s) gave", in.name(), redactOrNone(id.Token, true), in.via))
		}
	}
	if ctx.Err() != nil {
		return false
	}
	for i := range ids {
		for j := i + 1; j < len(ids); j++ {
			a, b := ids[i], ids[j]
			if a.MachineID == "" || b.MachineID == "" {
				continue
			}
			pair := insts[i].name() + " and " + insts[j].name()
			if a.MachineID == b.MachineID {
				problems = append(problems, pair+" share machine-id "+a.MachineID)
			}
			for _, k := range a.HostKeys {
				for _, l := range b.HostKeys {
					if k == l {
						problems = append(problems, pair+" share the SSH host key "+k)
					}
				}
			}
			if a.Presented != "" && a.Presented == b.Presented {
				problems = append(problems, pair+" present the same SSH host key "+a.Presented)
			}
			if r.o.Spec.Gateway != nil && a.Token != "" && a.Token == b.Token {
				problems = append(problems, pair+" share the gateway token")
			}
		}
	}
	for _, in := range insts {
		if len(insts) < 2 || r.o.Spec.Gateway == nil {
			break
		}
		if in.token != "" {
			ev.add("instance %s (seed via %s) was given a token: its gateway has it", in.name(), in.via)
		} else {
			ev.add("instance %s (seed via %s) generated its token at first boot", in.name(), in.via)
		}
	}
	st, text := verdict(problems, ev, fmt.Sprintf("%d instances differ in machine-id, SSH host keys%s", len(insts), map[bool]string{true: " and gateway token", false: ""}[r.o.Spec.Gateway != nil]))
	if len(insts) < 2 {
		st, text = Skip, "not run: needs --instances 2 or more"
	}
	r.record(fw, checkIdentityUnique.ID, st, text, time.Since(t0))

	last := insts[len(insts)-1]
	if len(insts) < 2 {
		r.record(fw, checkIdentityReboot.ID, Skip, "not run: needs --instances 2 or more", 0)
		return false
	}
	if last.sess == nil {
		r.record(fw, checkIdentityReboot.ID, Skip, fmt.Sprintf("not run: no SSH session on instance %s", last.name()), 0)
		return false
	}
	// The tailnet instance (the last) joined at first boot: its checks
	// before the reboot, the same node after it.
	var tsBefore tsSelf
	if last.tailnet {
		tsBefore = r.tailnetChecks(ctx, fw, last)
		if ctx.Err() != nil {
			return false
		}
	}
	t1 := time.Now()
	st, text = r.reboot(ctx, last, ids[len(ids)-1])
	if ctx.Err() != nil {
		return false
	}
	r.record(fw, checkIdentityReboot.ID, st, text, time.Since(t1))
	if last.tailnet {
		t2 := time.Now()
		if last.sess == nil {
			r.record(fw, checkTailscaleReboot.ID, Fail, "no SSH session after the reboot (see "+checkIdentityReboot.ID+")", 0)
		} else {
			st, text = r.tailnetReboot(ctx, last, tsBefore)
			if ctx.Err() != nil {
				return false
			}
			r.record(fw, checkTailscaleReboot.ID, st, r.redactKey(text), time.Since(t2))
		}
	}
	return last.sess != nil
}

// reboot reboots in and compares its identity before and after.
func (r *runner) reboot(ctx context.Context, in *instance, before ident) (Status, string) {
	var ev evidence
	ev.add("before: machine-id %s, host keys %s, presented %s, token %s, boot %s", before.MachineID, strings.Join(before.HostKeys, ", "), before.Presented, redactOrNone(before.Token, r.o.Spec.Gateway != nil), before.BootID)
	mark, _ := os.Stat(in.serial)
	in.runT(ctx, "sudo -n systemctl reboot", nil, 20*time.Second)
	in.sess.Close()
	in.sess = nil
	t0 := time.Now()
	deadline := t0.Add(sshWaitMax)
	var lastErr error
	for {
		if ctx.Err() != nil {
			return Skip, "interrupted"
		}
		select {
		case <-in.vm.Exited():
			return Fail, fmt.Sprintf("QEMU exited during the reboot (%v)\n%s", in.vm.Wait(), in.serialTail(40))
		default:
		}
		if time.Now().After(deadline) {
			return Fail, fmt.Sprintf("no SSH login within %s of the reboot: %v\n%s\n%s", sshWaitMax, lastErr, ev, in.serialTail(40))
		}
		s, err := sshLogin(ctx, in.dialSSH, in.sshTarget(), r.o.Spec.AdminUser, 20*time.Second, ssh.PublicKeys(in.key.Signer))
		if err == nil {
			res, err := s.Run(ctx, "cat /proc/sys/kernel/random/boot_id", nil, 30*time.Second)
			if err == nil && strings.TrimSpace(res.Stdout) != before.BootID && strings.TrimSpace(res.Stdout) != "" {
				in.sess, in.hostKey = s, s.hostKey
				break
			}
			s.Close() // still the old boot, shutting down
			lastErr = fmt.Errorf("still the first boot")
		} else {
			lastErr = err
		}
		sleepCtx(ctx, 3*time.Second)
	}
	ev.add("rebooted: logged in again after %s", time.Since(t0).Round(time.Second))
	if mark != nil {
		ev.add("(serial console of the second boot from byte %d of serial-%s.log)", mark.Size(), in.name())
	}
	after, line, err := r.collectIdentity(ctx, in)
	if err != nil {
		return Fail, err.Error()
	}
	ev.add("after: %s, boot %s", line, after.BootID)
	var problems []string
	if after.MachineID != before.MachineID {
		problems = append(problems, fmt.Sprintf("machine-id changed: %s -> %s", before.MachineID, after.MachineID))
	}
	if strings.Join(after.HostKeys, ",") != strings.Join(before.HostKeys, ",") {
		problems = append(problems, "SSH host keys changed")
	}
	if before.Presented != "" && after.Presented != before.Presented {
		problems = append(problems, fmt.Sprintf("sshd presents another host key: %s -> %s", before.Presented, after.Presented))
	}
	if r.o.Spec.Gateway != nil && after.Token != before.Token {
		problems = append(problems, "the gateway token changed")
	}
	// The seed is still attached (the same NoCloud volume or SMBIOS
	// strings), so an unchanged token alone does not show that first
	// boot applied it once: its journal of this boot must say so.
	fb, err := in.sudo(ctx, firstbootAgainScript)
	if err != nil {
		return Fail, fmt.Sprintf("cannot read bake-firstboot's journal after the reboot: %v\n%s", err, ev)
	}
	if problem, line := judgeFirstbootAgain(fb.Stdout); problem != "" {
		problems = append(problems, problem)
		ev.add("%s", line)
	} else if line != "" {
		ev.add("%s", line)
	}
	return verdict(problems, ev, fmt.Sprintf("%s kept its machine-id, SSH host keys%s over a reboot", in.name(), map[bool]string{true: " and gateway token", false: ""}[r.o.Spec.Gateway != nil]))
}

// secrets scans the image's raw disk and records secrets.disk.
func (r *runner) secrets(ctx context.Context) {
	t0 := time.Now()
	raw := r.raw
	if r.rawErr != nil {
		r.record("", checkSecretsDisk.ID, Skip, "not run: "+r.rawErr.Error(), time.Since(t0))
		return
	}
	s := NewScanner(needleRules(r.o.Spec.Needles)...)
	r.logf("scanning the raw disk for secrets")
	if err := s.ScanFile(ctx, raw); err != nil {
		if ctx.Err() != nil {
			return
		}
		r.record("", checkSecretsDisk.ID, Skip, "not run: "+err.Error(), time.Since(t0))
		return
	}
	s.locate(ctx, raw)
	status, ev := s.verdict()
	r.record("", checkSecretsDisk.ID, status, ev, time.Since(t0))
}

// toRaw writes the virtual disk of the image at path to dst as a sparse raw
// file, with the reader the build uses for base images (cloudimg.ToRaw:
// go-qcow2reader, no qemu-img): it refuses what the build refuses in a
// qcow2 (backing files, encryption, tables out of bounds, compression
// bombs), which verify then reports as a scan that could not run.
func toRaw(ctx context.Context, path, dst string) error {
	img, err := cloudimg.Open(ctx, path)
	if err != nil {
		return err
	}
	defer img.Close()
	return cloudimg.ToRaw(ctx, img, dst)
}

// The identity checks: with one instance they are skipped by request.
var (
	checkIdentityUnique = Check{ID: "identity.unique", Scope: ScopeFirmware, Needs: "--instances 2 or more",
		claim: func(Spec, *GatewaySpec) string {
			return "instances of one image differ in gateway token, SSH host keys and machine-id; an instance whose seed gave a token (any --seed-via path) has that token"
		},
		planned: twoInstances, byRequest: true}
	checkIdentityReboot = Check{ID: "identity.reboot", Scope: ScopeFirmware, Needs: "--instances 2 or more",
		claim: func(Spec, *GatewaySpec) string {
			return "a rebooted instance keeps its gateway token, SSH host keys and machine-id, and bake's first boot, its seed still attached, does nothing again"
		},
		planned: twoInstances, byRequest: true}
)

func twoInstances(_ Spec, instances int) bool { return instances >= 2 }

// firstbootAgainScript prints whether the image has bake's first-boot
// unit and that unit's journal of the current boot.
const firstbootAgainScript = `if systemctl cat bake-firstboot.service >/dev/null 2>&1; then echo "unit: yes"; journalctl -b -o cat --no-pager -u bake-firstboot.service | tail -n 40; else echo "unit: no"; fi`

// judgeFirstbootAgain judges firstbootAgainScript's output after a
// reboot: an image with bake's first boot must log that the instance was
// already set up ("nothing to do") and nothing it does on a first boot.
// It returns a problem ("" when none) and an evidence line ("" when the
// image has no such unit).
func judgeFirstbootAgain(out string) (problem, line string) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || strings.TrimSpace(lines[0]) != "unit: yes" {
		if len(lines) > 0 && strings.TrimSpace(lines[0]) == "unit: no" {
			return "", ""
		}
		return "cannot tell whether first boot ran again: " + orDash(strings.TrimSpace(out)), ""
	}
	var said string
	for _, l := range lines[1:] {
		if strings.Contains(l, "nothing to do") {
			said = strings.TrimSpace(l)
		}
	}
	for _, l := range lines[1:] {
		if strings.Contains(l, "first boot of instance") || strings.Contains(l, "done for instance") {
			return "first boot acted again after the reboot: " + strings.TrimSpace(l), "bake-firstboot after the reboot: " + strings.TrimSpace(l)
		}
	}
	if said == "" {
		return "bake-firstboot did not log \"nothing to do\" after the reboot (" + fmt.Sprintf("%d journal lines", len(lines)-1) + ")",
			"bake-firstboot after the reboot: " + orDash(strings.Join(lines[1:], " | "))
	}
	return "", "bake-firstboot after the reboot: " + said
}
