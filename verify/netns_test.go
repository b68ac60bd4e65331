package verify

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// The hand-made SYN has valid IPv4 and TCP checksums (a receiver drops a
// segment with a bad one silently, which would make every probe look
// "unanswered" and every image pass).
func TestSYNFrameChecksums(t *testing.T) {
	src, dst := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("127.0.0.1")
	smac, _ := net.ParseMAC("02:00:00:00:00:01")
	dmac, _ := net.ParseMAC("52:54:00:be:ef:00")
	f := synFrame(smac, dmac, src, dst, 40001, 18789, 0x01020304)
	if len(f) != 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		t.Fatalf("frame %x", f)
	}
	if net.HardwareAddr(f[0:6]).String() != dmac.String() {
		t.Errorf("dst MAC %x", f[0:6])
	}
	if checksum(f[14:34], 0) != 0 {
		t.Errorf("IPv4 header checksum does not verify")
	}
	tcp := f[34:54]
	var pseudo uint32 = 0x0a4d + 0x0001 + 0x7f00 + 0x0001 + 6 + 20
	if checksum(tcp, pseudo) != 0 {
		t.Errorf("TCP checksum does not verify")
	}
	if tcp[13] != 0x02 || binary.BigEndian.Uint16(tcp[2:]) != 18789 {
		t.Errorf("not a SYN to 18789: %x", tcp)
	}
}

func TestParseSYNAnswer(t *testing.T) {
	smac, _ := net.ParseMAC("52:54:00:be:ef:00")
	dmac, _ := net.ParseMAC("02:00:00:00:00:01")
	// A SYN-ACK from 127.0.0.1:18789 to 10.77.0.1:40001: the moby#45610 hole.
	f := synFrame(smac, dmac, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.77.0.1"), 18789, 40001, 7)
	f[34+13] = 0x12
	a, ok := parseSYNAnswer(f, 40001, 18789)
	if !ok || a.Flags != "SYN-ACK" || a.From.String() != "127.0.0.1" {
		t.Fatalf("%v %v", a, ok)
	}
	if _, ok := parseSYNAnswer(f, 40002, 18789); ok {
		t.Error("answer to another source port accepted")
	}
	f[34+13] = 0x14
	if a, _ := parseSYNAnswer(f, 40001, 18789); a.Flags != "RST" {
		t.Errorf("RST: %v", a)
	}
}
