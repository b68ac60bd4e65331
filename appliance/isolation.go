package appliance

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// Layer 2 file locations.
const (
	DockerUserScript   = LibDir + "/docker-user"
	DockerUserUnitName = "bake-docker-user.service"
	DockerUserUnit     = UnitDir + "/" + DockerUserUnitName
	DockerUserRules4   = EtcDir + "/docker-user.rules.v4"
	DockerUserRules6   = EtcDir + "/docker-user.rules.v6"
	DockerDropIn       = UnitDir + "/docker.service.d/50-bake-isolation.conf"
	DaemonJSON         = "/etc/docker/daemon.json"
	JournaldDropIn     = "/etc/systemd/journald.conf.d/90-bake-limits.conf"
)

// Cloud metadata endpoints containers must not reach unless the recipe
// allows it (metadata_access), as exact prefixes:
//   - 169.254.0.0/16, all of IPv4 link-local: 169.254.169.254 (AWS, GCE,
//     OpenStack, Oracle, DigitalOcean, Azure IMDS), ECS task metadata
//     169.254.170.2, and whatever a cloud puts there next;
//   - 168.63.129.16, Azure's wireserver (host agent, health probes, DNS);
//   - 100.100.100.200, Alibaba Cloud's metadata service: that one address,
//     never 100.64.0.0/10 around it, which is the tailnet (Tailscale hands
//     out CGNAT addresses);
//   - fd00:ec2::254, AWS's IPv6 metadata service.
var (
	MetadataV4 = []netip.Prefix{
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("168.63.129.16/32"),
		netip.MustParsePrefix("100.100.100.200/32"),
	}
	MetadataV6 = []netip.Prefix{netip.MustParsePrefix("fd00:ec2::254/128")}
)

// MetadataDNS are the cloud resolvers that sit on a metadata address: GCE's
// 169.254.169.254 and Azure's 168.63.129.16. Docker hands a container the
// host's upstream resolvers, so containers keep DNS there (port 53, udp
// and tcp, to exactly these addresses) while the rest of the metadata
// service stays out of reach.
var MetadataDNS = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("168.63.129.16"),
}

// containerBridges are the interfaces container traffic enters by: Docker's
// default bridge and the bridges of user-defined networks (br-<id>).
var containerBridges = []string{"docker0", "br-+"}

// IsolationOptions are the settings of layer 2.
type IsolationOptions struct {
	// MetadataAccess lets containers reach the metadata service.
	MetadataAccess bool
	// Exceptions: in gateway network mode, who may reach which port of a
	// published container (matched on the original destination port:
	// DNAT has rewritten the port by the time DOCKER-USER runs).
	Exceptions []Exception
	// After are units whose rules must be in place first (ufw.service
	// or netfilter-persistent.service).
	After []string
}

// Exception lets Source reach host port Port/tcp of a published container.
type Exception struct {
	Source  netip.Prefix
	Port    int
	Comment string
}

// DockerUserRules renders the iptables-restore input that replaces the
// DOCKER-USER chain (v6 false: iptables, true: ip6tables) and the
// loopback guard. It is loaded with --noflush: only the chains declared
// here are flushed and refilled, so reapplying it is idempotent and
// leaves Docker's and ufw's chains alone.
//
// The chain, in order:
//   - replies to connections that were allowed are accepted;
//   - unless metadata_access: DNS (53/udp, 53/tcp) from containers to the
//     cloud resolvers on metadata addresses (MetadataDNS) returns to
//     Docker's rules, then container traffic to the metadata endpoints
//     (MetadataV4, MetadataV6) is dropped;
//   - traffic from containers (docker0, br-+: a bridge interface is
//     named by Docker, not by the host's hardware) returns to Docker's own
//     rules;
//   - in network mode, new connections from each allowed network to the
//     gateway's original destination port return to Docker's rules;
//   - everything else, from whatever interface it arrives on (ens3, eth0,
//     enp1s0, tailscale0: no interface name is known when the image is
//     built), is dropped.
//
// The DNS exception returns (to Docker's rules) rather than accepts, like
// all container traffic here: Docker's own isolation (an --internal
// network, one bridge from another) still applies to it.
//
// The container rules are written the way iptables -S prints them
// (-d before -i, -p udp -m udp --dport 53), so a line of this file is the
// line a live host shows.
//
// Docker 20.10 appends "-j RETURN" to DOCKER-USER when it creates the
// chain; rules after it would never match, hence a chain we fill
// ourselves, ending with its own DROP. Host-to-container traffic never
// passes FORWARD (it leaves through OUTPUT), so "-i lo" is not needed.
//
// BAKE-LOCALNET in the raw table drops packets to 127.0.0.0/8 (::1) that
// arrive on any interface but lo: with userland-proxy off Docker sets
// route_localnet=1, which otherwise lets a neighbour on the same L2
// segment reach ports published on 127.0.0.1 (moby#45610).
func DockerUserRules(o IsolationOptions, v6 bool) string {
	var b strings.Builder
	b.WriteString(Header)
	loop, meta := "127.0.0.0/8", MetadataV4
	if v6 {
		loop, meta = "::1/128", MetadataV6
	}
	b.WriteString("*raw\n:BAKE-LOCALNET - [0:0]\n")
	fmt.Fprintf(&b, "-A BAKE-LOCALNET ! -i lo -d %s -j DROP\n", loop)
	b.WriteString("COMMIT\n")
	b.WriteString("*filter\n:DOCKER-USER - [0:0]\n")
	b.WriteString("-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	if !o.MetadataAccess {
		for _, br := range containerBridges {
			for _, dns := range MetadataDNS {
				if dns.Is6() != v6 {
					continue
				}
				for _, proto := range []string{"udp", "tcp"} {
					fmt.Fprintf(&b, "-A DOCKER-USER -d %s -i %s -p %s -m %s --dport 53 -j RETURN\n", netip.PrefixFrom(dns, dns.BitLen()), br, proto, proto)
				}
			}
		}
		for _, br := range containerBridges {
			for _, m := range meta {
				fmt.Fprintf(&b, "-A DOCKER-USER -d %s -i %s -j DROP\n", m, br)
			}
		}
	}
	for _, br := range containerBridges {
		fmt.Fprintf(&b, "-A DOCKER-USER -i %s -j RETURN\n", br)
	}
	for _, e := range o.Exceptions {
		if e.Source.Addr().Is6() != v6 {
			continue
		}
		s := fmt.Sprintf("-A DOCKER-USER -s %s -p tcp -m conntrack --ctstate NEW --ctorigdstport %d", e.Source.Masked(), e.Port)
		if e.Comment != "" {
			s += " -m comment --comment " + iptQuote(e.Comment)
		}
		b.WriteString(s + " -j RETURN\n")
	}
	b.WriteString("-A DOCKER-USER -j DROP\n")
	b.WriteString("COMMIT\n")
	return b.String()
}

