package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/builder"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/internal/imgfile"
	"github.com/bakeimg/bake/internal/sweep"
	"github.com/bakeimg/bake/verify"
	"github.com/bakeimg/bake/vm"
)

// runDirPrefix names bake run's work dir in $TMPDIR (sweep.MkdirTemp): the
// seed, the console's input FIFO, the QMP socket. A run killed with
// SIGKILL leaves it (its QEMU dies with it); the next bake run removes it.
const runDirPrefix = "bake-run-"

// escapeKey is the console's escape: pressed escapeCount times in a row it
// powers the guest off (Ctrl-], as telnet's).
const (
	escapeKey   = 0x1d
	escapeCount = 3
)

// DefaultRunGrace is how long bake run waits for the guest to power off
// after asking it (ACPI) before it stops QEMU.
const DefaultRunGrace = 30 * time.Second

type runOptions struct {
	image     string
	adminKeys []string
	seed      string
	admin     string
	adminSet  bool
	firmware  string
	memory    int
	cpus      int
	hostname  string
	grace     time.Duration
	home      string // where ~/.ssh is; os.UserHomeDir() when empty

	stdin          io.Reader
	stdout, stderr io.Writer
}

// runPlan is everything bake run decided before it starts anything.
type runPlan struct {
	image    string
	format   string // raw or qcow2
	firmware string // vm.BIOS or vm.UEFI
	fwWhy    string
	admin    string
	adminWhy string
	sshPort  int
	keys     []string // the made seed's admin keys (none with seedFile)
	keyFrom  []string // the files they came from
	seedFile string   // --seed: attached as it is, read-only
	seedKind string   // "iso" or "fat" (of seedFile)
	memory   int
	cpus     int
	hostname string
	grace    time.Duration
}

// startRun boots the plan: runVM, replaced in tests.
var startRun = runVM

