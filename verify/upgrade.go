package verify

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/upgrade"
	"github.com/bakeimg/bake/vm"
)

// An upgrade run (bake verify NEW --upgrade-from OLD, docs/state.md) proves
// the upgrade by replacing the image on one state volume: OLD boots with a
// seed on a new blank volume and the instance's identities are recorded;
// NEW boots on the volume with no seed and keeps them, runs its own kernel
// and containers and leaves no secret on its root disk; OLD boots again
// on the volume (the rollback) with the same identities.
//
// With a state partition (state: {partition: ...} in both images) the
// instance is one disk, made from OLD and enlarged: OLD's first boot makes
// the partition; between the boots the disk is rewritten with NEW's, then
// OLD's, system partitions by bake upgrade's code (package upgrade), the
// state partition kept byte for byte.

// The upgrade run's own checks (upgrade: planned in an upgrade run only).
var (
	checkUpgradeOld = Check{ID: "upgrade.old-boot", Scope: ScopeFirmware, Needs: "--upgrade-from, a state: section in both images (the same volume, or a partition with the same label)",
		claim: func(Spec, *GatewaySpec) string {
			return "the old image, booted with a seed on a new blank state volume (with state: {partition: ...}: from a copy of its disk enlarged for the partition, which its first boot makes), uses it (state status ok; a volume found by serial is formatted) and the instance's identities can be recorded: SSH host keys, machine ID, gateway token, tailscaled's machine key, a file in the gateway's state directory, a Docker volume; openclaw.json is the image's template with the seed's token in place"
		}, upgrade: true}
	checkUpgradeIdentity = Check{ID: "upgrade.identity", Scope: ScopeFirmware, Needs: "--upgrade-from",
		claim: func(Spec, *GatewaySpec) string {
			return "the new image, booted on the old instance's state volume with no seed, keeps its SSH host keys (the presented one too), machine ID, gateway token, tailscaled's machine key, the gateway's state file and the Docker volume; the admin logs in with the key the old boot's seed gave; the volume is neither formatted nor re-copied and first boot does not set the instance up again"
		}, upgrade: true}
	checkUpgradeNewImage = Check{ID: "upgrade.new-image", Scope: ScopeFirmware, Needs: "--upgrade-from",
		claim: func(Spec, *GatewaySpec) string {
			return "the new image's own change is what runs: the state volume's record names the new image (its name and recipe digest), the running kernel is one of the new image's and every container runs the image ID the new image records (/usr/share/bake/containers.json), and openclaw.json is the new image's template with the instance's token in place, byte for byte (the image owns the gateway's settings, the instance its token)"
		}, upgrade: true}
	checkUpgradeRootSecrets = Check{ID: "upgrade.root-disk-secrets", Scope: ScopeFirmware, Needs: "--upgrade-from; free space in $TMPDIR (the new image's disk is booted from a raw copy)",
		claim: func(Spec, *GatewaySpec) string {
			return "after the upgraded instance has run and powered off, its root disk (every data block, free ones too, and the compressed streams in them; with a state partition, the disk but that partition) holds no gateway token, no SSH host private key, no form of tailscaled's machine key and no private key or secret of any kind verify's disk scan knows"
		}, upgrade: true}
	checkUpgradeRollback = Check{ID: "upgrade.rollback", Scope: ScopeFirmware, Needs: "--upgrade-from",
		claim: func(Spec, *GatewaySpec) string {
			return "the old image, booted again on the volume the new one used (no seed), runs with the same identities and state files, its own kernel and containers, the volume's record naming it again, openclaw.json its own template with the instance's token again, the system running and the gateway answering"
		}, upgrade: true}
	checkUpgradeTailnet = Check{ID: "upgrade.tailnet", Scope: ScopeFirmware, Needs: "--upgrade-from with --tailnet-login-server and --tailnet-authkey-file, root",
		claim: func(Spec, *GatewaySpec) string {
			return "the old image's first boot joins the tailnet with the seed's auth key (its key file gone afterwards); the new image on the volume (no seed), and the old one again on it, are the same node (node ID and node key, tailscaled's machine key), running and online on the same control server, with no new login: the join unit's condition (the key file) is false, no auth key is anywhere on the new image's root disk"
		}, upgrade: true, tailnet: true}
)

// upgradeInstanceChecks are the checks of an instance run on the upgraded
// instance (the new image on the old volume), as far as the spec plans
// them. The checks of the image's network exposure (network.*,
// isolation.*) and of several instances are a plain bake verify's.
var upgradeInstanceChecks = []*Check{
	&checkSSHKeyLogin, &checkSystemRunning, &checkSSHEffective, &checkSSHPassword, &checkSSHRoot,
	&checkFirewallRules, &checkTailscaleDaemon,
	&checkGatewayConfig, &checkGatewayProcess, &checkGatewayListen, &checkGatewayAuth,
}

// PlanUpgrade lists the checks of an upgrade run for spec (the new
// image's claims), in the order they run.
func PlanUpgrade(s Spec) []string { return PlanUpgradeTailnet(s, false) }

// PlanUpgradeTailnet is PlanUpgrade of a run with --tailnet-* (tailnet
// true: upgrade.tailnet is planned) or without.
func PlanUpgradeTailnet(s Spec, tailnet bool) []string {
	planned := Plan(s, 1)
	var ids []string
	for _, k := range catalog {
		switch {
		case k.upgrade && k.tailnet && !tailnet:
		case k.upgrade:
			ids = append(ids, k.ID)
		case slices.Contains(upgradeInstanceChecks, k) && slices.Contains(planned, k.ID):
			ids = append(ids, k.ID)
		}
	}
	return ids
}

// plan is the run's plan of one firmware.
func (r *runner) plan() []string {
	if r.o.UpgradeFrom != "" {
		return PlanUpgradeTailnet(r.o.Spec, r.o.Tailnet != nil)
	}
	return PlanTailnet(r.o.Spec, r.o.Instances, r.o.Tailnet != nil)
}

// imageFacts is what an upgrade run reads from each image file before it
// boots: its state section (/etc/bake/state.conf), its containers' record
// and its kernels.
type imageFacts struct {
	state      map[string]string // LABEL, SERIAL, PATHS, FORMAT, IMAGE_NAME, IMAGE_VERSION, IMAGE_DIGEST
	containers []appliance.ContainerRecord
	kernels    []string
	// gatewayTemplate is the image's openclaw.json template (no secret
	// in it), nil when the image has none.
	gatewayTemplate []byte
}

func (f imageFacts) String() string {
	var ids []string
	for _, c := range f.containers {
		ids = append(ids, c.Name+" "+c.ImageID)
	}
	return fmt.Sprintf("%s (%s, state format %s, volume serial %q label %q), kernels %s, containers: %s",
		f.state["IMAGE_NAME"], f.state["IMAGE_DIGEST"], f.state["FORMAT"], f.state["SERIAL"], f.state["LABEL"],
		orDash(strings.Join(f.kernels, " ")), orDash(strings.Join(ids, ", ")))
}

