package verify

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/internal/imgfile"
	"github.com/bakeimg/bake/vm"
)

// Defaults of a run.
const (
	DefaultTimeout   = 45 * time.Minute
	DefaultMemoryMiB = 2048
	// sshWaitMax bounds the wait for SSH after power-on (TCG boots of an
	// appliance that loads its container image at first boot are slow).
	sshWaitMax = 15 * time.Minute
	// authGrace is how long key refusals are retried after the first one:
	// keys may be installed a moment after sshd starts (cloud-init).
	authGrace = 90 * time.Second
	// refusedGrace: an SSH port that keeps refusing connections this long
	// after the console first showed a login prompt (and this long since
	// its first refusal) has no sshd behind it. The prompt comes late in a
	// boot: getty waits for systemd-user-sessions.service, which
	// cloud-init.service (itself Before=sshd.service) and bake's first-boot
	// unit (Before=ssh.service) are ordered before, so on those images sshd
	// is already starting when the prompt shows; elsewhere sshd and getty
	// start side by side, both after network.target. Counted from the
	// first refusal (session 11 and before: 3 minutes) it cost every image
	// without sshd 3 minutes, and a slow boot's refusals (cloud-init's
	// datasource probe, 140 s) all came before its prompt.
	refusedGrace = time.Minute
)

// Options of a verification.
type Options struct {
	Image        string
	Spec         Spec
	Recipe       string // recipe path, for the report
	RecipeDigest string
	Firmwares    []string // vm.BIOS, vm.UEFI
	Instances    int      // VMs per firmware, from the same image
	ReportDir    string   // report.json, junit.xml, serial logs; "" = none
	// Keep keeps the work directory (seeds, the throwaway key, serial
	// logs) and says where it is. The overlays are vm.Start's, gone with
	// their VM.
	Keep    bool
	Timeout time.Duration // the whole run
	// GatewayTimeout bounds the wait for the gateway to answer after the
	// system is running; GatewayStartTimeout when 0.
	GatewayTimeout time.Duration
	// AllowSkip names the skips the user accepts (--allow-skip): check
	// IDs (network.scan) or keys ("bios/network.scan"), each checked
	// with ResolveAllowSkip. Any other skip fails the run.
	AllowSkip []string
	MemoryMiB int
	// CPUs is each VM's vCPU count; 0 picks it (AutoCPUs).
	CPUs int
	// UserNet forces user-mode networking even as root (the checks from
	// outside then Skip).
	UserNet bool
	// UserData is the user's cloud-config merged into each seed's
	// user-data (--user-data); nil for none.
	UserData *UserData
	// SeedVia is how the instances get their seed, assigned in turn
	// (instance i gets SeedVia[i % len]): SeedNoCloud (the default when
	// empty) or SeedSMBIOS. See SeedVias.
	SeedVia []string
	// Tailnet, when set, makes the last instance of each firmware join
	// this control server at first boot and plans the tailscale.joined,
	// key-gone, serve and reboot checks on it (see Tailnet). It needs the
	// outside namespace (root) and 2 instances or more: without them those
	// checks fail.
	Tailnet     *Tailnet
	Log         io.Writer // progress lines; nil = none
	BakeVersion string
	// UpgradeFrom, when set, makes the run an upgrade proof (bake verify
	// IMAGE --upgrade-from OLD, docs/state.md): OLD boots with a seed on a
	// new blank state volume, Image boots on it with no seed, then OLD
	// again (upgrade.*). Instances is then 1 and one firmware is booted.
	UpgradeFrom string
	// StateVolume is where an upgrade run makes the state volume (a new
	// file, kept); "" = in the work directory, removed.
	StateVolume string
}

type runner struct {
	o    Options
	rep  *Report
	work string
	mu   sync.Mutex

	netns      bool   // outside = a Link's namespace
	outsideWhy string // why not, when !netns
	nmap       string // path of nmap, "" when missing
	probeTar   []byte
	cpus       map[string]int // vCPUs of each VM, by firmware

	// raw is the image as a raw disk (the image itself when it is raw,
	// else a sparse copy in the work dir made before anything boots, for
	// the claims record and the secret scan); rawErr says why there is
	// none.
	raw    string
	rawErr error
}

func (r *runner) logf(format string, args ...any) {
	if r.o.Log == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.o.Log, "verify: "+format+"\n", args...)
}

// hostError records why the host cannot run the VM.
func (r *runner) hostError(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if r.rep.HostError == "" {
		r.rep.HostError = msg
	} else {
		r.rep.HostError += "\n" + msg
	}
}

