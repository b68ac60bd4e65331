package oci

import (
	"bytes"
	"context"
	"debug/elf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"

	"github.com/bakeimg/bake/internal/execx"
)

// TestTestGatewayProcess compiles the test gateway as the image gets it
// (static) and runs it as a real process: the server and the probe
// command line, right and wrong token, SIGTERM.
func TestTestGatewayProcess(t *testing.T) {
	testenv.NeedTools(t, "go")
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "openclaw")
	if err := BuildTestGatewayBinary(ctx, execx.Host{}, "..", bin); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the test gateway is dynamically linked")
		}
	}
	f.Close()

	const token = "t0ken-for-the-test-gateway"
	cfg := filepath.Join(t.TempDir(), "openclaw.json")
	os.WriteFile(cfg, []byte(`{"gateway":{"mode":"local","auth":{"mode":"token","token":"`+token+`"}}}`), 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()

	srv := exec.Command(bin, "gateway", "run", "--bind", "loopback", "--port", port)
	srv.Env = append(os.Environ(), "OPENCLAW_CONFIG_PATH="+cfg)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	child, err := execx.StartPinned(srv) // dies with the test, ended on every path out
	if err != nil {
		t.Fatal(err)
	}
	defer child.Stop(0)
	for i := 0; ; i++ {
		if exec.Command(bin, "healthz", "--port", port).Run() == nil {
			break
		}
		if i > 100 {
			t.Fatalf("not up: %s", srvOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	probe := func(tok string) (int, string, string) {
		var out, errb bytes.Buffer
		c := exec.Command(bin, "gateway", "health", "--url", "ws://127.0.0.1:"+port, "--token", tok)
		c.Stdout, c.Stderr = &out, &errb
		c.Run()
		return c.ProcessState.ExitCode(), out.String(), errb.String()
	}
	if rc, out, _ := probe(token); rc != 0 || !strings.Contains(out, "OK") {
		t.Errorf("right token: %d %q", rc, out)
	}
	if rc, _, errb := probe("wrong"); rc != 1 || !strings.Contains(errb, "unauthorized: gateway token mismatch") {
		t.Errorf("wrong token: %d %q", rc, errb)
	}
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case <-child.Done():
		if err := child.Wait(); err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("no exit after SIGTERM")
	}

	// The image around this binary is reproducible.
	a, err := BuildTestGatewayImage(ctx, bin, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildTestGatewayImage(ctx, bin, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	if digestOfImage(t, a) != digestOfImage(t, b) {
		t.Error("test gateway image not reproducible")
	}
}
