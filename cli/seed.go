package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/vm"
)

// Seed formats (docs/seed.md).
const (
	seedISO      = "iso"       // NoCloud ISO9660, labelled cidata
	seedFAT      = "fat"       // NoCloud FAT16, labelled CIDATA
	seedUserData = "user-data" // a cloud's #cloud-config (write_files)
	seedSMBIOS   = "smbios"    // QEMU -smbios type=11 credential arguments
)

var seedFormats = []string{seedISO, seedFAT, seedUserData, seedSMBIOS}

// seedInputMax bounds what bake seed reads from one file: a key file, a
// token, an auth key are a few KiB at most.
const seedInputMax = 1 << 20

type seedOptions struct {
	format         string
	out            string
	adminKeys      []string
	tokenFile      string
	newToken       string
	printToken     bool
	authKeyFile    string
	loginServer    string
	caFile         string
	hostname       string
	instanceID     string
	instanceIDSet  bool
	hostnameSet    bool
	stdinUsed      string // the flag that read stdin
	stdin          io.Reader
	stdout, stderr io.Writer
}

// seedBeforeRename, when set (by tests), runs once the output is complete
// in its temp dir, before it is renamed to its name.
var seedBeforeRename func(ctx context.Context)

func newSeed() *cobra.Command {
	var o seedOptions
	c := &cobra.Command{
		Use:   "seed --format iso|fat|user-data|smbios -o OUT [flags]",
		Short: "Make an instance's seed: the admin's SSH keys, the gateway token, a Tailscale auth key, its host name",
		Long: `Seed writes what an instance of an appliance image reads at its first boot
(docs/seed.md), in one of four formats:

  iso        a NoCloud volume (ISO9660, label cidata) to attach as a CD-ROM
  fat        a NoCloud volume (FAT16, label CIDATA) to attach as a disk
  user-data  a #cloud-config document for a cloud's user-data (the image
             needs cloud-init in firstboot.seed)
  smbios     QEMU arguments passing the values as systemd credentials
             (SMBIOS type 11), one argument per line

Every value is optional. Keys, tokens, auth keys and host names get the
refusals first boot would give, all reported at once and before anything is
written (exit status 2). The output holds secrets: it is written 0600, into
a temp file beside OUT renamed at the end, so OUT is never partly written.
A token made with --new-token is written 0600 to a new file (never over an
existing one) and is not printed unless --print-token.`,
		Example: `  bake seed --format iso -o seed.iso --admin-key ~/.ssh/id_ed25519.pub --new-token gw-1.token --hostname gw-1
  bake seed --format fat -o seed.img --admin-key keys.pub --token-file gw-1.token
  bake seed --format user-data -o user-data --admin-key ~/.ssh/id_ed25519.pub --tailscale-authkey-file ts.key
  bake seed --format iso -o seed.iso --admin-key ~/.ssh/id_ed25519.pub --tailscale-authkey-file hs.key \
      --tailscale-login-server https://headscale.example.net --tailscale-ca headscale-ca.pem
  bake seed --format smbios -o seed.args --admin-key - < ~/.ssh/id_ed25519.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.stdin, o.stdout, o.stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			o.instanceIDSet = cmd.Flags().Changed("instance-id")
			o.hostnameSet = cmd.Flags().Changed("hostname")
			return runSeed(&o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.format, "format", "", "what to write: "+strings.Join(seedFormats, ", "))
	f.StringVarP(&o.out, "output", "o", "", "the file to write (- for stdout: user-data and smbios only)")
	f.StringArrayVar(&o.adminKeys, "admin-key", nil, "a file of the admin's SSH public keys, one per line (repeatable; - for stdin)")
	f.StringVar(&o.tokenFile, "token-file", "", "read the gateway token from this file (- for stdin)")
	f.StringVar(&o.newToken, "new-token", "", "generate a gateway token and write it to this new file (0600; never overwrites)")
	f.BoolVar(&o.printToken, "print-token", false, "also print the token --new-token generated on stdout")
	f.StringVar(&o.authKeyFile, "tailscale-authkey-file", "", "read a Tailscale auth key from this file (- for stdin)")
	f.StringVar(&o.loginServer, "tailscale-login-server", "", "the control server to join (an https URL, e.g. a headscale's server_url), instead of the image's tailscale.login_server")
	f.StringVar(&o.caFile, "tailscale-ca", "", "a PEM file of CA certificates tailscaled trusts besides the system's (the control server's CA; - for stdin)")
	f.StringVar(&o.hostname, "hostname", "", "the instance's host name (iso, fat, user-data)")
	f.StringVar(&o.instanceID, "instance-id", "", "the NoCloud instance id (iso, fat; default: a random iid-...)")
	return c
}

// problems collects everything wrong with a bake seed command line, to be
// reported at once.
type problems []string

func (p *problems) add(format string, a ...any) { *p = append(*p, fmt.Sprintf(format, a...)) }

// read reads one input file (or stdin for "-"), at most seedInputMax
// bytes. Errors name the flag and the file, never the content.
func (o *seedOptions) read(p *problems, flag, name string) ([]byte, bool) {
	var r io.Reader
	if name == "-" {
		if o.stdinUsed != "" {
			p.add("%s -: stdin is already read by %s", flag, o.stdinUsed)
			return nil, false
		}
		o.stdinUsed = flag + " -"
		r = o.stdin
	} else {
		if st, err := os.Stat(name); err == nil && st.IsDir() {
			p.add("%s %s: a directory, not a file", flag, name)
			return nil, false
		}
		f, err := os.Open(name)
		if err != nil {
			p.add("%s: %v", flag, err)
			return nil, false
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, seedInputMax+1))
	if err != nil {
		p.add("%s %s: %v", flag, name, err)
		return nil, false
	}
	if len(b) > seedInputMax {
		p.add("%s %s: larger than %d KiB: not a key, token or key file", flag, name, seedInputMax>>10)
		return nil, false
	}
	return b, true
}

// readSecret reads a one-line value (a token, an auth key): one trailing
// line break is allowed, nothing more.
func (o *seedOptions) readSecret(p *problems, flag, name string, check func(string) error) string {
	b, ok := o.read(p, flag, name)
	if !ok {
		return ""
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	switch {
	case s == "":
		p.add("%s %s: empty", flag, name)
	case strings.ContainsAny(s, "\r\n"):
		p.add("%s %s: more than one line (want the value alone, on one line)", flag, name)
	default:
		if err := check(s); err != nil {
			p.add("%s %s: %v", flag, name, err)
		} else {
			return s
		}
	}
	return ""
}

func runSeed(o *seedOptions) error {
	var p problems
	toStdout := o.out == "-"
	switch {
	case o.format == "":
		p.add("--format: missing; want one of %s", strings.Join(seedFormats, ", "))
	case !slices.Contains(seedFormats, o.format):
		p.add("--format %s: want one of %s", strconv.Quote(o.format), strings.Join(seedFormats, ", "))
	}
	switch {
	case o.out == "":
		p.add("-o: missing; name the file to write (- for stdout: user-data and smbios only)")
	case toStdout && (o.format == seedISO || o.format == seedFAT):
		p.add("-o -: the %s format is a disk image; name a file", o.format)
	case !toStdout:
		if st, err := os.Stat(o.out); err == nil && st.IsDir() {
			p.add("-o %s: a directory; name the file to write", o.out)
		}
		if st, err := os.Stat(filepath.Dir(o.out)); err != nil || !st.IsDir() {
			p.add("-o %s: the folder %s does not exist", o.out, filepath.Dir(o.out))
		}
	}
	if o.tokenFile != "" && o.newToken != "" {
		p.add("--token-file and --new-token: give one (read a token, or generate one)")
	}
	if o.printToken && o.newToken == "" {
		p.add("--print-token prints the token --new-token generates: give --new-token FILE")
	}
	if o.printToken && toStdout {
		p.add("--print-token with -o -: the token and the seed would share stdout; write the seed to a file")
	}
	if o.newToken != "" {
		if o.newToken == "-" {
			p.add("--new-token -: name a file (the token is printed only with --print-token)")
		} else if _, err := os.Lstat(o.newToken); err == nil {
			p.add("--new-token %s: exists; bake seed never overwrites a token file (use --token-file %s to reuse it)", o.newToken, o.newToken)
		} else if !errors.Is(err, os.ErrNotExist) {
			p.add("--new-token: %v", err)
		} else if st, err := os.Stat(filepath.Dir(o.newToken)); err != nil || !st.IsDir() {
			p.add("--new-token %s: the folder %s does not exist", o.newToken, filepath.Dir(o.newToken))
		}
	}
	// -o must not name an input: the seed would replace a key or token.
	if !toStdout && o.out != "" {
		inputs := append(slices.Clone(o.adminKeys), o.tokenFile, o.newToken, o.authKeyFile, o.caFile)
		for _, in := range inputs {
			if in == "" || in == "-" {
				continue
			}
			a, errA := os.Stat(in)
			b, errB := os.Stat(o.out)
			if filepath.Clean(in) == filepath.Clean(o.out) || errA == nil && errB == nil && os.SameFile(a, b) {
				p.add("-o %s: also given as an input; the seed would replace it", o.out)
				break
			}
		}
	}
	switch o.format {
	case seedUserData:
		if o.instanceIDSet {
			p.add("--instance-id: a cloud names its instances itself; only the iso and fat formats carry an instance id")
		}
	case seedSMBIOS:
		if o.instanceIDSet || o.hostnameSet {
			p.add("--hostname, --instance-id: the smbios format carries bake's values only (keys, token, auth key); give them in an iso or fat seed")
		}
	}

	s := firstboot.Seed{Hostname: o.hostname, InstanceID: o.instanceID}
	if o.hostnameSet {
		if err := firstboot.CheckHostname(o.hostname); err != nil {
			p.add("--hostname: %v", err)
		}
	}
	if o.instanceIDSet {
		if err := firstboot.CheckInstanceID(o.instanceID); err != nil {
			p.add("--instance-id: %v", err)
		}
	} else if o.format == seedISO || o.format == seedFAT {
		b := make([]byte, 8)
		rand.Read(b)
		s.InstanceID = "iid-" + hex.EncodeToString(b)
	}
	s.AdminKeys = o.readAdminKeys(&p, "--admin-key", o.adminKeys)
	if o.tokenFile != "" {
		s.GatewayToken = o.readSecret(&p, "--token-file", o.tokenFile, firstboot.CheckGatewayToken)
	}
	if o.authKeyFile != "" {
		s.TailscaleAuthKey = o.readSecret(&p, "--tailscale-authkey-file", o.authKeyFile, firstboot.CheckTailscaleAuthKey)
	}
	if o.loginServer != "" {
		if err := firstboot.CheckLoginServer(o.loginServer); err != nil {
			p.add("--tailscale-login-server: %v", err)
		} else {
			s.TailscaleLoginServer = o.loginServer
		}
	}
	if o.caFile != "" {
		if b, ok := o.read(&p, "--tailscale-ca", o.caFile); ok {
			if err := firstboot.CheckTailscaleCA(string(b)); err != nil {
				p.add("--tailscale-ca %s: %v", o.caFile, err)
			} else {
				s.TailscaleCA = string(b)
			}
		}
	}
	if o.format == seedSMBIOS && len(o.adminKeys) == 0 && o.tokenFile == "" && o.newToken == "" && o.authKeyFile == "" && o.loginServer == "" && o.caFile == "" {
		p.add("--format smbios: nothing to pass; give --admin-key, --token-file, --new-token or --tailscale-authkey-file")
	}
	if len(p) == 0 {
		// The values were checked one by one above; this is first boot's
		// own check of the whole seed, the last word.
		if err := s.Check(); err != nil {
			for _, l := range strings.Split(err.Error(), "\n") {
				p.add("%s", l)
			}
		}
	}
	if len(p) > 0 {
		return usageErr(fmt.Errorf("seed: %d problem(s), nothing was written:\n  %s", len(p), strings.Join(p, "\n  ")))
	}
	if len(s.AdminKeys) == 0 {
		fmt.Fprintln(o.stderr, "bake: warning: no --admin-key: nobody can log in over SSH unless the image or the cloud gives the admin a key")
	}
	return writeSeed(o, s)
}

// readAdminKeys reads the admin's public keys from each file (or stdin
// for "-"), with first boot's refusals reported under flag, each key once.
// bake seed and bake run read keys this way.
func (o *seedOptions) readAdminKeys(p *problems, flag string, names []string) []string {
	var out []string
	for _, name := range names {
		b, ok := o.read(p, flag, name)
		if !ok {
			continue
		}
		keys, errs := firstboot.ParseAdminKeys(b)
		for _, err := range errs {
			p.add("%s %s: %v", flag, name, err)
		}
		for _, k := range keys {
			if !slices.Contains(out, k) {
				out = append(out, k)
			}
		}
	}
	return out
}

// writeNoCloud writes s as a NoCloud volume at path: an ISO9660 (iso) or
// FAT16 (fat) image, 0600, made atomically. bake seed and bake run write
// seeds this way.
func writeNoCloud(format, path string, s firstboot.Seed) error {
	if format == seedFAT {
		return vm.WriteNoCloudFAT(path, s.MetaData(), s.UserData(), s.NoCloudFiles())
	}
	return vm.WriteNoCloudSeed(path, s.MetaData(), s.UserData(), s.NoCloudFiles())
}

// writeSeed writes the token file (--new-token) and the output. On an
// error or a signal both are removed: nothing is left half made.
func writeSeed(o *seedOptions, s firstboot.Seed) (retErr error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	fail := func(e error) error { return &exitError{ExitFailure, fmt.Errorf("seed: %w", e)} }

	tokenFrom := "none: first boot generates one"
	if o.tokenFile != "" {
		tokenFrom = "from " + o.tokenFile
	}
	if o.newToken != "" {
		tok, err := firstboot.NewToken()
		if err != nil {
			return fail(err)
		}
		s.GatewayToken = tok
		remove, err := writeNewToken(o.newToken, tok)
		if err != nil {
			return fail(err)
		}
		defer func() {
			if retErr != nil {
				remove()
			}
		}()
		tokenFrom = "generated, written to " + o.newToken + " (0600)"
	}

	var data []byte
	switch o.format {
	case seedUserData:
		data = s.CloudUserData()
	case seedSMBIOS:
		data = []byte(strings.Join(s.SMBIOSArgs(), "\n") + "\n")
	}
	if o.out == "-" {
		if s.GatewayToken != "" || s.TailscaleAuthKey != "" {
			what := "the user-data on stdout holds"
			if o.format == seedSMBIOS {
				what = "the QEMU arguments on stdout hold"
			}
			fmt.Fprintf(o.stderr, "bake: %s %s: keep them out of logs and shell history\n", what, secretsIn(s))
		}
		if _, err := o.stdout.Write(data); err != nil {
			return fail(err)
		}
	} else if err := writeSeedOutput(ctx, o, s, data); err != nil {
		if ctx.Err() != nil {
			return &exitError{ExitFailure, fmt.Errorf("seed: interrupted; nothing was written (no %s%s)", o.out, newTokenNote(o))}
		}
		return fail(err)
	}

	if o.printToken {
		fmt.Fprintln(o.stdout, s.GatewayToken)
	}
	if o.out != "-" {
		fmt.Fprintf(o.stderr, "bake: wrote %s (%s seed, 0600): %d admin key(s); gateway token: %s%s\n",
			o.out, o.format, len(s.AdminKeys), tokenFrom, seedSummary(o, s))
	}
	return nil
}

func newTokenNote(o *seedOptions) string {
	if o.newToken == "" {
		return ""
	}
	return ", no " + o.newToken
}

func secretsIn(s firstboot.Seed) string {
	var w []string
	if s.GatewayToken != "" {
		w = append(w, "the gateway token")
	}
	if s.TailscaleAuthKey != "" {
		w = append(w, "the Tailscale auth key")
	}
	return strings.Join(w, " and ")
}

func seedSummary(o *seedOptions, s firstboot.Seed) string {
	var b strings.Builder
	if s.TailscaleAuthKey != "" {
		b.WriteString("; a Tailscale auth key")
	}
	if s.TailscaleLoginServer != "" {
		b.WriteString("; Tailscale login server " + s.TailscaleLoginServer)
	}
	if s.TailscaleCA != "" {
		b.WriteString("; a Tailscale CA bundle")
	}
	if s.Hostname != "" {
		b.WriteString("; host name " + s.Hostname)
	}
	if o.format == seedISO || o.format == seedFAT {
		b.WriteString("; instance id " + s.InstanceID)
	}
	return b.String()
}

// writeNewToken writes tok and a line break to a new file (O_EXCL: an
// existing file, or a link planted there, is never written through), 0600.
// remove deletes it again, if it is still the file written.
func writeNewToken(path, tok string) (remove func(), err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--new-token: %w", err)
	}
	st, err := f.Stat()
	if err == nil {
		_, err = f.WriteString(tok + "\n")
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	remove = func() {
		if now, err := os.Lstat(path); err == nil && st != nil && os.SameFile(st, now) {
			os.Remove(path)
		}
	}
	if err != nil {
		remove()
		return nil, fmt.Errorf("--new-token %s: %w", path, err)
	}
	return remove, nil
}

// writeSeedOutput makes the output in a private temp dir beside it and
// renames it into place last, unless a signal came first.
func writeSeedOutput(ctx context.Context, o *seedOptions, s firstboot.Seed, data []byte) error {
	work, err := os.MkdirTemp(filepath.Dir(o.out), ".bake-seed-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tmp := filepath.Join(work, "seed")
	switch o.format {
	case seedISO, seedFAT:
		err = writeNoCloud(o.format, tmp, s)
	default:
		err = writeFileSync(tmp, data)
	}
	if err != nil {
		return err
	}
	if seedBeforeRename != nil {
		seedBeforeRename(ctx)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return os.Rename(tmp, o.out)
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