func (r *runner) record(fw, id string, st Status, evidence string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.rep.Results {
		if x.ID == id && x.Firmware == fw {
			return // first word counts
		}
	}
	res := Result{ID: id, Title: title(r.o.Spec, id), Firmware: fw, Status: st, Evidence: strings.TrimSpace(evidence), Duration: d}
	r.rep.Results = append(r.rep.Results, res)
	if r.o.Log != nil {
		fmt.Fprintf(r.o.Log, "verify: %s %s: %s\n", strings.ToUpper(string(st)), res.Key(), truncate(firstLine(evidence), 200))
	}
}

func (r *runner) has(fw, id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.rep.Results {
		if x.ID == id && x.Firmware == fw {
			return true
		}
	}
	return false
}

// Run verifies an image and returns the report (never nil). Host problems
// are in Report.HostError, an interruption (ctx cancelled by a signal) in
// Report.Interrupted.
func Run(ctx context.Context, o Options) *Report {
	if o.Instances < 1 || o.UpgradeFrom != "" {
		o.Instances = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = DefaultMemoryMiB
	}
	if len(o.Firmwares) == 0 {
		o.Firmwares = []string{vm.BIOS}
	}
	if o.UpgradeFrom != "" {
		o.Firmwares = o.Firmwares[:1]
	}
	cpus := map[string]int{}
	for _, fw := range o.Firmwares {
		cpus[fw] = o.CPUs
		if o.CPUs == 0 {
			cpus[fw] = AutoCPUs(o.Instances, vm.KVMUsable(), runtime.NumCPU(), fw, fw == vm.UEFI && UEFIOneCPUReboots(""))
		}
	}
	rep := NewReport(o)
	rep.CPUs = cpus
	r := &runner{o: o, rep: rep, cpus: cpus}
	defer func() { rep.SortResults(); rep.Finish(time.Now()) }()

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	interrupted := func() bool {
		if parent.Err() != nil {
			rep.Interrupted = "stopped by a signal"
			return true
		}
		return false
	}

	if abs, err := filepath.Abs(o.Image); err == nil {
		o.Image = abs
		r.o.Image = abs
	}
	// First, whatever this run turns out to be: a killed run's leftovers.
	r.removeStale(ctx)
	sum, size, err := fileSHA256(ctx, o.Image)
	if err != nil {
		if interrupted() {
			return rep
		}
		r.hostError("cannot read the image: %v", err)
		return rep
	}
	rep.SHA256, rep.Size = sum, size
	r.logf("image %s sha256:%s", o.Image, sum)
	if r.imageRefused(ctx) {
		interrupted()
		return rep
	}

	if !r.preflight(ctx) {
		return rep
	}
	work, err := newWorkDir()
	if err != nil {
		r.hostError("work directory: %v", err)
		return rep
	}
	if o.Keep {
		// Kept whatever happens to this run: a later run must not take
		// it for a killed run's.
		os.WriteFile(filepath.Join(work, keptMarker), nil, 0o644)
	}
	r.work = work
	r.logf("work directory %s", work)
	defer func() {
		if o.Keep {
			fmt.Fprintf(os.Stderr, "verify: kept the work directory %s (seeds, the throwaway key id_ed25519, serial logs)\n", work)
			return
		}
		os.RemoveAll(work)
	}()

	r.prepareRaw(ctx)
	defer r.removeRaw()
	// Before anything boots: the claims the checks plan by.
	r.claimsRecord(ctx)

	if o.UpgradeFrom != "" {
		if abs, err := filepath.Abs(o.UpgradeFrom); err == nil {
			r.o.UpgradeFrom = abs
			rep.UpgradeFrom = abs
		}
	}
	for _, fw := range o.Firmwares {
		if ctx.Err() != nil {
			break
		}
		if r.o.UpgradeFrom != "" {
			r.upgrade(ctx, fw)
			if rep.HostError != "" {
				return rep
			}
			break // one firmware: the volume is the instance's
		}
		r.firmware(ctx, fw)
		if rep.HostError != "" {
			return rep
		}
	}
	if interrupted() {
		r.fillSkipped("not run: verification interrupted")
		return rep
	}
	if ctx.Err() == nil && r.o.UpgradeFrom == "" {
		r.secrets(ctx)
	}
	if ctx.Err() != nil && !interrupted() {
		r.fillSkipped(fmt.Sprintf("not run: the verification's time limit (--timeout %s) ran out", o.Timeout))
		// Running out of time is the image's doing (it would not boot or
		// answer in time): a failure, not a host problem.
		r.record("", checkVerifyTimeout.ID, Fail, fmt.Sprintf("the verification did not finish within --timeout %s", o.Timeout), 0)
	}
	r.fillSkipped("not run")
	return rep
}