// readImageFacts reads f from the raw disk raw of an image (path: the
// image file, for its kernels).
func readImageFacts(ctx context.Context, raw string) (imageFacts, error) {
	var f imageFacts
	b, err := cloudimg.ReadRootFile(ctx, raw, firstboot.StateConfigPath, 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return f, fmt.Errorf("it has no %s: it was built without a state: section (docs/state.md), so there is no state volume to upgrade on", firstboot.StateConfigPath)
	}
	if err != nil {
		return f, fmt.Errorf("reading its %s: %w", firstboot.StateConfigPath, err)
	}
	if f.state, err = ParseStateConfig(b); err != nil {
		return f, err
	}
	b, err = cloudimg.ReadRootFile(ctx, raw, appliance.ContainersRecord, 1<<20)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return f, fmt.Errorf("reading its %s: %w", appliance.ContainersRecord, err)
	default:
		if err := json.Unmarshal(b, &f.containers); err != nil {
			return f, fmt.Errorf("its %s: %w", appliance.ContainersRecord, err)
		}
	}
	b, err = cloudimg.ReadRootFile(ctx, raw, appliance.GatewayConfigTemplate, 1<<20)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return f, fmt.Errorf("reading its %s: %w", appliance.GatewayConfigTemplate, err)
	default:
		f.gatewayTemplate = b
	}
	l, err := cloudimg.Inspect(ctx, raw)
	if err != nil {
		return f, fmt.Errorf("reading its layout: %w", err)
	}
	f.kernels = l.Kernels
	if len(f.kernels) == 0 {
		return f, errors.New("it has no kernel in /boot")
	}
	return f, nil
}

// partitionMode: the image keeps its state on a partition of its own disk
// (state: {partition: ...}), not on a volume.
func partitionMode(state map[string]string) bool { return state["PARTITION_SIZE"] != "" }

// stateWhere says where an image keeps its state, for a refusal.
func stateWhere(state map[string]string) string {
	if partitionMode(state) {
		return fmt.Sprintf("on a partition of its disk (state: {partition: ...}, label %q)", state["LABEL"])
	}
	return fmt.Sprintf("on a state volume (state: {volume: ...}, serial %q label %q)", state["SERIAL"], state["LABEL"])
}

// sameState says why an instance of the old image (state old) cannot be
// upgraded to the new one (state new) by an upgrade run: they keep their
// state in different modes, or on different volumes or partitions. ""
// when they share it.
func sameState(old, new map[string]string) string {
	switch {
	case partitionMode(old) != partitionMode(new):
		return fmt.Sprintf("the old image keeps its state %s, the new one %s: the new image would not find the old instance's state (an upgrade keeps the mode: a volume with a new image, or a partition with `bake upgrade DISK NEW_IMAGE`)", stateWhere(old), stateWhere(new))
	case partitionMode(old) && old["LABEL"] != new["LABEL"]:
		return fmt.Sprintf("the images name different state partitions: the old one %q, the new one %q: the new image would not find the old one's partition (and `bake upgrade` refuses it)", old["LABEL"], new["LABEL"])
	case !partitionMode(old) && (old["SERIAL"] != new["SERIAL"] || old["LABEL"] != new["LABEL"]):
		return fmt.Sprintf("the images look for different state volumes: the old one serial %q label %q, the new one serial %q label %q: the new image would not find the old one's volume",
			old["SERIAL"], old["LABEL"], new["SERIAL"], new["LABEL"])
	}
	return ""
}

// partitionRefusal says why a partition run cannot run with o (a usage
// error: exit 2); "" when it can.
func partitionRefusal(o Options, state map[string]string) string {
	if o.StateVolume != "" {
		return fmt.Sprintf("--state-volume %s: the images keep their state on a partition of the instance's disk (state: {partition: ...}, label %q), not on a volume: there is no volume to make; run without --state-volume", o.StateVolume, state["LABEL"])
	}
	return ""
}

// partitionDiskSize is the size of the instance's disk in a partition
// run: the old image's virtual size (rounded up to MiB), room for the
// state partition (its first boot makes it in the free space at the end)
// and 256 MiB more, into which root grows up to the partition.
func partitionDiskSize(imageSize int64, state map[string]string) (int64, error) {
	n, err := strconv.ParseInt(state["PARTITION_SIZE"], 10, 64)
	if err != nil || n <= 0 || n%(1<<20) != 0 {
		return 0, fmt.Errorf("its state.conf has PARTITION_SIZE %q: not a whole number of MiB", state["PARTITION_SIZE"])
	}
	return (imageSize+(1<<20)-1)/(1<<20)*(1<<20) + n + 256<<20, nil
}

// ParseStateConfig parses /etc/bake/state.conf (firstboot.ParseStateConfig).
func ParseStateConfig(b []byte) (map[string]string, error) { return firstboot.ParseStateConfig(b) }

// TailscaleMachineKey reads tailscaled's state file (a JSON object of
// base64 values): the public part of its machine key ("privkey:" and 64
// hex digits, a Curve25519 key), hex, and the forms of the private key a
// disk could hold (as stored, and base64 as the file holds it).
func TailscaleMachineKey(state []byte) (pub string, priv []string, err error) {
	var st map[string][]byte
	if err := json.Unmarshal(state, &st); err != nil {
		return "", nil, fmt.Errorf("tailscaled.state: %v (%d bytes)", err, len(state))
	}
	mk, ok := st["_machinekey"]
	if !ok {
		return "", nil, errors.New("tailscaled.state has no _machinekey")
	}
	h, ok := strings.CutPrefix(strings.TrimSpace(string(mk)), "privkey:")
	if !ok {
		return "", nil, fmt.Errorf("tailscaled's machine key is not in the form privkey:HEX (%d bytes)", len(mk))
	}
	k, err := hex.DecodeString(h)
	if err != nil || len(k) != 32 {
		return "", nil, fmt.Errorf("tailscaled's machine key: %d bytes, %v", len(k), err)
	}
	p, err := curve25519.X25519(k, curve25519.Basepoint)
	if err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(p), []string{string(mk), base64.StdEncoding.EncodeToString(mk)}, nil
}

