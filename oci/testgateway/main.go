// Command testgateway stands in for OpenClaw's gateway in fast tests: a
// small static server that reads gateway.auth.token from openclaw.json at
// the path the real image uses and refuses clients without that token, and
// the same health probe command line as the real CLI, so the appliance's
// checks are the same for both.
//
//	openclaw gateway run [--bind lan|loopback] [--port 18789]
//	openclaw gateway health --url ws://127.0.0.1:18789 --token T
//	openclaw healthz [--port 18789]
//
// The config is $OPENCLAW_CONFIG_PATH, else $OPENCLAW_STATE_DIR/openclaw.json,
// else $OPENCLAW_HOME or $HOME + /.openclaw/openclaw.json, else
// /home/node/.openclaw/openclaw.json (as the real gateway resolves it). It
// must say gateway.mode "local" and gateway.auth.mode "token" with a token;
// otherwise the server exits with status 1, as the real one refuses to
// start.
//
// HTTP: /healthz answers 200 to anyone; /health answers "OK" to a request
// with "Authorization: Bearer T" or "?token=T" and 401 "unauthorized:
// gateway token mismatch" to any other.
//
// WebSocket (any other path, as the real gateway): the part of OpenClaw's
// gateway protocol v4 that bake verify's gateway.auth speaks
// (internal/gwprobe), answered as OpenClaw 2026.9 answers it: a
// connect.challenge event first; a connect request with the token gets a
// hello-ok, one with another token INVALID_REQUEST "unauthorized: gateway
// token mismatch ...", one with none (and, as from bake, no device
// identity) NOT_PAIRED "device identity required", each refusal followed
// by a close with 1008; then a health request is answered ok.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

const (
	defaultPort   = 18789
	mismatch      = "unauthorized: gateway token mismatch (use this gateway's gateway.auth.token or pair the device)"
	defaultConfig = "/home/node/.openclaw/openclaw.json"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) >= 2 && args[0] == "gateway" && args[1] == "run":
		return gatewayRun(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "gateway" && args[1] == "health":
		return gatewayHealth(args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "healthz":
		return healthz(args[1:], stdout, stderr)
	}
	fmt.Fprintln(stderr, "usage: openclaw gateway run [--bind lan|loopback] [--port N] | gateway health --url ws://HOST:PORT --token T | healthz [--port N]")
	return 2
}

// configPath resolves openclaw.json the way the real gateway does.
func configPath(getenv func(string) string) string {
	if p := getenv("OPENCLAW_CONFIG_PATH"); p != "" {
		return p
	}
	if d := getenv("OPENCLAW_STATE_DIR"); d != "" {
		return filepath.Join(d, "openclaw.json")
	}
	for _, h := range []string{getenv("OPENCLAW_HOME"), getenv("HOME")} {
		if h != "" && h != "/" {
			return filepath.Join(h, ".openclaw", "openclaw.json")
		}
	}
	return defaultConfig
}

type config struct {
	Gateway struct {
		Mode string `json:"mode"`
		Bind string `json:"bind"`
		Port int    `json:"port"`
		Auth struct {
			Mode  string `json:"mode"`
			Token string `json:"token"`
		} `json:"auth"`
	} `json:"gateway"`
}

// loadConfig reads openclaw.json: JSON with the JSON5 comforts a person
// or a config writer may use (comments, trailing commas).
func loadConfig(p string) (config, error) {
	var c config
	b, err := os.ReadFile(p)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(json5Light(b), &c); err != nil {
		return c, fmt.Errorf("%s: %w", p, err)
	}
	switch {
	case c.Gateway.Mode != "local":
		return c, fmt.Errorf("%s: gateway.mode must be \"local\" (got %q)", p, c.Gateway.Mode)
	case c.Gateway.Auth.Mode != "token":
		return c, fmt.Errorf("%s: gateway.auth.mode must be \"token\" (got %q)", p, c.Gateway.Auth.Mode)
	case c.Gateway.Auth.Token == "":
		return c, fmt.Errorf("%s: gateway.auth.token is empty", p)
	}
	return c, nil
}

