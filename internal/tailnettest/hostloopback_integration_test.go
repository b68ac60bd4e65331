//go:build integration

package tailnettest

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testcache"
)

// TestHeadscaleOnHostLoopback: headscale in the test's own namespace, on
// 127.0.0.1 with free ports, named by another address (10.0.2.2, the
// host's loopback as a guest on QEMU's user-mode network sees it; bake
// verify --tailnet-* in TestVerifyAppliance): ready (its /health through
// the test CA, verified for the URL's address), the URL and the DERP
// region at that address, a user and a key made.
func TestHeadscaleOnHostLoopback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin, err := BuildHeadscale(ctx, DefaultHeadscaleVersion, testcache.Dir("headscale"))
	if err != nil {
		t.Fatal(err)
	}
	hs, err := StartHeadscale(ctx, HeadscaleConfig{Bin: bin, Addr: netip.MustParseAddr("127.0.0.1"), URLAddr: netip.MustParseAddr("10.0.2.2"), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	if !strings.HasPrefix(hs.URL, "https://10.0.2.2:") || hs.cfg.Port == 443 {
		t.Errorf("URL %s (port %d): want https://10.0.2.2:FREE", hs.URL, hs.cfg.Port)
	}
	if _, err := StartHeadscale(ctx, HeadscaleConfig{Bin: bin, Addr: netip.MustParseAddr("10.0.2.2"), Dir: t.TempDir()}); err == nil {
		t.Error("a headscale in the test's own namespace on a non-loopback address was started")
	}
	u, err := hs.CreateUser(ctx, "verify")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hs.PreAuthKey(ctx, u, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("headscale at %s (listening on 127.0.0.1:%d, STUN %d, metrics %d, gRPC %d)", hs.URL, hs.cfg.Port, hs.stun, hs.metrics, hs.grpc)
}
