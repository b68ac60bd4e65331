package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/gwprobe"
)

const token = "0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCD"

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(newHandler(token))
	defer srv.Close()
	get := func(path string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, strings.TrimSpace(b.String())
	}
	if code, _ := get("/healthz", nil); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	for _, c := range []struct {
		path string
		hdr  map[string]string
		code int
		body string
	}{
		{"/health", map[string]string{"Authorization": "Bearer " + token}, 200, "OK"},
		{"/health?token=" + url.QueryEscape(token), nil, 200, "OK"},
		{"/health", nil, 401, mismatch},
		{"/health", map[string]string{"Authorization": "Bearer wrong"}, 401, mismatch},
		{"/health?token=" + token[:10], nil, 401, mismatch},
		{"/health", map[string]string{"Authorization": "Basic " + token}, 401, mismatch},
	} {
		code, body := get(c.path, c.hdr)
		if code != c.code || body != c.body {
			t.Errorf("%s %v: %d %q, want %d %q", c.path, c.hdr, code, body, c.code, c.body)
		}
	}
}

func TestHealthCLI(t *testing.T) {
	srv := httptest.NewServer(newHandler(token))
	defer srv.Close()
	ws := "ws" + strings.TrimPrefix(srv.URL, "http")
	var out, errb bytes.Buffer
	if rc := run([]string{"gateway", "health", "--url", ws, "--token", token}, &out, &errb); rc != 0 ||
		!strings.Contains(out.String(), "OK") {
		t.Errorf("right token: rc %d out %q err %q", rc, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if rc := run([]string{"gateway", "health", "--url", ws, "--token", "wrong"}, &out, &errb); rc != 1 ||
		!strings.Contains(errb.String(), "unauthorized: gateway token mismatch") || out.Len() != 0 {
		t.Errorf("wrong token: rc %d out %q err %q", rc, out.String(), errb.String())
	}
	srv.Close()
	if rc := run([]string{"gateway", "health", "--url", ws, "--token", token}, &out, &errb); rc != 1 {
		t.Errorf("closed gateway: rc %d", rc)
	}
	if rc := run([]string{"nonsense"}, &out, &errb); rc != 2 {
		t.Errorf("usage: rc %d", rc)
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "openclaw.json")
	os.WriteFile(p, []byte(`{
  // written by bake's first boot
  "gateway": {
    "mode": "local", "bind": "lan", "port": 18789,
    "controlUi": {"url": "http://example.com/a//b"}, /* not a comment inside a string */
    "auth": {"mode": "token", "token": "`+token+`",},
  },
}`), 0o600)
	c, err := loadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Gateway.Auth.Token != token || c.Gateway.Port != 18789 {
		t.Errorf("config %+v", c)
	}
	for _, bad := range []string{
		`{"gateway":{"mode":"remote","auth":{"mode":"token","token":"x"}}}`,
		`{"gateway":{"mode":"local","auth":{"mode":"none"}}}`,
		`{"gateway":{"mode":"local","auth":{"mode":"token","token":""}}}`,
		`{"gateway":`,
	} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := loadConfig(p); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if _, err := loadConfig(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing config accepted")
	}
}

func TestConfigPath(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for want, m := range map[string]map[string]string{
		"/c/x.json":                          {"OPENCLAW_CONFIG_PATH": "/c/x.json", "HOME": "/h"},
		"/s/openclaw.json":                   {"OPENCLAW_STATE_DIR": "/s", "HOME": "/h"},
		"/oh/.openclaw/openclaw.json":        {"OPENCLAW_HOME": "/oh", "HOME": "/h"},
		"/h/.openclaw/openclaw.json":         {"HOME": "/h"},
		"/home/node/.openclaw/openclaw.json": {"HOME": "/"},
	} {
		if got := configPath(env(m)); got != want {
			t.Errorf("%v: %s, want %s", m, got, want)
		}
	}
}

func TestRunRefusesWithoutConfig(t *testing.T) {
	t.Setenv("OPENCLAW_CONFIG_PATH", filepath.Join(t.TempDir(), "missing.json"))
	var out, errb bytes.Buffer
	if rc := run([]string{"gateway", "run", "--port", "0"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "config") {
		t.Errorf("rc %d err %q", rc, errb.String())
	}
}

// The WebSocket side answers bake verify's client (internal/gwprobe) as
// OpenClaw 2026.9 does: hello-ok and health for the token, the token
// mismatch for another, "device identity required" for none.
func TestWebSocketAuth(t *testing.T) {
	srv := httptest.NewServer(newHandler(token))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	probe := func(tok string) gwprobe.Result {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := gwprobe.Probe(ctx, gwprobe.StreamConn(c, c, c.Close), "127.0.0.1:18789", tok)
		if err != nil {
			t.Fatalf("token %q: %v", tok, err)
		}
		return r
	}
	if r := probe(token); !r.Accepted || !r.Health || r.Protocol != gwprobe.Protocol || r.Role != "operator" {
		t.Errorf("right token: %s", r)
	}
	if r := probe(token[:63] + "x"); !r.Refused() || r.Code != "INVALID_REQUEST" || r.Message != mismatch {
		t.Errorf("wrong token: %s", r)
	}
	if r := probe(""); !r.Refused() || r.Code != "NOT_PAIRED" || r.Message != "device identity required" {
		t.Errorf("no token: %s", r)
	}
	// A plain GET of / is not the WebSocket.
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /: %s", resp.Status)
	}
}
