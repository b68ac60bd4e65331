package oci

import (
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// OpenClaw gateway defaults: the versions the shipped recipe pins and the
// layout the appliance relies on.
const (
	OpenClawVersion   = "2026.9.6"
	NodeVersion       = "24.21.0"
	NodeIntegrity     = "sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q=="
	GatewayPort       = 18789
	GatewayStateDir   = "/home/node/.openclaw"
	GatewayConfigPath = GatewayStateDir + "/openclaw.json"
)

// GatewayPackages are the Debian packages on top of Essential that Node
// and the gateway need: the C and C++ runtimes, CA certificates for
// outgoing TLS, and tini as PID 1 (reaps zombies, forwards signals).
var GatewayPackages = []string{"libc6", "libstdc++6", "libgcc-s1", "ca-certificates", "tini"}

// GatewayCmd runs the gateway in the foreground on the container's own
// network ("lan" binds all of the container's interfaces; the host
// publishes the port on 127.0.0.1 only).
func GatewayCmd(port int) []string {
	return []string{"gateway", "run", "--bind", "lan", "--port", itoa(port)}
}

// GatewayHealthcheck asks the gateway's unauthenticated /healthz (healthy:
// a 2xx status, as fetch's r.ok) with bash's /dev/tcp: there is no curl in
// the image, and the image's Node would be a second Node start every 30
// seconds, about 4.5 s of CPU each in a TCG guest (BENCHMARKS.md, "The
// first phase, again"), where bash costs milliseconds. The first start
// takes about 17 s on 2 cores and much longer under software emulation,
// hence the start period.
func GatewayHealthcheck(port int) *v1.HealthConfig {
	return &v1.HealthConfig{
		Test:        []string{"CMD", "/bin/bash", "-c", healthzScript(port)},
		Interval:    30 * time.Second,
		Timeout:     10 * time.Second,
		StartPeriod: 120 * time.Second,
		Retries:     3,
	}
}

// healthzScript is GatewayHealthcheck's HTTP GET of /healthz on
// 127.0.0.1:port: exit 0 on a 2xx status line within 9 seconds, else 1.
func healthzScript(port int) string {
	return `exec 3<>/dev/tcp/127.0.0.1/` + itoa(port) + ` || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 || exit 1
IFS= read -r -t 9 line <&3 || exit 1
[[ $line =~ ^HTTP/1\.[01]\ 2[0-9][0-9]([[:space:]]|$) ]]`
}

// CompileCacheListName is the compile cache list of an app, beside its
// lockfile.
const CompileCacheListName = "compile-cache.txt"

// OpenClawGatewaySpec is the spec of the shipped gateway image:
// openclaw@OpenClawVersion on Node NodeVersion on Debian bookworm, with the
// lockfile and the compile cache list in recipeDir
// (recipes/openclaw-gateway).
//
// Where state and config live, and why any uid works: the gateway reads
// $HOME/.openclaw/openclaw.json and keeps its state beside it. HOME is
// /home/node; the appliance mounts its host directory
// /home/openclaw/.openclaw (owned by the `openclaw` uid, openclaw.json
// 0600) at /home/node/.openclaw and runs the container as that uid. The
// image ships /home/node and /home/node/.openclaw with mode 1777, so the
// same image also runs under any uid without a mount (state is then lost
// with the container); nothing else in the image is writable or needed
// writable.
//
// The app's patches are recipeDir's PatchDirName/*.patch (ListPatches; a
// directory that cannot be read leaves them out here, and Build reports
// nothing: builder/gateway.go lists them itself and fails on an error).
func OpenClawGatewaySpec(recipeDir string, epoch int64) BuildSpec {
	patches, _ := ListPatches(recipeDir)
	return BuildSpec{
		Name: "openclaw-gateway",
		Debian: DebianLayer{
			Suite:          "bookworm",
			Packages:       GatewayPackages,
			Mirror:         "http://deb.debian.org/debian",
			SecurityMirror: "http://deb.debian.org/debian-security",
		},
		Node: NodeRuntime{Version: NodeVersion, Integrity: NodeIntegrity},
		App: NpmApp{Package: "openclaw", Version: OpenClawVersion,
			Lockfile: filepath.Join(recipeDir, "package-lock.json"),
			// Its postinstall completes the package lifecycle (and checks
			// the native fs-safe addon); skipped, the gateway would try at
			// first start and fail to write into the read-only /app.
			Scripts: []string{"openclaw"},
			// recipes/openclaw-gateway/patches: OpenClaw's 5-second start
			// of its state lease worker, too short under emulation.
			Patches: patches},
		User:         DefaultUser,
		Home:         DefaultHome,
		WritableDirs: []string{GatewayStateDir},
		Entrypoint:   []string{"/usr/bin/tini", "--", "openclaw"},
		Cmd:          GatewayCmd(GatewayPort),
		ExposedPorts: []string{itoa(GatewayPort) + "/tcp"},
		Healthcheck:  GatewayHealthcheck(GatewayPort),
		// Node's compile cache of what the gateway's start and `openclaw
		// gateway health` compile, made at build time: the first start in
		// the guest finds it (about a fifth less CPU time: BENCHMARKS.md).
		// `openclaw --help` shows where OpenClaw's launcher moves the cache
		// (NODE_COMPILE_CACHE/openclaw/VERSION/...).
		CompileCache: &CompileCache{
			List:  filepath.Join(recipeDir, CompileCacheListName),
			Probe: []string{"openclaw", "--help"},
		},
		Labels: map[string]string{
			"org.opencontainers.image.description": "OpenClaw gateway, built by bake from the npm registry",
			"org.opencontainers.image.licenses":    "MIT",
		},
		SourceDateEpoch: epoch,
	}
}
