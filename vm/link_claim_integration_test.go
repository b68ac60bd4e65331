//go:build integration

package vm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLinkNameHeldByThisProcess: a second link of a name this process
// holds is refused (before session 22 it deleted the first's namespace by
// name and made its own under it; the first's Close would then have killed
// the second's QEMU); once the first is closed the name is free again.
func TestLinkNameHeldByThisProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (run the integration tier as root)")
	}
	a, err := NewLink(t.Context(), "claimtest")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if b, err := NewLink(t.Context(), "claimtest"); err == nil {
		b.Close()
		t.Fatal("a second link of the same name in one process was made")
	} else if !strings.Contains(err.Error(), "has a link of that name already") {
		t.Errorf("second link: %v", err)
	}
	// The first link's namespace is untouched, its dnsmasq still runs.
	if _, err := os.Stat(filepath.Join("/run/netns", a.Netns)); err != nil {
		t.Errorf("the first link's namespace: %v", err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(a.DNSMasqPID())); err != nil {
		t.Errorf("the first link's dnsmasq: %v", err)
	}
	a.Close()
	c, err := NewLink(t.Context(), "claimtest")
	if err != nil {
		t.Fatalf("the name after Close: %v", err)
	}
	c.Close()
}
