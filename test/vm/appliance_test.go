//go:build vm

package vmtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/aptrepo"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/internal/testcache"
	"github.com/bakeimg/bake/oci"
	"github.com/bakeimg/bake/vm"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/ssh"
)

var (
	applOnce sync.Once
	applDir  string
	applTemp string // made by applianceImage, built or not; TestMain removes it
	applErr  string
	applImg  struct{ ref, id string }
)

const applianceRecipe = "test/vm/testdata/openclaw-test.yaml"

// applianceImage bakes testdata/openclaw-test.yaml once per run: the test
// gateway (oci/testgateway) is built into an image with go-containerregistry
// and served by a registry on 127.0.0.1 for the build only; the image in
// the disk is what runs, with no network.
func applianceImage(t *testing.T) string {
	t.Helper()
	requireTools(t, "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "go")
	applOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		// The image (about 400 MiB) outlives the test that made it
		// (tests share it): TestMain removes it after the last test.
		reuse := os.Getenv("BAKE_VMTEST_APPLIANCE_DIR")
		prefix := applDirPrefix
		if reuse != "" {
			// Iterating on the checks: reuse an image baked earlier
			// from the same recipe and test gateway (a run with
			// BAKE_VMTEST_KEEP_APPLIANCE=1 keeps its own); work holds
			// only the servers' files.
			prefix = applReusePrefix
		}
		work, err := sweep.MkdirTemp("", prefix)
		if err != nil {
			applErr = err.Error()
			return
		}
		if reuse != "" {
			defer os.RemoveAll(work)
		} else {
			applTemp = work
		}
		in, err := startApplianceInputs(ctx, work, reuse == "")
		if err != nil {
			applErr = err.Error()
			return
		}
		defer in.Close()
		applImg.ref, applImg.id = in.ref, in.id
		if reuse != "" {
			applDir = reuse
			return
		}
		t0 := time.Now()
		args := append([]string{"build", filepath.Join(repoRoot(), applianceRecipe)}, in.sets...)
		out, code := runBake(t, ctx, append(args, "-o", work)...)
		t.Logf("bake build (%s):\n%s", since(t0), out)
		if code != 0 {
			applErr = "bake build failed with status " + strconv.Itoa(code) + ":\n" + out
			return
		}
		in.removeFiles()
		applDir = work
	})
	if applErr != "" {
		t.Fatal(applErr)
	}
	return applDir
}

// applianceInputs are what a build of an appliance test recipe fetches
// from, each served on 127.0.0.1 for the build only: the test gateway
// image (oci/testgateway) in a registry, and Tailscale's stand-in
// repository (not reachable here), signed with a key of its own.
type applianceInputs struct {
	work    string
	ref, id string // the gateway image: reference by digest, image ID
	// sets are bake build's --set arguments naming them (gateway_image,
	// tailscale_build_uri, tailscale_build_key).
	sets    []string
	closers []func()
}

// Close stops the servers and removes the build key, in reverse order.
func (in *applianceInputs) Close() {
	for i := len(in.closers) - 1; i >= 0; i-- {
		in.closers[i]()
	}
	in.closers = nil
}

// removeFiles removes what startApplianceInputs wrote into work (after
// the build, so that only the image stays).
func (in *applianceInputs) removeFiles() {
	for _, d := range []string{"debs", "aptrepo", "aptkey", "testgateway"} {
		os.RemoveAll(filepath.Join(in.work, d))
	}
}

