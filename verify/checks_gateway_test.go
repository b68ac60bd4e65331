package verify

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/gwprobe"
	"github.com/bakeimg/bake/internal/testenv"
)

// gateway.listen's one guest command (were four): run with a fake docker,
// a listener on 127.0.0.1 standing for the gateway and nothing on
// 127.0.0.2 standing for the guest's own address.
func TestGatewayListenScript(t *testing.T) {
	testenv.NeedTools(t, "sh", "bash", "timeout", "cat")
	port := serveLoopback(t, func(c net.Conn) {})
	for _, tc := range []struct {
		docker string
		rc     int
	}{
		{`echo '{"18789/tcp":[{"HostIp":"127.0.0.1","HostPort":"18789"}]}'`, 0},
		{`echo "Error: No such object: $4" >&2; exit 1`, 1},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "docker"), []byte("#!/bin/sh\n"+tc.docker+"\n"), 0o755)
		cmd := exec.Command("sh", "-c", gatewayListenScript("openclaw-gateway", port, "127.0.0.2"))
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		inspect, rc, socks, loop, own, ok := gatewayListenParts(string(out), true)
		if !ok || rc != tc.rc || (rc == 0) != strings.Contains(inspect, `"HostIp":"127.0.0.1"`) || strings.Contains(inspect, "inspect-rc") {
			t.Errorf("inspect %q rc %d ok %v\n%s", inspect, rc, ok, out)
		}
		found := false
		for _, s := range parseProcNet(socks) {
			if s.Proto == "tcp" && int(s.Addr.Port()) == port {
				found = true
			}
		}
		if !found {
			t.Errorf("the listener on port %d is not in the sockets part", port)
		}
		if !strings.Contains(loop, "connected") || strings.Contains(own, "connected") || own == "" {
			t.Errorf("loopback %q, own address %q", loop, own)
		}
	}
	if _, _, _, _, _, ok := gatewayListenParts("inspect-rc=0\n@@bake-verify-sockets@@\n", false); ok {
		t.Error("gatewayListenParts: cut short, ok")
	}
	if _, _, _, loop, own, ok := gatewayListenParts("x\ninspect-rc=0\n@@bake-verify-sockets@@\n@@bake-verify-loopback@@\nconnected\n", false); !ok || loop != "connected\n" || own != "" {
		t.Errorf("gatewayListenParts without the own address: %q %q %v", loop, own, ok)
	}
}

// gateway.process's one docker inspect: the state line as before, the
// ID for the cgroup, the main PID when no cgroup is found.
func TestGatewayProcessScript(t *testing.T) {
	testenv.NeedTools(t, "sh", "find", "sort", "sed", "cat")
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	os.WriteFile(filepath.Join(dir, "docker"), []byte("#!/bin/sh\necho \"$*\" >>"+calls+"\necho 'c0ffee1234nocgroupmatches status=running pid=4242 user=999:999 restarts=0'\n"), 0o755)
	cmd := exec.Command("sh", "-c", gatewayProcessScript("openclaw-gateway")+"\necho \"id=$id pids=$pids\"")
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "status=running pid=4242 user=999:999 restarts=0\nid=c0ffee1234nocgroupmatches pids=4242\n"; string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if b, _ := os.ReadFile(calls); strings.Count(string(b), "\n") != 1 {
		t.Errorf("docker called: %q", b)
	}
	// No container: exit 3, as before.
	os.WriteFile(filepath.Join(dir, "docker"), []byte("#!/bin/sh\necho 'Error: No such object' >&2\nexit 1\n"), 0o755)
	cmd = exec.Command("sh", "-c", gatewayProcessScript("openclaw-gateway"))
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 3 {
		t.Errorf("no container: %v", err)
	}
}

// gateway.auth's guest commands relay bytes to 127.0.0.1:PORT both ways:
// run here with sh (the guest's login shell runs them the same way), the
// container path's "sudo -n nsenter -n -t PID" prefix replaced by env (a
// program runner too, as nsenter is: what follows must be a program, not
// a shell builtin), against an echo server on this host's loopback.
func TestGatewayAuthRelays(t *testing.T) {
	testenv.NeedTools(t, "sh", "bash", "env", "cat")
	// One line back, then the gateway's end closes (the relay's reading
	// half ends with it).
	port := serveLoopback(t, func(c net.Conn) {
		l, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, l)
	})
	paths := gatewayAuthPaths(&GatewaySpec{Container: "gw", Port: port}, 4242)
	if len(paths) != 2 {
		t.Fatalf("%d paths", len(paths))
	}
	for _, p := range paths {
		cmd := strings.Replace(p.cmd, "sudo -n nsenter -n -t 4242 ", "env ", 1)
		if strings.HasPrefix(p.cmd, "sudo") && cmd == p.cmd {
			t.Fatalf("%s: unexpected prefix: %s", p.what, p.cmd)
		}
		c := exec.Command("sh", "-c", cmd)
		c.Stdin = strings.NewReader("ping\n")
		out, err := c.Output()
		if err != nil || string(out) != "ping\n" {
			t.Errorf("%s: %q: %v, relayed %q", p.what, cmd, err, out)
		}
	}
}

