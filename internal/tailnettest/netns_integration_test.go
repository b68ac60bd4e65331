//go:build integration

package tailnettest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNetnsSameNameTwice: two namespaces asked for under one name in one
// process (TestVerifyAppliance, TestVerifyNegative and TestStateVolume all
// ask for "verify" and may run at once) are two namespaces with two
// names; closing one leaves the other, and the name comes back.
func TestNetnsSameNameTwice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (run the integration tier as root)")
	}
	a := newNetns(t.Context(), t, "twice")
	b := newNetns(t.Context(), t, "twice")
	if a.Name == b.Name {
		t.Fatalf("both namespaces are %s", a.Name)
	}
	if !strings.HasPrefix(b.Name, "bake-tntwice2-") {
		t.Errorf("the second namespace is %s, want bake-tntwice2-<pid>", b.Name)
	}
	// Tell them apart by an address only one has.
	if _, err := a.Exec(t.Context(), "ip", "addr", "add", "10.99.77.1/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	out, err := b.Exec(t.Context(), "ip", "-o", "addr")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "10.99.77.1") {
		t.Errorf("%s shows %s's address:\n%s", b.Name, a.Name, out)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", b.Name)); err != nil {
		t.Errorf("closing %s: %s is gone: %v", a.Name, b.Name, err)
	}
	c := newNetns(t.Context(), t, "twice")
	if c.Name != a.Name {
		t.Errorf("after closing %s a new namespace is %s, want the name back", a.Name, c.Name)
	}
}