func newRun() *cobra.Command {
	var o runOptions
	c := &cobra.Command{
		Use:   "run IMAGE [flags]",
		Short: "Boot an image locally for a first look: serial console here, SSH on a local port",
		Long: `Run boots IMAGE (raw or qcow2) in QEMU for a first look, the way mkosi qemu
or linuxkit run do:

  - KVM when it really runs guests here, software emulation (TCG) otherwise;
  - the firmware the image boots with (--firmware auto: SeaBIOS when the
    disk has a BIOS boot partition or an MBR, as bake verify boots it by
    default; else OVMF when it has an EFI system partition);
  - a copy-on-write overlay in a temp dir: IMAGE is never written;
  - a NoCloud seed made on the fly with your SSH public keys (--admin-key
    FILE, repeatable; else every ~/.ssh/*.pub), the same seed bake seed
    writes; or --seed FILE, a seed you made (ISO or FAT), attached read-only;
  - user-mode networking (restrict=on: the guest reaches nothing but the
    forward) with the guest's SSH forwarded from a free port on 127.0.0.1,
    printed as the ssh command to type;
  - the serial console on this terminal: what you type goes to the guest
    (raw mode when stdin is a terminal). Ctrl-] three times, or SIGINT or
    SIGTERM from outside, powers the guest off (an ACPI power button press;
    QEMU is stopped when the guest has not powered off after --grace).

The admin's name in the ssh command is the image's recipe's (read through
the manifest beside the image, NAME.manifest.json), else --admin. Everything
bake run made (overlay, seed, sockets, logs) is removed when it ends.

Exit status: 0 the guest powered off (by itself or after Ctrl-] three
times), 1 QEMU failed, 2 bad usage or an image bake cannot read (nothing was
started), 130 interrupted by a signal (the guest was powered off).`,
		Example: `  bake run out/openclaw.qcow2
  bake run out/openclaw.qcow2 --admin-key ~/.ssh/id_ed25519.pub
  bake run out/appliance.raw --seed seed.iso --admin ops --firmware uefi`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErr(fmt.Errorf("run takes one IMAGE, got %d arguments (e.g. bake run out/openclaw.qcow2)", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.image = args[0]
			o.stdin, o.stdout, o.stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			o.adminSet = cmd.Flags().Changed("admin")
			if !o.adminSet {
				o.admin = ""
			}
			ctx := context.Background()
			p, err := planRun(ctx, &o)
			if err != nil {
				return err
			}
			return startRun(ctx, p, &o)
		},
	}
	f := c.Flags()
	f.StringArrayVar(&o.adminKeys, "admin-key", nil, "a file of SSH public keys for the admin, one per line (repeatable; default: every ~/.ssh/*.pub)")
	f.StringVar(&o.seed, "seed", "", "attach this NoCloud seed (ISO9660 or FAT, e.g. from bake seed) instead of making one")
	f.StringVar(&o.admin, "admin", verify.DefaultAdminUser, "the admin's user name for the ssh command (default: the recipe's, from the manifest beside IMAGE; else admin)")
	f.StringVar(&o.firmware, "firmware", "auto", "auto, bios or uefi")
	f.IntVar(&o.memory, "memory", verify.DefaultMemoryMiB, "memory of the VM, MiB")
	f.IntVar(&o.cpus, "cpus", 0, "vCPUs (0: 2 under KVM or OVMF, else the host's cores up to 2)")
	f.StringVar(&o.hostname, "hostname", "", "the instance's host name (in the made seed)")
	f.DurationVar(&o.grace, "grace", DefaultRunGrace, "how long to wait for the guest to power off before QEMU is stopped")
	return c
}

// planRun checks the command line and the image and decides everything;
// every error is a usage error (exit 2) and nothing has been made.
func planRun(ctx context.Context, o *runOptions) (*runPlan, error) {
	p := &runPlan{image: o.image, memory: o.memory, cpus: o.cpus, hostname: o.hostname, grace: o.grace, sshPort: verify.DefaultSSHPort}
	switch {
	case o.seed != "" && len(o.adminKeys) > 0:
		return nil, usageErr(errors.New("--seed and --admin-key: give one (a seed you made holds its keys; bake run makes one from --admin-key)"))
	case o.seed != "" && o.hostname != "":
		return nil, usageErr(errors.New("--hostname goes into the seed bake run makes; with --seed, give it to bake seed"))
	case o.memory < 256:
		return nil, usageErr(fmt.Errorf("--memory %d: want at least 256 (MiB)", o.memory))
	case o.cpus < 0 || o.cpus > 64:
		return nil, usageErr(fmt.Errorf("--cpus %d: want 0 (automatic) or 1 to 64", o.cpus))
	case o.grace <= 0:
		return nil, usageErr(fmt.Errorf("--grace %s: want a positive duration, e.g. 30s", o.grace))
	}
	switch o.firmware {
	case "auto", vm.BIOS, vm.UEFI:
	default:
		return nil, usageErr(fmt.Errorf("--firmware %q: want auto, bios or uefi", o.firmware))
	}
	if o.hostname != "" {
		if err := firstboot.CheckHostname(o.hostname); err != nil {
			return nil, usageErr(fmt.Errorf("--hostname: %w", err))
		}
	}
	if o.adminSet {
		if err := checkUserName(o.admin); err != nil {
			return nil, usageErr(fmt.Errorf("--admin %q: %w", o.admin, err))
		}
	}

	// The image: a regular file (opened without blocking), a raw or qcow2
	// disk bake can read, naming no other file of the host.
	f, _, err := imgfile.OpenRegular(o.image)
	if err != nil {
		if errors.Is(err, imgfile.ErrNotRegular) {
			return nil, usageErr(fmt.Errorf("image %s is not a file: %w", o.image, err))
		}
		return nil, usageErr(fmt.Errorf("image: %w", err))
	}
	f.Close()
	img, err := cloudimg.Open(ctx, o.image)
	if err != nil {
		return nil, usageErr(fmt.Errorf("image %s: %s", o.image, strings.TrimPrefix(err.Error(), "base image: ")))
	}
	p.format = img.Format
	table := img.Table
	img.Close()
	if o.firmware == "auto" {
		p.firmware, p.fwWhy = bootFirmware(table)
	} else {
		p.firmware, p.fwWhy = o.firmware, "--firmware"
	}

	// Who logs in: --admin, else the recipe's (through the manifest).
	if admin, port, why := adminFromManifest(o.image); admin != "" {
		p.admin, p.adminWhy, p.sshPort = admin, why, port
	} else {
		p.admin, p.adminWhy = verify.DefaultAdminUser, "default; "+why
	}
	if o.adminSet {
		p.admin, p.adminWhy = o.admin, "--admin"
	}

	// The seed: the user's, or one made from keys.
	if o.seed != "" {
		kind, err := seedKind(o.seed)
		if err != nil {
			return nil, usageErr(fmt.Errorf("--seed %s: %w", o.seed, err))
		}
		p.seedFile, p.seedKind = o.seed, kind
		return p, nil
	}
	so := &seedOptions{stdin: o.stdin}
	var probs problems
	if len(o.adminKeys) > 0 {
		p.keys = so.readAdminKeys(&probs, "--admin-key", o.adminKeys)
		p.keyFrom = o.adminKeys
		if len(probs) > 0 {
			return nil, usageErr(fmt.Errorf("%s", strings.Join(probs, "; ")))
		}
	} else {
		home := o.home
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		var files []string
		if home != "" {
			files, _ = filepath.Glob(filepath.Join(home, ".ssh", "*.pub"))
			sort.Strings(files)
		}
		for _, file := range files {
			var fp problems
			keys := so.readAdminKeys(&fp, "not using", []string{file})
			if len(fp) > 0 {
				fmt.Fprintf(o.stderr, "bake: %s\n", strings.Join(fp, "; "))
			}
			if len(keys) > 0 && len(fp) == 0 {
				for _, k := range keys {
					if !slices.Contains(p.keys, k) {
						p.keys = append(p.keys, k)
					}
				}
				p.keyFrom = append(p.keyFrom, file)
			}
		}
	}
	if len(p.keys) == 0 { // --admin-key files without a key were refused above
		return nil, usageErr(errors.New("no SSH public key for the admin: ~/.ssh has no *.pub file bake can use; give --admin-key FILE (or --seed FILE)"))
	}
	return p, nil
}

// checkUserName accepts what useradd does by default (Debian's
// NAME_REGEX, without the trailing $): it is printed in a command line.
func checkUserName(s string) error {
	if len(s) > 32 {
		return errors.New("longer than 32 characters")
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c == '_' || i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '.')
		if !ok {
			return errors.New("want a user name: [a-z_][a-z0-9_.-]*")
		}
	}
	if s == "" {
		return errors.New("empty")
	}
	return nil
}