// startApplianceInputs builds the test gateway image and serves it; with
// tailscale, also the tailscale .deb (cached) in a signed repository. Files
// go into work; the build key into the git-ignored test/vm/.cache (inside
// the recipes' context). On an error everything started is stopped again.
func startApplianceInputs(ctx context.Context, work string, tailscale bool) (_ *applianceInputs, err error) {
	in := &applianceInputs{work: work}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	bin := filepath.Join(work, "testgateway")
	if err := oci.BuildTestGatewayBinary(ctx, nil, repoRoot(), bin); err != nil {
		return nil, fmt.Errorf("building the test gateway: %w", err)
	}
	img, err := oci.BuildTestGatewayImage(ctx, bin, 1700000000)
	if err != nil {
		return nil, fmt.Errorf("test gateway image: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	go srv.Serve(ln)
	in.closers = append(in.closers, func() { srv.Close() })
	repo := ln.Addr().String() + "/bake/testgateway"
	tag, _ := name.ParseReference(repo+":test", name.Insecure)
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("pushing the test gateway: %w", err)
	}
	digest, _ := img.Digest()
	id, _ := img.ConfigName()
	in.ref, in.id = repo+"@"+digest.String(), id.String()
	in.sets = []string{"--set", "gateway_image=" + in.ref}
	if !tailscale {
		return in, nil
	}
	// Tailscale's repository is not reachable here: a local one,
	// signed with a key of its own, stands in during the build.
	deb, err := aptrepo.BuildTailscaleDeb(ctx, aptrepo.DefaultTailscaleVersion,
		filepath.Join(filepath.Dir(testcache.Dir("tailscale")), "tailscale"), filepath.Join(work, "debs"))
	if err != nil {
		return nil, fmt.Errorf("tailscale .deb: %w", err)
	}
	key, err := aptrepo.NewKey(filepath.Join(work, "aptkey"))
	if err != nil {
		return nil, err
	}
	if err := aptrepo.Build(ctx, filepath.Join(work, "aptrepo"), "bookworm", []string{deb}, key); err != nil {
		return nil, fmt.Errorf("tailscale repository: %w", err)
	}
	aptSrv, err := aptrepo.Serve(filepath.Join(work, "aptrepo"))
	if err != nil {
		return nil, err
	}
	in.closers = append(in.closers, func() { aptSrv.Close() })
	// The build key must be inside the recipe's context: the
	// git-ignored test/vm/.cache.
	os.MkdirAll(filepath.Join(repoRoot(), "test/vm/.cache"), 0o755)
	keyDir, err := os.MkdirTemp(filepath.Join(repoRoot(), "test/vm/.cache"), "appliance-")
	if err != nil {
		return nil, err
	}
	in.closers = append(in.closers, func() { os.RemoveAll(keyDir) })
	b, err := os.ReadFile(key.Keyring)
	if err == nil {
		err = os.WriteFile(filepath.Join(keyDir, "tailscale.gpg"), b, 0o644)
	}
	if err != nil {
		return nil, err
	}
	buildKey, _ := filepath.Rel(filepath.Join(repoRoot(), "test/vm/testdata"), filepath.Join(keyDir, "tailscale.gpg"))
	in.sets = append(in.sets, "--set", "tailscale_build_uri="+aptSrv.URL(), "--set", "tailscale_build_key="+buildKey)
	return in, nil
}

// guest is an SSH connection to a booted appliance.
type guest struct {
	t      *testing.T
	c      *ssh.Client
	v      *vm.VM
	port   int     // the forwarded SSH port on 127.0.0.1 (0 on a link)
	dial   sshDial // how SSH reaches it
	signer ssh.Signer
	priv   ed25519.PrivateKey
	// hostKey is the SHA256 fingerprint sshd showed at login.
	hostKey string
	started time.Time // QEMU started (power-on)
}

// reboot reboots the guest and logs in again.
func (g *guest) reboot() {
	g.t.Helper()
	before := strings.TrimSpace(g.must("cat /proc/sys/kernel/random/boot_id"))
	g.run("sudo systemctl reboot")
	g.c.Close()
	time.Sleep(10 * time.Second)
	for i := 0; ; i++ {
		c, hk := login(g.t, g.v, g.dial, g.signer, 10*time.Minute)
		g.c = c
		if after := strings.TrimSpace(g.must("cat /proc/sys/kernel/random/boot_id")); after != before {
			if hk != g.hostKey {
				g.t.Errorf("host key changed across a reboot: %s, then %s", g.hostKey, hk)
			}
			return
		}
		// Still the old boot (sshd not yet stopped).
		c.Close()
		time.Sleep(5 * time.Second)
	}
}

func (g *guest) run(cmd string) (string, error) {
	s, err := g.c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}

// must runs cmd and fails the test when it fails.
func (g *guest) must(cmd string) string {
	g.t.Helper()
	out, err := g.run(cmd)
	if err != nil {
		g.t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return out
}

// sshDial opens the TCP connection an SSH session runs over.
type sshDial func() (net.Conn, error)

// loopbackDial reaches a guest through QEMU's forward of port to its 22.
func loopbackDial(port int) sshDial {
	return func() (net.Conn, error) {
		return net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 20*time.Second)
	}
}

// linkDial reaches a guest on a vm.Link at its DHCP address, port 22,
// from inside the link's namespace (a dial from the root namespace would
// go wherever the machine routes 10.77.0.0/24).
func linkDial(l *vm.Link) sshDial {
	return func() (net.Conn, error) {
		ls, err := l.Leases()
		if err != nil {
			return nil, err
		}
		if len(ls) == 0 {
			return nil, fmt.Errorf("no DHCP lease on the link yet")
		}
		var c net.Conn
		err = vm.InNetns(l.Netns, func() (err error) {
			c, err = net.DialTimeout("tcp", net.JoinHostPort(ls[len(ls)-1].IP.String(), "22"), 20*time.Second)
			return err
		})
		return c, err
	}
}

func dialSSH(port int, user string, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	c, _, err := dialSSHKey(loopbackDial(port), user, auth...)
	return c, err
}

// dialSSHVia is dialSSH over d.
func dialSSHVia(d sshDial, user string, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	c, _, err := dialSSHKey(d, user, auth...)
	return c, err
}

// dialSSHKey also returns the host key the server showed.
func dialSSHKey(d sshDial, user string, auth ...ssh.AuthMethod) (*ssh.Client, string, error) {
	var hostKey string
	conn, err := d()
	if err != nil {
		return nil, "", err
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	sc, chans, reqs, err := ssh.NewClientConn(conn, conn.RemoteAddr().String(), &ssh.ClientConfig{
		User: user, Auth: auth, Timeout: 20 * time.Second,
		// The host key is made at first boot; the test has no way to
		// know it beforehand (bake verify pins it from the console).
		// It is recorded to compare across a reboot.
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			hostKey = ssh.FingerprintSHA256(k)
			return nil
		},
	})
	if err != nil {
		conn.Close()
		return nil, "", err
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), hostKey, nil
}

// login waits for SSH and logs in as the admin.
func login(t *testing.T, v *vm.VM, d sshDial, signer ssh.Signer, max time.Duration) (*ssh.Client, string) {
	t.Helper()
	deadline := time.Now().Add(max)
	for {
		c, hk, err := dialSSHKey(d, "admin", ssh.PublicKeys(signer))
		if err == nil {
			return c, hk
		}
		select {
		case <-v.Exited():
			t.Fatalf("QEMU exited before SSH answered: %v", v.Wait())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SSH login as admin within %s: %v", max, err)
		}
		time.Sleep(5 * time.Second)
	}
}

// bootAppliance boots the image with a NoCloud seed carrying a fresh key
// and token, and logs in as the admin.
func bootAppliance(t *testing.T, firmware, token, via string) *guest {
	t.Helper()
	return bootApplianceDisk(t, filepath.Join(applianceImage(t), "openclaw-test.qcow2"), firmware, token, via)
}

// bootApplianceDisk is bootAppliance for another disk made from the
// appliance (never modified: the VM writes to a snapshot).
func bootApplianceDisk(t *testing.T, disk, firmware, token, via string) *guest {
	t.Helper()
	return bootApplianceWith(t, bootOpts{disk: disk, firmware: firmware, token: token, via: via})
}

// bootOpts are bootApplianceWith's: priv, when set, is the admin's key
// (a boot with no seed, via "none", logs in with the key an earlier boot
// put on a state volume); drives are extra disks; link, when set, is the
// guest's network instead of QEMU's user network (SSH then goes to its DHCP
// address from inside the link's namespace); seed adds to the seed.
type bootOpts struct {
	disk, firmware, token, via string
	priv                       ed25519.PrivateKey
	drives                     []vm.Drive
	link                       *vm.Link
	seed                       func(*firstboot.Seed)
	// persist: the VM writes to disk itself (no snapshot), so that the
	// root disk can be examined after power-off.
	persist bool
}

func bootApplianceWith(t *testing.T, o bootOpts) *guest {
	t.Helper()
	disk, firmware, token, via := o.disk, o.firmware, o.token, o.via
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.priv != nil {
		priv, pub = o.priv, o.priv.Public().(ed25519.PublicKey)
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	sshPub, _ := ssh.NewPublicKey(pub)
	seed := firstboot.Seed{InstanceID: "iid-appliance-" + firmware, Hostname: "openclaw-test",
		AdminKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " vmtest"}, GatewayToken: token}
	if o.seed != nil {
		o.seed(&seed)
	}
	if err := seed.Check(); err != nil {
		t.Fatal(err)
	}
	seedPath := ""
	var extra []string
	switch via {
	case "nocloud":
		seedPath = filepath.Join(t.TempDir(), "seed.iso")
		if err := vm.WriteNoCloudSeed(seedPath, seed.MetaData(), seed.UserData(), seed.NoCloudFiles()); err != nil {
			t.Fatal(err)
		}
	case "smbios":
		extra = seed.SMBIOSArgs()
	case "fat":
		// A FAT volume labelled CIDATA (vm.WriteNoCloudFAT, what bake
		// seed --format fat writes); the key only in user-data, as a
		// cloud-init seed carries it.
		seedPath = filepath.Join(t.TempDir(), "seed.img")
		files := seed.NoCloudFiles()
		delete(files, firstboot.AdminSSHKeys)
		if err := vm.WriteNoCloudFAT(seedPath, seed.MetaData(), seed.UserData(), files); err != nil {
			t.Fatal(err)
		}
	}
	port := 0
	netCfg := vm.NetConfig{}
	var dial sshDial
	if o.link != nil {
		netCfg, dial = o.link.NetConfig(), linkDial(o.link)
	} else {
		if port, err = vm.FreePort(); err != nil {
			t.Fatal(err)
		}
		netCfg, dial = vm.NetConfig{Mode: vm.NetUser, Forwards: []vm.Forward{{HostPort: port, GuestPort: 22}}}, loopbackDial(port)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	t0 := time.Now()
	nic, slot := "", ""
	if via == "fat" {
		nic, slot = "e1000", "0x7"
	}
	v, err := vm.Start(ctx, vm.Config{
		Firmware:    firmware,
		NICModel:    nic,
		NICPCIAddr:  slot,
		Disk:        disk,
		Snapshot:    !o.persist,
		SeedISO:     seedPath,
		ExtraDrives: o.drives,
		ExtraArgs:   extra,
		MemoryMiB:   2048,
		CPUs:        vmCPUs(firmware),
		Net:         netCfg,
	})
	if err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			serial, _ := v.Serial()
			t.Logf("serial console (last 80 lines):\n%s", lastN(string(serial), 80))
		}
		stopVM(t, firmware, v)
	})
	c, hk := login(t, v, dial, signer, 10*time.Minute)
	t.Logf("%s: SSH login as admin after %s (host key %s)", firmware, since(t0), hk)
	g := &guest{t: t, c: c, v: v, port: port, dial: dial, signer: signer, priv: priv, hostKey: hk, started: t0}
	t.Cleanup(func() { g.c.Close() })
	return g
}