// hostKeyLines are the lines of key material of OpenSSH private key files
// (the base64 lines, 40 characters or more), for the root disk scan.
func hostKeyLines(files string) []string {
	var out []string
	for _, l := range strings.Split(files, "\n") {
		if l = strings.TrimSpace(l); len(l) >= 40 && !strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	return out
}

// upgradeState is what one boot of an upgrade run recorded.
type upgradeState struct {
	id        ident
	tailscale string // public part of tailscaled's machine key, hex
	tsPriv    []string
	marker    string // the file in the gateway's state directory
	config    []byte // openclaw.json (the token in it: never shown)
	volumes   string // docker volume ls -q
	kernel    string
	running   map[string]string // container name: image ID it runs
	record    string            // the volume's bake-state/image and format
	journal   string            // bake-state's journal of this boot
	firstboot string            // first boot's journal of this boot
	status    string            // /run/bake/state.status
}

// markerName is the file an upgrade run writes in the gateway's state
// directory (the host side of its mount; a state path by default).
const markerName = "bake-verify-upgrade"

func (r *runner) stateDir() string {
	if g := r.o.Spec.Gateway; g != nil && g.ConfigPath != "" {
		return path.Dir(g.ConfigPath)
	}
	return ""
}

// observe records an instance's state (the identities, the state files,
// what runs) over its session.
func (r *runner) observe(ctx context.Context, in *instance, facts imageFacts) (upgradeState, []string, evidence) {
	var st upgradeState
	var problems []string
	var ev evidence
	id, idEv, err := r.collectIdentity(ctx, in)
	if err != nil {
		return st, []string{fmt.Sprintf("%s: reading its identity: %v", in.name(), err)}, ev
	}
	st.id = id
	ev.add("%s; presented host key %s", idEv, orDash(id.Presented))
	if len(id.HostKeys) == 0 || !machineIDRE.MatchString(id.MachineID) {
		problems = append(problems, fmt.Sprintf("%s: no SSH host key or no valid machine ID", in.name()))
	}
	if r.o.Spec.Gateway != nil && id.Token == "" {
		problems = append(problems, fmt.Sprintf("%s: no gateway token in %s", in.name(), r.o.Spec.Gateway.ConfigPath))
	}
	res, err := in.sudo(ctx, `echo "status $(cat `+firstboot.StateStatusFile+` 2>&1)"; echo "kernel $(uname -r)"
echo "--- record"; cat `+firstboot.StateMount+`/bake-state/image `+firstboot.StateMount+`/bake-state/format 2>&1
echo "--- state"; journalctl -m -u bake-state --no-pager -o cat 2>&1
echo "--- firstboot"; journalctl -b -u bake-firstboot --no-pager -o cat 2>&1
echo "--- binds"; mountpoint -q `+firstboot.StateMount+` || echo "NOT MOUNTED `+firstboot.StateMount+`"
for p in `+facts.state["PATHS"]+`; do [ "$p" = /etc/machine-id ] && continue; mountpoint -q "$p" || echo "NOT MOUNTED $p"; done`)
	if err != nil {
		return st, append(problems, fmt.Sprintf("%s: %v", in.name(), err)), ev
	}
	parts := strings.Split(res.Stdout, "\n--- ")
	for _, l := range strings.Split(parts[0], "\n") {
		if v, ok := strings.CutPrefix(l, "status "); ok {
			st.status = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "kernel "); ok {
			st.kernel = strings.TrimSpace(v)
		}
	}
	for _, p := range parts[1:] {
		name, body, _ := strings.Cut(p, "\n")
		switch name {
		case "record":
			st.record = body
		case "state":
			st.journal = body
		case "firstboot":
			st.firstboot = body
		case "binds":
			for _, l := range strings.Split(body, "\n") {
				if m, ok := strings.CutPrefix(l, "NOT MOUNTED "); ok {
					problems = append(problems, fmt.Sprintf("%s: %s is not bound from the state volume", in.name(), m))
				}
			}
		}
	}
	ev.add("%s: state status %s, kernel %s, the volume's record:\n%s", in.name(), orDash(st.status), orDash(st.kernel), strings.TrimSpace(st.record))
	if st.status != "ok" {
		problems = append(problems, fmt.Sprintf("%s: state status %q, want ok; bake-state's journal:\n%s", in.name(), st.status, lastLines(st.journal, 20)))
	}
	if r.o.Spec.Tailscale {
		res, err := in.sudo(ctx, "for i in $(seq 45); do grep -q _machinekey /var/lib/tailscale/tailscaled.state 2>/dev/null && break; sleep 2; done; cat /var/lib/tailscale/tailscaled.state")
		if err != nil || !res.OK() {
			problems = append(problems, fmt.Sprintf("%s: tailscaled wrote no state file with a machine key in 90 s: %v %s", in.name(), err, firstLine(res.Stderr)))
		} else if pub, priv, err := TailscaleMachineKey([]byte(res.Stdout)); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", in.name(), err))
		} else {
			st.tailscale, st.tsPriv = pub, priv
			ev.add("%s: tailscaled's machine key, public part %s", in.name(), pub)
		}
	}
	if dir := r.stateDir(); dir != "" {
		res, err := in.sudo(ctx, "cat "+shellQuote(dir+"/"+markerName)+" 2>/dev/null || true")
		if err == nil {
			st.marker = strings.TrimSpace(res.Stdout)
		}
		// openclaw.json byte for byte (base64: no byte lost on the way).
		res, err = in.sudo(ctx, "base64 -w0 "+shellQuote(r.o.Spec.Gateway.ConfigPath))
		if err == nil && res.OK() {
			st.config, _ = base64.StdEncoding.DecodeString(strings.TrimSpace(res.Stdout))
		}
	}
	if r.o.Spec.Docker {
		res, err := in.sudo(ctx, `docker volume ls -q; echo "--- running"; for c in $(docker ps -q --no-trunc); do docker inspect -f '{{.Name}} {{.Image}}' "$c"; done`)
		if err != nil || !res.OK() {
			problems = append(problems, fmt.Sprintf("%s: Docker's volumes and containers: %v %s", in.name(), err, firstLine(res.Stderr)))
		} else {
			vols, running, _ := strings.Cut(res.Stdout, "--- running\n")
			st.volumes = vols
			st.running = map[string]string{}
			for _, l := range strings.Split(running, "\n") {
				if f := strings.Fields(l); len(f) == 2 {
					st.running[strings.TrimPrefix(f[0], "/")] = f[1]
				}
			}
			ev.add("%s: containers running: %v", in.name(), st.running)
		}
	}
	return st, problems, ev
}

// sameInstance compares what the later boot kept of the first.
func sameInstance(a, b upgradeState, who string) []string {
	var p []string
	if strings.Join(a.id.HostKeys, " ") != strings.Join(b.id.HostKeys, " ") {
		p = append(p, fmt.Sprintf("%s: the SSH host keys changed: %v, were %v", who, b.id.HostKeys, a.id.HostKeys))
	}
	if a.id.Presented != b.id.Presented {
		p = append(p, fmt.Sprintf("%s: sshd presents host key %s, the old boot's was %s", who, b.id.Presented, a.id.Presented))
	}
	if a.id.MachineID != b.id.MachineID {
		p = append(p, fmt.Sprintf("%s: the machine ID changed: %s, was %s", who, b.id.MachineID, a.id.MachineID))
	}
	if a.id.Token != b.id.Token {
		p = append(p, fmt.Sprintf("%s: the gateway token changed: %s, was %s", who, tokenHash(b.id.Token), tokenHash(a.id.Token)))
	}
	if a.tailscale != b.tailscale {
		p = append(p, fmt.Sprintf("%s: tailscaled's machine key changed: %s, was %s", who, orDash(b.tailscale), orDash(a.tailscale)))
	}
	if a.marker != b.marker {
		p = append(p, fmt.Sprintf("%s: the file in the gateway's state directory: %q, the old boot wrote %q", who, b.marker, a.marker))
	}
	for _, v := range strings.Fields(a.volumes) {
		if !slices.Contains(strings.Fields(b.volumes), v) {
			p = append(p, fmt.Sprintf("%s: the Docker volume %s is gone (volumes: %s)", who, v, orDash(strings.Join(strings.Fields(b.volumes), " "))))
		}
	}
	return p
}

