package verify

import (
	"strings"
	"testing"
)

// TestJudgeServe: tailscale serve status --json against the claims: the
// serve-http port and nothing else, and any funnel entry fails, with the
// entry named.
func TestJudgeServe(t *testing.T) {
	httpSpec := DefaultSpec()
	httpSpec.TailscaleServeHTTP = 80
	gw := httpSpec.Gateway.Port
	proxy := `"Handlers":{"/":{"Proxy":"http://127.0.0.1:` + itoa(gw) + `"}}`
	noServe := DefaultSpec()
	noServe.TailscaleServeHTTP = 0
	for _, c := range []struct {
		name string
		spec Spec
		json string
		fail []string // substrings of the problems; none: pass
	}{
		{"serve-http as claimed", httpSpec, `{"TCP":{"80":{"HTTP":true}},"Web":{"openclaw-test:80":{` + proxy + `}}}`, nil},
		{"serve-http with funnel", httpSpec, `{"TCP":{"80":{"HTTP":true}},"Web":{"openclaw-test:80":{` + proxy + `}},"AllowFunnel":{"openclaw-test.tailnet.test:443":true}}`,
			[]string{"funnel is on for openclaw-test.tailnet.test:443"}},
		{"funnel in a foreground session", httpSpec, `{"TCP":{"80":{"HTTP":true}},"Web":{"openclaw-test:80":{` + proxy + `}},"Foreground":{"abc":{"AllowFunnel":{"x:8443":true}}}}`,
			[]string{"foreground session abc: x:8443"}},
		{"funnel false is no funnel", httpSpec, `{"TCP":{"80":{"HTTP":true}},"Web":{"openclaw-test:80":{` + proxy + `}},"AllowFunnel":{"x:443":false}}`, nil},
		{"another port", httpSpec, `{"TCP":{"8080":{"HTTP":true}},"Web":{"openclaw-test:8080":{` + proxy + `}}}`,
			[]string{"want only 80", "no web handler on port 80"}},
		{"an extra port", httpSpec, `{"TCP":{"80":{"HTTP":true},"22":{}},"Web":{"openclaw-test:80":{` + proxy + `}}}`, []string{"TCP ports [22 80]"}},
		{"proxied elsewhere", httpSpec, `{"TCP":{"80":{"HTTP":true}},"Web":{"openclaw-test:80":{"Handlers":{"/":{"Proxy":"http://127.0.0.1:9"}}}}}`,
			[]string{"no web handler on port 80 proxies"}},
		{"nothing served though claimed", httpSpec, ``, []string{"want only 80"}},
		{"no serve claimed, none", noServe, `{}`, nil},
		{"no serve claimed, HTTPS serve not judged", noServe, `{"TCP":{"443":{"HTTPS":true}}}`, nil},
		{"no serve claimed, plain HTTP", noServe, `{"TCP":{"80":{"HTTP":true}}}`, []string{"plain-HTTP port 80"}},
		{"no serve claimed, funnel", noServe, `{"TCP":{"443":{"HTTPS":true}},"AllowFunnel":{"h:443":true}}`, []string{"funnel is on for h:443"}},
		{"not JSON", httpSpec, `Error: not running`, []string{"serve status --json"}},
	} {
		problems, summary := JudgeServe(c.spec, c.json)
		got := strings.Join(problems, "\n")
		if len(c.fail) == 0 {
			if len(problems) > 0 || summary == "" {
				t.Errorf("%s: want a pass, got %q (summary %q)", c.name, got, summary)
			}
			continue
		}
		if len(problems) == 0 {
			t.Errorf("%s: want a failure, passed: %s", c.name, summary)
		}
		for _, f := range c.fail {
			if !strings.Contains(got, f) {
				t.Errorf("%s: the problems lack %q:\n%s", c.name, f, got)
			}
		}
	}
}

// TestJoinSettled: the join unit is done with a boot when it joined,
// failed, or was skipped by a condition systemd actually checked. A unit
// whose start job has not run shows the same ActiveState=inactive and
// ConditionResult=no (zero values) and must be waited for, never read as
// "no key file" (nor, after a reboot, as "did not join again").
func TestJoinSettled(t *testing.T) {
	out := "ActiveState=inactive\nResult=success\nConditionResult=no\nConditionTimestampMonotonic=0\nExecMainStatus=0\nExecMainStartTimestampMonotonic=0\n"
	notYet := parseUnitProps(out)
	if joinSettled(notYet) || conditionEvaluated(notYet) {
		t.Errorf("a unit whose start job has not run is settled: %v", notYet)
	}
	for _, c := range []struct {
		props map[string]string
		want  bool
	}{
		{map[string]string{"ActiveState": "inactive", "ConditionResult": "no", "ConditionTimestampMonotonic": "158814400"}, true},
		{map[string]string{"ActiveState": "inactive", "ConditionResult": "no"}, false},
		{map[string]string{"ActiveState": "activating", "ConditionResult": "yes", "ConditionTimestampMonotonic": "158814400"}, false},
		{map[string]string{"ActiveState": "active", "ConditionResult": "yes", "ConditionTimestampMonotonic": "158814400"}, true},
		{map[string]string{"ActiveState": "failed", "ConditionResult": "yes", "ConditionTimestampMonotonic": "158814400"}, true},
		{map[string]string{}, false},
	} {
		if got := joinSettled(c.props); got != c.want {
			t.Errorf("joinSettled(%v) = %v, want %v", c.props, got, c.want)
		}
	}
}
