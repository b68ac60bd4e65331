//go:build vm

package vm

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Boots under software emulation can be slow on a busy 2-core machine.
const bootTimeout = 4 * time.Minute

func needRootAndQEMU(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("VM tests need root (tap devices, network namespaces): run `make test` as root")
	}
	for _, tool := range []string{DefaultQEMU, "qemu-img", "ip", "dnsmasq", "dpkg-deb", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/install-deps.sh", tool)
		}
	}
}

// processesMentioning lists PIDs whose command line contains s.
func processesMentioning(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func fileSHA(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func assertStopped(t *testing.T, v *VM) {
	t.Helper()
	pid, dir := v.PID(), v.Dir()
	if err := v.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := v.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if alive(pid) {
		t.Errorf("qemu PID %d still alive after Stop", pid)
	}
	if left := processesMentioning(dir); len(left) > 0 {
		t.Errorf("processes still mention %s after Stop: %v", dir, left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s still there: %v", dir, err)
	}
}

// TestBootBIOSUserNet boots Debian's kernel with the busybox initramfs on
// SeaBIOS with user-mode networking: the NIC sits in PCI slot 7, a host
// forward reaches the guest's httpd, restrict=on keeps the guest from the
// host, the snapshot overlay leaves the disk untouched, and Stop leaves no
// process or file behind.
func TestBootBIOSUserNet(t *testing.T) {
	needRootAndQEMU(t)
	k := testKernel(t)

	// A host service the guest must NOT reach (restrict=on).
	var hits atomic.Int32
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })}
	go srv.Serve(ln)
	defer srv.Close()
	probePort := ln.Addr().(*net.TCPAddr).Port

	disk := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	before := fileSHA(t, disk)
	hostPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteNoCloudSeed(seed, []byte("instance-id: iid-bios\n"), []byte("#cloud-config\n"),
		map[string][]byte{"network-config": []byte("version: 2\n")}); err != nil {
		t.Fatal(err)
	}

	v, err := Start(t.Context(), Config{
		Kernel: k.Kernel, Initrd: k.Initramfs,
		Append: fmt.Sprintf("console=ttyS0 panic=-1 bake.v6wait=0 bake.probe=%d", probePort),
		Disk:   disk, Snapshot: true, SeedISO: seed,
		NoReboot: true, MemoryMiB: 512,
		NICPCIAddr: "0x7",
		Net:        NetConfig{Forwards: []Forward{{HostPort: hostPort, GuestPort: 8080}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	t.Logf("accel %s, argv: %s", v.Config.Accel, strings.Join(v.Args, " "))
	// Under TCG QEMU runs with the host's transparent huge pages off
	// (Config.HostTHP), under KVM with the kernel's default.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.PID())); err != nil {
		t.Errorf("QEMU's status: %v", err)
	} else if want := map[string]string{AccelTCG: "\nTHP_enabled:\t0\n", AccelKVM: "\nTHP_enabled:\t1\n"}[v.Config.Accel]; !strings.Contains(string(st), want) {
		t.Errorf("QEMU (pid %d, accel %s): its status lacks %q", v.PID(), v.Config.Accel, want)
	}
	if v.Config.Disk == disk || !strings.HasPrefix(v.Config.Disk, v.Dir()) {
		t.Errorf("snapshot overlay not used: disk %s", v.Config.Disk)
	}

	start := time.Now()
	if err := v.WaitSerial(t.Context(), "Linux version", bootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel banner after %s", time.Since(start).Round(time.Millisecond))
	assertUnprivileged(t, v)
	checkCPUFlags(t, v)
	checkSeed(t, v, "iid-bios")
	m, err := v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-LEASE: (\S+)`), bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "10.0.2.15" {
		t.Errorf("user-mode lease %s, want 10.0.2.15", m[1])
	}
	m, err = v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-NIC-PATH: (\S+)`), bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m[1], "/0000:00:07.0/") {
		t.Errorf("NIC at %s, want PCI slot 0000:00:07.0", m[1])
	}
	m, err = v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-PROBE: (\w+).*`), bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest -> host 10.0.2.2:%d: %s", probePort, m[0])
	if m[1] != "blocked" || hits.Load() != 0 {
		t.Errorf("restrict=on: guest probe %s, host saw %d requests", m[1], hits.Load())
	}
	if err := v.WaitSerial(t.Context(), "BAKE-INIT: ready", bootTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs ready after %s", time.Since(start).Round(time.Millisecond))

	// The forward reaches the guest's httpd.
	var body []byte
	for i := 0; i < 20; i++ {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", hostPort))
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if strings.TrimSpace(string(body)) != "bake-hello" {
		t.Errorf("GET via hostfwd: %q", body)
	}

	// The CPU time bake reads for the VM (the init's wait4 rusage) is
	// QEMU's: no less than what QEMU's own /proc/PID/stat showed just
	// before the stop (the init alone, a Go program that waits, would be
	// milliseconds), and no more than its vCPUs and threads could burn.
	qemuCPU, initCPU := procCPU(t, v.PID()), procCPU(t, v.cmd.Process.Pid)
	assertStopped(t, v)
	cpu, ran := v.CPUTime(), v.Ran()
	t.Logf("%s; before the stop /proc showed QEMU %s and its init %s of CPU", v.ExitSummary(), qemuCPU, initCPU)
	if cpu < qemuCPU || cpu <= 0 {
		t.Errorf("CPUTime %s, less than QEMU's own %s before the stop: the init's rusage does not count QEMU's", cpu, qemuCPU)
	}
	if cpu >= ran*time.Duration(v.Config.CPUs) {
		t.Errorf("CPUTime %s after running %s with %d vCPUs: more than the wall time times the vCPUs", cpu, ran, v.Config.CPUs)
	}
	if fileSHA(t, disk) != before {
		t.Error("disk modified despite Snapshot")
	}
}

// checkCPUFlags: under TCG the guest's CPU is TCGCPU, "max" without the
// features that are slow to emulate (ERMS and FSRM: rep stosb / movsb one
// byte per iteration; LA57: five-level page tables), with the rest of
// "max" (SSE4.2, AVX2, the ones Node and glibc's vector loops use).
func checkCPUFlags(t *testing.T, v *VM) {
	t.Helper()
	m, err := v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-CPUFLAGS: ([^\n]*) \.`), bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	for _, f := range strings.Fields(m[1]) {
		flags[f] = true
	}
	if v.Config.Accel != AccelTCG {
		t.Logf("accel %s: the guest's CPU flags are the host's (%d flags)", v.Config.Accel, len(flags))
		return
	}
	for _, f := range []string{"erms", "fsrm", "la57"} {
		if flags[f] {
			t.Errorf("the guest's CPU (%s) has %s", TCGCPU, f)
		}
	}
	for _, f := range []string{"sse4_2", "popcnt", "avx2", "aes", "rdrand"} {
		if !flags[f] {
			t.Errorf("the guest's CPU (%s) lacks %s", TCGCPU, f)
		}
	}
	t.Logf("the guest's CPU under TCG (%s): %d flags, no erms, fsrm or la57", TCGCPU, len(flags))
}

// procCPU is pid's own CPU time (utime + stime of /proc/PID/stat, its
// threads, not its children), in clock ticks of 1/100 s (USER_HZ).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// After "pid (comm)": state is field 3, utime 14, stime 15.
	utime, uerr := strconv.ParseInt(f[14-3], 10, 64)
	stime, serr := strconv.ParseInt(f[15-3], 10, 64)
	if uerr != nil || serr != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// assertUnprivileged: the running guest's QEMU is not root. Its
// /proc/PID/status shows every uid and gid of DefaultRunAs's account
// (never 0) and no effective or permitted capability; its parent is the
// init Start put it under (pidns.go), which is still root and keeps SIGKILL
// as its death signal for it.
func assertUnprivileged(t *testing.T, v *VM) {
	t.Helper()
	status := func(pid int) map[string][]string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatalf("QEMU's status: %v", err)
		}
		m := map[string][]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, val, ok := strings.Cut(l, ":"); ok {
				m[k] = strings.Fields(val)
			}
		}
		return m
	}
	uid, gid, err := runAsUID(DefaultRunAs)
	if err != nil {
		t.Fatal(err)
	}
	q := status(v.PID())
	t.Logf("QEMU pid %d: Uid %v Gid %v Groups %v CapEff %v CapPrm %v NoNewPrivs %v PPid %v",
		v.PID(), q["Uid"], q["Gid"], q["Groups"], q["CapEff"], q["CapPrm"], q["NoNewPrivs"], q["PPid"])
	for _, k := range []string{"Uid", "Gid"} {
		want := strconv.Itoa(uid)
		if k == "Gid" {
			want = strconv.Itoa(gid)
		}
		if len(q[k]) != 4 {
			t.Fatalf("QEMU's %s: %v", k, q[k])
		}
		for _, id := range q[k] {
			if id == "0" || id != want {
				t.Errorf("QEMU runs with %s %v, want %s (%s) in all four", k, q[k], want, DefaultRunAs)
			}
		}
	}
	if g := q["Groups"]; len(g) > 1 || (len(g) == 1 && g[0] != strconv.Itoa(gid)) {
		t.Errorf("QEMU's supplementary groups %v, want none but %d", g, gid)
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"} {
		if strings.Join(q[k], "") != "0000000000000000" {
			t.Errorf("QEMU's %s %v: it kept a capability", k, q[k])
		}
	}
	if strings.Join(q["NoNewPrivs"], "") != "1" {
		t.Errorf("QEMU's NoNewPrivs %v", q["NoNewPrivs"])
	}
	if strings.Join(q["Seccomp"], "") != "2" {
		t.Errorf("QEMU's Seccomp %v, want 2 (filter)", q["Seccomp"])
	}
	// QEMU's /proc is its namespace's: the init (1) and QEMU (its PID
	// there, the last of NSpid), no other process (another VM's QEMU) it
	// could reach through it.
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/proc", v.PID()))
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, e.Name())
		}
	}
	nspid := q["NSpid"]
	if len(nspid) != 2 {
		t.Fatalf("QEMU's NSpid %v: want its PID here and in its own namespace", nspid)
	}
	if want := "1 " + nspid[1]; strings.Join(pids, " ") != want {
		t.Errorf("QEMU's /proc lists processes %v, want its init's namespace only (%s)", pids, want)
	}
	if err := parseSandboxArgv(v.Args); err != nil {
		t.Error(err)
	}
	initPID := v.cmd.Process.Pid
	if strings.Join(q["PPid"], "") != strconv.Itoa(initPID) || initPID == v.PID() {
		t.Errorf("QEMU's parent %v, want its init %d", q["PPid"], initPID)
	}
	if u := status(initPID)["Uid"]; strings.Join(u, " ") != "0 0 0 0" {
		t.Errorf("the init's Uid %v: it must stay root to keep its death signal", u)
	}
}