// json5Light removes // and /* */ comments and trailing commas outside
// strings.
func json5Light(b []byte) []byte {
	var out []byte
	inStr := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inStr {
			out = append(out, c)
			if c == '\\' && i+1 < len(b) {
				i++
				out = append(out, b[i])
			} else if c == '"' {
				inStr = false
			}
			continue
		}
		switch {
		case c == '"':
			inStr = true
			out = append(out, c)
		case c == '/' && i+1 < len(b) && b[i+1] == '/':
			for i < len(b) && b[i] != '\n' {
				i++
			}
			i--
		case c == '/' && i+1 < len(b) && b[i+1] == '*':
			end := strings.Index(string(b[i+2:]), "*/")
			if end < 0 {
				return out
			}
			i += end + 3
		case c == '}' || c == ']':
			j := len(out) - 1
			for j >= 0 && (out[j] == ' ' || out[j] == '\t' || out[j] == '\n' || out[j] == '\r') {
				j--
			}
			if j >= 0 && out[j] == ',' {
				out = append(out[:j], out[j+1:]...)
			}
			out = append(out, c)
		default:
			out = append(out, c)
		}
	}
	return out
}

func newHandler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true,"status":"live"}`)
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		got := r.URL.Query().Get("token")
		if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
			got = strings.TrimPrefix(a, "Bearer ")
		}
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			http.Error(w, mismatch, http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "OK\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.NotFound(w, r)
			return
		}
		serveWS(w, r, token)
	})
	return mux
}

type wsFrame struct {
	Type   string          `json:"type"`
	ID     string          `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
}

type wsError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// serveWS answers one WebSocket client (see the package comment).
func serveWS(w http.ResponseWriter, r *http.Request, token string) {
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	// The real gateway's pre-connect budget.
	// The real gateway's pre-connect budget, then a minute for the rest.
	ctx, cancel := context.WithTimeout(r.Context(), 75*time.Second)
	defer cancel()
	pre, preCancel := context.WithTimeout(ctx, 15*time.Second)
	defer preCancel()
	send := func(v any) error {
		b, _ := json.Marshal(v)
		return ws.Write(ctx, websocket.MessageText, b)
	}
	res := func(id string, payload any, e *wsError) error {
		m := map[string]any{"type": "res", "id": id, "ok": e == nil}
		if e != nil {
			m["error"] = e
		} else {
			m["payload"] = payload
		}
		return send(m)
	}
	nonce := make([]byte, 16)
	if f, err := os.Open("/dev/urandom"); err == nil {
		io.ReadFull(f, nonce)
		f.Close()
	}
	if send(map[string]any{"type": "event", "event": "connect.challenge",
		"payload": map[string]any{"nonce": fmt.Sprintf("%x", nonce), "ts": time.Now().UnixMilli()}}) != nil {
		return
	}
	connected := false
	for {
		rctx := ctx
		if !connected {
			rctx = pre
		}
		_, b, err := ws.Read(rctx)
		if err != nil {
			return
		}
		var f wsFrame
		if json.Unmarshal(b, &f) != nil || f.Type != "req" {
			ws.Close(websocket.StatusPolicyViolation, "invalid frame")
			return
		}
		switch {
		case !connected && f.Method != "connect":
			res(f.ID, nil, &wsError{"INVALID_REQUEST", "invalid handshake: first request must be connect"})
			ws.Close(websocket.StatusPolicyViolation, "invalid handshake")
			return
		case f.Method == "connect":
			var p struct {
				MinProtocol int      `json:"minProtocol"`
				MaxProtocol int      `json:"maxProtocol"`
				Scopes      []string `json:"scopes"`
				Auth        struct {
					Token string `json:"token"`
				} `json:"auth"`
			}
			json.Unmarshal(f.Params, &p)
			var refuse *wsError
			switch {
			case connected:
				refuse = &wsError{"INVALID_REQUEST", "already connected"}
			case p.MinProtocol > 4 || p.MaxProtocol < 4:
				refuse = &wsError{"INVALID_REQUEST", "protocol mismatch"}
			case p.Auth.Token == "":
				refuse = &wsError{"NOT_PAIRED", "device identity required"}
			case subtle.ConstantTimeCompare([]byte(p.Auth.Token), []byte(token)) != 1:
				refuse = &wsError{"INVALID_REQUEST", mismatch}
			}
			if refuse != nil {
				res(f.ID, nil, refuse)
				ws.Close(websocket.StatusPolicyViolation, refuse.Message)
				return
			}
			connected = true
			if p.Scopes == nil {
				p.Scopes = []string{}
			}
			res(f.ID, map[string]any{"type": "hello-ok", "protocol": 4,
				"server": map[string]any{"version": "testgateway", "connId": fmt.Sprintf("%x", nonce[:8])},
				"auth":   map[string]any{"method": "token", "role": "operator", "scopes": p.Scopes}}, nil)
		case f.Method == "health":
			res(f.ID, map[string]any{"ok": true, "ts": time.Now().UnixMilli()}, nil)
		default:
			res(f.ID, nil, &wsError{"INVALID_REQUEST", "unknown method: " + f.Method})
		}
	}
}

func gatewayRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gateway run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bind := fs.String("bind", "lan", "lan (all interfaces) or loopback")
	port := fs.Int("port", 0, "port (default: config gateway.port, $PORT, 18789)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	p := configPath(os.Getenv)
	c, err := loadConfig(p)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: config: %v\n", err)
		return 1
	}
	if *port == 0 {
		*port = c.Gateway.Port
	}
	if *port == 0 {
		if n, err := strconv.Atoi(os.Getenv("PORT")); err == nil {
			*port = n
		}
	}
	if *port == 0 {
		*port = defaultPort
	}
	host := ""
	switch *bind {
	case "lan", "auto":
	case "loopback":
		host = "127.0.0.1"
	default:
		fmt.Fprintf(stderr, "gateway: --bind %q: want lan or loopback\n", *bind)
		return 2
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Handler: newHandler(c.Gateway.Auth.Token), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	fmt.Fprintf(stdout, "[gateway] listening on ws://%s (test gateway, config %s, uid %d)\n", ln.Addr(), p, os.Getuid())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 1
	}
	return 0
}

// healthURL turns the probe's ws:// URL into the HTTP URL of /health.
func healthURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "http"
	case "wss", "https":
		u.Scheme = "https"
	default:
		return "", fmt.Errorf("--url %q: want ws://HOST:PORT", raw)
	}
	u.Path = "/health"
	return u.String(), nil
}

func gatewayHealth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gateway health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "ws://127.0.0.1:"+strconv.Itoa(defaultPort), "gateway URL")
	token := fs.String("token", "", "gateway token")
	timeout := fs.Duration("timeout", 10*time.Second, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	u, err := healthURL(*rawURL)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *token != "" {
		req.Header.Set("Authorization", "Bearer "+*token)
	}
	start := time.Now()
	resp, err := (&http.Client{Timeout: *timeout}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "gateway connect failed: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	// The real CLI's output: a title and "OK (NNms)" on stdout; the
	// server's refusal on stderr, exit status 1.
	if resp.StatusCode == http.StatusOK && msg == "OK" {
		fmt.Fprintf(stdout, "Gateway Health\nOK (%dms)\n", time.Since(start).Milliseconds())
		return 0
	}
	fmt.Fprintf(stderr, "gateway connect failed: %s\n%s\n", msg, msg)
	return 1
}

func healthz(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthz", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", defaultPort, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://127.0.0.1:" + strconv.Itoa(*port) + "/healthz")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, resp.Status)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}