// NewReport is the report of a run of o before any check has a result
// (Run fills in o's defaults first). Exported so that a stand-in for Run
// (the CLI's tests) reports exactly as Run does.
func NewReport(o Options) *Report {
	rep := &Report{Image: o.Image, Recipe: o.Recipe, RecipeDigest: o.RecipeDigest, Firmwares: o.Firmwares, Instances: o.Instances,
		AllowSkip: o.AllowSkip, Started: time.Now(), BakeVersion: o.BakeVersion, Claims: o.Spec.Source}
	if o.UserData != nil {
		rep.UserData, rep.UserDataSHA256 = o.UserData.Name, o.UserData.SHA256
	}
	rep.UpgradeFrom = o.UpgradeFrom
	if o.Tailnet != nil {
		rep.Tailnet = o.Tailnet.LoginServer
	}
	return rep
}

// imageRefused checks the image before QEMU or qemu-img reads it: bake
// reads its structure itself, bounded by the file's size (a qcow2 must be
// self-contained: no backing or external data file, no snapshots, tables
// inside the file, no cluster used twice). A refusal is the image's
// failure (image.format, exit 1); every check is then "not run".
func (r *runner) imageRefused(ctx context.Context) bool {
	if _, err := cloudimg.CheckFile(ctx, r.o.Image); err != nil {
		if ctx.Err() != nil {
			return true
		}
		r.record("", checkImageFormat.ID, Fail, "refused: "+err.Error(), 0)
		r.fillSkipped("not run: the image was refused")
		return true
	}
	return false
}

// preflight finds what the host has. Missing QEMU, qemu-img or OVMF means
// the host cannot run the VM (exit 2); missing nmap or namespace tools
// make the checks that need them Skip.
func (r *runner) preflight(ctx context.Context) bool {
	ok := true
	for _, tool := range []string{vm.DefaultQEMU, "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			r.hostError("%s is not installed (Debian: apt-get install qemu-system-x86 qemu-utils)", tool)
			ok = false
		}
	}
	for _, fw := range r.o.Firmwares {
		if fw == vm.UEFI {
			for _, f := range []string{vm.DefaultOVMFCode, vm.DefaultOVMFVars} {
				if _, err := os.Stat(f); err != nil {
					r.hostError("UEFI firmware %s missing (Debian: apt-get install ovmf)", f)
					ok = false
				}
			}
		}
	}
	if !ok {
		return false
	}
	format, err := vm.DiskFormat(ctx, r.o.Image)
	if errors.Is(err, vm.ErrRefused) {
		r.record("", checkImageFormat.ID, Fail, err.Error(), 0)
		r.fillSkipped("not run: the image was refused")
		return false
	}
	if err != nil {
		r.hostError("qemu-img cannot read the image: %v", err)
		return false
	}
	r.rep.Format = format

	switch {
	case r.o.UserNet:
		r.outsideWhy = "user-mode networking was asked for (--user-net): there is no outside network to probe from"
	case os.Geteuid() != 0:
		r.outsideWhy = "not root: the outside network namespace (tap device, DHCP/RA, port scan) needs root; ran with QEMU user-mode networking (restrict=on)"
	default:
		r.netns = true
		for _, tool := range []string{"ip", "dnsmasq"} {
			if _, err := exec.LookPath(tool); err != nil {
				r.netns = false
				r.outsideWhy = tool + " is not installed (Debian: apt-get install iproute2 dnsmasq-base): no outside network namespace"
			}
		}
	}
	if r.netns {
		r.rep.Outside = "network namespace with a tap device (DHCPv4 10.77.0.0/24, SLAAC fd77::/64)"
	} else {
		r.rep.Outside = "none (QEMU user-mode networking, restrict=on): " + r.outsideWhy
	}
	if p, err := exec.LookPath("nmap"); err == nil {
		r.nmap = p
	}
	return true
}

// instance is one VM of one firmware.
type instance struct {
	r      *runner
	fw     string
	idx    int
	label  string // the name of an upgrade run's boot ("" = FIRMWARE-INDEX)
	link   *vm.Link
	vm     *vm.VM
	mac    net.HardwareAddr
	key    *Key
	token  string // the seed's token; "" lets first boot generate one
	canary string // in the seed's user-data only (secrets.seed-copies)
	// tailnet: this instance's seed has Options.Tailnet's key, login
	// server and CA, and it has the outbound NIC.
	tailnet bool
	outMAC  string // the outbound NIC's MAC (tailnet instances)
	via     string // SeedNoCloud or SeedSMBIOS
	serial  string

	fwdPort    int // user mode: host port forwarded to the guest's SSH
	ipv4, ipv6 netip.Addr
	sess       *sshSession
	hostKey    ssh.PublicKey
	loginEv    string // evidence of the login (or of its failure)
	loginOK    bool
	poweredOn  time.Time // QEMU started
	cpuLogged  bool      // stopVM logged QEMU's exit (under r.mu)
}

