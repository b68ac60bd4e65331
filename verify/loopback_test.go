package verify

import (
	"github.com/bakeimg/bake/internal/testenv"
	"net"
	"os/exec"
	"strconv"
	"testing"
)

// loopbackScript probes every port at once and says which answered with
// the probe's body; parseLoopback reads it.
func TestLoopbackScript(t *testing.T) {
	testenv.NeedTools(t, "bash")
	var ps []probeContainer
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
		ps = append(ps, probeContainer{name: "p" + strconv.Itoa(i), publish: strconv.Itoa(port), port: port})
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
