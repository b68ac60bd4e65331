package verify

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/bakeimg/bake/vm"
	"golang.org/x/sys/unix"
)

// inNetns runs f in the network namespace ns: vm.InNetns.
var inNetns = vm.InNetns

// dialIn connects to addr from inside the namespace ns ("" = here).
func dialIn(ctx context.Context, ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if ns == "" {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := inNetns(ns, func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// synAnswer is what came back for one crafted SYN.
type synAnswer struct {
	From  netip.Addr
	Flags string // "SYN-ACK", "RST", "ICMP type/code"
}

func (a synAnswer) String() string { return a.Flags + " from " + a.From.String() }

// sendSYN puts a hand-made Ethernet+IPv4+TCP SYN from src to dst:dport on
// the wire of ifname (inside ns), addressed to dstMAC whatever dst is, and
// collects every TCP answer to it (and ICMP errors about it) for wait. It
// sends the SYN tries times, a second apart. This is the only way to send
// a packet to 127.0.0.1 *through a NIC*: the kernel would never route one.
func sendSYN(ns, ifname string, dstMAC net.HardwareAddr, src, dst netip.Addr, dport int, tries int, wait time.Duration) ([]synAnswer, error) {
	return sendSYNUntil(ns, ifname, dstMAC, src, dst, dport, tries, wait, nil)
}

// sendSYNUntil is sendSYN that returns as soon as done (if not nil) says
// the answers so far are enough (a control that needs one SYN-ACK); it
// waits the whole wait otherwise, as sendSYN does.
func sendSYNUntil(ns, ifname string, dstMAC net.HardwareAddr, src, dst netip.Addr, dport int, tries int, wait time.Duration, done func([]synAnswer) bool) ([]synAnswer, error) {
	var answers []synAnswer
	err := inNetns(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
		var rnd [6]byte
		rand.Read(rnd[:])
		sport := 40000 + int(binary.BigEndian.Uint16(rnd[:2]))%20000
		seq := binary.BigEndian.Uint32(rnd[2:])
		frame := synFrame(ifi.HardwareAddr, dstMAC, src, dst, sport, dport, seq)
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		copy(to.Addr[:], dstMAC)

		deadline := time.Now().Add(wait)
		next := time.Now()
		sent := 0
		buf := make([]byte, 2048)
		seen := map[synAnswer]bool{}
		for {
			now := time.Now()
			if sent < tries && !now.Before(next) {
				if err := unix.Sendto(fd, frame, 0, to); err != nil {
					return fmt.Errorf("send: %w", err)
				}
				sent++
				next = now.Add(time.Second)
			}
			until := deadline
			if sent < tries && next.Before(until) {
				until = next
			}
			left := time.Until(until)
			if left <= 0 {
				if sent >= tries {
					return nil
				}
				continue
			}
			tv := unix.NsecToTimeval(left.Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err == unix.EAGAIN || err == unix.EINTR || err == unix.EWOULDBLOCK {
				continue
			}
			if err != nil {
				return err
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if a, ok := parseSYNAnswer(buf[:n], sport, dport); ok && !seen[a] {
				seen[a] = true
				answers = append(answers, a)
				if done != nil && done(answers) {
					return nil
				}
			}
		}
	})
	return answers, err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// synFrame builds the Ethernet frame of a TCP SYN.
func synFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport int, seq uint32) []byte {
	f := make([]byte, 14+20+20)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[4:], uint16(seq))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	tcp := f[34:54]
	binary.BigEndian.PutUint16(tcp[0:], uint16(sport))
	binary.BigEndian.PutUint16(tcp[2:], uint16(dport))
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	var pseudo uint32
	pseudo += uint32(binary.BigEndian.Uint16(s4[0:])) + uint32(binary.BigEndian.Uint16(s4[2:]))
	pseudo += uint32(binary.BigEndian.Uint16(d4[0:])) + uint32(binary.BigEndian.Uint16(d4[2:]))
	pseudo += unix.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(tcp[16:], checksum(tcp, pseudo))
	return f
}

// checksum is the Internet checksum of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// parseSYNAnswer recognises a TCP segment to our source port from the
// probed port, or an ICMP error quoting our SYN.
func parseSYNAnswer(f []byte, sport, dport int) (synAnswer, bool) {
	if len(f) < 34 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return synAnswer{}, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl+8 {
		return synAnswer{}, false
	}
	from := netip.AddrFrom4([4]byte(ip[12:16]))
	l4 := ip[ihl:]
	switch ip[9] {
	case unix.IPPROTO_TCP:
		if len(l4) < 14 || int(binary.BigEndian.Uint16(l4[2:])) != sport || int(binary.BigEndian.Uint16(l4[0:])) != dport {
			return synAnswer{}, false
		}
		flags := l4[13]
		switch {
		case flags&0x12 == 0x12:
			return synAnswer{From: from, Flags: "SYN-ACK"}, true
		case flags&0x04 != 0:
			return synAnswer{From: from, Flags: "RST"}, true
		}
		return synAnswer{From: from, Flags: fmt.Sprintf("TCP flags %#x", flags)}, true
	case unix.IPPROTO_ICMP:
		// type, code, checksum, unused, then the original IP header + 8 bytes.
		if len(l4) < 8+20+4 {
			return synAnswer{}, false
		}
		orig := l4[8:]
		oihl := int(orig[0]&0x0f) * 4
		if orig[9] != unix.IPPROTO_TCP || len(orig) < oihl+4 || int(binary.BigEndian.Uint16(orig[oihl:])) != sport {
			return synAnswer{}, false
		}
		return synAnswer{From: from, Flags: fmt.Sprintf("ICMP %d/%d", l4[0], l4[1])}, true
	}
	return synAnswer{}, false
}