// RenderGatewayConfig is openclaw.json as first boot renders it from a
// template (firstboot.sh, render_config): the template without its final
// newlines, its first placeholder replaced by the token, one newline.
func RenderGatewayConfig(tpl []byte, token string) []byte {
	t := strings.TrimRight(string(tpl), "\n")
	return []byte(strings.Replace(t, appliance.TokenPlaceholder, token, 1) + "\n")
}

// imageSettings judges that a boot's openclaw.json is its image's:
// the image's template with the instance's token in place, byte for byte
// (first boot renders it again when an image with another template boots
// on the volume; docs/state.md). The evidence shows the template (the
// image's, no secret in it); a mismatch names the keys that differ, never
// a value (the file holds the token).
func imageSettings(st upgradeState, f imageFacts, who string) ([]string, string) {
	if f.gatewayTemplate == nil {
		return nil, ""
	}
	var compact bytes.Buffer
	tpl := strings.TrimSpace(string(f.gatewayTemplate))
	if err := json.Compact(&compact, []byte(tpl)); err != nil {
		compact.Reset()
		compact.WriteString(tpl)
	}
	sum := sha256.Sum256(f.gatewayTemplate)
	ev := fmt.Sprintf("%s: openclaw.json is its image's template (sha256:%x...) with the instance's token in place: %s", who, sum[:6], compact.String())
	if st.config == nil {
		return []string{fmt.Sprintf("%s: could not read openclaw.json", who)}, ""
	}
	if st.id.Token != "" && string(st.config) == string(RenderGatewayConfig(f.gatewayTemplate, st.id.Token)) {
		return nil, ev
	}
	want := jsonKeys([]byte(strings.Replace(tpl, appliance.TokenPlaceholder, "x", 1)))
	got := jsonKeys(st.config)
	var only, missing []string
	for _, k := range got {
		if !slices.Contains(want, k) {
			only = append(only, k)
		}
	}
	for _, k := range want {
		if !slices.Contains(got, k) {
			missing = append(missing, k)
		}
	}
	return []string{fmt.Sprintf("%s: openclaw.json is not its image's template (sha256:%x...) with the instance's token in place (the image's gateway settings are not applied); keys only in the file: %s; keys of the template not in it: %s; first boot's lines about it:\n%s",
		who, sum[:6], orDash(strings.Join(only, " ")), orDash(strings.Join(missing, " ")), orDash(grepLines(st.firstboot, "openclaw.json")))}, ""
}

// jsonKeys are the key paths of a JSON document's objects (a.b.c), sorted;
// nil when it is not JSON.
func jsonKeys(b []byte) []string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return nil
	}
	var keys []string
	var walk func(string, any)
	walk = func(p string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		for k, x := range m {
			kp := k
			if p != "" {
				kp = p + "." + k
			}
			keys = append(keys, kp)
			walk(kp, x)
		}
	}
	walk("", v)
	slices.Sort(keys)
	return keys
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// tokenHash names a token in evidence without showing it.
func tokenHash(t string) string {
	if t == "" {
		return "NONE"
	}
	s := sha256.Sum256([]byte(t))
	return fmt.Sprintf("sha256:%x...", s[:6])
}

// runsImage judges what the boot runs against the image's facts: its
// kernel is one of the image's, every container it records runs its
// recorded image ID, and the volume's record names the image.
func runsImage(st upgradeState, f imageFacts, who string) []string {
	var p []string
	if !slices.Contains(f.kernels, st.kernel) {
		p = append(p, fmt.Sprintf("%s runs kernel %s, not one of its image's (%s)", who, orDash(st.kernel), strings.Join(f.kernels, " ")))
	}
	for _, c := range f.containers {
		if got := st.running[c.Name]; got != c.ImageID {
			p = append(p, fmt.Sprintf("%s: container %s runs image %s, its image records %s", who, c.Name, orDash(got), c.ImageID))
		}
	}
	rec := map[string]string{}
	for _, l := range strings.Split(st.record, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			rec[k] = v
		}
	}
	if l := strings.Split(strings.TrimSpace(st.record), "\n"); l[len(l)-1] != f.state["FORMAT"] {
		p = append(p, fmt.Sprintf("%s: the volume's state format is %q, its image writes %s", who, l[len(l)-1], f.state["FORMAT"]))
	}
	if rec["NAME"] != f.state["IMAGE_NAME"] || rec["DIGEST"] != f.state["IMAGE_DIGEST"] {
		p = append(p, fmt.Sprintf("%s: the volume's record names %s (%s), not its image %s (%s)", who, orDash(rec["NAME"]), orDash(rec["DIGEST"]), f.state["IMAGE_NAME"], f.state["IMAGE_DIGEST"]))
	}
	return p
}

