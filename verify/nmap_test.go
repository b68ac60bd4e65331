package verify

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
)

func readNmap(t *testing.T, name string) (NmapResult, error) {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return ParseNmapXML(b)
}

func TestParseNmapSSHOnly(t *testing.T) {
	r, err := readNmap(t, "nmap-v4-ssh-only.xml")
	if err != nil {
		t.Fatal(err)
	}
	if !r.HostUp || r.Address != "10.77.0.57" || r.Scanned != 65535 {
		t.Errorf("result %+v", r)
	}
	open := r.Open()
	if len(open) != 1 || open[0].Port != 22 || open[0].Proto != "tcp" || open[0].Reason != "syn-ack" {
		t.Errorf("open %v", open)
	}
	if got := r.Summary(); got != "open 22/tcp (syn-ack, ssh); 65534 filtered (65535 ports in 89.12s)" {
		t.Errorf("summary %q", got)
	}
}

func TestParseNmapLeak(t *testing.T) {
	r, err := readNmap(t, "nmap-v6-leak.xml")
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, p := range r.Open() {
		got = append(got, p.Port)
	}
	if !reflect.DeepEqual(got, []int{22, 80, 8080}) {
		t.Errorf("open %v", got)
	}
	if r.Address != "fd77::5054:ff:febe:ef00" {
		t.Errorf("address %q", r.Address)
	}
	if s := r.Summary(); !strings.Contains(s, "1 closed") || !strings.Contains(s, "65531 filtered") {
		t.Errorf("summary %q", s)
	}
}

// An unfinished scan is an error: its list of open ports may be partial.
func TestParseNmapUnfinished(t *testing.T) {
	if _, err := readNmap(t, "nmap-interrupted.xml"); err == nil || !strings.Contains(err.Error(), "did not finish") {
		t.Fatalf("err = %v", err)
	}
	if _, err := ParseNmapXML([]byte("Starting Nmap 7.93\nFailed to open device tap0")); err == nil {
		t.Fatal("text output parsed")
	}
}

func TestNmapArgs(t *testing.T) {
	a := NmapArgs(netip.MustParseAddr("fd77::2"))
	if a[0] != "nmap" || a[len(a)-1] != "fd77::2" || a[len(a)-2] != "-6" || !contains(a, "-p-") || !contains(a, "-Pn") {
		t.Errorf("%v", a)
	}
	a = NmapArgs(netip.MustParseAddr("10.77.0.50"))
	if contains(a, "-6") {
		t.Errorf("%v", a)
	}
}

func contains(a []string, s string) bool {
	for _, x := range a {
		if x == s {
			return true
		}
	}
	return false
}