func (in *instance) name() string {
	if in.label != "" {
		return in.label
	}
	return fmt.Sprintf("%s-%d", in.fw, in.idx)
}

func (in *instance) sshTarget() string {
	if in.link != nil {
		return net.JoinHostPort(in.ipv4.String(), fmt.Sprint(in.r.o.Spec.SSHPort))
	}
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(in.fwdPort))
}

func (in *instance) dialSSH(ctx context.Context, timeout time.Duration) (net.Conn, error) {
	ns := ""
	if in.link != nil {
		ns = in.link.Netns
	}
	return dialIn(ctx, ns, "tcp", in.sshTarget(), timeout)
}

// dialOutside connects from the outside namespace.
func (in *instance) dialOutside(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	if in.link == nil {
		return nil, errors.New("no outside namespace")
	}
	return dialIn(ctx, in.link.Netns, "tcp", addr, timeout)
}

// sudo runs script as root in the guest (sudo -n sh -c SCRIPT).
func (in *instance) sudo(ctx context.Context, script string) (cmdResult, error) {
	return in.runT(ctx, "sudo -n sh -c "+shellQuote(script), nil, 2*time.Minute)
}

func (in *instance) runT(ctx context.Context, cmd string, stdin []byte, timeout time.Duration) (cmdResult, error) {
	if in.sess == nil {
		return cmdResult{Cmd: cmd, Exit: -1}, errors.New("no SSH session")
	}
	return in.sess.Run(ctx, cmd, stdin, timeout)
}

// firmware boots the instances of one firmware, runs the checks and always
// powers the VMs off and removes their links.
func (r *runner) firmware(ctx context.Context, fw string) {
	key, err := NewKey("bake-verify@" + fw)
	if err != nil {
		r.hostError("generating a key: %v", err)
		return
	}
	if r.o.Keep {
		os.WriteFile(filepath.Join(r.work, "id_ed25519"), key.PrivatePEM, 0o600)
		os.WriteFile(filepath.Join(r.work, "id_ed25519.pub"), []byte(key.AuthorizedKey+"\n"), 0o644)
	}
	insts := make([]*instance, r.o.Instances)
	defer func() {
		var wg sync.WaitGroup
		for _, in := range insts {
			if in != nil {
				wg.Add(1)
				go func() { defer wg.Done(); in.shutdown(ctx) }()
			}
		}
		wg.Wait()
		r.keepSerials(insts)
	}()
	for i := range insts {
		in, err := r.start(ctx, fw, i, key)
		insts[i] = in // may be partly made: shutdown cleans up
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.hostError("%s: %v", fw, err)
			return
		}
	}
	if r.o.Tailnet != nil && !insts[len(insts)-1].tailnet {
		why := "not run: --tailnet-* needs --instances 2 or more (the last instance joins)"
		if !r.netns {
			why = "not run: --tailnet-* needs the outside network namespace (" + r.outsideWhy + ")"
		}
		for _, k := range []*Check{&checkTailscaleJoined, &checkTailscaleKeyGone, &checkTailscaleServe, &checkTailscaleReboot} {
			r.record(fw, k.ID, Fail, why, 0)
		}
	}
	var wg sync.WaitGroup
	for _, in := range insts {
		wg.Add(1)
		go func() { defer wg.Done(); in.waitSSH(ctx); in.findIPv6(ctx) }()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	main := insts[0]
	// Every instance's login is the check's: each proves its seed path
	// (--seed-via) delivered the admin's key.
	loginOK, loginEv := true, main.loginEv
	for _, in := range insts[1:] {
		loginOK = loginOK && in.loginOK
		loginEv += "\n" + in.name() + ": " + in.loginEv
	}
	r.record(fw, checkSSHKeyLogin.ID, status(main.loginOK && loginOK), loginEv, 0)
	c := &checker{r: r, in: main, spec: r.o.Spec, fw: fw}

	// Identity of several instances runs beside the main checks: the
	// reboot of the last instance takes as long as a boot. With one
	// instance it is not part of the run (Plan): the report lists it as
	// skipped by request (Report.ListByRequest).
	var idwg sync.WaitGroup
	var rebooted *instance
	if len(insts) >= 2 {
		idwg.Add(1)
		go func() {
			defer idwg.Done()
			if r.identity(ctx, fw, insts) {
				rebooted = insts[len(insts)-1]
			}
		}()
	}
	c.runAll(ctx)
	idwg.Wait()
	if ctx.Err() == nil {
		r.seedCopies(ctx, fw, main, rebooted)
	}
}

func status(ok bool) Status {
	if ok {
		return Pass
	}
	return Fail
}