// checkSeed waits for the initramfs to report the seed: found by blkid as
// LABEL=cidata, mounted by the guest kernel's iso9660 with Rock Ridge names.
func checkSeed(t *testing.T, v *VM, iid string) {
	t.Helper()
	m, err := v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-SEED-DEV: (\S+)`), bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest found LABEL=cidata on %s", m[1])
	m, err = v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-SEED-LS: (.*)`), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(m[1]); strings.Join(got, " ") != "meta-data network-config user-data" {
		t.Errorf("guest sees seed files %q", got)
	}
	m, err = v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-SEED-META: (.*)`), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(m[1]) != "instance-id: "+iid {
		t.Errorf("guest reads meta-data %q", m[1])
	}
}

// TestBootUEFI boots the kernel through OVMF: the vars template is copied,
// never written, and the copy goes with Stop.
func TestBootUEFI(t *testing.T) {
	needRootAndQEMU(t)
	if _, err := os.Stat(DefaultOVMFCode); err != nil {
		t.Fatalf("ovmf not installed (scripts/install-deps.sh): %v", err)
	}
	k := testKernel(t)
	before := fileSHA(t, DefaultOVMFVars)
	serial := filepath.Join(t.TempDir(), "serial.log")
	seed := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteNoCloudSeed(seed, []byte("instance-id: iid-uefi\n"), []byte("#cloud-config\n"),
		map[string][]byte{"network-config": []byte("version: 2\n")}); err != nil {
		t.Fatal(err)
	}
	v, err := Start(t.Context(), Config{
		Firmware: UEFI, Kernel: k.Kernel, Initrd: k.Initramfs,
		Append: "console=ttyS0 panic=-1", NoReboot: true, MemoryMiB: 512, SerialLog: serial,
		SeedISO: seed, SeedCDROM: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	if !strings.HasPrefix(v.Config.OVMFVars, v.Dir()) {
		t.Errorf("OVMF vars not copied into the temp dir: %s", v.Config.OVMFVars)
	}
	if err := v.WaitSerial(t.Context(), "BAKE-INIT: up", bootTimeout); err != nil {
		t.Fatal(err)
	}
	assertUnprivileged(t, v)
	checkSeed(t, v, "iid-uefi") // as an IDE CD-ROM this time
	assertStopped(t, v)
	if fileSHA(t, DefaultOVMFVars) != before {
		t.Error("OVMF vars template modified")
	}
	if b, _ := os.ReadFile(serial); !bytes.Contains(b, []byte("Linux version")) {
		t.Error("user-supplied serial log not kept after Stop")
	}
}

func netnsExists(t *testing.T, name string) bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

// TestLinkLifecycle creates and closes a Link without a VM.
func TestLinkLifecycle(t *testing.T) {
	needRootAndQEMU(t)
	l, err := NewLink(t.Context(), "life")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	pid := l.DNSMasqPID()
	if pid == 0 || !alive(pid) {
		t.Fatalf("dnsmasq not running (pid %d)", pid)
	}
	if !netnsExists(t, l.Netns) {
		t.Fatalf("netns %s not listed", l.Netns)
	}
	out, err := l.Exec(t.Context(), "ip", "addr", "show", "dev", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"inet 10.77.0.1/24", "inet6 fd77::1/64"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tap0 lacks %q:\n%s", want, out)
		}
	}
	// The namespace has no route anywhere but the link.
	routes, _ := l.Exec(t.Context(), "ip", "route", "show")
	if strings.Contains(string(routes), "default") {
		t.Errorf("namespace has a default route:\n%s", routes)
	}
	// And the host's namespace has no tap0 of ours.
	if _, err := net.InterfaceByName("tap0"); err == nil {
		t.Log("note: a tap0 exists in the host namespace (not ours)")
	}
	dir := l.dir
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if netnsExists(t, l.Netns) {
		t.Errorf("netns %s still listed after Close", l.Netns)
	}
	if alive(pid) {
		t.Errorf("dnsmasq %d still alive after Close", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("link dir %s left behind", dir)
	}
}

// TestLinkDHCPAndScan puts a VM on a Link: the guest takes a DHCPv4 lease
// and a SLAAC address from dnsmasq, GuestIPv4/GuestIPv6 find them, and nmap
// run inside the namespace sees the guest's port 8080 over both.
func TestLinkDHCPAndScan(t *testing.T) {
	needRootAndQEMU(t)
	k := testKernel(t)
	l, err := NewLink(t.Context(), "dhcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	v, err := Start(t.Context(), Config{
		Kernel: k.Kernel, Initrd: k.Initramfs, Append: "console=ttyS0 panic=-1 quiet",
		NoReboot: true, MemoryMiB: 512, Net: l.NetConfig(),
		NICModel: "e1000", NICPCIAddr: "0x9", // the other NIC model, another slot
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	t.Logf("accel %s, argv: %s", v.Config.Accel, strings.Join(v.Args, " "))

	m, err := v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-LEASE: (\S+)`), bootTimeout)
	if err != nil {
		b, _ := os.ReadFile(l.DNSMasqLog())
		t.Fatalf("%v\ndnsmasq log:\n%s", err, b)
	}
	assertUnprivileged(t, v) // the tap passed as a descriptor, no ip netns exec
	v4, err := l.GuestIPv4(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if v4.String() != m[1] {
		t.Errorf("GuestIPv4 %s, guest says %s", v4, m[1])
	}
	if first, last := LinkDHCPFirst, LinkDHCPLast; v4.Less(first) || last.Less(v4) {
		t.Errorf("lease %s outside %s-%s", v4, first, last)
	}
	m, err = v.WaitSerialRegexp(t.Context(), regexp.MustCompile(`BAKE-IPV6: (\S*)`), bootTimeout)
	if err != nil {
		t.Fatal(err)
	}
	guest6, err := netip.ParseAddr(m[1])
	if err != nil || !LinkHostIPv6.Contains(guest6) {
		t.Fatalf("guest has no SLAAC address in %s: %q", LinkHostIPv6, m[1])
	}
	if err := v.WaitSerial(t.Context(), "BAKE-INIT: ready", bootTimeout); err != nil {
		t.Fatal(err)
	}
	v6, err := l.GuestIPv6(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if v6 != guest6 {
		t.Errorf("GuestIPv6 %s, guest says %s", v6, guest6)
	}
	t.Logf("guest on the link: %s and %s", v4, v6)

	if _, err := exec.LookPath("nmap"); err != nil {
		t.Fatal("nmap not installed: run scripts/install-deps.sh")
	}
	for _, args := range [][]string{
		{"nmap", "-n", "-Pn", "-p", "8080,8081", v4.String()},
		{"nmap", "-6", "-n", "-Pn", "-p", "8080,8081", v6.String()},
	} {
		out, err := l.Exec(t.Context(), args...)
		if err != nil {
			t.Fatalf("%v", err)
		}
		s := string(out)
		t.Logf("%s:\n%s", strings.Join(args, " "), s)
		if !regexp.MustCompile(`8080/tcp\s+open`).MatchString(s) || !regexp.MustCompile(`8081/tcp\s+closed`).MatchString(s) {
			t.Errorf("%s:\n%s", strings.Join(args, " "), s)
		}
	}

	qpid := v.PID()
	assertStopped(t, v)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if netnsExists(t, l.Netns) || alive(qpid) {
		t.Error("netns or qemu left after Stop/Close")
	}
}