// bootFirmware is how bake run boots a disk, from its partition table:
// SeaBIOS when it can (a GPT BIOS boot partition, or an MBR disk), as bake
// verify boots by default; else OVMF when it has an EFI system partition;
// else SeaBIOS.
func bootFirmware(t *cloudimg.Table) (string, string) {
	if t == nil {
		return vm.BIOS, "no partition table found"
	}
	if t.Type == cloudimg.TableDOS {
		return vm.BIOS, "an MBR disk"
	}
	esp := false
	for _, p := range t.Partitions {
		switch p.Type {
		case cloudimg.TypeBIOSBoot:
			return vm.BIOS, "a BIOS boot partition"
		case cloudimg.TypeESP:
			esp = true
		}
	}
	if esp {
		return vm.UEFI, "an EFI system partition and no BIOS boot partition"
	}
	return vm.BIOS, "neither a BIOS boot nor an EFI system partition"
}

// adminFromManifest reads NAME.manifest.json beside the image and the
// recipe it names: the admin's name and SSH port as bake verify takes them
// from a recipe. admin is "" when there is none to read; why says where
// the answer came from, or why there is none.
func adminFromManifest(image string) (admin string, port int, why string) {
	base := image
	for _, ext := range []string{".qcow2", ".raw", ".img"} {
		base = strings.TrimSuffix(base, ext)
	}
	path := base + ".manifest.json"
	f, _, err := imgfile.OpenRegular(path)
	if err != nil {
		return "", 0, "no manifest " + path
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<20))
	f.Close()
	if err != nil {
		return "", 0, fmt.Sprintf("manifest %s: %v", path, err)
	}
	var m builder.Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Recipe.Path == "" {
		return "", 0, fmt.Sprintf("manifest %s names no recipe", path)
	}
	r, err := recipe.Load(m.Recipe.Path, m.Recipe.Variables)
	if err != nil {
		return "", 0, fmt.Sprintf("the manifest's recipe %s cannot be read here", m.Recipe.Path)
	}
	spec, err := verify.SpecFromRecipe(r)
	if err != nil || spec.AdminUser == "" {
		return "", 0, fmt.Sprintf("the manifest's recipe %s names no admin", m.Recipe.Path)
	}
	why = "recipe " + m.Recipe.Path + " (from " + filepath.Base(path) + ")"
	if r.Digest != m.Recipe.SHA256 {
		why += "; it changed since the build"
	}
	return spec.AdminUser, spec.SSHPort, why
}