// reused: bake-state used the volume as it was (no format, no copy).
func reused(st upgradeState, who string) []string {
	if strings.Contains(st.journal, "formatting") || strings.Contains(st.journal, "first use") {
		return []string{fmt.Sprintf("%s formatted or re-copied the volume:\n%s", who, lastLines(st.journal, 20))}
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// seedNone is the seed path of an instance booted with no seed (an
// upgrade run's later boots: the state volume holds the admin's keys).
const seedNone = "none"

// boot is how one VM of a run starts: the defaults of a plain run, or an
// upgrade run's boots (another image, its own disk, the state volume, no
// seed).
type boot struct {
	label    string // the instance's name; "" = FIRMWARE-INDEX
	disk     string // "" = the image
	format   string
	snapshot bool
	drives   []vm.Drive
	noSeed   bool   // boot with no seed (the volume holds the admin's keys)
	token    string // the token the instance has (its seed's, or the volume's)
	// tailnet: the boot has the outbound NIC (and no default route on
	// its link) to reach Options.Tailnet's control server; its seed, if
	// it has one, carries the auth key, login server and CA.
	tailnet bool
}

// upgrade runs the upgrade proof on firmware fw.
func (r *runner) upgrade(ctx context.Context, fw string) {
	ids := r.plan()
	skipRest := func(why string) {
		for _, id := range ids {
			if !r.has(fw, id) {
				r.record(fw, id, Skip, "not run: "+why, 0)
			}
		}
	}
	t0 := time.Now()
	// The facts of both images, before anything boots.
	newFacts, err := func() (imageFacts, error) {
		if r.rawErr != nil {
			return imageFacts{}, r.rawErr
		}
		return readImageFacts(ctx, r.raw)
	}()
	if err != nil {
		r.record(fw, checkUpgradeOld.ID, Fail, "the new image "+r.o.Image+": "+err.Error(), time.Since(t0))
		skipRest("the new image has no state to upgrade (see " + checkUpgradeOld.ID + ")")
		return
	}
	old := r.o.UpgradeFrom
	if _, err := cloudimg.CheckFile(ctx, old); err != nil {
		r.record(fw, checkUpgradeOld.ID, Fail, "the old image "+old+" is refused: "+err.Error(), time.Since(t0))
		skipRest("the old image was refused")
		return
	}
	oldFormat, err := vm.DiskFormat(ctx, old)
	if err != nil {
		r.record(fw, checkUpgradeOld.ID, Fail, "the old image "+old+": "+err.Error(), time.Since(t0))
		skipRest("the old image was refused")
		return
	}
	// The old image as a raw disk: kept in a partition run (the
	// instance's disk is made from it and the rollback rewrites with it).
	oldRaw := old
	if oldFormat != "raw" {
		oldRaw = filepath.Join(r.work, "old.raw")
		defer os.Remove(oldRaw)
	}
	oldFacts, err := func() (imageFacts, error) {
		if oldRaw != old {
			if err := toRaw(ctx, old, oldRaw); err != nil {
				return imageFacts{}, fmt.Errorf("converting it to raw: %w", err)
			}
		}
		return readImageFacts(ctx, oldRaw)
	}()
	if oldRaw != old && (err != nil || !partitionMode(oldFacts.state)) {
		os.Remove(oldRaw)
	}
	if err != nil {
		r.record(fw, checkUpgradeOld.ID, Fail, "the old image "+old+": "+err.Error(), time.Since(t0))
		skipRest("the old image has no state to upgrade from (see " + checkUpgradeOld.ID + ")")
		return
	}
	r.logf("upgrade: old image %s", oldFacts)
	r.logf("upgrade: new image %s", newFacts)
	if why := sameState(oldFacts.state, newFacts.state); why != "" {
		r.record(fw, checkUpgradeOld.ID, Fail, why, time.Since(t0))
		if partitionMode(oldFacts.state) || partitionMode(newFacts.state) {
			skipRest("the images do not share their state")
		} else {
			skipRest("the images do not share a state volume")
		}
		return
	}
	// Where each boot runs (the volume mode: the old image under an
	// overlay and the new one from its own raw copy, on the volume; the
	// partition mode: all three from the instance's disk, rewritten
	// between the boots by bake upgrade's code).
	part := partitionMode(oldFacts.state)
	var drives []vm.Drive
	var newDisk, instDisk string
	bootOld := boot{label: "old", disk: old, format: oldFormat, snapshot: true}
	if part {
		if why := partitionRefusal(r.o, oldFacts.state); why != "" {
			r.hostError("%s", why)
			return
		}
		instDisk, err = r.makeInstanceDisk(ctx, oldRaw, oldFacts.state)
		if err != nil {
			r.hostError("making the instance's disk: %v", err)
			return
		}
		newDisk = instDisk
		bootOld = boot{label: "old", disk: instDisk, format: "raw"}
	} else {
		vol, err := r.makeVolume(ctx, oldFacts.state["SERIAL"], oldFacts.state["LABEL"])
		if err != nil {
			r.hostError("making the state volume: %v", err)
			return
		}
		drives = []vm.Drive{{Path: vol, Format: "raw", Serial: oldFacts.state["SERIAL"]}}
		// The new image boots from its own disk (kept for the scan): the raw
		// copy the run made, or a copy of a raw image (the image itself is
		// never written).
		newDisk = r.raw
		if newDisk == r.o.Image {
			newDisk = filepath.Join(r.work, "new-root.raw")
			if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", r.o.Image, newDisk).CombinedOutput(); err != nil {
				r.hostError("copying the new image for its boot: %v %s", err, out)
				return
			}
		}
	}
	bootOld.drives = drives

	key, err := NewKey("bake-verify-upgrade@" + fw)
	if err != nil {
		r.hostError("generating a key: %v", err)
		return
	}
	if r.o.Keep {
		os.WriteFile(filepath.Join(r.work, "id_ed25519"), key.PrivatePEM, 0o600)
	}

	// Whatever happens (an interruption, the time limit), every VM is
	// stopped and its link removed (both idempotent).
	var booted []*instance
	defer func() {
		for _, in := range booted {
			if in.sess != nil {
				in.sess.Close()
			}
			if in.vm != nil {
				in.stopVM()
			}
			if in.link != nil {
				in.link.Close()
			}
		}
	}()
	bootOne := func(idx int, b boot) (*instance, bool) {
		in, ok := r.upgradeBoot(ctx, fw, idx, key, b)
		booted = append(booted, in)
		return in, ok
	}

	// 1. The old image, a seed, the blank volume.
	tn := r.o.Tailnet != nil
	if tn && !r.netns {
		r.record(fw, checkUpgradeTailnet.ID, Fail, "not run: the tailnet boots need the outside network namespace ("+r.outsideWhy+")", 0)
		tn = false
	}
	// The tailnet part (upgrade.tailnet): what each boot showed of its
	// node, judged at the end; a boot that did not happen leaves it
	// skipped (a failure of the run).
	var tnEv evidence
	var tnProblems []string
	var tnBefore tsSelf
	bootOld.tailnet = tn
	a, ok := bootOne(0, bootOld)
	if !ok {
		r.record(fw, checkUpgradeOld.ID, Fail, "the old image: "+a.loginEv, time.Since(t0))
		skipRest("the old image's boot failed (see " + checkUpgradeOld.ID + ")")
		return
	}
	stA, problems, ev := r.prepareOld(ctx, a, oldFacts)
	if tn {
		// First boot's join, with the seed's key (as tailscale.joined
		// and tailscale.key-gone judge it in a plain run).
		st, e, self := r.tailnetJoined(ctx, a)
		tnEv.add("old: %s", r.redactKey(e))
		if st != Pass {
			tnProblems = append(tnProblems, "the old image did not join the tailnet at first boot: nothing to compare the later boots with")
		}
		st, e = r.tailnetKeyGone(ctx, a)
		tnEv.add("old: %s", r.redactKey(e))
		if st != Pass {
			tnProblems = append(tnProblems, "the old image: the auth key is not gone after the join")
		}
		tnBefore = self
		tnEv.add("old: tailscale status --json after the join: %s", self)
	}
	offOK, offEv := a.powerOff(ctx)
	ev.add("%s", offEv)
	if !offOK {
		problems = append(problems, "the old image did not power off cleanly: "+offEv)
	}
	if ctx.Err() != nil {
		return
	}
	oldSummary := "the old image formatted and used the blank volume; recorded its identities"
	if part {
		oldSummary = "the old image's first boot made the state partition and used it; recorded its identities"
	}
	r.record(fw, checkUpgradeOld.ID, status(len(problems) == 0), verdictText(problems, ev, oldSummary), time.Since(t0))
	if len(problems) > 0 {
		skipRest("the old image's boot did not record the instance (see " + checkUpgradeOld.ID + ")")
		return
	}

	// 2. The new image, no seed, the same volume, its own root disk (a
	// partition run: the instance's disk, its system partitions
	// rewritten with the new image's).
	t1 := time.Now()
	var rewriteEv string
	if part {
		e, err := r.rewrite(ctx, instDisk, r.newRaw(), "the new image")
		if err != nil {
			r.record(fw, checkUpgradeIdentity.ID, Fail, "not run: "+err.Error(), time.Since(t1))
			skipRest("the instance's disk could not be upgraded to the new image (see " + checkUpgradeIdentity.ID + ")")
			return
		}
		rewriteEv = e
	}
	b, ok := bootOne(1, boot{label: "new", disk: newDisk, format: "raw", drives: drives, noSeed: true, token: stA.id.Token, tailnet: tn})
	r.record(fw, checkSSHKeyLogin.ID, status(ok), b.loginEv, 0)
	if !ok {
		r.record(fw, checkUpgradeIdentity.ID, Fail, "the new image: the admin could not log in with the key the old boot's seed put on the volume: "+b.loginEv, time.Since(t1))
		skipRest("the new image's boot failed (see " + checkUpgradeIdentity.ID + ")")
		return
	}
	b.findIPv6(ctx) // for the checks from outside (gateway.listen)
	stB, problems, ev := r.observe(ctx, b, newFacts)
	if rewriteEv != "" {
		ev = append(evidence{rewriteEv}, ev...)
	}
	problems = append(problems, sameInstance(stA, stB, "the new image")...)
	problems = append(problems, reused(stB, "the new image")...)
	if !strings.Contains(stB.firstboot, "nothing to do") {
		problems = append(problems, "the new image's first boot did not say it had nothing to do (the seed applies once per state):\n"+lastLines(stB.firstboot, 10))
	}
	r.record(fw, checkUpgradeIdentity.ID, status(len(problems) == 0), verdictText(problems, ev,
		fmt.Sprintf("the new image kept the instance: host keys, machine ID %s, gateway token %s, tailscaled machine key %s, %s, Docker volumes; first boot had nothing to do", stB.id.MachineID, tokenHash(stB.id.Token), orDash(stB.tailscale), markerWord(stB.marker))), time.Since(t1))
	// The checks of an instance, on the upgraded one.
	c := &checker{r: r, in: b, spec: r.o.Spec, fw: fw}
	for _, id := range ids {
		if k := lookup(id); k != nil && k.run != nil && !k.upgrade {
			if ctx.Err() != nil {
				return
			}
			c.step(ctx, k)
		}
	}
	// The node, after the instance's checks (which run with the link
	// alone, as the old image's did).
	if tn {
		o := r.observeTailnet(ctx, b)
		p, e := JudgeTailnetUpgrade(tnBefore, o, r.o.Tailnet.LoginServer, "new")
		tnProblems = append(tnProblems, p...)
		tnEv = append(tnEv, e...)
	}
	// Observed again once the services had their time (the containers).
	t2 := time.Now()
	stB2, problems, ev := r.observe(ctx, b, newFacts)
	problems = append(problems, runsImage(stB2, newFacts, "the new image")...)
	p, e := imageSettings(stB2, newFacts, "the new image")
	problems = append(problems, p...)
	if e != "" {
		ev.add("%s", e)
		ev.add("the new image's first boot about openclaw.json:\n%s", orDash(grepLines(stB2.firstboot, "openclaw.json")))
	}
	r.record(fw, checkUpgradeNewImage.ID, status(len(problems) == 0), verdictText(problems, ev,
		fmt.Sprintf("the new image runs: kernel %s, containers %v, the volume's record names %s%s", stB2.kernel, stB2.running, newFacts.state["IMAGE_NAME"], settingsWord(newFacts))), time.Since(t2))
	var keyLines []string
	if res, err := b.sudo(ctx, "cat /etc/ssh/ssh_host_*_key"); err == nil && res.OK() {
		keyLines = hostKeyLines(res.Stdout)
	}
	offOK, offEv = b.powerOff(ctx)
	if ctx.Err() != nil {
		return
	}
	t3 := time.Now()
	switch {
	case !offOK:
		r.record(fw, checkUpgradeRootSecrets.ID, Fail, "not run: the new image did not power off cleanly, its root disk is not settled: "+offEv, 0)
	case len(keyLines) < 2:
		r.record(fw, checkUpgradeRootSecrets.ID, Fail, fmt.Sprintf("not run: the host private keys on the volume gave %d lines of key material to look for", len(keyLines)), 0)
	default:
		var authKey string
		if tn {
			authKey = r.o.Tailnet.AuthKey
		}
		var within [][2]int64
		var where string
		var scanErr error
		if part {
			within, where, scanErr = outsidePartition(ctx, newDisk, oldFacts.state["LABEL"])
		}
		if scanErr != nil {
			r.record(fw, checkUpgradeRootSecrets.ID, Fail, "not run: "+scanErr.Error(), 0)
		} else {
			st, ev := r.scanRoot(ctx, newDisk, within, stB.id.Token, keyLines, stA.tsPriv, authKey)
			if where != "" {
				ev = where + "\n" + ev
			}
			r.record(fw, checkUpgradeRootSecrets.ID, st, ev, time.Since(t3))
		}
	}

	// 3. The rollback: the old image again, no seed, the same volume (a
	// partition run: the instance's disk rewritten with the old image's
	// system partitions).
	t4 := time.Now()
	bootRB := boot{label: "rollback", disk: old, format: oldFormat, snapshot: true, drives: drives, noSeed: true, token: stA.id.Token, tailnet: tn}
	rewriteEv = ""
	if part {
		e, err := r.rewrite(ctx, instDisk, oldRaw, "the old image (rollback)")
		if err != nil {
			r.record(fw, checkUpgradeRollback.ID, Fail, "not run: "+err.Error(), time.Since(t4))
			if tn {
				r.record(fw, checkUpgradeTailnet.ID, Fail, r.redactKey(verdictText(append(tnProblems, "the rollback's rewrite failed: not compared"), tnEv, "")), time.Since(t0))
			}
			return
		}
		rewriteEv = e
		bootRB.disk, bootRB.format, bootRB.snapshot = instDisk, "raw", false
	}
	rb, ok := bootOne(2, bootRB)
	if !ok {
		r.record(fw, checkUpgradeRollback.ID, Fail, "the old image again: "+rb.loginEv, time.Since(t4))
		if tn {
			r.record(fw, checkUpgradeTailnet.ID, Fail, r.redactKey(verdictText(append(tnProblems, "the rollback's boot failed: not compared"), tnEv, "")), time.Since(t0))
		}
		return
	}
	cr := &checker{r: r, in: rb, spec: r.o.Spec, fw: fw}
	var rbProblems []string
	var rbEv evidence
	if s, e := cr.systemRunning(ctx); s != Pass {
		rbProblems = append(rbProblems, "the system is not running:\n"+e)
	} else {
		rbEv.add("%s", firstLine(e))
	}
	if r.o.Spec.Gateway != nil {
		if s, e := checkGatewayAuth.run(cr, ctx); s != Pass {
			rbProblems = append(rbProblems, "the gateway:\n"+e)
		} else {
			rbEv.add("gateway: %s", firstLine(e))
		}
	}
	stR, problems, ev := r.observe(ctx, rb, oldFacts)
	problems = append(rbProblems, problems...)
	problems = append(problems, sameInstance(stA, stR, "the rollback")...)
	problems = append(problems, reused(stR, "the rollback")...)
	problems = append(problems, runsImage(stR, oldFacts, "the rollback")...)
	p, e = imageSettings(stR, oldFacts, "the rollback")
	problems = append(problems, p...)
	if e != "" {
		ev.add("%s", e)
	}
	if stR.kernel != stA.kernel {
		problems = append(problems, fmt.Sprintf("the rollback runs kernel %s, the old image ran %s", stR.kernel, stA.kernel))
	}
	ev = append(rbEv, ev...)
	if rewriteEv != "" {
		ev = append(evidence{rewriteEv}, ev...)
	}
	if tn {
		o := r.observeTailnet(ctx, rb)
		p, e := JudgeTailnetUpgrade(tnBefore, o, r.o.Tailnet.LoginServer, "rollback")
		tnProblems = append(tnProblems, p...)
		tnEv = append(tnEv, e...)
	}
	offOK, offEv = rb.powerOff(ctx)
	if !offOK {
		problems = append(problems, "the rollback did not power off cleanly: "+offEv)
	}
	if ctx.Err() != nil {
		return
	}
	r.record(fw, checkUpgradeRollback.ID, status(len(problems) == 0), verdictText(problems, ev,
		fmt.Sprintf("the old image runs again on the volume with the same identities: kernel %s, the volume's record names %s%s", stR.kernel, oldFacts.state["IMAGE_NAME"], settingsWord(oldFacts))), time.Since(t4))
	if tn {
		r.record(fw, checkUpgradeTailnet.ID, status(len(tnProblems) == 0), r.redactKey(verdictText(tnProblems, tnEv,
			fmt.Sprintf("the old image joined %s at first boot; the new image and the rollback are the same node %s (node key %s), running and online, with no new login", r.o.Tailnet.LoginServer, tnBefore.Self.ID, tnBefore.Self.PublicKey))), time.Since(t0))
	}
}

func settingsWord(f imageFacts) string {
	if f.gatewayTemplate == nil {
		return ""
	}
	return ", openclaw.json is its template with the instance's token"
}

func markerWord(m string) string {
	if m == "" {
		return "no gateway state file"
	}
	return "the gateway's state file"
}

// verdictText is verdict's text.
func verdictText(problems []string, ev evidence, summary string) string {
	_, s := verdict(problems, ev, summary)
	return s
}

// prepareOld records the old image's instance: it makes tailscaled write
// its machine key (tailscale up against a closed port on the guest's
// loopback: no control server answers, so no node key exists), writes a
// file in the gateway's state directory and makes a Docker volume, then
// observes it.
func (r *runner) prepareOld(ctx context.Context, a *instance, f imageFacts) (upgradeState, []string, evidence) {
	var problems []string
	var ev evidence
	tag := make([]byte, 8)
	if _, err := rand.Read(tag); err != nil {
		return upgradeState{}, []string{err.Error()}, ev
	}
	mark := "written by the old image " + hex.EncodeToString(tag)
	if r.o.Spec.Gateway != nil {
		// The containers run before they are recorded.
		c := &checker{r: r, in: a, spec: r.o.Spec}
		c.waitGateway(ctx)
		ev = append(ev, c.gwNote...)
	}
	var script strings.Builder
	if r.o.Spec.Tailscale && !a.tailnet {
		// With --tailnet-*, first boot's join makes the keys.
		script.WriteString("timeout 40 tailscale up --login-server=http://127.0.0.1:9 --timeout=15s >/dev/null 2>&1; echo tailscale-up $?\n")
	}
	if dir := r.stateDir(); dir != "" {
		// Written as the directory's owner, as the gateway would.
		fmt.Fprintf(&script, "f=%s; printf '%%s\\n' %s > \"$f\" && chown --reference=%s \"$f\" && echo marker ok\n",
			shellQuote(dir+"/"+markerName), shellQuote(mark), shellQuote(dir))
	}
	if r.o.Spec.Docker {
		fmt.Fprintf(&script, "docker volume create bake-verify-upgrade-%s && echo volume ok\n", hex.EncodeToString(tag))
	}
	if script.Len() > 0 {
		res, err := a.runT(ctx, "sudo -n sh -c "+shellQuote(script.String()), nil, 3*time.Minute)
		if err != nil {
			return upgradeState{}, []string{err.Error()}, ev
		}
		ev.cmd(res)
		if r.stateDir() != "" && !strings.Contains(res.Stdout, "marker ok") {
			problems = append(problems, "could not write a file in the gateway's state directory "+r.stateDir())
		}
		if r.o.Spec.Docker && !strings.Contains(res.Stdout, "volume ok") {
			problems = append(problems, "could not make a Docker volume")
		}
	}
	st, p, ev2 := r.observe(ctx, a, f)
	problems = append(problems, p...)
	ev = append(ev, ev2...)
	if r.stateDir() != "" && st.marker != mark {
		problems = append(problems, fmt.Sprintf("the file written in the gateway's state directory reads %q", st.marker))
	}
	if r.o.Spec.Gateway != nil && a.token != "" && st.id.Token != a.token {
		problems = append(problems, fmt.Sprintf("the gateway token is %s, the seed gave %s", tokenHash(st.id.Token), tokenHash(a.token)))
	}
	if f.state["SERIAL"] != "" && !strings.Contains(st.journal, "formatting the blank disk") {
		problems = append(problems, "bake-state did not format the blank volume:\n"+lastLines(st.journal, 20))
	}
	if partitionMode(f.state) {
		// Its first boot made the state partition (bake-state-partition).
		res, err := a.sudo(ctx, "journalctl -b -u bake-state-partition --no-pager -o cat")
		switch {
		case err != nil:
			problems = append(problems, "reading bake-state-partition's journal: "+err.Error())
		case !strings.Contains(res.Stdout, "made and formatted"):
			problems = append(problems, "the first boot did not make the state partition:\n"+lastLines(res.Stdout, 20))
		default:
			ev.add("bake-state-partition at the first boot:\n%s", lastLines(res.Stdout, 10))
		}
	}
	problems = append(problems, runsImage(st, f, "the old image")...)
	p, e := imageSettings(st, f, "the old image")
	problems = append(problems, p...)
	if e != "" {
		ev.add("%s", e)
	}
	return st, problems, ev
}

// makeVolume makes the new, blank state volume: a sparse raw file (at
// --state-volume when given, kept; else in the work directory). A volume
// found by label only is formatted here (the image formats only a disk
// it finds by serial).
func (r *runner) makeVolume(ctx context.Context, serial, label string) (string, error) {
	p := r.o.StateVolume
	if p == "" {
		p = filepath.Join(r.work, "state.raw")
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if err := f.Truncate(1 << 30); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if serial == "" {
		if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", label, p).CombinedOutput(); err != nil {
			return "", fmt.Errorf("mkfs.ext4 -L %s: %v %s", label, err, out)
		}
	}
	r.logf("upgrade: the state volume %s (1 GiB, serial %q, label %q)", p, serial, label)
	return p, nil
}

// upgradeBoot starts one boot of an upgrade run and waits for the admin's
// login; ok reports the login.
func (r *runner) upgradeBoot(ctx context.Context, fw string, idx int, key *Key, b boot) (*instance, bool) {
	in, err := r.startBoot(ctx, fw, idx, key, &b)
	if err != nil {
		if in != nil {
			in.shutdown(ctx)
			r.keepSerials([]*instance{in})
		}
		if in == nil {
			in = &instance{}
		}
		in.loginEv = "could not start: " + err.Error()
		return in, false
	}
	in.waitSSH(ctx)
	if !in.loginOK {
		in.shutdown(ctx)
		r.keepSerials([]*instance{in})
	}
	return in, in.loginOK
}

// powerOff powers the instance off through the guest and waits for QEMU
// to exit on its own (a clean power-off: the disks are settled); then it
// removes its link and keeps its serial log.
func (in *instance) powerOff(ctx context.Context) (bool, string) {
	defer in.r.keepSerials([]*instance{in})
	defer func() {
		if in.sess != nil {
			in.sess.Close()
			in.sess = nil
		}
		in.stopVM()
		if in.link != nil {
			in.link.Close()
		}
	}()
	t0 := time.Now()
	if in.sess != nil {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		in.sess.Run(c, "sync; sudo -n systemctl poweroff", nil, 20*time.Second)
		cancel()
	}
	select {
	case <-in.vm.Exited():
		return true, fmt.Sprintf("%s powered off in %s", in.name(), time.Since(t0).Round(time.Second))
	case <-time.After(3 * time.Minute):
		return false, fmt.Sprintf("%s did not power off within 3 minutes of systemctl poweroff\n%s", in.name(), in.serialTail(20))
	case <-ctx.Done():
		return false, "interrupted"
	}
}

// scanRoot scans the upgraded instance's root disk with verify's disk
// scanner: the recipe's literal secrets and every rule of secrets.disk,
// plus the instance's gateway token, the lines of its host private keys
// and the forms of tailscaled's machine key.
func (r *runner) scanRoot(ctx context.Context, disk string, within [][2]int64, token string, hostKeys, tsPriv []string, authKey string) (Status, string) {
	rules := needleRules(r.o.Spec.Needles)
	if r.o.Spec.Gateway != nil {
		if len(token) < 16 {
			return Fail, fmt.Sprintf("not run: the gateway token (%d characters) is too short to look for", len(token))
		}
		rules = append(rules, NeedleRule("instance-gateway-token", token))
	}
	for i, k := range hostKeys {
		rules = append(rules, NeedleRule(fmt.Sprintf("instance-host-key-line-%d", i), k))
	}
	for i, k := range tsPriv {
		rules = append(rules, NeedleRule(fmt.Sprintf("instance-tailscale-machine-key-%d", i), k))
	}
	if authKey != "" {
		rules = append(rules, NeedleRule("instance-tailscale-auth-key", authKey))
	}
	s := NewScanner(rules...)
	r.logf("upgrade: scanning the new image's root disk after its run")
	if err := s.ScanFileRanges(ctx, disk, within); err != nil {
		return Fail, "not run: " + err.Error()
	}
	s.locate(ctx, disk)
	st, ev := s.verdict()
	also := ""
	if authKey != "" {
		also = ", the seed's Tailscale auth key"
	}
	return st, r.redactKey(fmt.Sprintf("looked for the gateway token (%s), %d lines of host private keys, %d forms of tailscaled's machine key%s and every rule of secrets.disk\n%s", tokenHash(token), len(hostKeys), len(tsPriv), also, ev))
}

// makeInstanceDisk makes a partition run's instance disk: a sparse raw
// copy of the old image (raw) in the work directory, enlarged to
// partitionDiskSize, so that the old image's first boot can make its
// state partition at the end.
func (r *runner) makeInstanceDisk(ctx context.Context, raw string, state map[string]string) (string, error) {
	fi, err := os.Stat(raw)
	if err != nil {
		return "", err
	}
	size, err := partitionDiskSize(fi.Size(), state)
	if err != nil {
		return "", err
	}
	p := filepath.Join(r.work, "instance.raw")
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", raw, p).CombinedOutput(); err != nil {
		return "", fmt.Errorf("copying the old image: %v %s", err, out)
	}
	if err := os.Truncate(p, size); err != nil {
		return "", err
	}
	r.logf("upgrade: the instance's disk %s (%d MiB: the old image's %d MiB, its state partition of %s bytes and 256 MiB for root to grow)", p, size>>20, fi.Size()>>20, state["PARTITION_SIZE"])
	return p, nil
}

