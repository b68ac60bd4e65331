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
}

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
func OpenClawConfig(port int, token string) string {
	cfg := map[string]any{
		"gateway": map[string]any{
			"mode": "local",
			"bind": "lan",
			"port": port,
			"auth": map[string]any{
				"mode":  "token",
				"token": token,
			},
			"tailscale": map[string]any{"mode": "off"},
		},
	}
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
		file(GatewayConfigTemplate, OpenClawConfig(g.Port, TokenPlaceholder), unitMode),
		Dir(g.StateDir, 0o700, g.Owner),
	}
}