func lastN(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitRunning waits for systemctl is-system-running to leave "starting".
func (g *guest) waitRunning(max time.Duration) string {
	deadline := time.Now().Add(max)
	for {
		out, err := g.run("systemctl is-system-running")
		state := strings.TrimSpace(out)
		g.t.Logf("is-system-running: %q (%v)", state, err)
		if state != "starting" && state != "initializing" || time.Now().After(deadline) {
			return state
		}
		time.Sleep(5 * time.Second)
	}
}

// TestApplianceBIOS boots the appliance under SeaBIOS with a NoCloud seed
// and checks each layer from inside the guest. The guest is on a vm.Link
// where headscale runs (startTailnet): the seed carries a pre-auth key,
// headscale's URL and its CA, and the "tailscale" subtest proves the
// first boot's join (checkTailnet). The same node after a reboot is
// TestVerifyAppliance's (its rebooted instance boots this image).
func TestApplianceBIOS(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	tok := make([]byte, 24)
	rand.Read(tok)
	token := "seed-" + hex.EncodeToString(tok)
	img := filepath.Join(applianceImage(t), "openclaw-test.qcow2")
	tn := startTailnet(t, "appl-bios")
	g := bootApplianceWith(t, bootOpts{disk: img, firmware: vm.BIOS, token: token, via: "nocloud", link: tn.link, seed: tn.seed})

	// The system came up whole: every unit, the gateway container too,
	// with no route to the outside (restrict=on) and nothing pulled.
	state := g.waitRunning(6 * time.Minute)
	if state != "running" {
		out, _ := g.run("systemctl --failed --no-legend; systemctl list-jobs --no-legend")
		t.Errorf("systemctl is-system-running = %q, want running\n%s", state, out)
	}

	// For BENCHMARKS.md: from the kernel's start to the gateway's first
	// "listening" line (before any test restarts it).
	// The wall clock may jump during boot; the journal's monotonic time
	// does not (docker run is attached, so the gateway's own output is in
	// its unit's journal).
	if up, err := g.run(`sudo journalctl -b -o short-monotonic -u bake-container-openclaw-gateway.service --no-pager | grep -m1 listening | sed 's/^\[ *\([0-9.]*\)\].*/\1/'`); err == nil {
		t.Logf("kernel start to the gateway listening on 127.0.0.1:18789: %ss", strings.TrimSpace(up))
	}

	// Where this boot's time went (BENCHMARKS.md's boot-time analysis):
	// systemd's and cloud-init's own timings; growroot and host keys.
	if out, err := g.run(`systemd-analyze; systemd-analyze blame --no-pager | head -25; systemd-analyze critical-chain --no-pager; sudo cloud-init analyze blame 2>&1 | head -12; sudo journalctl -b -o cat --no-pager -u bake-growroot -u bake-hostkeys`); err == nil {
		t.Logf("boot profile:\n%s", out)
	}

	t.Run("ssh", func(t *testing.T) {
		g.t = t
		out := g.must("sudo sshd -T")
		if err := appliance.CheckSSHDT(out, 22); err != nil {
			t.Error(err)
		}
		// Password and keyboard-interactive: not even offered.
		_, err := dialSSHVia(g.dial, "admin", ssh.Password("admin"), ssh.KeyboardInteractive(
			func(string, string, []string, []bool) ([]string, error) { return []string{"admin"}, nil }))
		if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Errorf("password login as admin: %v, want refused", err)
		} else {
			t.Logf("password login refused: %v", err)
		}
		// Root: refused even with a key root would accept.
		g.must("sudo install -d -m 0700 /root/.ssh && sudo cp /home/admin/.ssh/authorized_keys /root/.ssh/authorized_keys")
		if c, err := dialSSHVia(g.dial, "root", ssh.PublicKeys(g.signer)); err == nil {
			c.Close()
			t.Error("root logged in with a valid key")
		} else {
			t.Logf("root login refused: %v", err)
		}
		g.must("sudo rm -rf /root/.ssh")
		// Host keys were made at this boot, not shipped.
		if out := g.must("ls /etc/ssh/"); !strings.Contains(out, "ssh_host_ed25519_key.pub") {
			t.Errorf("no host keys: %s", out)
		}
		if out := g.must("systemctl is-active bake-hostkeys.service"); strings.TrimSpace(out) != "active" {
			t.Errorf("bake-hostkeys: %s", out)
		}
	})

	t.Run("firewall", func(t *testing.T) {
		g.t = t
		out := g.must("sudo ufw status verbose")
		t.Logf("ufw status verbose:\n%s", out)
		for _, re := range []string{`Status: active`, `Default: deny \(incoming\), allow \(outgoing\), deny \(routed\)`,
			`22/tcp\s+ALLOW IN\s+Anywhere\s`, `41641/udp\s+ALLOW IN\s+Anywhere\s`,
			`22/tcp \(v6\)\s+ALLOW IN\s+Anywhere \(v6\)`, `41641/udp \(v6\)\s+ALLOW IN\s+Anywhere \(v6\)`} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("ufw status lacks %s", re)
			}
		}
		du := g.must("sudo iptables -S DOCKER-USER")
		t.Logf("iptables -S DOCKER-USER:\n%s", du)
		rules := strings.Split(strings.TrimSpace(du), "\n")
		if len(rules) < 2 || !strings.Contains(rules[1], "RELATED,ESTABLISHED -j ACCEPT") || !contains(rules, "-A DOCKER-USER -j DROP") {
			t.Errorf("DOCKER-USER:\n%s", du)
		}
		// The metadata block (appliance.MetadataV4/V6, MetadataDNS), in
		// this order: DNS to the resolvers on metadata addresses, the
		// metadata drops, the containers' RETURNs, the final DROP.
		inOrder(t, "iptables -S DOCKER-USER", rules, []string{
			"-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A DOCKER-USER -d 169.254.169.254/32 -i docker0 -p udp -m udp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 168.63.129.16/32 -i docker0 -p udp -m udp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 168.63.129.16/32 -i docker0 -p tcp -m tcp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -p udp -m udp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -p tcp -m tcp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 168.63.129.16/32 -i br-+ -p udp -m udp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 168.63.129.16/32 -i br-+ -p tcp -m tcp --dport 53 -j RETURN",
			"-A DOCKER-USER -d 169.254.0.0/16 -i docker0 -j DROP",
			"-A DOCKER-USER -d 168.63.129.16/32 -i docker0 -j DROP",
			"-A DOCKER-USER -d 100.100.100.200/32 -i docker0 -j DROP",
			"-A DOCKER-USER -d 169.254.0.0/16 -i br-+ -j DROP",
			"-A DOCKER-USER -d 168.63.129.16/32 -i br-+ -j DROP",
			"-A DOCKER-USER -d 100.100.100.200/32 -i br-+ -j DROP",
			"-A DOCKER-USER -i docker0 -j RETURN",
			"-A DOCKER-USER -i br-+ -j RETURN",
			"-A DOCKER-USER -j DROP",
		})
		if strings.Contains(du, "100.64.0.0/10") {
			t.Errorf("DOCKER-USER drops the tailnet's range:\n%s", du)
		}
		out6 := g.must("sudo ip6tables -S DOCKER-USER")
		inOrder(t, "ip6tables -S DOCKER-USER", strings.Split(strings.TrimSpace(out6), "\n"), []string{
			"-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A DOCKER-USER -d fd00:ec2::254/128 -i docker0 -j DROP",
			"-A DOCKER-USER -d fd00:ec2::254/128 -i br-+ -j DROP",
			"-A DOCKER-USER -i docker0 -j RETURN",
			"-A DOCKER-USER -i br-+ -j RETURN",
			"-A DOCKER-USER -j DROP",
		})
		if out := g.must("sudo iptables -t raw -S"); !strings.Contains(out, "-A PREROUTING -j BAKE-LOCALNET") || !strings.Contains(out, "-A BAKE-LOCALNET -d 127.0.0.0/8 ! -i lo -j DROP") {
			t.Errorf("loopback guard missing:\n%s", out)
		}
		checkIsolation(t, g)
	})

	t.Run("docker restart", func(t *testing.T) {
		g.t = t
		// Docker re-creates its chains when it restarts; layer 2 is put
		// back by the docker.service drop-in before anything is published.
		before := g.must("sudo iptables -S DOCKER-USER; sudo ip6tables -S DOCKER-USER; sudo iptables -t raw -S")
		g.must("sudo systemctl restart docker.service")
		after := g.must("sudo iptables -S DOCKER-USER; sudo ip6tables -S DOCKER-USER; sudo iptables -t raw -S")
		if after != before {
			t.Errorf("layer 2 changed across a Docker restart:\n--- before\n%s\n--- after\n%s", before, after)
		}
	})

	// Every docker exec's command line and environment go through a temp
	// file in /tmp (containerd's runc shim): on a tmpfs, never on a disk
	// (appliance.TmpMount).
	t.Run("tmp", func(t *testing.T) {
		g.t = t
		out := strings.TrimSpace(g.must("findmnt -n -o FSTYPE,OPTIONS /tmp"))
		if f := strings.Fields(out); len(f) != 2 || f[0] != "tmpfs" || !strings.Contains(","+f[1]+",", ",nosuid,") || !strings.Contains(","+f[1]+",", ",nodev,") {
			t.Errorf("/tmp: %q, want a tmpfs with nosuid,nodev", out)
		}
	})

	t.Run("gateway", func(t *testing.T) {
		g.t = t
		if out := g.must("for i in $(seq 60); do systemctl is-active --quiet bake-container-openclaw-gateway.service && break; sleep 3; done; systemctl is-active bake-container-openclaw-gateway.service"); strings.TrimSpace(out) != "active" {
			t.Fatalf("gateway unit: %s", out)
		}
		g.must("for i in $(seq 120); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && exit 0; sleep 2; done; exit 1")
		// Restart=always would hide a crash loop from is-system-running.
		if out := strings.TrimSpace(g.must("systemctl show -p NRestarts --value bake-container-openclaw-gateway.service")); out != "0" {
			t.Errorf("the gateway unit restarted %s times", out)
		}
		// Layer 4: the openclaw uid, no new privileges, no capabilities.
		pid := strings.TrimSpace(g.must("sudo docker inspect -f '{{.State.Pid}}' openclaw-gateway"))
		status := g.must("cat /proc/" + pid + "/status")
		uid := strings.TrimSpace(g.must("id -u openclaw"))
		for _, re := range []string{`(?m)^Uid:\s+` + uid + `\s+` + uid + `\s`, `(?m)^NoNewPrivs:\s+1$`, `(?m)^CapEff:\s+0000000000000000$`, `(?m)^CapPrm:\s+0000000000000000$`} {
			if !regexp.MustCompile(re).MatchString(status) {
				t.Errorf("/proc/%s/status lacks %s:\n%s", pid, re, status)
			}
		}
		if out := strings.TrimSpace(g.must("sudo cat /proc/" + pid + "/attr/current")); out != "docker-default (enforce)" {
			t.Errorf("AppArmor profile of the gateway: %q, want docker-default (enforce)", out)
		}
		if uid == "0" || strings.Contains(g.must("getent passwd openclaw"), "/bin/bash") {
			t.Error("the gateway's user is root or can log in")
		}
		// Layer 3: published on 127.0.0.1 only.
		if out := strings.TrimSpace(g.must("sudo docker port openclaw-gateway")); out != "18789/tcp -> 127.0.0.1:18789" {
			t.Errorf("docker port: %q", out)
		}
		out := g.must("sudo ss -Hltn | awk '{print $4}' | grep ':18789$' || true")
		for _, l := range strings.Fields(out) {
			if l != "127.0.0.1:18789" {
				t.Errorf("something listens on %s", l)
			}
		}
		ip := strings.TrimSpace(g.must("ip -4 -o addr show scope global | awk '$2 !~ /^(docker|br-|veth)/ {sub(/\\/.*/, \"\", $4); print $4; exit}'"))
		if net.ParseIP(ip) == nil {
			t.Fatalf("no IPv4 address on the guest's NIC: %q", ip)
		}
		probe := g.must(`for i in $(seq 60); do curl -s -o /dev/null -m 2 http://127.0.0.1:18789/healthz && break; sleep 2; done
echo "health-right: $(curl -s -m 5 -H 'Authorization: Bearer ` + token + `' http://127.0.0.1:18789/health)"
echo "health-wrong: $(curl -s -m 5 -H 'Authorization: Bearer wrong-token-0123456789' http://127.0.0.1:18789/health)"
echo "nic-address: $(curl -s -o /dev/null -w '%{http_code}' -m 5 http://` + ip + `:18789/healthz; true)"
`)
		t.Logf("gateway probe (NIC address %s):\n%s", ip, probe)
		for _, want := range []string{"health-right: OK\n", "health-wrong: unauthorized: gateway token mismatch", "nic-address: 000\n"} {
			if !strings.Contains(probe, want) {
				t.Errorf("gateway: want %q", want)
			}
		}
		// openclaw.json: 0600, the gateway's user, the seed's token.
		if out := strings.TrimSpace(g.must("sudo stat -c '%a %U' /home/openclaw/.openclaw/openclaw.json")); out != "600 openclaw" {
			t.Errorf("openclaw.json: %s", out)
		}
		var cfg struct {
			Gateway struct {
				Mode, Bind string
				Port       int
				Auth       struct{ Mode, Token string }
				Tailscale  struct{ Mode string }
			}
		}
		if err := json.Unmarshal([]byte(g.must("sudo cat /home/openclaw/.openclaw/openclaw.json")), &cfg); err != nil {
			t.Fatal(err)
		}
		gw := cfg.Gateway
		if gw.Auth.Token != token || gw.Mode != "local" || gw.Bind != "lan" || gw.Port != 18789 || gw.Auth.Mode != "token" || gw.Tailscale.Mode != "off" {
			t.Errorf("openclaw.json: %+v", gw)
		}
		// The image runs from the pinned ID, loaded from the disk.
		if out := strings.TrimSpace(g.must("sudo docker inspect -f '{{.Image}}' openclaw-gateway")); out != applImg.id {
			t.Errorf("container image %s, want the pinned %s", out, applImg.id)
		}
	})

	t.Run("tailscale", func(t *testing.T) {
		g.t = t
		if out := strings.TrimSpace(g.must("systemctl is-active tailscaled.service")); out != "active" {
			t.Errorf("tailscaled: %s", out)
		}
		if out := g.must("sudo ss -Hulnp"); !regexp.MustCompile(`:41641\s.*tailscaled`).MatchString(out) {
			t.Errorf("tailscaled does not listen on 41641/udp:\n%s", out)
		}
		if out := g.must("cat /etc/apt/sources.list.d/tailscale.sources"); !strings.Contains(out, "URIs: https://pkgs.tailscale.com/stable/debian") {
			t.Errorf("the image's tailscale source is not Tailscale's:\n%s", out)
		}
		checkTailnet(t, g, tn, token)
	})

	t.Run("firstboot", func(t *testing.T) {
		g.t = t
		log := g.must("sudo journalctl -b -u bake-firstboot --no-pager")
		t.Logf("first boot log:\n%s", log)
		if strings.Contains(log, token) {
			t.Error("the first boot log shows the token")
		}
		for _, want := range []string{"seed nocloud: reading", "gateway token: " + strconv.Itoa(len(token)) + " characters, the seed (nocloud)", "done for instance"} {
			if !strings.Contains(log, want) {
				t.Errorf("first boot log lacks %q", want)
			}
		}
		mid := strings.TrimSpace(g.must("cat /etc/machine-id"))
		g.must("sudo test -e /var/lib/bake/firstboot/" + mid + ".done")
		// The build's byte-compiled Python is valid: nothing under /usr
		// was compiled again at boot. (ClampTimes once moved the mtime
		// of every .py read during the build, so each .pyc was stale and
		// this boot wrote 466 of them, cloud-init's modules included.)
		if out := strings.TrimSpace(g.must(`find /usr -xdev -name '*.pyc' -newermt "$(uptime -s)" | head -20`)); out != "" {
			t.Errorf(".pyc files written since boot (stale byte-code in the image):\n%s", out)
		}
		if out, err := g.run("cloud-init status --long"); err != nil || !strings.Contains(out, "status: done") {
			t.Errorf("cloud-init status: %v\n%s", err, out)
		} else {
			t.Logf("cloud-init status --long:\n%s", out)
		}
	})

	// The reboot's checks (the same node, no re-auth, the join unit not
	// run again, the key still gone, the host key kept) are
	// TestVerifyAppliance's: its instance 1 boots this image under SeaBIOS,
	// joins at first boot and is rebooted (identity.reboot,
	// tailscale.reboot, headscale's one node). This test's own reboot,
	// 90 s, carried nothing more (issue 11; BENCHMARKS.md, "Folded").
}