// AutoCPUs is the vCPU count of each of n VMs booted at once: two under
// KVM; under software emulation (TCG) the host's cores shared out, one or
// two each. A TCG vCPU is a host thread that spins while it has work: two
// VMs of two vCPUs on a 2-core host booted 15-20% slower than two of one
// (BENCHMARKS.md, "TCG: the guest CPU model and vCPU count"). Except
// under OVMF when uefiOneCPUReboots is false: with one vCPU under TCG on
// QEMU 7.2 (Debian's OVMF 4M) a guest reboot never comes back (the kernel
// says "reboot: machine restart" and the firmware spins; reproduced with a
// Debian cloud image), with two it does, so UEFI VMs get two there. On QEMU
// 10.0 the reboot comes back with one (UEFIOneCPUReboots).
func AutoCPUs(n int, kvm bool, hostCPUs int, firmware string, uefiOneCPUReboots bool) int {
	if kvm || (firmware == vm.UEFI && !uefiOneCPUReboots) {
		return 2
	}
	if n < 1 {
		n = 1
	}
	return max(1, min(2, hostCPUs/n))
}

// UEFIOneCPUReboots says whether an OVMF guest with one vCPU comes back
// from a reboot under qemu ("" is vm.DefaultQEMU) in software emulation:
// not on QEMU 7.2 (AutoCPUs), yes on 10.0 (TestCloudApplianceVerify's
// identity.reboot under OVMF with one vCPU each, session 15). Versions in
// between were not tried: they get two vCPUs, as does a QEMU whose version
// cannot be read.
func UEFIOneCPUReboots(qemu string) bool {
	major, _, err := vm.QEMUVersion(qemu)
	return err == nil && major >= 10
}

// start makes the link, seed and overlay of one instance and starts QEMU.
// Errors are host problems.
func (r *runner) start(ctx context.Context, fw string, idx int, key *Key) (*instance, error) {
	return r.startBoot(ctx, fw, idx, key, &boot{})
}

