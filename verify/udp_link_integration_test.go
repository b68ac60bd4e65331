//go:build integration

package verify

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/vm"
)

// TestUDPSweepThroughLinkLosesNothing sends a full sweep through a real
// verify link (vm.NewLink: the tap device QEMU reads) to a stand-in guest
// that reads the tap several times slower than verify sends, as a TCG guest
// does: every probe must come out of the tap, none dropped by the tap's
// queue. (With the tap's default queue of 1000 packets, a sweep sent
// faster than the guest reads loses the overflow; the link's queue holds a
// whole sweep.)
func TestUDPSweepThroughLinkLosesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (network namespaces); run `make test` as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := vm.NewLink(ctx, "vt-udp")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	guest := vm.LinkDHCPFirst
	guestMAC := "52:54:00:be:00:42"
	if out, err := exec.Command("ip", "-n", l.Netns, "neigh", "replace", guest.String(), "lladdr", guestMAC, "dev", l.Tap, "nud", "permanent").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh: %v %s", err, out)
	}

	// The stand-in guest: attaches to the tap as QEMU does and reads at
	// most readRate frames a second.
	const readRate = udpSweepRate / 2
	tapFD := attachTap(t, l)
	defer unix.Close(tapFD)
	seen := map[int]bool{}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 2048)
		t0 := time.Now()
		n := 0
		for ctx.Err() == nil && len(seen) < 65535 {
			m, err := unix.Read(tapFD, buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				return
			}
			f := buf[:m]
			// Ethernet, IPv4, UDP to guest from the sweep's source port.
			if len(f) >= 14+20+8 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[14+9] == unix.IPPROTO_UDP {
				ihl := int(f[14]&0x0f) * 4
				u := f[14+ihl:]
				if len(u) >= 8 && binary.BigEndian.Uint16(u[0:]) == 45678 {
					seen[int(binary.BigEndian.Uint16(u[2:]))] = true
				}
			}
			n++
			if due := t0.Add(time.Duration(n) * time.Second / readRate); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
			}
		}
	}()
	dropped := func() int64 {
		b, err := exec.Command("ip", "netns", "exec", l.Netns, "cat", filepath.Join("/sys/class/net", l.Tap, "statistics/tx_dropped")).Output()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	d0 := dropped()
	t0 := time.Now()
	sent, err := sendUDPSweep(ctx, l.Netns, udpSweep{Src: vm.LinkHostIPv4.Addr(), Dst: guest, Sport: 45678}, udpSweepRate)
	if err != nil {
		t.Fatal(err)
	}
	sendTime := time.Since(t0)
	select {
	case <-readDone:
	case <-time.After(65535*time.Second/readRate + 30*time.Second):
		cancel() // the reader stops at its next EAGAIN
		<-readDone
	}
	t.Logf("sent %d at up to %d/s in %s; the stand-in guest (%d/s) read %d distinct ports in %s; tap drops +%d",
		sent, udpSweepRate, sendTime.Round(time.Millisecond), readRate, len(seen), time.Since(t0).Round(time.Millisecond), dropped()-d0)
	if sent != 65535 || len(seen) != 65535 {
		t.Fatalf("sent %d, the guest read %d of 65535 ports", sent, len(seen))
	}
	if d := dropped() - d0; d != 0 {
		t.Fatalf("the tap dropped %d packets", d)
	}
}

// attachTap attaches to the link's tap as QEMU does (non-blocking); the
// caller closes the descriptor (before the link).
func attachTap(t *testing.T, l *vm.Link) int {
	t.Helper()
	fdc := make(chan int, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- inNetns(l.Netns, func() error {
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			var req [unix.IFNAMSIZ + 64]byte
			copy(req[:], l.Tap)
			binary.NativeEndian.PutUint16(req[unix.IFNAMSIZ:], unix.IFF_TAP|unix.IFF_NO_PI)
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); e != 0 {
				unix.Close(fd)
				return e
			}
			fdc <- fd
			return nil
		})
	}()
	var tapFD int
	select {
	case tapFD = <-fdc:
	case err := <-errc:
		t.Fatalf("attaching to the tap: %v", err)
	}
	if err := unix.SetNonblock(tapFD, true); err != nil {
		unix.Close(tapFD)
		t.Fatal(err)
	}
	return tapFD
}