// gateway.auth's verdict: each path's right token accepted with health,
// a wrong one refused with the refusal word, none refused; anything else
// is a problem named by its path; no token is ever written, even when a
// gateway echoes one.
func TestJudgeGatewayAuth(t *testing.T) {
	tok := strings.Repeat("a", 64)
	wrong := strings.Repeat("b", 64)
	paths := gatewayAuthPaths(&GatewaySpec{Container: "gw", Port: 18789}, 42)
	ok := gwprobe.Result{Challenge: true, Accepted: true, Health: true, Server: "2026.9.6", Protocol: 4, Role: "operator"}
	mismatch := gwprobe.Result{Challenge: true, Code: "INVALID_REQUEST", Message: "unauthorized: gateway token mismatch"}
	unpaired := gwprobe.Result{Challenge: true, Code: "NOT_PAIRED", Message: "device identity required"}
	run := func(right, bad, none gwprobe.Result, errs ...error) []*gatewayAttempt {
		r := []*gatewayAttempt{{what: "the right token", token: tok, res: right}, {what: "a wrong token", token: wrong, res: bad}, {what: "no token", token: "", res: none}}
		for i, e := range errs {
			r[i].err = e
		}
		return r
	}
	judge := func(a, b []*gatewayAttempt) ([]string, string) {
		p, ev := judgeGatewayAuth(paths, [][]*gatewayAttempt{a, b}, tok, wrong, "unauthorized", nil, nil)
		all := strings.Join(p, "\n") + "\n" + ev.String()
		if strings.Contains(all, tok) || strings.Contains(all, wrong) {
			t.Errorf("a token is written:\n%s", all)
		}
		return p, all
	}
	if p, all := judge(run(ok, mismatch, unpaired), run(ok, mismatch, unpaired)); len(p) != 0 ||
		!strings.Contains(all, "through the published port") || !strings.Contains(all, "inside the container gw") {
		t.Errorf("a good gateway: %q\n%s", p, all)
	}
	healthless := ok
	healthless.Health, healthless.HealthErr = false, "refused: FORBIDDEN \"missing scope\""
	echo := mismatch
	echo.Message = "unauthorized: got " + wrong + ", want " + tok
	for name, c := range map[string]struct {
		a, b []*gatewayAttempt
		want string
	}{
		"wrong token accepted":         {run(ok, ok, unpaired), run(ok, mismatch, unpaired), "through the published port (127.0.0.1:18789 in the guest): a client with a wrong token is accepted"},
		"no token accepted":            {run(ok, mismatch, unpaired), run(ok, mismatch, ok), "inside the container gw (its loopback, 127.0.0.1:18789; nsenter -n -t 42): a client with no token is accepted"},
		"refused otherwise":            {run(ok, unpaired, unpaired), run(ok, mismatch, unpaired), `a client with a wrong token is not refused with "unauthorized"`},
		"right token refused":          {run(mismatch, mismatch, unpaired), run(ok, mismatch, unpaired), "the right token is not accepted"},
		"accepted, no health":          {run(ok, mismatch, unpaired), run(healthless, mismatch, unpaired), "accepted, but health did not answer ok"},
		"no answer":                    {run(ok, mismatch, unpaired, nil, errors.New("EOF")), run(ok, mismatch, unpaired), "a client with a wrong token got no answer from the gateway, neither refused nor accepted (EOF)"},
		"no answer to the right":       {run(ok, mismatch, unpaired), run(ok, mismatch, unpaired, errors.New("relay: nsenter failed")), "the right token got no answer from the gateway (relay: nsenter failed)"},
		"no token refused as starting": {run(ok, mismatch, unpaired), run(ok, mismatch, gwprobe.Result{Code: "UNAVAILABLE", Message: "gateway starting; retry shortly"}), "a client with no token is not refused for its credentials"},
		"echoed tokens, redacted":      {run(ok, echo, unpaired, nil, nil, errors.New("closed: "+tok)), run(ok, mismatch, unpaired), "no token got no answer"},
	} {
		p, all := judge(c.a, c.b)
		if len(p) != 1 || !strings.Contains(p[0], c.want) {
			t.Errorf("%s: problems %q, want one with %q\n%s", name, p, c.want, all)
		}
	}
}
