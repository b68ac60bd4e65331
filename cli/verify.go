package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/builder"
	"github.com/bakeimg/bake/internal/imgfile"
	"github.com/bakeimg/bake/verify"
	"github.com/bakeimg/bake/vm"
)

// runVerify runs a verification: verify.Run, replaced in tests.
var runVerify = verify.Run

func newVerify() *cobra.Command {
	var (
		recipePath     string
		contextDir     string
		sets           []string
		firmware       string
		reportDir      string
		keep           bool
		instances      int
		timeout        time.Duration
		gatewayTimeout time.Duration
		strict         bool
		allowSkip      []string
		userNet        bool
		list           bool
		memory         int
		cpus           int
		userData       string
		seedVia        string
		upgradeFrom    string
		stateVolume    string
		tnLogin        string
		tnKeyFile      string
		tnCAFile       string
	)
	c := &cobra.Command{
		Use:   "verify IMAGE",
		Short: "Boot an image in QEMU and prove its security claims from inside and outside",
		Long: `Verify boots IMAGE (raw or qcow2; never modified: each VM runs on a
copy-on-write overlay) with a NoCloud seed holding a fresh throwaway SSH key
and gateway token, waits for SSH (the serial console is kept as evidence),
and checks what the image claims by behaviour: SSH key login works and
password and root logins are refused, the effective sshd settings, the
firewall, Docker isolation from outside over IPv4 and IPv6 and through the
guest's MAC (moby#45610), a full port scan, the gateway's binding, token
and privileges, instance identity over two VMs and a reboot, a settled
system, and no secret from the build anywhere in the disk. The claims come
from --recipe (the recipe the image was built from; the image's own record
of its claims, /usr/share/bake/claims.json, must agree: image.claims), else
from that record, else the OpenClaw appliance's defaults.

As root, "outside" is a network namespace joined to the VM by a tap device,
with DHCP and router advertisements; without root QEMU's user-mode network
(restrict=on) is used and the checks from outside cannot run, saying why.
The VMs are always powered off and every process, tap device and namespace
removed, also on Ctrl-C.

Verify fails closed: a check that could not run (SKIP: not root, no
dnsmasq or nmap, no SSH session, nothing to decide on) is a failure, named
in the verdict, unless --allow-skip names it. --allow-skip ID (repeatable)
accepts the skip of one check: ID as the report names checks, either bare
(network.scan: on every firmware; secrets.disk) or as a key
(bios/network.scan, uefi/isolation.outside, image/secrets.disk). An ID that
names no check is a usage error (exit 2). Each accepted skip is listed,
with the reason it could not run, in the summary, report.json ("accepted":
"allow-skip") and junit.xml (<skipped>); a check it names that does run
must still pass. --strict is kept for old scripts and changes nothing: a
skip is always a failure unless accepted.

--user-data FILE boots the VMs with the user-data your cloud will pass: FILE
(a #cloud-config mapping; MIME multi-part, scripts and templates are refused
with exit 2) is merged into verify's seed. Verify's items come first in
ssh_authorized_keys and users (its throwaway key; the admin with that key
and passwordless sudo, which it needs to log in and check), FILE's items
follow; every other key of FILE is copied as written and wins over
verify's (ssh_pwauth, disable_root, hostname): the image must hold against
it. bake's own seed files (keys, token) are not affected.

--seed-via LIST says how the instances get their seed, in turn (instance
i takes the i-th item, wrapping): nocloud (the default: a NoCloud volume
with meta-data, user-data and bake's files) or smbios (the admin's keys
and a token only, as systemd credentials in SMBIOS type 11 strings that
QEMU reads from files, no volume and no user-data: what a hypervisor
without a seed disk passes, as bake seed --format smbios writes it; the
image must already have the admin user, as bake's appliance does). With
--seed-via nocloud,smbios and the default two instances, both paths are
proven in one run: the keys log in and the gateway's token is the seed's
on each, and the report's "seeds" names each instance's path.
--user-data reaches the nocloud instances only.

Checks of instance identity (identity.unique: two VMs differ;
identity.reboot: a reboot keeps them) run with --instances 2 or more: the
default is 2, so a plain run proves them. With --instances 1 they are not
run and the report lists them as "not run: needs --instances 2 (skipped by
request)" ("accepted": "by-request" in report.json): the user's choice,
not a failure.

--upgrade-from OLD proves an upgrade by replacing the image (docs/state.md;
both images need a state: section): OLD boots with a seed on a new blank
state volume made with the serial (or label) the images' state section
names, and its SSH host keys, machine ID, gateway token (compared, never
shown), tailscaled's machine key, a file in the gateway's state directory
and a Docker volume are recorded (upgrade.old-boot); it powers off. IMAGE
then boots on that volume with no seed (the admin logs in with the key the
first boot put on the volume): all of them are unchanged
(upgrade.identity), the checks of an instance pass (ssh.*, system.running,
firewall.rules, tailscale.daemon, gateway.*), IMAGE's kernel and container
images run and the volume's record names IMAGE (upgrade.new-image); after
its power-off IMAGE's root disk holds no token, host private key or
Tailscale key (upgrade.root-disk-secrets); OLD boots again on the volume
with the same identities (upgrade.rollback). One firmware, one instance;
--state-volume FILE makes the volume there (a new file) and keeps it.
Images with a state partition (state: {partition: ...}, the same label)
boot from one disk instead, a copy of OLD enlarged for the partition,
rewritten with IMAGE's and then OLD's system partitions by bake upgrade's
code between the boots; the same checks (upgrade.root-disk-secrets scans
the disk but the state partition); --state-volume is then refused (exit 2).
With --tailnet-* too, OLD's seed carries the auth key, login server and CA
and every boot gets the outbound NIC (below): OLD joins at first boot, and
IMAGE and the rollback must be the same node (node ID and key), running
and online, with no new login (upgrade.tailnet); the auth key is also
looked for on IMAGE's root disk.

--tailnet-login-server URL --tailnet-authkey-file FILE [--tailnet-ca FILE]
proves Tailscale against your own tailnet (headscale, or Tailscale's):
the last instance of each firmware gets the key, the login server and the
CA in its seed, and a second NIC on QEMU's user-mode network without
restrict=on, its only way off the isolated link (out through the host's
sockets; 10.0.2.2 is the host's loopback; its link sends no default
route). It must join at first boot with no human step (tailscale.joined:
running, online, the given control server), the key must be gone
(tailscale.key-gone; secrets.seed-copies searches every file for it), serve
status must be what the image claims with no funnel entry
(tailscale.serve), and after identity.reboot it must be the same node
(tailscale.reboot). Needs root and --instances 2 or more (or
--upgrade-from, above); with --firmware
both two instances join (a reusable key). Each run adds a node to the
tailnet: an ephemeral key removes it once the VM is gone. Without these
flags those checks are not planned; with them any that cannot run fails.

Exit status: 0 every check passed, or was skipped and accepted (--allow-skip,
or by request); 1 a check failed or could not run without being accepted (the
image is not proven; an image that never lets the key log in has failed); 2
the host cannot run the VM (QEMU, qemu-img or OVMF missing) or bad usage (an
unknown --allow-skip ID among them); 130 interrupted.

The checks (bake verify --list [--recipe R]: which a recipe plans, where
each runs, what it needs):
` + checkLines(),
		Example: `  sudo bake verify out/openclaw.qcow2 --recipe recipes/openclaw.yaml --report out/verify
  sudo bake verify out/openclaw.qcow2 --firmware both --instances 2
  sudo bake verify out/openclaw.qcow2 --allow-skip bios/network.scan   # no nmap here: accepted, listed
  sudo bake verify out/openclaw.qcow2 --recipe recipes/openclaw.yaml --user-data my-cloud.yaml
  sudo bake verify out/new.qcow2 --upgrade-from out/old.qcow2 --report out/upgrade
  bake verify out/boottest.qcow2 --timeout 20m \
      --allow-skip network.scan --allow-skip network.udp --allow-skip isolation.outside \
      --allow-skip isolation.loopback-via-mac   # not root: no outside checks`,
		Args: func(cmd *cobra.Command, args []string) error {
			if list {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				spec := verify.DefaultSpec()
				if recipePath != "" {
					r, err := loadRecipe(recipePath, sets, contextDir)
					if err != nil {
						return err
					}
					if spec, err = verify.SpecFromRecipe(r); err != nil {
						return err
					}
				}
				return verify.List(cmd.OutOrStdout(), spec, instances)
			}
			var fws []string
			switch firmware {
			case "bios":
				fws = []string{vm.BIOS}
			case "uefi":
				fws = []string{vm.UEFI}
			case "both":
				fws = []string{vm.BIOS, vm.UEFI}
			default:
				return usageErr(fmt.Errorf("--firmware %q: want bios, uefi or both", firmware))
			}
			if upgradeFrom != "" {
				if firmware == "both" {
					return usageErr(errors.New("--upgrade-from boots one firmware: --firmware bios or uefi"))
				}
				f, _, err := imgfile.OpenRegular(upgradeFrom)
				if err != nil {
					return usageErr(fmt.Errorf("--upgrade-from: %w", err))
				}
				f.Close()
				instances = 1
			} else if stateVolume != "" {
				return usageErr(errors.New("--state-volume needs --upgrade-from"))
			}
			if stateVolume != "" {
				if _, err := os.Lstat(stateVolume); err == nil {
					return usageErr(fmt.Errorf("--state-volume %s exists: name a new file", stateVolume))
				}
			}
			if instances < 1 || instances > 8 {
				return usageErr(fmt.Errorf("--instances %d: want 1 to 8", instances))
			}
			if timeout <= 0 {
				return usageErr(fmt.Errorf("--timeout %s: want a positive duration, e.g. 30m", timeout))
			}
			if memory < 512 {
				return usageErr(fmt.Errorf("--memory %d: want at least 512 (MiB)", memory))
			}
			var allowed []string
			for _, id := range allowSkip {
				id, err := verify.ResolveAllowSkip(id)
				if err != nil {
					return usageErr(fmt.Errorf("--allow-skip %w", err))
				}
				if !slices.Contains(allowed, id) {
					allowed = append(allowed, id)
				}
			}
			image := args[0]
			// Opened without blocking and checked on the descriptor: a
			// FIFO or device named as the image is refused at once.
			f, _, err := imgfile.OpenRegular(image)
			if err != nil {
				if errors.Is(err, imgfile.ErrNotRegular) {
					return usageErr(fmt.Errorf("image %s is not a file: %w", image, err))
				}
				return usageErr(fmt.Errorf("image: %w", err))
			}
			f.Close()
			if cpus < 0 || cpus > 64 {
				return usageErr(fmt.Errorf("--cpus %d: want 0 (automatic) or 1 to 64", cpus))
			}
			opts := verify.Options{
				Image:          image,
				Spec:           verify.DefaultSpec(),
				Firmwares:      fws,
				Instances:      instances,
				ReportDir:      reportDir,
				Keep:           keep,
				Timeout:        timeout,
				GatewayTimeout: gatewayTimeout,
				AllowSkip:      allowed,
				UserNet:        userNet,
				MemoryMiB:      memory,
				CPUs:           cpus,
				Log:            cmd.ErrOrStderr(),
				BakeVersion:    builder.Version,
				UpgradeFrom:    upgradeFrom,
				StateVolume:    stateVolume,
			}
			if seedVia != "" {
				v, err := verify.ParseSeedVia(seedVia)
				if err != nil {
					return usageErr(err)
				}
				opts.SeedVia = v
			}
			if userData != "" {
				b, err := os.ReadFile(userData)
				if err != nil {
					return usageErr(fmt.Errorf("--user-data: %w", err))
				}
				ud, err := verify.ParseUserData(userData, b)
				if err != nil {
					return usageErr(fmt.Errorf("--user-data: %w", err))
				}
				opts.UserData = ud
				if len(opts.SeedVia) > 0 && !slices.Contains(opts.SeedVia, verify.SeedNoCloud) {
					return usageErr(fmt.Errorf("--user-data: no instance gets user-data with --seed-via %s; add nocloud to --seed-via (e.g. --seed-via nocloud,smbios)", seedVia))
				}
			}
			if tnLogin != "" || tnKeyFile != "" || tnCAFile != "" {
				tn, err := tailnetOption(tnLogin, tnKeyFile, tnCAFile)
				if err != nil {
					return usageErr(err)
				}
				if instances < 2 && upgradeFrom == "" {
					return usageErr(fmt.Errorf("--tailnet-login-server needs --instances 2 or more: the last instance joins, and is rebooted to prove it stays the same node"))
				}
				if userNet {
					return usageErr(fmt.Errorf("--tailnet-login-server cannot run with --user-net: the tailnet instance needs the outside network namespace (root)"))
				}
				opts.Tailnet = tn
			}
			if recipePath != "" {
				r, err := loadRecipe(recipePath, sets, contextDir)
				if err != nil {
					return err
				}
				if opts.Spec, err = verify.SpecFromRecipe(r); err != nil {
					return err
				}
				opts.Recipe, opts.RecipeDigest = recipePath, r.Digest
			} else if len(sets) > 0 {
				return usageErr(errors.New("--set needs --recipe"))
			}
			if reportDir != "" {
				if abs, err := filepath.Abs(reportDir); err == nil {
					opts.ReportDir = abs
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			rep := runVerify(ctx, opts)
			rep.WriteSummary(cmd.OutOrStdout())
			if opts.ReportDir != "" {
				if err := rep.WriteFiles(opts.ReportDir); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "bake: writing the report: %v\n", err)
					if rep.ExitCode == verify.ExitPass {
						return &exitError{ExitFailure, nil}
					}
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "report: %s, %s\n", filepath.Join(opts.ReportDir, "report.json"), filepath.Join(opts.ReportDir, "junit.xml"))
				}
			}
			if rep.ExitCode == verify.ExitPass {
				return nil
			}
			return &exitError{rep.ExitCode, nil}
		},
	}
	f := c.Flags()
	f.StringVar(&recipePath, "recipe", "", "the recipe the image was built from: the claims to check; the image's record of its claims (/usr/share/bake/claims.json) must agree (default: the image's record, else the OpenClaw appliance's)")
	f.StringArrayVar(&sets, "set", nil, "override a recipe variable, as for the build (NAME=VALUE, repeatable)")
	contextFlag(c, &contextDir)
	f.StringVar(&firmware, "firmware", "bios", "firmware to boot with: bios, uefi or both")
	f.StringVar(&reportDir, "report", "", "write report.json, junit.xml and the serial console logs into this directory")
	f.BoolVar(&keep, "keep", false, "keep the work directory (seeds, the throwaway key, serial logs) for debugging")
	f.IntVar(&instances, "instances", 2, "VMs to boot per firmware from the same image: 2 or more check that instances differ and survive a reboot; --instances 1 skips those checks (listed as skipped by request)")
	f.DurationVar(&timeout, "timeout", verify.DefaultTimeout, "time limit of the whole verification")
	f.DurationVar(&gatewayTimeout, "gateway-timeout", verify.GatewayStartTimeout, "how long to wait for the gateway to answer on its port once the system is running; also the bound of each gateway client call in gateway.auth")
	f.BoolVar(&strict, "strict", false, "no-op, kept for old scripts: a skipped check is always a failure (exit 1) unless --allow-skip names it")
	f.StringArrayVar(&allowSkip, "allow-skip", nil, "accept the skip of check `ID` (network.scan; bios/network.scan for one firmware; repeatable): listed with the reason it could not run, not a failure")
	f.BoolVar(&list, "list", false, "print the check catalog (ID, whether this recipe and --instances plan it, where it runs, what it needs, its claim; for --recipe if given) and exit")
	f.BoolVar(&userNet, "user-net", false, "use QEMU user-mode networking even as root (no checks from outside)")
	f.IntVar(&memory, "memory", verify.DefaultMemoryMiB, "memory of each VM, MiB")
	f.IntVar(&cpus, "cpus", 0, "vCPUs of each VM (0: 2 under KVM; under emulation the host's cores shared among the VMs booted at once, 1 or 2 each)")
	f.StringVar(&seedVia, "seed-via", verify.SeedNoCloud, "how the instances get their seed, in turn: `LIST` of nocloud, smbios (e.g. nocloud,smbios: one instance each)")
	f.StringVar(&upgradeFrom, "upgrade-from", "", "prove an upgrade from this `OLD` image to IMAGE on one state volume: OLD with a seed, IMAGE with none, then OLD again (see above)")
	f.StringVar(&stateVolume, "state-volume", "", "with --upgrade-from: make the state volume at this new `FILE` (raw) and keep it")
	f.StringVar(&userData, "user-data", "", "merge this #cloud-config file into the seed's user-data (the user-data your cloud will pass; see above)")
	f.StringVar(&tnLogin, "tailnet-login-server", "", "prove Tailscale against this control server (`URL`, https: your headscale's server_url, or https://controlplane.tailscale.com): the last instance joins it at first boot (see above)")
	f.StringVar(&tnKeyFile, "tailnet-authkey-file", "", "the pre-auth key the last instance joins with (`FILE`, one line; needed with --tailnet-login-server; never logged)")
	f.StringVar(&tnCAFile, "tailnet-ca", "", "PEM CA certificates the control server's certificate is from, when not a public CA (`FILE`)")
	return c
}

// tailnetOption reads --tailnet-*: the key from its file (whitespace
// trimmed), the CA bundle, checked as first boot checks them.
func tailnetOption(login, keyFile, caFile string) (*verify.Tailnet, error) {
	if login == "" || keyFile == "" {
		return nil, errors.New("--tailnet-login-server and --tailnet-authkey-file go together (--tailnet-ca is optional)")
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tailnet-authkey-file: %w", err)
	}
	tn := &verify.Tailnet{LoginServer: login, AuthKey: strings.TrimSpace(string(b))}
	if caFile != "" {
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--tailnet-ca: %w", err)
		}
		tn.CA = string(ca)
	}
	if err := tn.Check(); err != nil {
		return nil, fmt.Errorf("--tailnet-*: %w", err)
	}
	return tn, nil
}

// checkLines lists every check of the catalog with its claim, for the
// default recipe, as --help shows them.
func checkLines() string {
	var out strings.Builder
	for _, c := range verify.Claims(verify.DefaultSpec()) {
		fmt.Fprintf(&out, "  %s: %s\n", c[0], c[1])
	}
	return out.String()
}
