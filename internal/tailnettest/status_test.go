package tailnettest

import (
	"encoding/json"
	"net/netip"
	"testing"
)

// A node restarted on its state says Running with no peers until control's
// netmap comes: HasPeer is what a ping must wait for.
func TestStatusHasPeer(t *testing.T) {
	var early, late Status
	if err := json.Unmarshal([]byte(`{"BackendState":"Running","Self":{"TailscaleIPs":["100.64.0.2"]},"Peer":null}`), &early); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(`{"BackendState":"Running","Peer":{"nodekey:ab":{"HostName":"openclaw-test","TailscaleIPs":["100.64.0.1","fd7a:115c:a1e0::1"]}}}`), &late); err != nil {
		t.Fatal(err)
	}
	app, v6, other := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("fd7a:115c:a1e0::1"), netip.MustParseAddr("100.64.0.3")
	if early.HasPeer(app) {
		t.Error("no peers yet, HasPeer says yes")
	}
	if !late.HasPeer(app) || !late.HasPeer(v6) {
		t.Error("the appliance is a peer, HasPeer says no")
	}
	if late.HasPeer(other) || late.HasPeer(netip.MustParseAddr("100.64.0.2")) {
		t.Error("HasPeer found an address no peer has")
	}
}
