//go:build integration

package verify

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/vm"
)

// TestCountedScanThroughLink runs network.scan's counted nmap
// (NmapCountedArgs) through a real verify link to a stand-in guest on the
// tap, over IPv4 and IPv6: every one of the 65535 ports gets a SYN, and
// every SYN carries the source address and port the guest's counting
// rules match (a first cut without -e, -S and --send-ip: in a real boot
// the guest counted none of the IPv6 SYNs; here nmap, doing its own ARP
// and neighbour discovery, finds the stand-in guest down).
func TestCountedScanThroughLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (network namespaces); run `make test` as root")
	}
	if _, err := exec.LookPath("nmap"); err != nil {
		t.Fatal("nmap is not installed (scripts/install-deps.sh installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := vm.NewLink(ctx, "vt-scan")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	guestMAC := "52:54:00:be:00:43"
	guests := []netip.Addr{vm.LinkDHCPFirst, netip.MustParseAddr("fd77::5054:ff:febe:43")}
	for _, g := range guests {
		if out, err := exec.Command("ip", "-n", l.Netns, "neigh", "replace", g.String(), "lladdr", guestMAC, "dev", l.Tap, "nud", "permanent").CombinedOutput(); err != nil {
			t.Fatalf("ip neigh: %v %s", err, out)
		}
	}
	tapFD := attachTap(t, l)
	defer unix.Close(tapFD)

	const sport = 31999
	for _, g := range guests {
		src := linkHost(g)
		seen := map[int]bool{}
		other := 0 // SYNs from another source address or port
		done := make(chan struct{})
		stop := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				m, err := unix.Read(tapFD, buf)
				if err == unix.EAGAIN || err == unix.EINTR {
					select {
					case <-stop:
						return
					default:
					}
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					return
				}
				f := buf[:m]
				var s netip.Addr
				var tcp []byte
				switch {
				case len(f) >= 14+20+20 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[14+9] == unix.IPPROTO_TCP:
					s = netip.AddrFrom4([4]byte(f[14+12 : 14+16]))
					tcp = f[14+int(f[14]&0x0f)*4:]
				case len(f) >= 14+40+20 && binary.BigEndian.Uint16(f[12:]) == 0x86dd && f[14+6] == unix.IPPROTO_TCP:
					s = netip.AddrFrom16([16]byte(f[14+8 : 14+24]))
					tcp = f[14+40:]
				default:
					continue
				}
				if len(tcp) < 14 || tcp[13]&0x12 != 0x02 { // SYN, not ACK
					continue
				}
				if s != src || int(binary.BigEndian.Uint16(tcp[0:])) != sport {
					other++
					continue
				}
				seen[int(binary.BigEndian.Uint16(tcp[2:]))] = true
			}
		}()
		t0 := time.Now()
		out, err := l.Exec(ctx, NmapCountedArgs(g, src, l.Tap, sport, scanRate)...)
		time.Sleep(500 * time.Millisecond) // the last frames still in the queue
		close(stop)
		<-done
		if err != nil {
			t.Fatalf("nmap: %v\n%s", err, out)
		}
		res, err := ParseNmapXML(out)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		t.Logf("%s: nmap %s in %s; the stand-in guest read SYNs to %d distinct ports from %s:%d, %d from elsewhere", g, res.Summary(), time.Since(t0).Round(time.Millisecond), len(seen), src, sport, other)
		if len(seen) != 65535 || other != 0 {
			t.Errorf("%s: SYNs to %d of 65535 ports from %s:%d, %d SYNs from another source", g, len(seen), src, sport, other)
		}
	}
}
