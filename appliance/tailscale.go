package appliance

import (
	"fmt"
	"path/filepath"
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
	// TailscaleCADir holds the recipe's extra CA bundle (tailscale.ca),
	// image-owned; TailscaleSeedCADir the seed's (bake.tailscale_ca,
	// written by first boot), instance-owned: it is under
	// /var/lib/tailscale, a state path (docs/state.md), so a new image on
	// the instance's state volume still trusts the control server the
	// node was joined to. tailscaled reads both besides the system's
	// roots (SSL_CERT_DIR, set by TailscaledCADropIn).
	TailscaleCADir      = EtcDir + "/tailscale-ca"
	TailscaleCAFile     = TailscaleCADir + "/ca.pem"
	TailscaleSeedCADir  = "/var/lib/tailscale/bake-ca"
	TailscaleSeedCAFile = TailscaleSeedCADir + "/seed.pem"
	// TailscaleSeedLoginServerFile is the seed's control server
	// (bake.tailscale_login_server, written by first boot): it overrides
	// the recipe's tailscale.login_server.
	TailscaleSeedLoginServerFile = EtcDir + "/tailscale-login-server"
	// TailscaledCADropIn is tailscaled.service's drop-in that sets it.
	TailscaledCADropIn = UnitDir + "/tailscaled.service.d/bake-ca.conf"
	// TailscaleCertDirs is SSL_CERT_DIR with the extra bundle: Go's
	// crypto/x509 (tailscaled's TLS) then reads the system bundle
	// (/etc/ssl/certs/ca-certificates.crt, SSL_CERT_FILE being unset),
	// every file in /etc/ssl/certs, the recipe's CA and the seed's.
	TailscaleCertDirs = "/etc/ssl/certs:" + TailscaleCADir + ":" + TailscaleSeedCADir
)

// TailscaleOptions configure the join unit.
type TailscaleOptions struct {
	Operator string // the user who may run tailscale without sudo
	// Mode is gateway.tailscale_mode: serve publishes the gateway on the
	// tailnet over HTTPS, serve-http over plain HTTP on HTTPPort (the
	// tailnet only: what headscale supports), funnel on the internet, off
	// nothing.
	Mode        string
	GatewayPort int
	HTTPPort    int
	// LoginServer is tailscale.login_server: the control server's URL
	// ("" is Tailscale's).
	LoginServer string
	// CA is tailscale.ca's content: PEM CA certificates tailscaled
	// trusts besides the system's (nil: none).
	CA []byte
}

// TailscaleUpScriptText joins the tailnet with the seed's auth key (read
// from a file, never on a command line other users can see), makes the
// admin the operator, and serves the gateway. `tailscale serve` runs in
// the foreground unless given --bg. The auth key file is removed once
// tailscale up returns, whether the join worked or not. The control
// server is the seed's (TailscaleSeedLoginServerFile, which first boot
// wrote from bake.tailscale_login_server) or else the recipe's.
func TailscaleUpScriptText(o TailscaleOptions) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# bake: join the tailnet once, with the auth key from the instance's seed.\nset -eu\n")
	fmt.Fprintf(&b, "key=%s\n", TailscaleAuthKeyFile)
	fmt.Fprintf(&b, "seedlogin=%s\n", TailscaleSeedLoginServerFile)
	// As tailscaled.service has it (TailscaledCADropIn); the CLI itself
	// makes no TLS connection to the control server.
	fmt.Fprintf(&b, "export SSL_CERT_DIR=%s\n", TailscaleCertDirs)
	// The recipe's login server (validated: only A-Z a-z 0-9 . - _ ~ : /
	// [ ] %), "" for Tailscale's.
	fmt.Fprintf(&b, "login=%s\n", shQuote(o.LoginServer))
	funnel := ""
	if o.Mode == "funnel" {
		// Funnel is Tailscale's service (recipe validation refuses it
		// with tailscale.login_server): a seed cannot move it elsewhere.
		funnel = `	rm -f "$key"
	echo "bake-tailscale-up: this image funnels the gateway (Tailscale's service), and the seed names another control server ($login); not joining (the auth key was removed)" >&2
	exit 1
`
	}
	b.WriteString(strings.NewReplacer("__FUNNEL__\n", funnel).Replace(`if [ -s "$seedlogin" ]; then
	# First boot checked it (https, no character outside the set below);
	# checked again: it goes on tailscale's command line.
	login=$(head -n 1 "$seedlogin")
	case $login in
	https://?*) ;;
	*) login=bad ;;
	esac
	case ${login#https://} in
	*[!]A-Za-z0-9._~:/%[-]*) login=bad ;;
	esac
	if [ "$login" = bad ]; then
		rm -f "$key"
		echo "bake-tailscale-up: $seedlogin is not an https URL of A-Z a-z 0-9 . - _ ~ : / [ ] %; not joining (the auth key was removed)" >&2
		exit 1
	fi
__FUNNEL__
	echo "bake-tailscale-up: login server from the seed: $login"
fi
if [ ! -s "$key" ]; then
	echo "bake-tailscale-up: no auth key in the seed; join by hand with: sudo tailscale up${login:+ --login-server=$login}"
	exit 0
fi
echo "bake-tailscale-up: joining the tailnet${login:+ at $login}"
# The key is removed whatever tailscale up says: a failed join must not
# leave it on the disk (the seed still holds it for a join by hand).
rc=0
tailscale up ${login:+"--login-server=$login"} --auth-key="file:$key" --timeout=5m || rc=$?
rm -f "$key"
if [ "$rc" -ne 0 ]; then
	echo "bake-tailscale-up: joining the tailnet failed (tailscale up exited $rc); the auth key was removed from $key; join by hand with: sudo tailscale up${login:+ --login-server=$login}" >&2
	exit "$rc"
fi
`))
	if o.Operator != "" {
		fmt.Fprintf(&b, "tailscale set --operator=%s\n", shQuote(o.Operator))
	}
	switch o.Mode {
	case "serve":
		fmt.Fprintf(&b, "tailscale serve --bg http://127.0.0.1:%d\n", o.GatewayPort)
	case "serve-http":
		// Plain HTTP on the tailnet only: no certificate is needed, and
		// serve (unlike funnel) never leaves the tailnet.
		fmt.Fprintf(&b, "tailscale serve --bg --http=%d http://127.0.0.1:%d\n", o.HTTPPort, o.GatewayPort)
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

// TailscaleFiles are the join unit and its script, and tailscaled's
// drop-in that makes it trust TailscaleCADir besides the system's roots
// (always: a seed may bring a CA too), with the recipe's CA in it.
func TailscaleFiles(o TailscaleOptions) []File {
	fs := []File{
		file(TailscaleUpScript, TailscaleUpScriptText(o), execMode),
		file(TailscaleUpUnit, Header+tailscaleUpUnit, unitMode),
		Dir(SecretDir, 0o700, ""),
		Dir(TailscaleCADir, 0o755, ""),
		Dir(filepath.Dir(TailscaledCADropIn), 0o755, ""),
		file(TailscaledCADropIn, Header+"[Service]\nEnvironment=SSL_CERT_DIR="+TailscaleCertDirs+"\n", unitMode),
	}
	if o.CA != nil {
		fs = append(fs, File{Path: TailscaleCAFile, Content: o.CA, Mode: 0o644})
	}
	return fs
}