// startBoot is start for boot b (an upgrade run's boots: another disk, a
// state volume, no seed).
func (r *runner) startBoot(ctx context.Context, fw string, idx int, key *Key, b *boot) (*instance, error) {
	in := &instance{r: r, fw: fw, idx: idx, key: key, label: b.label}
	mac := make([]byte, 6)
	rand.Read(mac)
	in.mac = net.HardwareAddr{0x52, 0x54, 0x00, 0xbe, mac[4], byte(idx)}
	in.serial = filepath.Join(r.work, "serial-"+in.name()+".log")
	in.via = SeedNoCloud
	if n := len(r.o.SeedVia); n > 0 {
		in.via = r.o.SeedVia[idx%n]
	}
	if b.noSeed {
		in.via = seedNone
	}
	if b.noSeed || b.token != "" {
		in.token = b.token
	} else if idx == 0 || in.via == SeedSMBIOS {
		// The first instance is given a token (first boot must use it);
		// the others generate their own, except one seeded through
		// SMBIOS: the token is what proves that path.
		t, err := NewToken()
		if err != nil {
			return in, err
		}
		in.token = t
	}
	id := make([]byte, 8)
	rand.Read(id)
	seed := Seed{
		InstanceID:     "iid-bake-verify-" + hex.EncodeToString(id),
		Hostname:       "bake-verify-" + in.name(),
		AdminUser:      r.o.Spec.AdminUser,
		AuthorizedKeys: []string{key.AuthorizedKey},
		Token:          in.token,
		Extra:          r.o.UserData,
	}
	// The tailnet instance is the last one (the one identity.reboot
	// reboots), and only with the outside namespace: its link then sends
	// no default route and its second NIC (user-mode, unrestricted) is its
	// way to the control server. The main instance's checks run on the
	// isolated link alone.
	// An upgrade run's boots say so themselves (boot.tailnet).
	if t := r.o.Tailnet; t != nil && r.netns && (b.tailnet || (r.o.UpgradeFrom == "" && idx == r.o.Instances-1 && idx > 0)) {
		in.tailnet = true
		seed.TailscaleAuthKey, seed.TailscaleLoginServer, seed.TailscaleCA = t.AuthKey, t.LoginServer, t.CA
	}
	var seedPath string
	var smbios []string
	switch in.via {
	case seedNone:
	case SeedSMBIOS:
		// No NoCloud volume, no user-data: the admin's keys and the token
		// only, as systemd credentials in SMBIOS type 11 strings, each
		// read by QEMU from a file of its own (never on its command line).
		args, err := writeSMBIOSCredentials(r.work, in.name(), seed)
		if err != nil {
			return in, fmt.Errorf("writing the SMBIOS credentials: %w", err)
		}
		smbios = args
	default:
		canary, err := NewToken()
		if err != nil {
			return in, err
		}
		in.canary = "bvc" + canary[:40]
		seed.Canary = in.canary
		seedPath = filepath.Join(r.work, "seed-"+in.name()+".iso")
		if err := WriteSeed(seedPath, seed); err != nil {
			return in, fmt.Errorf("writing the seed: %w", err)
		}
	}
	r.mu.Lock()
	if r.rep.Seeds == nil {
		r.rep.Seeds = map[string]string{}
	}
	r.rep.Seeds[in.name()] = in.via
	r.mu.Unlock()
	// The instance's copy-on-write overlay is vm.Start's (Snapshot): it
	// hands QEMU the image as a read-only node under the overlay, from a
	// descriptor, where an overlay made here would name the image in its
	// header, a name QEMU as bake-qemu neither follows nor could open.
	cfg := vm.Config{
		Firmware:    fw,
		Disk:        r.o.Image,
		DiskFormat:  r.rep.Format,
		Snapshot:    true,
		MemoryMiB:   r.o.MemoryMiB,
		CPUs:        r.cpus[fw],
		SeedISO:     seedPath,
		SerialLog:   in.serial,
		ExtraArgs:   smbios,
		ExtraDrives: b.drives,
	}
	if b.disk != "" {
		cfg.Disk, cfg.DiskFormat, cfg.Snapshot = b.disk, b.format, b.snapshot
	}
	if r.netns {
		var opts []vm.LinkOption
		if in.tailnet {
			opts = append(opts, vm.LinkNoDefaultRoute)
		}
		link, err := vm.NewLink(ctx, fmt.Sprintf("verify-%s-%d", fw, idx), opts...)
		if err != nil {
			return in, fmt.Errorf("outside network namespace: %w", err)
		}
		in.link = link
		cfg.Net = link.NetConfig()
		cfg.Net.MAC = in.mac.String()
		if in.tailnet {
			out := slices.Clone(in.mac)
			out[4] ^= 0x80
			cfg.Outbound = &vm.OutboundNIC{MAC: out.String()}
			in.outMAC = out.String()
		}
	} else {
		port, err := vm.FreePort()
		if err != nil {
			return in, err
		}
		in.fwdPort = port
		cfg.Net = vm.NetConfig{Mode: vm.NetUser, MAC: in.mac.String(),
			Forwards: []vm.Forward{{HostPort: port, GuestPort: r.o.Spec.SSHPort}}}
	}
	v, err := vm.Start(ctx, cfg)
	if err != nil {
		return in, fmt.Errorf("starting QEMU: %w", err)
	}
	in.vm = v
	r.mu.Lock()
	r.rep.Accel = v.Config.Accel
	r.mu.Unlock()
	where := fmt.Sprintf(", ssh forwarded on 127.0.0.1:%d", in.fwdPort)
	if in.link != nil {
		where = fmt.Sprintf(", netns %s, dnsmasq pid %d", in.link.Netns, in.link.DNSMasqPID())
	}
	if in.tailnet {
		where += fmt.Sprintf(", no default route on the link; joins %s through a second NIC %s (user-mode, unrestricted)", r.o.Tailnet.LoginServer, cfg.Outbound.MAC)
	}
	in.poweredOn = time.Now()
	r.logf("%s: QEMU pid %d (accel %s), MAC %s%s, seed via %s", in.name(), v.PID(), v.Config.Accel, in.mac, where, in.via)
	return in, nil
}

