package gwprobe

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// script is a fake gateway: it sends frames[0] on connect, and after each
// request it reads, the next frame (with the request's id put in place of
// "ID"). When the frames run out it closes the connection.
func fakeGateway(t *testing.T, frames ...string) (addr string, got chan []map[string]any) {
	t.Helper()
	got = make(chan []map[string]any, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		ctx := r.Context()
		var reqs []map[string]any
		defer func() { got <- reqs }()
		if len(frames) == 0 {
			return
		}
		if ws.Write(ctx, websocket.MessageText, []byte(frames[0])) != nil {
			return
		}
		for _, f := range frames[1:] {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			reqs = append(reqs, m)
			id, _ := m["id"].(string)
			for _, part := range strings.Split(f, "\n") {
				if ws.Write(ctx, websocket.MessageText, []byte(strings.ReplaceAll(part, `"ID"`, `"`+id+`"`))) != nil {
					return
				}
			}
		}
		ws.Close(websocket.StatusNormalClosure, "")
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), got
}

// dialStream connects to addr through StreamConn, as bake verify's relay
// does.
func dialStream(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return StreamConn(c, c, c.Close)
}

const (
	challenge = `{"type":"event","event":"connect.challenge","payload":{"nonce":"n","ts":1}}`
	helloOK   = `{"type":"res","id":"ID","ok":true,"payload":{"type":"hello-ok","protocol":4,"server":{"version":"2026.9.6"},"auth":{"role":"operator","scopes":["operator.read"]}}}`
	healthOK  = `{"type":"event","event":"tick","payload":{}}` + "\n" + `{"type":"res","id":"ID","ok":true,"payload":{"ok":true}}`
	mismatch  = `{"type":"res","id":"ID","ok":false,"error":{"code":"INVALID_REQUEST","message":"unauthorized: gateway token mismatch"}}`
)

func probe(t *testing.T, addr, tok string) (Result, error) {
	t.Helper()
	return probeWithin(t, addr, tok, 10*time.Second)
}

func probeWithin(t *testing.T, addr, tok string, d time.Duration) (Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return Probe(ctx, dialStream(t, addr), "127.0.0.1:18789", tok)
}

func TestAccepted(t *testing.T) {
	addr, got := fakeGateway(t, challenge, helloOK, healthOK)
	r, err := probe(t, addr, token)
	if err != nil || !r.Accepted || !r.Health || r.Server != "2026.9.6" || r.Protocol != 4 || r.Role != "operator" {
		t.Fatalf("%+v %v", r, err)
	}
	reqs := <-got
	if len(reqs) != 2 || reqs[0]["method"] != "connect" || reqs[1]["method"] != "health" {
		t.Fatalf("requests %v", reqs)
	}
	p := reqs[0]["params"].(map[string]any)
	if p["auth"].(map[string]any)["token"] != token || p["minProtocol"] != float64(Protocol) || p["role"] != "operator" {
		t.Errorf("connect params %v", p)
	}
	if !strings.Contains(r.String(), "hello-ok (server 2026.9.6") || strings.Contains(r.String(), token) {
		t.Errorf("String %q", r.String())
	}
}

func TestRefused(t *testing.T) {
	addr, got := fakeGateway(t, challenge, mismatch)
	r, err := probe(t, addr, "wrong")
	if err != nil || r.Accepted || !r.Refused() || r.Code != "INVALID_REQUEST" || !strings.Contains(r.Message, "unauthorized") {
		t.Fatalf("%+v %v", r, err)
	}
	reqs := <-got
	if len(reqs) != 1 {
		t.Fatalf("requests %v: no health after a refusal", reqs)
	}
}

// No token: no auth object at all.
func TestNoToken(t *testing.T) {
	addr, got := fakeGateway(t, challenge, `{"type":"res","id":"ID","ok":false,"error":{"code":"NOT_PAIRED","message":"device identity required"}}`)
	r, err := probe(t, addr, "")
	if err != nil || !r.Refused() || r.Code != "NOT_PAIRED" {
		t.Fatalf("%+v %v", r, err)
	}
	if p := (<-got)[0]["params"].(map[string]any); p["auth"] != nil {
		t.Errorf("auth sent without a token: %v", p["auth"])
	}
}

