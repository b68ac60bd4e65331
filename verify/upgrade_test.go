package verify

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"github.com/bakeimg/bake/internal/testenv"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/firstboot"
)

func TestParseStateConfig(t *testing.T) {
	b := firstboot.StateConfig(firstboot.StateOptions{Label: "bake-state", Serial: "bake-state", Paths: []string{"/var/lib/tailscale", "/etc/ssh/ssh_host_*"},
		ImageName: "it's-new", ImageVersion: "bake 1.0", ImageDigest: "abc123"})
	got, err := ParseStateConfig([]byte(b))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"LABEL": "bake-state", "SERIAL": "bake-state", "PATHS": "/var/lib/tailscale /etc/ssh/ssh_host_*",
		"IMAGE_NAME": "it's-new", "IMAGE_VERSION": "bake 1.0", "IMAGE_DIGEST": "abc123", "FORMAT": "1"} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
	for _, bad := range []string{
		"LABEL='a\n",                       // unterminated
		"LABEL=a\nSERIAL=''\n",             // unquoted
		"lower='x'\n",                      // not a key
		"LABEL='a'\nSERIAL=''\nFORMAT='1'", // no IMAGE_NAME
		"LABEL=''\nSERIAL=''\nFORMAT='1'\nIMAGE_NAME='x'\n", // no volume
		"LABEL='a' ; rm -rf /\n",
	} {
		if _, err := ParseStateConfig([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestTailscaleMachineKey(t *testing.T) {
	// RFC 7748 section 6.1: Alice's private and public key.
	priv := "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
	pub := "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
	st, _ := json.Marshal(map[string][]byte{"_machinekey": []byte("privkey:" + priv), "_current-profile": []byte("x")})
	p, forms, err := TailscaleMachineKey(st)
	if err != nil {
		t.Fatal(err)
	}
	if p != pub {
		t.Errorf("public part %s, want %s", p, pub)
	}
	if len(forms) != 2 || forms[0] != "privkey:"+priv || !strings.HasPrefix(string(st), `{"_current-profile":"eA==","_machinekey":"`+forms[1]) {
		t.Errorf("private forms %q (state %s)", forms, st)
	}
	for _, bad := range []map[string][]byte{
		{"profile-1": []byte("x")},
		{"_machinekey": []byte("nodekey:" + priv)},
		{"_machinekey": []byte("privkey:" + priv[:62])},
		{"_machinekey": []byte("privkey:" + strings.Repeat("zz", 32))},
	} {
		b, _ := json.Marshal(bad)
		if _, _, err := TailscaleMachineKey(b); err == nil {
			t.Errorf("accepted %s", b)
		}
	}
	if _, _, err := TailscaleMachineKey([]byte("not json")); err == nil {
		t.Error("accepted a state that is not JSON")
	}
}

func TestHostKeyLines(t *testing.T) {
	body := strings.Repeat("QUJD", 20)
	f := "-----BEGIN OPENSSH PRIVATE KEY-----\n" + body + "\nshort\n-----END OPENSSH PRIVATE KEY-----\n"
	if got := hostKeyLines(f + f); len(got) != 2 || got[0] != body {
		t.Errorf("%q", got)
	}
}

func upgradeFixture() (upgradeState, imageFacts) {
	st := upgradeState{
		id:        ident{MachineID: strings.Repeat("a", 32), HostKeys: []string{"SHA256:x (ED25519)"}, Presented: "SHA256:x", Token: strings.Repeat("t", 64)},
		tailscale: hex.EncodeToString(make([]byte, 32)),
		marker:    "written by the old image 01",
		volumes:   "bake-verify-upgrade-01\n",
		kernel:    "6.1.0-40-cloud-amd64",
		running:   map[string]string{"openclaw-gateway": "sha256:new"},
		record:    "NAME=new\nVERSION=bake 1\nDIGEST=d2\nWRITTEN=now\n1\n",
	}
	f := imageFacts{state: map[string]string{"IMAGE_NAME": "new", "IMAGE_DIGEST": "d2", "FORMAT": "1"}, kernels: []string{"6.1.0-40-cloud-amd64"},
		containers: []appliance.ContainerRecord{{Name: "openclaw-gateway", ImageID: "sha256:new"}}}
	return st, f
}

func TestSameInstance(t *testing.T) {
	a, _ := upgradeFixture()
	if p := sameInstance(a, a, "new"); len(p) != 0 {
		t.Errorf("the same instance: %v", p)
	}
	for name, change := range map[string]func(*upgradeState){
		"host keys":  func(s *upgradeState) { s.id.HostKeys = []string{"SHA256:y (ED25519)"} },
		"presented":  func(s *upgradeState) { s.id.Presented = "SHA256:y" },
		"machine ID": func(s *upgradeState) { s.id.MachineID = strings.Repeat("b", 32) },
		"token":      func(s *upgradeState) { s.id.Token = strings.Repeat("u", 64) },
		"tailscale":  func(s *upgradeState) { s.tailscale = "" },
		"marker":     func(s *upgradeState) { s.marker = "" },
		"volume":     func(s *upgradeState) { s.volumes = "other\n" },
	} {
		b, _ := upgradeFixture()
		b.id.HostKeys = append([]string{}, b.id.HostKeys...)
		change(&b)
		p := sameInstance(a, b, "new")
		if len(p) != 1 {
			t.Errorf("%s changed: %v", name, p)
		}
		if strings.Contains(strings.Join(p, ""), strings.Repeat("t", 64)) || strings.Contains(strings.Join(p, ""), strings.Repeat("u", 64)) {
			t.Errorf("%s: the evidence shows a token: %v", name, p)
		}
	}
}

func TestRunsImage(t *testing.T) {
	st, f := upgradeFixture()
	if p := runsImage(st, f, "new"); len(p) != 0 {
		t.Errorf("the new image: %v", p)
	}
	for name, change := range map[string]func(*upgradeState){
		"kernel":    func(s *upgradeState) { s.kernel = "6.1.0-40-amd64" },
		"container": func(s *upgradeState) { s.running = map[string]string{"openclaw-gateway": "sha256:old"} },
		"stopped":   func(s *upgradeState) { s.running = map[string]string{} },
		"record":    func(s *upgradeState) { s.record = "NAME=old\nDIGEST=d1\n1\n" },
		"digest":    func(s *upgradeState) { s.record = "NAME=new\nDIGEST=d1\n1\n" },
		"no record": func(s *upgradeState) { s.record = "NAME=\n1\n" },
		"format":    func(s *upgradeState) { s.record = "NAME=new\nDIGEST=d2\n2\n" },
	} {
		b, _ := upgradeFixture()
		change(&b)
		if p := runsImage(b, f, "new"); len(p) != 1 {
			t.Errorf("%s: %v", name, p)
		}
	}
}

func TestReused(t *testing.T) {
	if p := reused(upgradeState{journal: "bake-state: state volume mounted\n"}, "new"); len(p) != 0 {
		t.Error(p)
	}
	for _, j := range []string{"formatting the blank disk /dev/vdb", "/var/lib/tailscale: copied onto the state volume (first use)"} {
		if p := reused(upgradeState{journal: j}, "new"); len(p) != 1 {
			t.Errorf("%q: %v", j, p)
		}
	}
}

func TestPlanUpgrade(t *testing.T) {
	got := strings.Join(PlanUpgrade(DefaultSpec()), " ")
	want := "ssh.key-login system.running ssh.effective-config ssh.password-refused ssh.root-refused firewall.rules tailscale.daemon gateway.config gateway.process gateway.listen gateway.auth upgrade.old-boot upgrade.identity upgrade.new-image upgrade.root-disk-secrets upgrade.rollback"
	if got != want {
		t.Errorf("upgrade plan\n%s\nwant\n%s", got, want)
	}
	bare := strings.Join(PlanUpgrade(Spec{AdminUser: "admin", SSHPort: 22}), " ")
	if strings.Contains(bare, "gateway.") || strings.Contains(bare, "tailscale.") || !strings.Contains(bare, "upgrade.rollback") {
		t.Errorf("a bare spec's upgrade plan: %s", bare)
	}
	for _, id := range Plan(DefaultSpec(), 2) {
		if strings.HasPrefix(id, "upgrade.") {
			t.Errorf("a plain run plans %s", id)
		}
	}
	if _, err := ResolveAllowSkip("bios/upgrade.rollback"); err != nil {
		t.Error(err)
	} // With --tailnet-*: upgrade.tailnet too, last; no plain run's
	// tailnet check (the upgrade run's boots are the node).
	if got := strings.Join(PlanUpgradeTailnet(DefaultSpec(), true), " "); got != want+" upgrade.tailnet" {
		t.Errorf("upgrade plan with --tailnet\n%s\nwant\n%s upgrade.tailnet", got, want)
	}
	if slices.Contains(PlanTailnet(DefaultSpec(), 2, true), "upgrade.tailnet") {
		t.Error("a plain run with --tailnet plans upgrade.tailnet")
	}
}

// TestJudgeTailnetUpgrade: a later boot of an upgrade run is the same
// node, running and online, on the same control server, with no new
// login; an old boot that did not join fails it whatever the later boot
// shows (fail closed).
func TestJudgeTailnetUpgrade(t *testing.T) {
	const url = "https://10.0.2.2:8443"
	node := func(id, key, state string, online bool) tsSelf {
		var s tsSelf
		s.BackendState = state
		s.Self.ID, s.Self.PublicKey, s.Self.Online = id, key, online
		s.Self.HostName, s.Self.TailscaleIPs = "bake-verify-old", []string{"100.64.0.1", "fd7a:115c:a1e0::1"}
		return s
	}
	before := node("1", "nodekey:aa", "Running", true)
	good := tailnetObs{Self: node("1", "nodekey:aa", "Running", true), ControlURL: url + "/",
		Unit: map[string]string{"ActiveState": "inactive", "ConditionResult": "no", "ConditionTimestampMonotonic": "61234567", "ExecMainStartTimestampMonotonic": "0"}}
	with := func(f func(*tailnetObs)) tailnetObs {
		o := good
		o.Unit = maps.Clone(good.Unit)
		f(&o)
		return o
	}
	for _, c := range []struct {
		name   string
		before tsSelf
		o      tailnetObs
		want   string // "" = no problem
	}{
		{"the same node", before, good, ""},
		{"the old boot did not join", tsSelf{}, good, "not comparable: the old boot did not join"},
		{"the old boot has no node key", node("1", "", "Running", true), good, "not comparable"},
		{"another node ID", before, with(func(o *tailnetObs) { o.Self.Self.ID = "2" }), "another node: 2 key nodekey:aa"},
		{"another node key", before, with(func(o *tailnetObs) { o.Self.Self.PublicKey = "nodekey:bb" }), "another node"},
		{"needs login", before, with(func(o *tailnetObs) { o.Self.BackendState = "NeedsLogin" }), "not running and online"},
		{"offline", before, with(func(o *tailnetObs) { o.Self.Self.Online = false }), "not running and online"},
		{"another control server", before, with(func(o *tailnetObs) { o.ControlURL = "https://controlplane.tailscale.com" }), "control server is https://controlplane.tailscale.com"},
		{"the join unit's condition held", before, with(func(o *tailnetObs) { o.Unit["ConditionResult"] = "yes" }), "may have joined again"},
		{"no unit state", before, with(func(o *tailnetObs) { o.Unit = map[string]string{} }), "ConditionResult=-"},
		// systemd's zero values: the start job has not run, so "no" says nothing.
		{"the join unit's condition not evaluated yet", before, with(func(o *tailnetObs) { o.Unit["ConditionTimestampMonotonic"] = "0" }), "start job had not run"},
		{"the join unit ran", before, with(func(o *tailnetObs) { o.Unit["ExecMainStartTimestampMonotonic"] = "12345678" }), "the join unit ran"},
		{"a key file", before, with(func(o *tailnetObs) { o.KeyPresent = true }), "an auth key is on this boot's disk"},
		{"a command failed", before, with(func(o *tailnetObs) { o.Err = "ssh: session closed" }), "new: ssh: session closed"},
	} {
		p, ev := JudgeTailnetUpgrade(c.before, c.o, url, "new")
		got := strings.Join(p, "\n")
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%s: problems %q, want %q", c.name, got, c.want)
		}
		if !strings.Contains(ev.String(), "new: tailscale status --json") {
			t.Errorf("%s: evidence %q", c.name, ev)
		}
	}
}

func TestJudgeSystem(t *testing.T) {
	out := func(state, failed, ci string) string {
		return "is-system-running: " + state + "\nfailed units:\n" + failed + "cloud-init:\n  status: " + ci + "\n  extended_status: " + ci + "\n"
	}
	for _, c := range []struct {
		out      string
		seedless bool
		problems int
		note     bool
	}{
		{out("running", "", "done"), false, 0, false},
		{out("running", "", "disabled"), false, 1, false}, // a seeded instance: cloud-init must run
		{out("running", "", "disabled"), true, 0, true},   // no seed: no datasource
		{out("running", "", "error"), true, 1, false},
		{out("degraded", "foo.service loaded failed failed Foo\n", "disabled"), true, 2, true},
		{"is-system-running: running\nfailed units:\n", false, 0, false}, // no cloud-init
	} {
		p, _, _, note := judgeSystem(c.out, c.seedless)
		if len(p) != c.problems || (note != "") != c.note {
			t.Errorf("%q seedless %v: problems %q, note %q", c.out, c.seedless, p, note)
		}
	}
}

// An upgrade run needs both images to keep their state the same way:
// on the same volume, or on a partition with the same label.
func TestSameState(t *testing.T) {
	conf := func(o firstboot.StateOptions) map[string]string {
		t.Helper()
		o.Paths = []string{"/a"}
		m, err := ParseStateConfig([]byte(firstboot.StateConfig(o)))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	part := conf(firstboot.StateOptions{Label: "bake-state", PartitionSize: 256 << 20})
	part2 := conf(firstboot.StateOptions{Label: "other", PartitionSize: 256 << 20})
	partBig := conf(firstboot.StateOptions{Label: "bake-state", PartitionSize: 1 << 30})
	vol := conf(firstboot.StateOptions{Label: "bake-state"})
	volSerial := conf(firstboot.StateOptions{Label: "bake-state", Serial: "bake-state"})
	if !partitionMode(part) || partitionMode(vol) {
		t.Fatalf("modes: %v %v", part, vol)
	}
	for _, c := range []struct {
		name     string
		old, new map[string]string
		want     string // "" = accepted
	}{
		{"partitions", part, part, ""},
		{"partitions of other sizes", part, partBig, ""}, // the old instance's partition is kept as it is
		{"volumes", vol, vol, ""},
		{"old volume, new partition", vol, part, `the old image keeps its state on a state volume (state: {volume: ...}, serial "" label "bake-state"), the new one on a partition of its disk`},
		{"old partition, new volume", part, volSerial, `the old image keeps its state on a partition of its disk (state: {partition: ...}, label "bake-state"), the new one on a state volume`},
		{"partition labels", part, part2, `the images name different state partitions: the old one "bake-state", the new one "other"`},
		{"volume serials", vol, volSerial, "the images look for different state volumes"},
	} {
		got := sameState(c.old, c.new)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	// A partition run has no volume: --state-volume is refused.
	if why := partitionRefusal(Options{StateVolume: "/tmp/vol.raw"}, part); !strings.Contains(why, "--state-volume /tmp/vol.raw") || !strings.Contains(why, "no volume to make") {
		t.Errorf("--state-volume: %q", why)
	}
	if why := partitionRefusal(Options{}, part); why != "" {
		t.Errorf("no --state-volume: %q", why)
	}
	// The instance's disk: the image rounded up to MiB, the partition,
	// 256 MiB for root (the VM test's 2 GiB image, 256 MiB: 2.5 GiB).
	for _, c := range []struct {
		image int64
		state map[string]string
		want  int64
	}{
		{2 << 30, part, 2<<30 + 512<<20},
		{2<<30 + 1, part, 2<<30 + 513<<20},
		{4 << 30, partBig, 5<<30 + 256<<20},
	} {
		if got, err := partitionDiskSize(c.image, c.state); err != nil || got != c.want {
			t.Errorf("partitionDiskSize(%d, %s): %d %v, want %d", c.image, c.state["PARTITION_SIZE"], got, err, c.want)
		}
	}
	for _, bad := range []string{"", "x", "-1048576", "1000"} {
		if _, err := partitionDiskSize(2<<30, map[string]string{"PARTITION_SIZE": bad}); err == nil {
			t.Errorf("PARTITION_SIZE %q accepted", bad)
		}
	}
}

// imageSettings: a boot's openclaw.json is its image's template with the
// instance's token, byte for byte; the evidence shows the template and a
// mismatch the keys that differ, never the token.
func TestImageSettings(t *testing.T) {
	const token = "SecretInstanceToken0123456789"
	settingsB := map[string]any{"logging": map[string]any{"level": "debug"}}
	tplA := []byte(appliance.OpenClawConfig(18789, appliance.TokenPlaceholder, nil))
	tplB := []byte(appliance.OpenClawConfig(18789, appliance.TokenPlaceholder, settingsB))
	if got := string(RenderGatewayConfig(tplB, token)); got != appliance.OpenClawConfig(18789, token, settingsB) {
		t.Errorf("render:\n%s", got)
	}
	st := upgradeState{id: ident{Token: token}, config: RenderGatewayConfig(tplB, token), firstboot: "bake-firstboot: openclaw.json re-rendered from the new image's template (/etc/bake/openclaw.json.in); token kept"}
	p, ev := imageSettings(st, imageFacts{gatewayTemplate: tplB}, "new")
	if len(p) != 0 || !strings.Contains(ev, `"logging":{"level":"debug"}`) || !strings.Contains(ev, appliance.TokenPlaceholder) {
		t.Errorf("B's file on B: %v\n%s", p, ev)
	}
	// A's settings (no logging) on B: the key the file lacks is named.
	st.config = RenderGatewayConfig(tplA, token)
	p, ev = imageSettings(st, imageFacts{gatewayTemplate: tplB}, "new")
	if len(p) != 1 || !strings.Contains(p[0], "keys of the template not in it: logging logging.level") || !strings.Contains(p[0], "re-rendered") || ev != "" {
		t.Errorf("A's file on B: %v %q", p, ev)
	}
	// B's on A: the key only the file has.
	st.config = RenderGatewayConfig(tplB, token)
	p, _ = imageSettings(st, imageFacts{gatewayTemplate: tplA}, "rollback")
	if len(p) != 1 || !strings.Contains(p[0], "keys only in the file: logging logging.level") {
		t.Errorf("B's file on A: %v", p)
	}
	// Another token, a changed value, a file not read: failures.
	for name, s := range map[string]upgradeState{
		"token":      {id: ident{Token: token + "x"}, config: RenderGatewayConfig(tplA, token)},
		"value":      {id: ident{Token: token}, config: []byte(strings.Replace(string(RenderGatewayConfig(tplA, token)), "18789", "1", 1))},
		"not read":   {id: ident{Token: token}},
		"no newline": {id: ident{Token: token}, config: []byte(strings.TrimSpace(string(RenderGatewayConfig(tplA, token))))},
	} {
		p, _ := imageSettings(s, imageFacts{gatewayTemplate: tplA}, "x")
		if len(p) != 1 {
			t.Errorf("%s: %v", name, p)
		}
		if strings.Contains(strings.Join(p, ""), token) {
			t.Errorf("%s: the token is shown: %v", name, p)
		}
	}
	// No gateway in the image: nothing to judge.
	if p, ev := imageSettings(upgradeState{}, imageFacts{}, "x"); p != nil || ev != "" {
		t.Errorf("no template: %v %q", p, ev)
	}
}

// The root disk scan of a partition run: the disk's data but the state
// partition's.
func TestOutsidePartition(t *testing.T) {
	testenv.NeedTools(t, "sfdisk")
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 64<<20); err != nil {
		t.Fatal(err)
	}
	table := "label: gpt\n1 : start=2048, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n" +
		"2 : start=67584, size=61440, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=bake-state\n"
	cmd := exec.Command("sfdisk", "-q", p)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	within, where, err := outsidePartition(context.Background(), p, "bake-state")
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{0, 67584 * 512}, {(67584 + 61440) * 512, 64 << 20}}
	if !slices.Equal(within, want) || !strings.Contains(where, `but its state partition p2 "bake-state" (30 MiB at 33 MiB`) {
		t.Errorf("%v %q, want %v", within, where, want)
	}
	// A secret in the state partition is not looked at, one in root is.
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("\nAWS=AKIAIOSFODNN7EXAMPLX\n")
	f.WriteAt(secret, 70000*512)
	f.Close()
	s := NewScanner(NeedleRule("planted", "AKIAIOSFODNN7EXAMPLX"))
	if err := s.ScanFileRanges(context.Background(), p, within); err != nil {
		t.Fatal(err)
	}
	if fs := s.Findings(); len(fs) != 0 {
		t.Errorf("the state partition was scanned: %v", fs)
	}
	f, _ = os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt(secret, 4096*512)
	f.Close()
	s = NewScanner(NeedleRule("planted", "AKIAIOSFODNN7EXAMPLX"))
	if err := s.ScanFileRanges(context.Background(), p, within); err != nil {
		t.Fatal(err)
	}
	if fs := s.Findings(); len(fs) == 0 {
		t.Error("a secret in root was not found")
	}
	if _, _, err := outsidePartition(context.Background(), p, "other"); err == nil || !strings.Contains(err.Error(), `0 partitions named "other"`) {
		t.Errorf("no such partition: %v", err)
	}
}

func TestClipExtents(t *testing.T) {
	got := clipExtents([][2]int64{{0, 10}, {20, 40}, {50, 60}}, [][2]int64{{5, 25}, {30, 55}})
	want := [][2]int64{{5, 10}, {20, 25}, {30, 40}, {50, 55}}
	if !slices.Equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
}