// inOrder fails t unless every line of want is in got, in want's order
// (other lines may come between: Docker 20.10 appends its own
// "-A DOCKER-USER -j RETURN" when it finds none, after our DROP, where it
// never matches).
func inOrder(t *testing.T, what string, got, want []string) {
	t.Helper()
	i := 0
	for _, l := range got {
		if i < len(want) && l == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("%s lacks %q (or has it out of order); want, in this order:\n%s\ngot:\n%s", what, want[i], strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkFATSeed: first boot read the seed from the FAT volume labelled
// CIDATA (bootApplianceDisk's "fat": the admin's key only in user-data's
// ssh_authorized_keys, the token as a bake.* file).
func checkFATSeed(t *testing.T, g *guest, token string) {
	t.Helper()
	log := g.must("sudo journalctl -b -u bake-firstboot --no-pager")
	for _, want := range []string{"seed nocloud: reading", "seed nocloud: bake.gateway_token", "the seed (nocloud)", "done for instance"} {
		if !strings.Contains(log, want) {
			t.Errorf("first boot log lacks %q:\n%s", want, log)
		}
	}
	if out := g.must("sudo grep -c . /home/admin/.ssh/authorized_keys"); strings.TrimSpace(out) != "1" {
		t.Errorf("authorized_keys has %s lines, want the one key from user-data", out)
	}
	if out := g.must("sudo grep -o '\"token\": *\"[^\"]*\"' /home/openclaw/.openclaw/openclaw.json"); !strings.Contains(out, token) {
		t.Errorf("openclaw.json token: %s", out)
	}
}

// checkIsolation: a port published on every address is reachable on the
// guest's loopback and not from a link whose name nobody knew at build time
// (a veth into a network namespace stands for the outside network), over
// IPv4 and IPv6; the gateway's port is not reachable either, nor through
// the guest's MAC to 127.0.0.1 (moby#45610). The outside is 198.51.100.2,
// in no allowed network of any test recipe (TestApplianceNetworkModeIfnames0
// allows 192.0.2.0/25 to the gateway port).
func checkIsolation(t *testing.T, g *guest) {
	t.Helper()
	img := g.must("sudo docker inspect -f '{{.Image}}' openclaw-gateway")
	img = strings.TrimSpace(img)
	script := `set -e
sudo docker run -d --rm --name probe -p 8080:18789 --user "$(id -u openclaw):$(id -g openclaw)" --security-opt no-new-privileges --cap-drop ALL -v /home/openclaw/.openclaw:/home/node/.openclaw ` + img + ` >/dev/null
sudo ip netns add outside
sudo ip link add ext9 type veth peer name ext9p netns outside
sudo ip addr add 198.51.100.1/24 dev ext9
sudo ip -6 addr add fd77:1::1/64 dev ext9 nodad
sudo ip link set ext9 up
sudo ip -n outside addr add 198.51.100.2/24 dev ext9p
sudo ip -n outside -6 addr add fd77:1::2/64 dev ext9p nodad
sudo ip -n outside link set ext9p up
sudo ip -n outside link set lo up
for i in $(seq 30); do curl -s -o /dev/null -m 2 http://127.0.0.1:8080/healthz && break; sleep 1; done
echo "loopback: $(curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:8080/healthz; true)"
# The four probes from outside expect no answer, each a 5 s timeout:
# at once, each into its own file (was one after another, 20 s).
p=$(mktemp -d)
sudo ip netns exec outside curl -s -o /dev/null -w '%{http_code}' -m 5 http://198.51.100.1:8080/healthz >"$p/v4" &
sudo ip netns exec outside curl -s -o /dev/null -w '%{http_code}' -m 5 'http://[fd77:1::1]:8080/healthz' >"$p/v6" &
sudo ip netns exec outside curl -s -o /dev/null -w '%{http_code}' -m 5 http://198.51.100.1:18789/healthz >"$p/gw" &
# moby#45610: a neighbour sends to 127.0.0.1:18789 through the guest's MAC
# (a route for 127.0.0.1 only: the probes above go to 198.51.100.1 and
# fd77:1::1 from the namespace's own addresses).
mac=$(cat /sys/class/net/ext9/address)
sudo ip netns exec outside sh -c "ip addr flush dev lo && ip link set lo down && echo 1 >/proc/sys/net/ipv4/conf/all/route_localnet && echo 1 >/proc/sys/net/ipv4/conf/ext9p/route_localnet && ip route add 127.0.0.1/32 dev ext9p src 198.51.100.2 && ip neigh add 127.0.0.1 lladdr $mac dev ext9p nud permanent"
sudo ip netns exec outside curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:18789/healthz >"$p/lo" &
wait
echo "outside-v4: $(cat "$p/v4")"
echo "outside-v6: $(cat "$p/v6")"
echo "outside-gateway: $(cat "$p/gw")"
echo "outside-loopback: $(cat "$p/lo")"
rm -rf "$p"
echo "guard-drops: $(sudo iptables -t raw -L BAKE-LOCALNET -n -v -x | awk '$3 == "DROP" {print $1}')"
sudo docker stop probe >/dev/null
sudo ip netns del outside
`
	out := g.must(script)
	t.Logf("isolation probe:\n%s", out)
	for _, want := range []string{"loopback: 200", "outside-v4: 000", "outside-v6: 000", "outside-gateway: 000", "outside-loopback: 000"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("isolation: want %q", want)
		}
	}
	if regexp.MustCompile(`guard-drops: 0?\n`).MatchString(out) {
		t.Error("the loopback guard dropped nothing: the probe to 127.0.0.1 did not reach it")
	}
	if out := g.must("sudo iptables -L DOCKER-USER -n -v -x"); !regexp.MustCompile(`\n\s*[1-9]\d*\s+\d+\s+DROP\s+\S+\s+--\s+\*\s+\*`).MatchString(out) {
		t.Logf("DOCKER-USER counters:\n%s", out)
		t.Error("DOCKER-USER's final DROP matched no packet: the probe did not go through it")
	}
}
