package verify

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// loopbackScript probes every port at once and says which answered with
// the probe's body; parseLoopback reads it.
func TestLoopbackScript(t *testing.T) {
	testenv.NeedTools(t, "bash")
	var ps []probePort
	for i := 0; i < 3; i++ {
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
				c.Read(make([]byte, 512)) // the request, as the probe container does
				c.Write([]byte("HTTP/1.0 200 OK\r\n\r\n" + ProbeBody + "\n"))
				c.Close()
			}
		}()
		port := l.Addr().(*net.TCPAddr).Port
		ps = append(ps, probePort{publish: strconv.Itoa(port), port: port})
	}
	out, err := exec.Command("bash", "-c", loopbackScript(ps)).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := parseLoopback(string(out))
	for _, p := range ps {
		if r := got[p.port]; !r.ok || r.tries != 1 {
			t.Errorf("port %d: %+v\n%s", p.port, r, out)
		}
	}
	m := parseLoopback("loop 80 ok 3\nloop 8080 no 31 bash: connect: Connection refused\nnoise\nloop x ok 1\n")
	if len(m) != 2 || !m[80].ok || m[80].tries != 3 || m[8080].ok || m[8080].tries != 31 || m[8080].last != "bash: connect: Connection refused" {
		t.Errorf("parseLoopback: %+v", m)
	}
}

// isolation.loopback runs one probe container published with every -p:
// probeRunScript removes a leftover, runs it with all three, fails when
// docker run fails, and lists the DNAT rules (a fake docker and iptables
// record what they were asked).
func TestProbeRunScript(t *testing.T) {
	testenv.NeedTools(t, "sh", "grep")
	for _, fail := range []bool{false, true} {
		dir := t.TempDir()
		log := filepath.Join(dir, "log")
		rc := "0"
		if fail {
			rc = "125"
		}
		os.WriteFile(filepath.Join(dir, "docker"), []byte("#!/bin/sh\necho \"docker $*\" >>"+log+"\n[ \"$1\" = run ] && exit "+rc+"\nexit 0\n"), 0o755)
		os.WriteFile(filepath.Join(dir, "iptables"), []byte("#!/bin/sh\necho \"iptables $*\" >>"+log+"\necho '-N DOCKER'\necho '-A DOCKER ! -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80'\n"), 0o755)
		cmd := exec.Command("sh", "-c", probeRunScript(probeContainerName, probePorts))
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		calls, _ := os.ReadFile(log)
		want := "docker rm -f bake-verify-probe\ndocker run -d --name bake-verify-probe -p 80:80 -p 0.0.0.0:8080:80 -p 127.0.0.1:8081:80 " + ProbeImageRef + "\n"
		if fail {
			if err == nil || string(calls) != want {
				t.Errorf("docker run failing: err %v, calls\n%s", err, calls)
			}
			continue
		}
		want += "iptables -w -t nat -S DOCKER\n"
		if err != nil || string(calls) != want || !strings.Contains(string(out), "--dport 80 -j DNAT") || strings.Contains(string(out), "-N DOCKER") {
			t.Errorf("err %v, calls\n%s\nwant\n%s\noutput\n%s", err, calls, want, out)
		}
	}
	if got := loopbackPassText(probePorts); got != "the probe container answers in the guest on 127.0.0.1:80, 127.0.0.1:8080, 127.0.0.1:8081 (one container published with -p 80:80, -p 0.0.0.0:8080:80, -p 127.0.0.1:8081:80)" {
		t.Errorf("loopbackPassText: %q", got)
	}
}