// seedKind tells a NoCloud seed's format by its magic: an ISO9660 volume
// or a FAT boot sector.
func seedKind(path string) (string, error) {
	f, st, err := imgfile.OpenRegular(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if st.Size() > 1<<30 {
		return "", errors.New("larger than 1 GiB: not a seed")
	}
	b := make([]byte, 0x8006)
	n, _ := io.ReadFull(f, b)
	b = b[:n]
	switch {
	case n >= 0x8006 && string(b[0x8001:0x8006]) == "CD001":
		return seedISO, nil
	case n >= 512 && b[510] == 0x55 && b[511] == 0xaa && (strings.HasPrefix(string(b[0x36:0x3e]), "FAT") || strings.HasPrefix(string(b[0x52:0x5a]), "FAT")):
		return seedFAT, nil
	}
	return "", errors.New("neither an ISO9660 nor a FAT volume (make one with bake seed --format iso|fat)")
}

// runVM boots the plan and stays until the guest is off, then removes
// everything it made.
func runVM(_ context.Context, p *runPlan, o *runOptions) (retErr error) {
	sweep.Sweep{Prefix: runDirPrefix, MaxAge: sweep.DefaultMaxAge}.Run()
	work, err := sweep.MkdirTemp("", runDirPrefix)
	if err != nil {
		return &exitError{ExitFailure, err}
	}
	defer func() {
		if err := os.RemoveAll(work); err != nil && retErr == nil {
			retErr = &exitError{ExitFailure, err}
		}
	}()
	fail := func(err error) error { return &exitError{ExitFailure, fmt.Errorf("run: %w", err)} }

	seedPath := p.seedFile
	if seedPath == "" {
		id := make([]byte, 8)
		rand.Read(id)
		s := firstboot.Seed{AdminKeys: p.keys, Hostname: p.hostname, InstanceID: "iid-bake-run-" + hex.EncodeToString(id)}
		if err := s.Check(); err != nil {
			return usageErr(err)
		}
		seedPath = filepath.Join(work, "seed.iso")
		if err := writeNoCloud(seedISO, seedPath, s); err != nil {
			return fail(err)
		}
	}
	// The console: two FIFOs, QEMU's pipe chardev (console.in, console.out),
	// held open here read-write first, so that no open waits.
	pipe := filepath.Join(work, "console")
	var fifos [2]*os.File
	for i, ext := range []string{".in", ".out"} {
		if err := unix.Mkfifo(pipe+ext, 0o600); err != nil {
			return fail(err)
		}
		f, err := os.OpenFile(pipe+ext, os.O_RDWR, 0)
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		fifos[i] = f
	}
	in, out := fifos[0], fifos[1]
	port, err := vm.FreePort()
	if err != nil {
		return fail(err)
	}
	cpus := p.cpus
	if cpus == 0 {
		cpus = verify.AutoCPUs(1, vm.KVMUsable(), runtime.NumCPU(), p.firmware, p.firmware == vm.UEFI && verify.UEFIOneCPUReboots(""))
	}
	cfg := vm.Config{
		Firmware:   p.firmware,
		Disk:       p.image,
		DiskFormat: p.format,
		Snapshot:   true, // Start's overlay: qemu-img create -b IMAGE -F FORMAT
		MemoryMiB:  p.memory,
		CPUs:       cpus,
		SeedISO:    seedPath,
		Net:        vm.NetConfig{Mode: vm.NetUser, Forwards: []vm.Forward{{HostPort: port, GuestPort: p.sshPort}}},
		SerialPipe: pipe,
		QMPSocket:  filepath.Join(work, "qmp.sock"),
	}

	// Signals are caught from here on; one that comes while QEMU starts
	// powers it off once it is up.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)

	v, err := vm.Start(context.Background(), cfg)
	if err != nil {
		return fail(err)
	}
	defer v.Stop()

	errw := o.stderr
	fmt.Fprintf(errw, "bake: QEMU pid %d (accel %s, firmware %s: %s; %d MiB, %d vCPU), work dir %s, VM dir %s\n",
		v.PID(), v.Config.Accel, p.firmware, p.fwWhy, p.memory, cpus, work, v.Dir())
	fmt.Fprintf(errw, "bake: %s is not written: the guest writes to a copy-on-write overlay in %s, removed at the end\n", p.image, v.Dir())
	if p.seedFile != "" {
		fmt.Fprintf(errw, "bake: seed: %s (%s, read-only)\n", p.seedFile, p.seedKind)
	} else {
		fmt.Fprintf(errw, "bake: seed: %d admin key(s) from %s\n", len(p.keys), strings.Join(p.keyFrom, ", "))
	}
	fmt.Fprintf(errw, "bake: admin %s (%s); once the guest is up, log in with:\n", p.admin, p.adminWhy)
	fmt.Fprintf(errw, "    ssh -p %d %s@127.0.0.1\n", port, p.admin)

	// The terminal: raw when stdin is one, restored on every way out.
	var restore func()
	tty := false
	if sf, ok := o.stdin.(*os.File); ok {
		if st, err := unix.IoctlGetTermios(int(sf.Fd()), unix.TCGETS); err == nil {
			raw := *st
			makeRaw(&raw)
			if unix.IoctlSetTermios(int(sf.Fd()), unix.TCSETS, &raw) == nil {
				tty = true
				restore = func() { unix.IoctlSetTermios(int(sf.Fd()), unix.TCSETS, st) }
				defer restore()
			}
		}
	}
	nl := "\n"
	if tty {
		nl = "\r\n"
		fmt.Fprintf(errw, "bake: console: Ctrl-] three times powers the guest off%s", nl)
	} else {
		fmt.Fprintf(errw, "bake: console (stdin is not a terminal); SIGINT or SIGTERM powers the guest off%s", nl)
	}
	say := func(format string, a ...any) { fmt.Fprintf(errw, "bake: "+format+nl, a...) }

	// Console output: what QEMU writes to the pipe (also logged).
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		copyConsole(out, o.stdout)
	}()
	// Console input: stdin to the guest; the escape is caught here.
	escc := make(chan struct{}, 1)
	if o.stdin != nil {
		go forwardInput(o.stdin, in, escc)
	}

	interrupted := false
	why := ""
	select {
	case <-v.Exited():
	case s := <-sigc:
		interrupted, why = true, s.String()
	case <-escc:
		why = "Ctrl-] three times"
	}
	if why != "" {
		say("%s: powering the guest off (ACPI; QEMU is stopped after %s, or at once on another signal)", why, p.grace)
		if err := v.Powerdown(context.Background()); err != nil {
			say("%v; stopping QEMU", err)
		} else {
			t := time.NewTimer(p.grace)
			select {
			case <-v.Exited():
			case <-t.C:
				say("the guest is still up after %s: stopping QEMU", p.grace)
			case s := <-sigc:
				say("%s: stopping QEMU", s)
			case <-escc:
				say("Ctrl-] three times: stopping QEMU")
			}
			t.Stop()
		}
	}
	// Stop: QEMU is ended if it still runs (SIGTERM, SIGKILL after
	// vm.StopGrace) and its dir (the overlay) removed.
	stopErr := v.Stop()
	exitErr := v.Wait()
	// QEMU has exited: what is left in the FIFO is read, then no more.
	out.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	<-outDone
	if restore != nil {
		restore()
	}
	in.Close()
	out.Close()
	if err := errors.Join(stopErr, os.RemoveAll(work)); err != nil {
		return fail(err)
	}
	if errors.Is(exitErr, vm.ErrSerialLogMax) {
		return fail(exitErr)
	}
	if why == "" && exitErr != nil {
		return fail(fmt.Errorf("QEMU exited (%v): %s", exitErr, strings.TrimSpace(v.QEMULog())))
	}
	fmt.Fprintf(errw, "\nbake: QEMU has exited; removed %s and %s\n", v.Dir(), work)
	if interrupted {
		return &exitError{130, nil}
	}
	return nil
}

// makeRaw is cfmakeraw(3).
func makeRaw(t *unix.Termios) {
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
}

// escapeScanner counts escape keys pressed in a row.
type escapeScanner struct{ n int }

// scan reports whether b completes the escape (escapeCount escape keys in
// a row, across reads); any other byte starts the count again.
func (e *escapeScanner) scan(b []byte) bool {
	for _, c := range b {
		if c != escapeKey {
			e.n = 0
			continue
		}
		e.n++
		if e.n >= escapeCount {
			e.n = 0
			return true
		}
	}
	return false
}

// forwardInput copies r to the guest's console input until r ends (the
// guest keeps running) and signals esc when the escape is typed.
func forwardInput(r io.Reader, w io.Writer, esc chan<- struct{}) {
	var e escapeScanner
	buf := make([]byte, 1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if e.scan(buf[:n]) {
				select {
				case esc <- struct{}{}:
				default:
				}
			}
			w.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// copyConsole copies the console's output to w until r fails (its read
// deadline passes once QEMU has exited).
func copyConsole(r *os.File, w io.Writer) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}
