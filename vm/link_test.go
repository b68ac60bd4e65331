package vm

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLeases(t *testing.T) {
	l := &Link{dir: t.TempDir()}
	if ls, err := l.Leases(); err != nil || len(ls) != 0 {
		t.Fatalf("no lease file: %v, %v", ls, err)
	}
	const file = `1764080000 52:54:00:12:34:56 10.77.0.58 * 01:52:54:00:12:34:56
1764080100 52:54:00:aa:bb:cc 10.77.0.61 debian 01:52:54:00:aa:bb:cc
duid 00:01:00:01:2c:aa:bb:cc:dd:ee:ff:00:11:22
garbage line
`
	if err := os.WriteFile(filepath.Join(l.dir, "dnsmasq.leases"), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	ls, err := l.Leases()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[0].IP.String() != "10.77.0.58" || ls[0].Hostname != "" ||
		ls[1].MAC.String() != "52:54:00:aa:bb:cc" || ls[1].Hostname != "debian" {
		t.Errorf("leases %+v", ls)
	}
}

func TestNewLinkRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "Bad", "a b", "x/y", "much-too-long-name-for-a-namespace-1"} {
		if l, err := NewLink(t.Context(), name); err == nil {
			l.Close()
			t.Errorf("NewLink(%q) accepted", name)
		}
	}
}
