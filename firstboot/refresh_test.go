package firstboot

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bakeimg/bake/appliance"
)

// Two images' templates: A's has a key B's lacks, B another port and a key
// of its own.
const (
	refreshTplA = "{\n  \"gateway\": {\n    \"port\": 18789,\n    \"auth\": {\n      \"mode\": \"token\",\n      \"token\": \"" + appliance.TokenPlaceholder + "\"\n    }\n  },\n  \"old\": {\n    \"key\": true\n  }\n}\n"
	refreshTplB = "{\n  \"gateway\": {\n    \"port\": 18790,\n    \"auth\": {\n      \"mode\": \"token\",\n      \"token\": \"" + appliance.TokenPlaceholder + "\"\n    }\n  },\n  \"new\": 1\n}\n"
	refreshTok  = "InstanceToken_0123456789abcdefXYZ"
	refreshMID  = "0123456789abcdef0123456789abcdef"
)

func renderTpl(tpl, token string) string {
	return strings.TrimRight(strings.Replace(tpl, appliance.TokenPlaceholder, token, 1), "\n") + "\n"
}

// refreshSetup is an instance set up already (its stamp), whose volume
// holds openclaw.json (config) and maybe the applied template (applied:
// "" = none), booted by an image whose template is image.
type refreshSetup struct {
	dir, config, applied, outside string
}