// dockerUserScript applies the rules; "apply" is idempotent (run at boot
// before Docker, and again each time Docker has started, since a Docker
// restart re-creates its chains and jumps). FORWARD's jump to DOCKER-USER
// is ensured for both families: Docker makes it for IPv4, and for IPv6
// only with ip6tables enabled, which Docker 20.10 keeps experimental.
const dockerUserScript = `#!/bin/sh
# bake: layer 2 of the appliance firewall (see ` + DockerUserRules4 + `).
set -eu
apply() {
	fam=$1 rules=$2
	case $fam in
	4) ipt=iptables ;;
	6) ipt=ip6tables ;;
	esac
	"$ipt-restore" -w --noflush <"$rules"
	"$ipt" -w -t raw -C PREROUTING -j BAKE-LOCALNET 2>/dev/null ||
		"$ipt" -w -t raw -I PREROUTING 1 -j BAKE-LOCALNET
	"$ipt" -w -C FORWARD -j DOCKER-USER 2>/dev/null ||
		"$ipt" -w -I FORWARD 1 -j DOCKER-USER
}
case "${1:-apply}" in
apply)
	apply 4 ` + DockerUserRules4 + `
	if [ -e /proc/net/if_inet6 ]; then
		apply 6 ` + DockerUserRules6 + `
	fi
	echo "bake-docker-user: DOCKER-USER and the loopback guard are in place"
	;;
*)
	echo "usage: $0 [apply]" >&2
	exit 2
	;;
esac
`

// DockerUserUnit runs the script before Docker starts (so the chain exists
// before any container is published), after the host firewall has loaded
// (ufw and netfilter-persistent rewrite the filter table), and Docker's
// drop-in runs it again once Docker is up. Containers require it.
func dockerUserUnit(after []string) string {
	a := strings.Join(append([]string{"local-fs.target"}, after...), " ")
	return `[Unit]
Description=bake: keep published container ports off every non-loopback interface (DOCKER-USER)
DefaultDependencies=no
Wants=network-pre.target
After=` + a + `
Before=network-pre.target docker.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + DockerUserScript + ` apply

[Install]
WantedBy=multi-user.target
RequiredBy=docker.service
`
}

// dockerDropIn re-applies layer 2 each time dockerd has (re)started and
// made its chains; a failure stops Docker rather than leaving published
// ports open.
const dockerDropIn = `[Unit]
Requires=` + DockerUserUnitName + `
After=` + DockerUserUnitName + `

[Service]
ExecStartPost=` + DockerUserScript + ` apply
`

// DaemonConfig is /etc/docker/daemon.json: bounded json-file logs, and the
// seed's userland-proxy: false (published ports are DNAT rules, not a
// proxy process per port; the route_localnet hole this opens is closed by
// BAKE-LOCALNET). ip6tables stays off: Docker 20.10 needs experimental
// mode for it; containers get no IPv6, and IPv6 to a published port
// reaches docker-proxy through INPUT, which the host firewall denies.
func DaemonConfig(maxSize string, maxFile int) string {
	cfg := map[string]any{
		"log-driver":     "json-file",
		"log-opts":       map[string]string{"max-size": maxSize, "max-file": fmt.Sprint(maxFile)},
		"userland-proxy": false,
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return string(b) + "\n"
}

// JournaldLimits bounds the journal (the appliance runs for a long time
// and nobody rotates by hand).
const JournaldLimits = `[Journal]
SystemMaxUse=200M
SystemMaxFileSize=20M
RuntimeMaxUse=50M
`

// IsolationFiles are the files of layer 2.
func IsolationFiles(o IsolationOptions) []File {
	return []File{
		file(DockerUserRules4, DockerUserRules(o, false), 0o644),
		file(DockerUserRules6, DockerUserRules(o, true), 0o644),
		file(DockerUserScript, dockerUserScript, execMode),
		file(DockerUserUnit, Header+dockerUserUnit(o.After), unitMode),
		file(DockerDropIn, Header+dockerDropIn, unitMode),
	}
}

// LogLimitFiles bound Docker's and journald's logs.
func LogLimitFiles(docker bool) []File {
	fs := []File{file(JournaldDropIn, Header+JournaldLimits, unitMode)}
	if docker {
		fs = append(fs, file(DaemonJSON, DaemonConfig("10m", 3), unitMode))
	}
	return fs
}