// Anything that is neither a hello-ok nor a refusal is an error, never
// an acceptance.
func TestFailsClosed(t *testing.T) {
	for name, frames := range map[string][]string{
		"no challenge":           {helloOK},
		"silence":                {},
		"closed after challenge": {challenge},
		"not json":               {challenge, `hello`},
		"ok without hello-ok":    {challenge, `{"type":"res","id":"ID","ok":true,"payload":{"type":"something"}}`},
		"ok with no payload":     {challenge, `{"type":"res","id":"ID","ok":true}`},
		"answer to another id":   {challenge, `{"type":"res","id":"other","ok":true,"payload":{"type":"hello-ok"}}`},
		"only events":            {challenge, strings.Repeat(`{"type":"event","event":"tick"}`+"\n", MaxFrames+5)},
	} {
		t.Run(name, func(t *testing.T) {
			addr, _ := fakeGateway(t, frames...)
			r, err := probe(t, addr, token)
			if err == nil || r.Accepted {
				t.Fatalf("%+v %v: want an error", r, err)
			}
		})
	}
	// A refusal with neither code nor message is still a refusal, said so.
	addr, _ := fakeGateway(t, challenge, `{"type":"res","id":"ID","ok":false}`)
	if r, err := probe(t, addr, token); err != nil || !r.Refused() || r.Accepted {
		t.Fatalf("%+v %v", r, err)
	}
	// Accepted but health not ok: accepted, Health false, said why.
	for _, h := range []string{
		`{"type":"res","id":"ID","ok":false,"error":{"code":"FORBIDDEN","message":"missing scope"}}`,
		`{"type":"res","id":"ID","ok":true,"payload":{"ok":false}}`,
	} {
		addr, _ := fakeGateway(t, challenge, helloOK, h)
		r, err := probe(t, addr, token)
		if err != nil || !r.Accepted || r.Health || r.HealthErr == "" {
			t.Fatalf("%s: %+v %v", h, r, err)
		}
	}
}

// A frame over MaxFrame is not read into memory: an error.
func TestFrameBounded(t *testing.T) {
	big := `{"type":"event","event":"x","payload":"` + strings.Repeat("a", MaxFrame) + `"}`
	addr, _ := fakeGateway(t, big)
	if r, err := probe(t, addr, token); err == nil {
		t.Fatalf("%+v: a frame over %d bytes read", r, MaxFrame)
	}
}

// A gateway that never answers: Probe ends with its context, and closes
// the connection.
func TestContextBounds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			// Reads the upgrade request, never answers.
			b := make([]byte, 4096)
			for {
				if _, err := c.Read(b); err != nil {
					return
				}
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	conn := StreamConn(c, c, func() error { close(closed); return c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := Probe(ctx, conn, "127.0.0.1:18789", token); err == nil {
		t.Fatal("no error")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("Probe took %s past its context", d)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Error("the connection was not closed")
	}
}

// FuzzProbe: whatever a hostile gateway sends, Probe returns (bounded),
// and says Accepted only for a hello-ok answer to its connect.
func FuzzProbe(f *testing.F) {
	f.Add([]byte(challenge + "\x00" + helloOK + "\x00" + healthOK))
	f.Add([]byte(challenge + "\x00" + mismatch))
	f.Add([]byte(`{"type":"event"}` + "\x00" + `{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := strings.Split(string(data), "\x00")
		if len(frames) > 8 {
			frames = frames[:8]
		}
		addr, _ := fakeGateway(t, frames...)
		// A script that stops answering ends with the context: short,
		// so that the fuzzer does not take the wait for a hang.
		r, err := probeWithin(t, addr, token, 500*time.Millisecond)
		if r.Accepted && (err != nil || !bytes.Contains(data, []byte("hello-ok"))) {
			t.Fatalf("accepted without a hello-ok: %+v %v", r, err)
		}
	})
}

func TestParseFrame(t *testing.T) {
	for _, s := range []string{``, `null`, `[]`, `{}`, `{"type":""}`, `{"type":1}`} {
		if _, err := ParseFrame([]byte(s)); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
	f, err := ParseFrame([]byte(mismatch))
	if err != nil || f.Type != "res" || f.Error == nil || f.OK == nil || *f.OK {
		t.Errorf("%+v %v", f, err)
	}
}