// waitSSH waits for the admin's key login, keeping what it saw as
// evidence. It never returns an error: a failure is the image's.
func (in *instance) waitSSH(ctx context.Context) {
	t0 := time.Now()
	limit := sshWaitMax
	if d, ok := ctx.Deadline(); ok && time.Until(d) < limit {
		limit = time.Until(d)
	}
	deadline := t0.Add(limit)
	user := in.r.o.Spec.AdminUser
	var lastErr error
	var firstRefusal time.Time
	var watch refusalWatch
	lastLog := time.Now()
	tries := 0
	for {
		if ctx.Err() != nil {
			return
		}
		if watch.promptAt.IsZero() && in.sawLoginPrompt() {
			watch.promptAt = time.Now()
			in.r.logf("%s: a login prompt on the console after %s", in.name(), time.Since(t0).Round(time.Second))
		}
		select {
		case <-in.vm.Exited():
			in.loginEv = fmt.Sprintf("QEMU exited (%v) before %s could log in\n%s", in.vm.Wait(), user, in.serialTail(40))
			return
		default:
		}
		if time.Now().After(deadline) {
			in.loginEv = fmt.Sprintf("no SSH login as %s with the seed's key within %s (%d attempts)\nlast error: %v\n%s\n%s",
				user, limit.Round(time.Second), tries, lastErr, in.leaseInfo(), in.serialTail(40))
			return
		}
		if in.link != nil && !in.ipv4.IsValid() {
			if ls, _ := in.link.Leases(); len(ls) > 0 {
				for _, l := range ls {
					if l.MAC.String() == in.mac.String() {
						in.ipv4 = l.IP
					}
				}
			}
			if !in.ipv4.IsValid() {
				lastErr = errors.New("the guest has no DHCPv4 lease yet")
				sleepCtx(ctx, time.Second)
				continue
			}
			in.r.logf("%s: DHCPv4 lease %s after %s", in.name(), in.ipv4, time.Since(t0).Round(time.Second))
		}
		tries++
		s, err := sshLogin(ctx, in.dialSSH, in.sshTarget(), user, 20*time.Second, ssh.PublicKeys(in.key.Signer))
		if err == nil {
			in.sess, in.hostKey = s, s.hostKey
			break
		}
		lastErr = err
		if refused(err, in.link == nil) {
			if watch.refusal(time.Now()) {
				in.loginEv = fmt.Sprintf("nothing listens on the guest's port %d: connections refused for %s after the console showed a login prompt (%s after power-on; refused since %s after power-on, %d attempts) (no sshd, or on another port)\n%s\n%s",
					in.r.o.Spec.SSHPort, refusedGrace, watch.promptAt.Sub(t0).Round(time.Second), watch.refusedSince.Sub(t0).Round(time.Second), tries, in.leaseInfo(), in.serialTail(40))
				return
			}
		} else if strings.Contains(err.Error(), "unable to authenticate") || strings.Contains(err.Error(), "handshake failed: ssh:") {
			watch.answered() // an SSH server answered
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			if firstRefusal.IsZero() {
				firstRefusal = time.Now()
			}
			if time.Since(firstRefusal) > authGrace {
				in.loginEv = fmt.Sprintf("sshd on %s answers but refuses %s's key from the seed (for %s): %v\n%s",
					in.sshTarget(), user, authGrace, err, in.serialTail(40))
				return
			}
		}
		if time.Since(lastLog) > time.Minute {
			in.r.logf("%s: waiting for SSH on %s (%s): %v", in.name(), in.sshTarget(), time.Since(t0).Round(time.Second), err)
			lastLog = time.Now()
		}
		sleepCtx(ctx, 2*time.Second)
	}
	res, err := in.runT(ctx, "id; hostname; sudo -n true && echo 'sudo: ok'; systemctl is-system-running || true", nil, time.Minute)
	if err != nil {
		in.loginEv = fmt.Sprintf("logged in as %s on %s but could not run a command: %v", user, in.sshTarget(), err)
		in.sess.Close()
		in.sess = nil
		return
	}
	in.loginOK = strings.Contains(res.Stdout, "("+user+")")
	in.loginEv = fmt.Sprintf("logged in as %s with the seed's ed25519 key (seed via %s) on %s after %s (host key %s)\n%s",
		user, in.via, in.sshTarget(), time.Since(t0).Round(time.Second), ssh.FingerprintSHA256(in.hostKey), res.Evidence())
	if !in.loginOK {
		in.loginEv = "logged in, but not as " + user + ":\n" + in.loginEv
	}
	prompt := "no login prompt on the console yet"
	if !watch.promptAt.IsZero() {
		prompt = fmt.Sprintf("the login prompt %s before", time.Since(watch.promptAt).Round(time.Second))
	}
	in.r.logf("%s: SSH login after %s (%s)", in.name(), time.Since(t0).Round(time.Second), prompt)
}

// refusalWatch decides when an SSH port that refuses connections has no
// sshd behind it: refusedGrace after both its first refusal and the
// console's first login prompt (see refusedGrace). An answer from an SSH
// server (even one refusing the key) starts the refusals anew.
type refusalWatch struct {
	refusedSince time.Time // the first refusal since the last answer
	promptAt     time.Time // the console first showed a login prompt
}

// refusal notes a refusal at now and reports whether to conclude that
// nothing listens.
func (w *refusalWatch) refusal(now time.Time) bool {
	if w.refusedSince.IsZero() {
		w.refusedSince = now
	}
	if w.promptAt.IsZero() {
		return false
	}
	from := w.refusedSince
	if w.promptAt.After(from) {
		from = w.promptAt
	}
	return now.Sub(from) > refusedGrace
}

func (w *refusalWatch) answered() { w.refusedSince = time.Time{} }

// findIPv6 finds the guest's SLAAC address on the link (all-nodes ping).
func (in *instance) findIPv6(ctx context.Context) {
	if in.link == nil || in.ipv6.IsValid() || !in.ipv4.IsValid() {
		return
	}
	c6, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if a, err := in.link.GuestIPv6(c6); err == nil {
		in.ipv6 = a
		in.r.logf("%s: IPv6 (SLAAC) %s", in.name(), a)
	}
}

