// Package gwprobe speaks as much of the OpenClaw gateway's WebSocket
// protocol as bake verify's gateway.auth check needs (stage: verify): the
// gateway's connect.challenge, a connect request with or without the
// shared token, the gateway's hello-ok or its refusal, and one health
// request. It replaces running the gateway's own Node CLI in the guest
// three times (`openclaw gateway health --token ...`), which under
// software emulation cost minutes of guest CPU per verify; the proof is
// the server's own answer, so a client that refuses to connect without
// credentials (as the CLI does) no longer stands in for the server's
// refusal.
//
// The connection is any byte stream to the gateway's port (bake verify
// relays one through an SSH session into the guest): Probe does the
// WebSocket upgrade on it and bounds everything it reads: one frame at
// most MaxFrame bytes, at most MaxFrames frames, and the caller's context
// for time. The guest and its gateway are not trusted.
package gwprobe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Protocol is the gateway protocol version bake speaks (OpenClaw's
// PROTOCOL_VERSION and MIN_CLIENT_PROTOCOL_VERSION since 2026.9).
const Protocol = 4

const (
	// MaxFrame bounds one frame read from the gateway (its hello-ok lists
	// every method and event it has: about 20 KiB for OpenClaw 2026.9).
	MaxFrame = 4 << 20
	// MaxFrames bounds the frames read in one Probe (the gateway sends
	// events, ticks and health broadcasts between answers).
	MaxFrames = 256
)

// Result is what the gateway answered.
type Result struct {
	// Challenge: the gateway opened with a connect.challenge event.
	Challenge bool
	// Accepted: connect answered ok with a hello-ok payload.
	Accepted bool
	// Server and Protocol are hello-ok's server.version and protocol.
	Server   string
	Protocol int
	// Role and Scopes: hello-ok's auth, what the connection may do.
	Role   string
	Scopes []string
	// Code and Message: the gateway's refusal of connect (ok false).
	Code, Message string
	// Health: the health request (sent only when Accepted) answered ok
	// with a payload whose ok is true; HealthErr says what it answered
	// otherwise.
	Health    bool
	HealthErr string
}

// Refused reports a connect the gateway answered with an error.
func (r Result) Refused() bool { return !r.Accepted && (r.Code != "" || r.Message != "") }

// String renders the result for a report, with no token in it.
func (r Result) String() string {
	switch {
	case r.Accepted:
		s := fmt.Sprintf("connect accepted: hello-ok (server %s, protocol %d, role %s, scopes [%s])", r.Server, r.Protocol, r.Role, strings.Join(r.Scopes, " "))
		if r.Health {
			return s + "; health: ok"
		}
		return s + "; health: " + r.HealthErr
	case r.Refused():
		return fmt.Sprintf("connect refused: %s %q", r.Code, r.Message)
	default:
		return "no answer to connect"
	}
}

// frame is one message of the protocol: an event, a request or a
// response.
type frame struct {
	Type    string          `json:"type"`
	Event   string          `json:"event,omitempty"`
	ID      string          `json:"id,omitempty"`
	OK      *bool           `json:"ok,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// ParseFrame reads one frame; anything but a JSON object with a type is
// an error.
func ParseFrame(b []byte) (frame, error) {
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("gateway frame: %w", err)
	}
	if f.Type == "" {
		return f, errors.New("gateway frame: no type")
	}
	return f, nil
}

type hello struct {
	Type     string `json:"type"`
	Protocol int    `json:"protocol"`
	Server   struct {
		Version string `json:"version"`
	} `json:"server"`
	Auth struct {
		Role   string   `json:"role"`
		Scopes []string `json:"scopes"`
	} `json:"auth"`
}

// Probe upgrades conn to a WebSocket for host (the Host header, e.g.
// 127.0.0.1:18789), waits for the gateway's challenge, connects as an
// operator CLI client with token (none when token is empty), and, when
// the gateway accepts, asks for its health. conn is closed when Probe
// returns. An error is a transport or protocol failure: the gateway said
// neither yes nor no.
func Probe(ctx context.Context, conn net.Conn, host, token string) (Result, error) {
	var res Result
	// Closed on every way out (a second Close of a StreamConn does
	// nothing; the WebSocket's own close comes first when it got that far).
	defer conn.Close()
	var once sync.Once
	tr := &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			var c net.Conn
			once.Do(func() { c = conn })
			if c == nil {
				return nil, errors.New("gwprobe: one connection only")
			}
			return c, nil
		},
		DisableKeepAlives: true,
	}
	ws, resp, err := websocket.Dial(ctx, "ws://"+host+"/", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
		HTTPHeader: http.Header{"User-Agent": {"bake-verify"}},
	})
	if err != nil {
		if resp != nil {
			return res, fmt.Errorf("websocket upgrade: %s: %w", resp.Status, err)
		}
		return res, fmt.Errorf("websocket upgrade: %w", err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(MaxFrame)
	reads := 0
	next := func() (frame, error) {
		for {
			if reads >= MaxFrames {
				return frame{}, fmt.Errorf("no answer in %d frames", MaxFrames)
			}
			reads++
			typ, b, err := ws.Read(ctx)
			if err != nil {
				return frame{}, err
			}
			if typ != websocket.MessageText {
				continue
			}
			return ParseFrame(b)
		}
	}
	// The gateway speaks first.
	f, err := next()
	if err != nil {
		return res, fmt.Errorf("waiting for connect.challenge: %w", err)
	}
	if f.Type != "event" || f.Event != "connect.challenge" {
		return res, fmt.Errorf("the gateway's first frame is %s %q, not the event connect.challenge", f.Type, f.Event)
	}
	res.Challenge = true
	params := map[string]any{
		"minProtocol": Protocol,
		"maxProtocol": Protocol,
		"client":      map[string]any{"id": "cli", "version": "1.0.0", "platform": "linux", "mode": "cli"},
		"role":        "operator",
		"scopes":      []string{"operator.read"},
		"caps":        []string{},
		"userAgent":   "bake-verify",
	}
	if token != "" {
		params["auth"] = map[string]any{"token": token}
	}
	if err := send(ctx, ws, "connect-1", "connect", params); err != nil {
		return res, err
	}
	f, err = answer(next, "connect-1")
	if err != nil {
		return res, fmt.Errorf("waiting for the answer to connect: %w", err)
	}
	if f.OK == nil || !*f.OK {
		if f.Error != nil {
			res.Code, res.Message = f.Error.Code, f.Error.Message
		}
		if !res.Refused() {
			res.Message = "an error with no code or message"
		}
		return res, nil
	}
	var h hello
	if err := json.Unmarshal(f.Payload, &h); err != nil || h.Type != "hello-ok" {
		return res, fmt.Errorf("connect answered ok without a hello-ok payload (%.200s)", f.Payload)
	}
	res.Accepted = true
	res.Server, res.Protocol, res.Role, res.Scopes = h.Server.Version, h.Protocol, h.Auth.Role, h.Auth.Scopes
	if err := send(ctx, ws, "health-1", "health", map[string]any{}); err != nil {
		res.HealthErr = err.Error()
		return res, nil
	}
	f, err = answer(next, "health-1")
	switch {
	case err != nil:
		res.HealthErr = "no answer: " + err.Error()
	case f.OK == nil || !*f.OK:
		res.HealthErr = "refused"
		if f.Error != nil {
			res.HealthErr = fmt.Sprintf("refused: %s %q", f.Error.Code, f.Error.Message)
		}
	default:
		var p struct {
			OK bool `json:"ok"`
		}
		if json.Unmarshal(f.Payload, &p) != nil || !p.OK {
			res.HealthErr = fmt.Sprintf("answered without ok: %.200s", f.Payload)
		} else {
			res.Health = true
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
	return res, nil
}

func send(ctx context.Context, ws *websocket.Conn, id, method string, params any) error {
	b, err := json.Marshal(map[string]any{"type": "req", "id": id, "method": method, "params": params})
	if err != nil {
		return err
	}
	if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("sending %s: %w", method, err)
	}
	return nil
}

// answer skips events until the response to id.
func answer(next func() (frame, error), id string) (frame, error) {
	for {
		f, err := next()
		if err != nil {
			return f, err
		}
		if f.Type == "res" && f.ID == id {
			return f, nil
		}
	}
}

// StreamConn makes a net.Conn of a byte stream (an SSH session's stdout
// and stdin, a relay's pipes): reads from r, writes to w, and Close
// calls closeFn once. Deadlines are not supported (Probe bounds by its
// context, closing the connection when it ends).
func StreamConn(r io.Reader, w io.Writer, closeFn func() error) net.Conn {
	return &streamConn{r: r, w: w, closeFn: closeFn}
}

type streamConn struct {
	r       io.Reader
	w       io.Writer
	once    sync.Once
	closeFn func() error
	err     error
}

func (c *streamConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *streamConn) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c *streamConn) Close() error {
	c.once.Do(func() { c.err = c.closeFn() })
	return c.err
}
func (c *streamConn) LocalAddr() net.Addr              { return streamAddr{} }
func (c *streamConn) RemoteAddr() net.Addr             { return streamAddr{} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

type streamAddr struct{}

func (streamAddr) Network() string { return "stream" }
func (streamAddr) String() string  { return "relay" }
