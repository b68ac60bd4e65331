package verify

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"
)

// gateway.listen's one guest command (were four): run with a fake docker,
// a listener on 127.0.0.1 standing for the gateway and nothing on
// 127.0.0.2 standing for the guest's own address.
func TestGatewayListenScript(t *testing.T) {
	testenv.NeedTools(t, "sh", "bash", "timeout", "cat")
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
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

// gateway.auth's clients: all three at once first, the right token
// retried while the gateway settles, an inconclusive refusal asked again
// once after the right token got through; the gateway's answer to a
// refusal ("refused" or "accepted") is never asked again.
func TestRunAuthProbes(t *testing.T) {
	g := DefaultSpec().Gateway
	ok := cmdResult{Stdout: "OK\n"}
	refused := cmdResult{Exit: 1, Stderr: "Error: unauthorized: gateway token mismatch\n"}
	noCreds := cmdResult{Exit: 1, Stderr: "gateway url override requires explicit credentials\n"}
	down := cmdResult{Exit: 1, Stderr: "Error: connect ECONNREFUSED 127.0.0.1:18789\n"}
	type answers map[string][]cmdResult // by probe: its answers in order (the last repeats)
	for _, tc := range []struct {
		name    string
		ans     answers
		rounds  int
		calls   map[string]int
		outcome map[string]authResult
	}{
		{"settled: one round of three", answers{"right": {ok}, "wrong": {refused}, "none": {noCreds}}, 1,
			map[string]int{"right": 1, "wrong": 1, "none": 1},
			map[string]authResult{"right": authAccepted, "wrong": authRefused, "none": authNoCredentials}},
		{"not settled: the right token retried, the refusals asked again", answers{"right": {down, down, ok}, "wrong": {down, refused}, "none": {down, refused}}, 4,
			map[string]int{"right": 3, "wrong": 2, "none": 2},
			map[string]authResult{"right": authAccepted, "wrong": authRefused, "none": authRefused}},
		{"a refusal already answered is not asked again", answers{"right": {down, ok}, "wrong": {refused}, "none": {down, noCreds}}, 3,
			map[string]int{"right": 2, "wrong": 1, "none": 2},
			map[string]authResult{"right": authAccepted, "wrong": authRefused, "none": authNoCredentials}},
		{"a wrong token accepted stays accepted", answers{"right": {ok}, "wrong": {ok}, "none": {refused}}, 1,
			map[string]int{"right": 1, "wrong": 1, "none": 1},
			map[string]authResult{"right": authAccepted, "wrong": authAccepted, "none": authRefused}},
		{"a refusal failing otherwise after the right token got through: asked once more, then judged", answers{"right": {ok}, "wrong": {down}, "none": {refused}}, 2,
			map[string]int{"right": 1, "wrong": 2, "none": 1},
			map[string]authResult{"right": authAccepted, "wrong": authOther, "none": authRefused}},
		{"never settles: the right token until the deadline, the refusals not asked again", answers{"right": {down}, "wrong": {down}, "none": {down}}, 0,
			map[string]int{"wrong": 1, "none": 1},
			map[string]authResult{"right": authOther, "wrong": authOther, "none": authOther}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			calls := map[string]int{}
			run := func(argv []string) (cmdResult, error) {
				who := argv[len(argv)-1]
				mu.Lock()
				defer mu.Unlock()
				a := tc.ans[who]
				r := a[min(calls[who], len(a)-1)]
				calls[who]++
				return r, nil
			}
			probes := []*authProbe{
				{what: "with the right token", argv: []string{"right"}, right: true},
				{what: "with a wrong token", argv: []string{"wrong"}},
				{what: "with no token", argv: []string{"none"}, noToken: true},
			}
			// The deadline is an hour away; the fifth wait sleeps past it.
			waits := 0
			now := time.Now()
			deadline := now.Add(time.Hour)
			wait := func() {
				waits++
				if waits >= 5 {
					deadline = now
				}
			}
			rounds := runAuthProbes(context.Background(), g, probes, run, func() time.Time { return deadline }, wait)
			if tc.rounds != 0 && rounds != tc.rounds {
				t.Errorf("rounds %d, want %d", rounds, tc.rounds)
			}
			for who, n := range tc.calls {
				if calls[who] != n {
					t.Errorf("%s asked %d times, want %d", who, calls[who], n)
				}
			}
			for _, p := range probes {
				if got := authOutcome(g, p); got != tc.outcome[p.argv[0]] {
					t.Errorf("%s: outcome %d, want %d", p.what, got, tc.outcome[p.argv[0]])
				}
			}
		})
	}
}