// refused: nothing listens on the guest's SSH port. Through a user-mode
// forward that shows as a connection QEMU accepts and closes at once.
func refused(err error, userNet bool) bool {
	msg := err.Error()
	if strings.Contains(msg, "connection refused") {
		return true
	}
	return userNet && (strings.HasSuffix(msg, ": EOF") || strings.Contains(msg, "connection reset by peer"))
}

// sawLoginPrompt: the end of the serial console (its last
// vm.SerialTailMax bytes) shows a getty login prompt (boot reached
// multi-user).
func (in *instance) sawLoginPrompt() bool {
	b, err := vm.ReadTail(in.serial, vm.SerialTailMax)
	return err == nil && strings.Contains(string(b), " login: ")
}

func (in *instance) leaseInfo() string {
	switch {
	case in.link == nil:
		return fmt.Sprintf("user-mode networking; SSH forwarded from 127.0.0.1:%d", in.fwdPort)
	case in.ipv4.IsValid():
		return "DHCPv4 lease: " + in.ipv4.String()
	}
	return "the guest never took a DHCPv4 lease on the link (no network configuration, or it did not boot)"
}

// serialTail is the end of the serial console log, as evidence: its last
// n lines, from its last vm.SerialTailMax bytes at most (the guest writes
// it: it is never read whole).
func (in *instance) serialTail(n int) string {
	b, err := vm.ReadTail(in.serial, vm.SerialTailMax)
	if err != nil {
		return "serial console: " + err.Error()
	}
	s := ansiRE.ReplaceAllString(strings.ReplaceAll(string(b), "\r", ""), "")
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("serial console (last %d lines, full log serial-%s.log):\n%s", len(lines), in.name(), strings.Join(lines, "\n"))
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// shutdown powers the VM off (through the guest when possible), stops
// QEMU and removes the link: tap, namespace, dnsmasq.
func (in *instance) shutdown(ctx context.Context) {
	if in.vm != nil {
		if in.sess != nil && ctx.Err() == nil {
			c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			in.sess.Run(c, "sudo -n systemctl poweroff", nil, 10*time.Second)
			cancel()
			select {
			case <-in.vm.Exited():
			case <-time.After(90 * time.Second):
			case <-ctx.Done():
			}
		}
		if in.sess != nil {
			in.sess.Close()
		}
		in.stopVM()
	}
	if in.link != nil {
		in.link.Close()
	}
}

// stopVM stops the instance's QEMU (vm.VM.Stop) and, the first time, logs
// how long it ran and the CPU time it used ("bios-0: QEMU (pid N) exited
// after 3m12s, 95.3 s of CPU (1 vCPU)") and records that CPU time in the
// report (Report.GuestCPU).
func (in *instance) stopVM() {
	in.vm.Stop()
	r := in.r
	r.mu.Lock()
	logged := in.cpuLogged
	in.cpuLogged = true
	if !logged {
		if r.rep.GuestCPU == nil {
			r.rep.GuestCPU = map[string]float64{}
		}
		r.rep.GuestCPU[in.name()] = round(r.rep.GuestCPU[in.name()] + in.vm.CPUTime().Seconds())
	}
	r.mu.Unlock()
	if !logged {
		r.logf("%s: %s", in.name(), in.vm.ExitSummary())
	}
}

// keepSerials copies the serial logs into the report directory.
func (r *runner) keepSerials(insts []*instance) {
	if r.o.ReportDir == "" {
		return
	}
	if err := os.MkdirAll(r.o.ReportDir, 0o755); err != nil {
		return
	}
	for _, in := range insts {
		if in == nil {
			continue
		}
		name := "serial-" + in.name() + ".log"
		if copyTail(in.serial, filepath.Join(r.o.ReportDir, name), vm.DefaultSerialLogMax) == nil {
			r.mu.Lock()
			r.rep.Files = append(r.rep.Files, name)
			r.mu.Unlock()
		}
	}
}

// copyTail copies the regular file src to a new dst, streaming, and at
// most its last max bytes (a serial log is bounded by vm's watcher, which
// can let it pass its limit by what the guest writes between two checks).
func copyTail(src, dst string, max int64) error {
	in, st, err := imgfile.OpenRegular(src)
	if err != nil {
		return err
	}
	defer in.Close()
	off := int64(0)
	if st.Size() > max {
		off = st.Size() - max
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, io.NewSectionReader(in, off, st.Size()-off)); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// fileSHA256 hashes a file (a sparse raw's holes from memory:
// imgfile.HashSparse).
func fileSHA256(ctx context.Context, path string) (string, int64, error) {
	f, st, err := imgfile.OpenRegular(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	if err := imgfile.HashSparse(ctx, h, f, st.Size()); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}
