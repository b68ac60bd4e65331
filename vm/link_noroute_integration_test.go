//go:build integration

package vm

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestLinkNoDefaultRoute: dnsmasq takes the options of a link without a
// default route (an empty router option, router advertisements with
// lifetime 0) and runs; a plain link keeps its router.
func TestLinkNoDefaultRoute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (run the integration tier as root)")
	}
	for _, c := range []struct {
		name string
		opts []LinkOption
		want []string
		not  string
	}{
		{"noroute", []LinkOption{LinkNoDefaultRoute}, []string{"--dhcp-option=option:router\x00", "--ra-param=tap0,60,0"}, "option:router,"},
		{"route", nil, []string{"--dhcp-option=option:router," + LinkHostIPv4.Addr().String()}, "--ra-param"},
	} {
		l, err := NewLink(t.Context(), c.name, c.opts...)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(l.DNSMasqPID()) + "/cmdline")
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		s := string(cmdline) + "\x00"
		for _, w := range c.want {
			if !strings.Contains(s, w) {
				t.Errorf("%s: dnsmasq's command line lacks %q: %q", c.name, w, s)
			}
		}
		if strings.Contains(s, c.not) {
			t.Errorf("%s: dnsmasq's command line has %q: %q", c.name, c.not, s)
		}
	}
}