func newRefresh(t *testing.T, image, applied, config string) refreshSetup {
	t.Helper()
	dir := t.TempDir()
	s := refreshSetup{dir: dir, config: filepath.Join(dir, "home/openclaw/.openclaw/openclaw.json"),
		applied: filepath.Join(dir, "state", "openclaw.json.in.applied"), outside: filepath.Join(dir, "outside")}
	for _, d := range []string{"home/openclaw", "state", "outside"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	gatewayOwns(t, dir, filepath.Join(dir, "home/openclaw"))
	mkGateway(t, filepath.Dir(s.config))
	os.WriteFile(filepath.Join(dir, "machine-id"), []byte(refreshMID+"\n"), 0o444)
	os.WriteFile(filepath.Join(dir, "state", refreshMID+".done"), []byte("2026-12-01T00:00:00Z\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "openclaw.json.in"), []byte(image), 0o644)
	os.WriteFile(filepath.Join(dir, "console"), nil, 0o600) // the writable console
	if applied != "" {
		os.WriteFile(s.applied, []byte(applied), 0o600)
	}
	if config != "" {
		os.WriteFile(s.config, []byte(config), 0o600)
		if uid, real := gatewayUID(t); real {
			chownT(t, s.config, uid)
		}
	}
	os.WriteFile(filepath.Join(dir, "conf"), []byte("SEEDS=credentials\nGATEWAY_CONFIG="+s.config+"\nGATEWAY_OWNER=openclaw\n"), 0o644)
	return s
}

func (s refreshSetup) boot(t *testing.T) string {
	t.Helper()
	code := fakeSystem(t, s.dir) + "CONF=" + s.dir + "/conf\n( main ); echo \"rc=$?\""
	out, _ := run(t, code)
	t.Logf("log:\n%s", out)
	if strings.Contains(out, refreshTok) {
		t.Errorf("the log shows the token")
	}
	if c, _ := os.ReadFile(filepath.Join(s.dir, "console")); strings.Contains(string(c), refreshTok) {
		t.Errorf("the console shows the token")
	}
	if _, err := os.Stat(filepath.Join(s.dir, "work")); !os.IsNotExist(err) {
		t.Errorf("the work dir (with the token) is left behind")
	}
	if !strings.Contains(out, "nothing to do") {
		t.Errorf("an instance set up already was set up again")
	}
	return out
}

func (s refreshSetup) file(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func (s refreshSetup) console(t *testing.T) string { return s.file(t, filepath.Join(s.dir, "console")) }

// The image owns openclaw.json's settings, the instance its token: a new
// image re-renders a file nobody changed from its own template with the
// instance's token (a key only the old template had is gone), and a
// rollback does the same the other way.
func TestGatewayRefreshNewTemplate(t *testing.T) {
	s := newRefresh(t, refreshTplB, refreshTplA, renderTpl(refreshTplA, refreshTok))
	out := s.boot(t)
	if !strings.Contains(out, "rc=0") || !strings.Contains(out, "openclaw.json re-rendered from the new image's template") || !strings.Contains(out, "token kept") {
		t.Fatalf("no re-render")
	}
	if got := s.file(t, s.config); got != renderTpl(refreshTplB, refreshTok) {
		t.Errorf("openclaw.json after the new image:\n%s", got)
	}
	if got := s.file(t, s.config); strings.Contains(got, `"old"`) || !strings.Contains(got, `"new": 1`) || !strings.Contains(got, "18790") {
		t.Errorf("the new image's settings are not the file's:\n%s", got)
	}
	if got := s.file(t, s.applied); got != refreshTplB {
		t.Errorf("applied template: %q, want the new image's", got)
	}
	if !strings.Contains(s.console(t), "openclaw.json re-rendered from the new image's template; token kept") {
		t.Errorf("the console does not say it: %q", s.console(t))
	}
	// Written by the gateway's uid, private, no temp file left.
	gwUID, real := gatewayUID(t)
	fi, err := os.Lstat(s.config)
	if err != nil || fi.Mode() != 0o600 || int(fi.Sys().(*syscall.Stat_t).Uid) != gwUID {
		t.Errorf("openclaw.json: %v %v, want 0600 and uid %d", fi.Mode(), err, gwUID)
	}
	if ents, _ := os.ReadDir(filepath.Dir(s.config)); len(ents) != 1 {
		t.Errorf("the state dir holds more than openclaw.json: %v", ents)
	}
	if calls := s.file(t, filepath.Join(s.dir, "calls")); real && !strings.Contains(calls, "setpriv --reuid=4242") {
		t.Errorf("not written as the gateway's uid:\n%s", calls)
	}
	// The rollback: the old image's template, its settings back.
	os.WriteFile(filepath.Join(s.dir, "openclaw.json.in"), []byte(refreshTplA), 0o644)
	out = s.boot(t)
	if !strings.Contains(out, "rc=0") || !strings.Contains(out, "re-rendered") {
		t.Fatalf("no re-render on the rollback")
	}
	if got := s.file(t, s.config); got != renderTpl(refreshTplA, refreshTok) {
		t.Errorf("openclaw.json after the rollback:\n%s", got)
	}
	if got := s.file(t, s.applied); got != refreshTplA {
		t.Errorf("applied template after the rollback: %q", got)
	}
	// Booted again: nothing to apply, nothing written.
	os.Remove(filepath.Join(s.dir, "calls"))
	out = s.boot(t)
	if !strings.Contains(out, "rc=0") || !strings.Contains(out, "this image's gateway settings are the ones applied") {
		t.Errorf("the same image again")
	}
	if calls := s.file(t, filepath.Join(s.dir, "calls")); strings.Contains(calls, "setpriv") {
		t.Errorf("the same image again ran the writer:\n%s", calls)
	}
}

func TestGatewayRefreshUnchangedTemplate(t *testing.T) {
	cfg := renderTpl(refreshTplA, refreshTok)
	s := newRefresh(t, refreshTplA, refreshTplA, cfg)
	before := snapshot(t, filepath.Join(s.dir, "home"))
	out := s.boot(t)
	if !strings.Contains(out, "rc=0") || !strings.Contains(out, "the ones applied") || strings.Contains(out, "warning") {
		t.Errorf("unchanged template")
	}
	if after := snapshot(t, filepath.Join(s.dir, "home")); after != before {
		t.Errorf("changed:\n%s\n%s", before, after)
	}
	if calls := s.file(t, filepath.Join(s.dir, "calls")); strings.Contains(calls, "setpriv") {
		t.Errorf("ran as the gateway for nothing:\n%s", calls)
	}
}

// A file the instance (an admin, OpenClaw's config writers) changed is the
// instance's: left as it is, with a warning on the console and in the log
// that says what to do.
func TestGatewayRefreshChangedOnInstance(t *testing.T) {
	base := renderTpl(refreshTplA, refreshTok)
	for name, cfg := range map[string]string{
		"a key added":          strings.Replace(base, "{\n", "{\n  \"meta\": {\"lastTouchedVersion\": \"2026.9.6\"},\n", 1),
		"a value changed":      strings.Replace(base, "18789", "18800", 1),
		"spacing changed":      strings.ReplaceAll(base, "  ", "\t"),
		"no final newline":     strings.TrimRight(base, "\n"),
		"a key in the token":   renderTpl(refreshTplA, refreshTok+`", "extra": "x`),
		"another token length": renderTpl(refreshTplA, "short"),
	} {
		t.Run(name, func(t *testing.T) {
			s := newRefresh(t, refreshTplB, refreshTplA, cfg)
			out := s.boot(t)
			if !strings.Contains(out, "rc=0") {
				t.Errorf("failed: the instance's own file is no error")
			}
			// ("no final newline": $(cat) drops it; the check's render,
			// compared byte for byte, does not.)
			if want := "openclaw.json was changed on this instance"; !strings.Contains(out, want) {
				t.Fatalf("no %q", want)
			}
			for _, w := range []string{"were NOT applied", "sudo install -m 0600 "} {
				if !strings.Contains(out, w) || !strings.Contains(s.console(t), w) {
					t.Errorf("the warning (log and console) does not say %q: console %q", w, s.console(t))
				}
			}
			if got := s.file(t, s.config); got != cfg {
				t.Errorf("the instance's file was changed:\n%s", got)
			}
			if got := s.file(t, s.applied); got != refreshTplA {
				t.Errorf("applied template changed: %q", got)
			}
		})
	}
}

// A volume from a bake that kept no record of the template: the file is
// left unless it is this image's own render (then the record is made).
func TestGatewayRefreshNoRecord(t *testing.T) {
	t.Run("the old image's render", func(t *testing.T) {
		cfg := renderTpl(refreshTplA, refreshTok)
		s := newRefresh(t, refreshTplB, "", cfg)
		out := s.boot(t)
		if !strings.Contains(out, "rc=0") || !strings.Contains(out, "no record of the template") || !strings.Contains(out, "were NOT applied") || !strings.Contains(s.console(t), "no record of the template") {
			t.Errorf("no warning")
		}
		if got := s.file(t, s.config); got != cfg {
			t.Errorf("changed:\n%s", got)
		}
		if _, err := os.Stat(s.applied); !os.IsNotExist(err) {
			t.Errorf("a template was recorded as applied although the file is not its render")
		}
	})
	t.Run("this image's render", func(t *testing.T) {
		cfg := renderTpl(refreshTplB, refreshTok)
		s := newRefresh(t, refreshTplB, "", cfg)
		out := s.boot(t)
		if !strings.Contains(out, "rc=0") || !strings.Contains(out, "recorded the template as applied") || strings.Contains(out, "warning") {
			t.Errorf("not adopted")
		}
		if got := s.file(t, s.config); got != cfg {
			t.Errorf("changed:\n%s", got)
		}
		if got := s.file(t, s.applied); got != refreshTplB {
			t.Errorf("applied: %q", got)
		}
	})
	t.Run("no openclaw.json", func(t *testing.T) {
		s := newRefresh(t, refreshTplB, refreshTplA, "")
		out := s.boot(t)
		if !strings.Contains(out, "rc=0") || !strings.Contains(out, "is missing") {
			t.Errorf("no warning")
		}
		if _, err := os.Lstat(s.config); !os.IsNotExist(err) {
			t.Errorf("made an openclaw.json without the instance's token")
		}
	})
}

// A link planted where the gateway can write is refused, as at first boot:
// the unit fails, what the link points at is untouched, the writer does
// not run.
func TestGatewayRefreshSymlink(t *testing.T) {
	for _, which := range []string{"openclaw.json", "the state dir"} {
		t.Run(which, func(t *testing.T) {
			s := newRefresh(t, refreshTplB, refreshTplA, "")
			victim := filepath.Join(s.outside, "openclaw.json")
			os.WriteFile(victim, []byte(renderTpl(refreshTplA, refreshTok)), 0o644)
			if which == "openclaw.json" {
				symlink(t, victim, s.config)
			} else {
				os.Remove(filepath.Dir(s.config))
				symlink(t, s.outside, filepath.Dir(s.config))
			}
			before := snapshot(t, s.outside)
			out := s.boot(t)
			if !strings.Contains(out, "rc=1") || !strings.Contains(out, "is a symlink") || !strings.Contains(out, "gateway settings could not be applied") {
				t.Errorf("not refused")
			}
			if after := snapshot(t, s.outside); after != before {
				t.Errorf("what the link points at changed:\n%s\n%s", before, after)
			}
			if calls := s.file(t, filepath.Join(s.dir, "calls")); strings.Contains(calls, "setpriv") {
				t.Errorf("ran as the gateway through a refused path:\n%s", calls)
			}
			if got := s.file(t, s.applied); got != refreshTplA {
				t.Errorf("applied template changed: %q", got)
			}
		})
	}
}
