package verify

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCatalogIDsWrittenOnce: each check's ID is a string literal exactly
// once in the package's code, in its Check, in the file of its area
// (checks_AREA.go or AREA.go; the run's own checks in catalog.go); no
// other literal looks like a check ID.
func TestCatalogIDsWrittenOnce(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	where := map[string][]string{}
	fileLike := regexp.MustCompile(`\.(raw|qcow2|log|json|conf)$`)
	idLike := regexp.MustCompile(`^(ssh|system|firewall|tailscale|state|gateway|network|isolation|identity|secrets|image|verify|upgrade)\.[a-z][a-z-]*$`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				// A file name in an area's words ("state.raw") is not an ID.
				if s, err := strconv.Unquote(lit.Value); err == nil && idLike.MatchString(s) && !fileLike.MatchString(s) {
					where[s] = append(where[s], f)
				}
			}
			return true
		})
	}
	seen := map[string]bool{}
	for _, k := range catalog {
		if seen[k.ID] {
			t.Errorf("%s is twice in the catalog", k.ID)
		}
		seen[k.ID] = true
		files := where[k.ID]
		if len(files) != 1 {
			t.Errorf("%s is written %d times (%v), want once, in its Check", k.ID, len(files), files)
			continue
		}
		ok := files[0] == "checks_"+k.Area()+".go" || files[0] == k.Area()+".go" || (k.Scope == ScopeRun && files[0] == "catalog.go")
		if !ok {
			t.Errorf("%s is defined in %s, not in its area's file (checks_%s.go)", k.ID, files[0], k.Area())
		}
		if k.Title(DefaultSpec()) == "" || k.Title(DefaultSpec()) == k.ID {
			t.Errorf("%s has no claim", k.ID)
		}
		if k.Scope == ScopeFirmware && k.run == nil && !k.tailnet { // the tailnet checks: recorded by the tailnet group (identity's, on the last instance)
			switch k.Area() {
			case "ssh", "isolation", "identity", "secrets", "upgrade": // recorded by the login, the probe container, the identity pass, the seed-copies search after them
			default:
				t.Errorf("%s has no run and no group that records it", k.ID)
			}
		}
	}
	for id, files := range where {
		if !seen[id] {
			t.Errorf("%q (in %v) looks like a check ID but is not in the catalog", id, files)
		}
	}
}

// TestPlanFollowsTheCatalog: a plan is the catalog's firmware checks in
// catalog order, the ones the spec does not call for left out.
func TestPlanFollowsTheCatalog(t *testing.T) {
	full := PlanTailnet(DefaultSpec(), 2, true)
	fw, img := Catalog()
	var upgrade []string
	fw = slices.DeleteFunc(fw, func(id string) bool {
		if lookup(id).upgrade {
			upgrade = append(upgrade, id)
			return true
		}
		return false
	})
	if strings.Join(upgrade, " ") != "upgrade.old-boot upgrade.identity upgrade.new-image upgrade.root-disk-secrets upgrade.rollback upgrade.tailnet" {
		t.Errorf("the upgrade run's checks: %v", upgrade)
	}
	if strings.Join(full, " ") != strings.Join(fw, " ") {
		t.Errorf("the default spec's plan with --tailnet %v is not every firmware check %v", full, fw)
	}
	// Without --tailnet its checks are not planned (and nothing else is
	// left out).
	var noTailnet []string
	for _, id := range fw {
		if !lookup(id).tailnet {
			noTailnet = append(noTailnet, id)
		}
	}
	if got := Plan(DefaultSpec(), 2); strings.Join(got, " ") != strings.Join(noTailnet, " ") || len(noTailnet) != len(fw)-4 {
		t.Errorf("the default spec's plan without --tailnet %v, want %v", got, noTailnet)
	}
	if len(img) != 2 || img[0] != checkImageClaims.ID || img[1] != checkSecretsDisk.ID {
		t.Errorf("image checks %v", img)
	}
	bare := Plan(Spec{AdminUser: "admin", SSHPort: 22}, 1)
	for _, id := range bare {
		k := lookup(id)
		if k.planned != nil && !k.planned(Spec{AdminUser: "admin", SSHPort: 22}, 1) {
			t.Errorf("%s planned for a spec that does not call for it", id)
		}
	}
	for _, gone := range []*Check{&checkGatewayAuth, &checkFirewallRules, &checkIsolationOutside, &checkIdentityUnique} {
		for _, id := range bare {
			if id == gone.ID {
				t.Errorf("%s planned with no gateway, firewall, Docker or second instance", id)
			}
		}
	}
}

func TestListPrintsEveryCheck(t *testing.T) {
	var b bytes.Buffer
	if err := List(&b, DefaultSpec(), 1); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, k := range catalog {
		if !strings.Contains(out, k.ID+" ") || !strings.Contains(out, k.Title(DefaultSpec())) {
			t.Errorf("--list lacks %s or its claim:\n%s", k.ID, out)
		}
	}
	if testing.Verbose() {
		os.Stdout.WriteString(out)
	}
}

func TestDockerGroupVerdict(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      Status
	}{
		{"not a member", "groups: 1000 27\nnames: admin sudo\ndocker:x:998:\n", Pass},
		{"no docker group", "groups: 1000 27\nnames: admin sudo\ndocker group: none\n", Pass},
		{"supplementary", "groups: 1000 27 998\nnames: admin sudo docker\ndocker:x:998:admin\n", Fail},
		{"primary", "groups: 998 27\nnames: docker sudo\ndocker:x:998:\n", Fail},
		{"listed only", "groups: 1000 27\nnames: admin sudo\ndocker:x:998:someone,admin\n", Fail},
		{"other members", "groups: 1000 27\nnames: admin sudo\ndocker:x:998:someone\n", Pass},
		{"no output", "", Fail},
		{"no docker line", "groups: 1000 27\n", Fail},
	} {
		if got, ev := dockerGroupVerdict("admin", tc.out, true, nil); got != tc.want {
			t.Errorf("%s: %s, want %s\n%s", tc.name, got, tc.want, ev)
		}
	}
	if got, _ := dockerGroupVerdict("admin", "groups: 1000\ndocker:x:998:\n", false, nil); got != Fail {
		t.Error("a failed command passed")
	}
}

