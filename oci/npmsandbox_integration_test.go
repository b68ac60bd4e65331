//go:build integration

package oci

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// TestNpmScriptSandbox runs a stand-in install script in the sandbox the
// app's install scripts run in, and checks from inside what it may and may
// not do: it is nobody with no capabilities, cannot reach a server
// listening on the build host's loopback, cannot write outside its app
// folder, HOME and temp dirs, sees none of the host's /tmp, none of bake's
// environment, no host process, and its writes to the app folder are kept.
func TestNpmScriptSandbox(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (make test runs the integration tier as root)")
	}
	work := t.TempDir()
	app, home := filepath.Join(work, "app"), filepath.Join(work, "home")
	os.MkdirAll(filepath.Join(app, "node_modules/pkg"), 0o755)
	os.Mkdir(home, 0o700)
	// A file in the host's /tmp the script must not see.
	hostTmp, err := os.CreateTemp("", "bake-sandbox-visible-")
	if err != nil {
		t.Fatal(err)
	}
	hostTmp.Close()
	defer os.Remove(hostTmp.Name())
	// A server on the host's loopback the script must not reach.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("reached\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	t.Setenv("BAKE_TEST_SECRET", "s3cret-from-the-ci-job")
	script := `
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status
if timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/` + strconv.Itoa(port) + `' 2>/dev/null; then echo NET=reached; else echo NET=refused; fi
if touch /etc/bake-sandbox-escape 2>/dev/null; then echo ETC=written; else echo ETC=refused; fi
if ls /root >/dev/null 2>&1; then echo ROOT=readable; else echo ROOT=refused; fi
if [ -e ` + hostTmp.Name() + ` ]; then echo TMP=visible; else echo TMP=hidden; fi
echo "ENV=$(env | grep -c BAKE_TEST_SECRET)"
echo "PROCS=$(ls /proc | grep -c '^[0-9]')"
echo built > node_modules/pkg/out.txt && echo APP=written
echo x > "$HOME/.npmrc" && echo HOME=written
`
	cmd, err := npmScriptSandbox(app, home, "", nil, []string{"bash", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := (execx.Host{}).Run(ctx, cmd); err != nil {
		t.Fatalf("sandbox: %v\n%s", err, out.String())
	}
	got := out.String()
	t.Logf("inside the sandbox:\n%s", got)
	for _, want := range []string{"uid=65534 gid=65534 groups=65534", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1",
		"NET=refused", "ETC=refused", "ROOT=refused", "TMP=hidden", "ENV=0", "APP=written", "HOME=written"} {
		if !strings.Contains(got, want) {
			t.Errorf("inside the sandbox, want %q", want)
		}
	}
	// A PID namespace of its own: sh, bash and the few commands it ran.
	for _, l := range strings.Split(got, "\n") {
		if n, ok := strings.CutPrefix(l, "PROCS="); ok && len(n) > 1 {
			t.Errorf("the script sees %s processes: not a PID namespace of its own", n)
		}
	}
	if _, err := os.Stat("/etc/bake-sandbox-escape"); err == nil {
		os.Remove("/etc/bake-sandbox-escape")
		t.Error("the script wrote into the host's /etc")
	}
	if b, err := os.ReadFile(filepath.Join(app, "node_modules/pkg/out.txt")); err != nil || string(b) != "built\n" {
		t.Errorf("the script's output in the app folder: %q %v", b, err)
	}
}
