package appliance

import (
	"fmt"
	"strings"
)

// Tailscale file locations.
const (
	TailscaleUpScript   = LibDir + "/tailscale-up"
	TailscaleUpUnitName = "bake-tailscale-up.service"
	TailscaleUpUnit     = UnitDir + "/" + TailscaleUpUnitName
	// TailscaleAuthKeyFile is where first boot leaves the seed's auth
	// key; the join unit removes it once the node has joined.
	TailscaleAuthKeyFile = SecretDir + "/tailscale_authkey"
)

// TailscaleOptions configure the join unit.
type TailscaleOptions struct {
	Operator string // the user who may run tailscale without sudo
	// Mode is gateway.tailscale_mode: serve publishes the gateway on the
	// tailnet over HTTPS, funnel on the internet, off nothing.
	Mode        string
	GatewayPort int
}

// TailscaleUpScriptText joins the tailnet with the seed's auth key (read
// from a file, never on a command line other users can see), makes the
// admin the operator, and serves the gateway. `tailscale serve` runs in
// the foreground unless given --bg. The auth key file is removed once
// tailscale up returns, whether the join worked or not.
func TailscaleUpScriptText(o TailscaleOptions) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# bake: join the tailnet once, with the auth key from the instance's seed.\nset -eu\n")
	fmt.Fprintf(&b, "key=%s\n", TailscaleAuthKeyFile)
	b.WriteString(`if [ ! -s "$key" ]; then
	echo "bake-tailscale-up: no auth key in the seed; join by hand with: sudo tailscale up"
	exit 0
fi
echo "bake-tailscale-up: joining the tailnet"
# The key is removed whatever tailscale up says: a failed join must not
# leave it on the disk (the seed still holds it for a join by hand).
rc=0
tailscale up --auth-key="file:$key" --timeout=5m || rc=$?
rm -f "$key"
if [ "$rc" -ne 0 ]; then
	echo "bake-tailscale-up: joining the tailnet failed (tailscale up exited $rc); the auth key was removed from $key; join by hand with: sudo tailscale up" >&2
	exit "$rc"
fi
`)
	if o.Operator != "" {
		fmt.Fprintf(&b, "tailscale set --operator=%s\n", shQuote(o.Operator))
	}
	switch o.Mode {
	case "serve":
		fmt.Fprintf(&b, "tailscale serve --bg http://127.0.0.1:%d\n", o.GatewayPort)
	case "funnel":
		fmt.Fprintf(&b, "tailscale funnel --bg http://127.0.0.1:%d\n", o.GatewayPort)
	}
	b.WriteString("tailscale status --self --peers=false || true\n")
	return b.String()
}

// tailscaleUpUnit runs after the network is online; nothing waits for it
// (ssh least of all), and it acts only while an auth key is waiting.
const tailscaleUpUnit = `[Unit]
Description=bake: join the tailnet with the seed's auth key
Wants=network-online.target
After=network-online.target tailscaled.service bake-firstboot.service
Requires=tailscaled.service
ConditionPathExists=` + TailscaleAuthKeyFile + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + TailscaleUpScript + `

[Install]
WantedBy=multi-user.target
`

// TailscaleFiles are the join unit and its script.
func TailscaleFiles(o TailscaleOptions) []File {
	return []File{
		file(TailscaleUpScript, TailscaleUpScriptText(o), execMode),
		file(TailscaleUpUnit, Header+tailscaleUpUnit, unitMode),
		Dir(SecretDir, 0o700, ""),
	}
}