func TestMetadataVerdict(t *testing.T) {
	addrs := []string{"169.254.169.254", "168.63.129.16"}
	ctl := "10.77.0.1"
	line := func(who, a string, ok bool) string {
		if ok {
			return who + " " + a + " rc=0 " + metadataMarker + "\n"
		}
		return who + " " + a + " rc=124\n"
	}
	all := func(hostOK, ctrOK, ctlOK bool) string {
		var s string
		for _, a := range addrs {
			s += line("host", a, hostOK) + line("container", a, ctrOK)
		}
		return s + line("host", ctl, true) + line("container", ctl, ctlOK)
	}
	for _, tc := range []struct {
		name, out string
		want      Status
		says      string
	}{
		{"blocked", all(true, false, true), Pass, "none of"},
		{"reached", all(true, true, true), Fail, "a container reached 169.254.169.254:80"},
		{"no control", all(true, false, false), Fail, "not decided: a container does not reach"},
		{"guest cannot", all(false, false, true), Fail, "not decided: the guest itself"},
		{"missing line", line("host", addrs[0], true), Fail, "no result for"},
		// Something else answering (no marker) is not the stand-in.
		{"other answer", strings.ReplaceAll(all(true, false, true), "container 10.77.0.1 rc=0 "+metadataMarker, "container 10.77.0.1 rc=0 hello"), Fail, "not decided"},
	} {
		got, ev := metadataVerdict(tc.out, addrs, ctl, nil)
		if got != tc.want || !strings.Contains(ev, tc.says) {
			t.Errorf("%s: %s, want %s with %q:\n%s", tc.name, got, tc.want, tc.says, ev)
		}
	}
}

func TestMetadataScriptParses(t *testing.T) {
	f := filepath.Join(t.TempDir(), "s.sh")
	os.WriteFile(f, []byte(metadataScript("bake-verify-p80", []string{"169.254.169.254", "10.77.0.1"})), 0o644)
	if out, err := exec.Command("bash", "-n", f).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
}

func TestSSHDVerdict(t *testing.T) {
	good := "passwordauthentication no\nkbdinteractiveauthentication no\npermitrootlogin no\npubkeyauthentication yes\nauthenticationmethods publickey\npermitemptypasswords no\nport 22\n"
	sec := func(what, body string) string { return "== " + what + "\n" + body }
	all := sec("sshd -T", good) + sec("sshd -T -C user=admin,addr=10.77.0.1", good) + sec("sshd -T -C user=root,addr=127.0.0.1", good)
	if st, ev := sshdVerdict(all, 3, nil, "admin", 22, 0); st != Pass {
		t.Errorf("good settings: %s\n%s", st, ev)
	}
	if st, ev := sshdVerdict(all, 3, nil, "admin", 2222, 0); st != Fail || !strings.Contains(ev, `port is "22", want 2222`) {
		t.Errorf("another port: %s\n%s", st, ev)
	}
	// A Match block that turns passwords on for one context only.
	matched := sec("sshd -T", good) + sec("sshd -T -C user=admin,addr=192.168.1.10", strings.Replace(good, "passwordauthentication no", "passwordauthentication yes", 1)) + sec("sshd -T -C user=root,addr=127.0.0.1", good)
	if st, ev := sshdVerdict(matched, 3, nil, "admin", 22, 1); st != Fail || !strings.Contains(ev, `addr=192.168.1.10: passwordauthentication is "yes"`) {
		t.Errorf("a Match for one address: %s\n%s", st, ev)
	}
	for _, m := range []string{"any", "password", "publickey,password", "publickey keyboard-interactive", "publickey,keyboard-interactive:pam"} {
		bad := sec("sshd -T", strings.Replace(good, "authenticationmethods publickey", "authenticationmethods "+m, 1))
		if st, _ := sshdVerdict(bad, 1, nil, "admin", 22, 0); st != Fail {
			t.Errorf("authenticationmethods %q passed", m)
		}
	}
	for _, m := range []string{"publickey", "publickey,publickey"} {
		ok := sec("sshd -T", strings.Replace(good, "authenticationmethods publickey", "authenticationmethods "+m, 1))
		if st, ev := sshdVerdict(ok, 1, nil, "admin", 22, 0); st != Pass {
			t.Errorf("authenticationmethods %q failed:\n%s", m, ev)
		}
	}
	if st, _ := sshdVerdict(sec("sshd -T", good), 3, nil, "admin", 22, 0); st != Fail {
		t.Error("missing contexts passed")
	}
	if st, _ := sshdVerdict(sec("sshd -T", "")+sec("x", good), 2, nil, "admin", 22, 0); st != Fail {
		t.Error("a context with no output passed")
	}
}

func TestGroupMember(t *testing.T) {
	m := groupMember("root:x:0:\nsudo:x:27:admin,ops\nwheel:x:10:\n")
	if m("sudo") != "admin" || m("wheel") != "" || m("none") != "" {
		t.Errorf("members: sudo %q wheel %q none %q", m("sudo"), m("wheel"), m("none"))
	}
}