// newRaw is the new image as a raw disk (read only).
func (r *runner) newRaw() string { return r.raw }

// rewrite gives the stopped instance's disk img's system partitions and
// keeps its state partition, in process with `bake upgrade DISK
// NEW_IMAGE`'s code (package upgrade); the evidence is what it did.
func (r *runner) rewrite(ctx context.Context, disk, img, who string) (string, error) {
	var log bytes.Buffer
	t0 := time.Now()
	res, err := upgrade.Run(ctx, upgrade.Options{Disk: disk, Image: img, Log: &log})
	if err != nil {
		return "", fmt.Errorf("bake upgrade of the instance's disk to %s failed: %v\n%s", who, err, strings.TrimSpace(log.String()))
	}
	ev := fmt.Sprintf("bake upgrade of the instance's disk to %s (%s): state partition p%d kept (sha256 %s)\n%s",
		who, time.Since(t0).Round(100*time.Millisecond), res.Plan.State.Number, res.StateSHA256, strings.TrimRight(res.Plan.String(), "\n"))
	r.logf("upgrade: %s", firstLine(ev))
	return ev, nil
}

// outsidePartition are the byte ranges of disk outside its partition
// named label (the state partition: it holds the instance's token and
// keys by design), for the root disk scan, and what they are.
func outsidePartition(ctx context.Context, disk, label string) ([][2]int64, string, error) {
	img, err := cloudimg.Open(ctx, disk)
	if err != nil {
		return nil, "", fmt.Errorf("reading the instance's disk: %w", err)
	}
	defer img.Close()
	var found []cloudimg.Partition
	for _, p := range img.Table.Partitions {
		if p.Name == label {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		return nil, "", fmt.Errorf("the instance's disk has %d partitions named %q, want its one state partition", len(found), label)
	}
	p := found[0]
	return [][2]int64{{0, p.Offset}, {p.Offset + p.Size, img.Size}},
		fmt.Sprintf("scanned the instance's disk (%d MiB) but its state partition p%d %q (%d MiB at %d MiB: the instance's state, where the token and keys belong): the new image's system partitions and the space root grew into", img.Size>>20, p.Number, label, p.Size>>20, p.Offset>>20), nil
}
