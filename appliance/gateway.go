package appliance

import (
	"encoding/json"
	"strings"
)

// Gateway constants: where OpenClaw's gateway image keeps its state and
// config (HOME=/home/node; see package oci), and the placeholder first
// boot replaces with the instance's token.
const (
	GatewayContainerStateDir = "/home/node/.openclaw"
	GatewayConfigName        = "openclaw.json"
	GatewayConfigTemplate    = EtcDir + "/openclaw.json.in"
	TokenPlaceholder         = "@BAKE_GATEWAY_TOKEN@"
)

// GatewayOptions are the recipe's gateway settings after mapping
// (DESIGN.md 2.6).
type GatewayOptions struct {
	Port int
	// StateDir is the host directory (owned by the gateway's user, 0700)
	// mounted at GatewayContainerStateDir; openclaw.json lives in it.
	StateDir string
	Owner    string // user[:group] of StateDir and openclaw.json
	// Settings are the recipe's other settings of openclaw.json
	// (gateway.settings), merged into it: no key GatewayOwnedKeys names,
	// no placeholder (the recipe validates both).
	Settings map[string]any
}

// GatewayOwnedKeys are the keys of openclaw.json's "gateway" object that
// bake writes itself (from the recipe's gateway section and the
// instance's token): gateway.settings may not set them.
var GatewayOwnedKeys = []string{"mode", "bind", "port", "auth", "tailscale"}

// ConfigPath is openclaw.json on the host.
func (g GatewayOptions) ConfigPath() string { return g.StateDir + "/" + GatewayConfigName }

// Volume mounts the state dir where the image expects it.
func (g GatewayOptions) Volume() string { return g.StateDir + ":" + GatewayContainerStateDir }

// OpenClawConfig is the gateway's openclaw.json with token in place: the
// gateway listens on its container's own network ("lan": every interface
// of the container; the host publishes the port on 127.0.0.1 only, or on
// every address in network mode with the DOCKER-USER exception), in local
// mode (the only mode OpenClaw starts in), authenticating clients by token.
// Tailscale serve runs on the host, where the tailscale CLI is, so the
// gateway's own tailscale mode is off.
//
// settings (the recipe's gateway.settings) are merged in: their top-level
// keys beside "gateway", and the keys of their "gateway" object into
// bake's (bake's own keys win; the recipe refuses them). Keys are written
// sorted, so the same recipe gives the same file.
func OpenClawConfig(port int, token string, settings map[string]any) string {
	gw := map[string]any{}
	cfg := map[string]any{}
	for k, v := range settings {
		if k == "gateway" {
			if m, ok := v.(map[string]any); ok {
				for gk, gv := range m {
					gw[gk] = gv
				}
				continue
			}
		}
		cfg[k] = v
	}
	gw["mode"] = "local"
	gw["bind"] = "lan"
	gw["port"] = port
	gw["auth"] = map[string]any{
		"mode":  "token",
		"token": token,
	}
	gw["tailscale"] = map[string]any{"mode": "off"}
	cfg["gateway"] = gw
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(cfg)
	return b.String()
}

// GatewayFiles are the gateway's template (no secret in it) and its state
// directory, owned by the gateway's user, private.
func GatewayFiles(g GatewayOptions) []File {
	return []File{
		file(GatewayConfigTemplate, OpenClawConfig(g.Port, TokenPlaceholder, g.Settings), unitMode),
		Dir(g.StateDir, 0o700, g.Owner),
	}
}
