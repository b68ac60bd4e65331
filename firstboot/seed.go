package firstboot

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/internal/cloudconfig"
)

// Seed is one instance's seed (docs/seed.md). Every field is optional.
type Seed struct {
	InstanceID       string // NoCloud meta-data instance-id (default iid-bake)
	Hostname         string // NoCloud meta-data local-hostname
	AdminKeys        []string
	GatewayToken     string
	TailscaleAuthKey string
	// TailscaleLoginServer overrides the image's control server
	// (tailscale.login_server) for this instance: an https URL, e.g. a
	// headscale's server_url.
	TailscaleLoginServer string
	// TailscaleCA is PEM CA certificates tailscaled trusts besides the
	// system's and the recipe's tailscale.ca, for this instance (the
	// control server's CA; at most MaxTailscaleCA bytes).
	TailscaleCA string
}

var (
	tokenRe = regexp.MustCompile(`^[A-Za-z0-9._~+/=-]{16,512}$`)
	// An instance id names a directory of cloud-init's
	// (/var/lib/cloud/instances/ID): no slash, no leading dot.
	instanceIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	// A host name (RFC 1123), or a fully qualified one: labels of
	// letters, digits and hyphens, none at either end of a label.
	hostLabelRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	// A Tailscale auth key (tskey-auth-..., or an OAuth client secret
	// with its ?ephemeral=...&preauthorized=... parameters): printable
	// ASCII, no space; tailscale up reads it from a file.
	authKeyRe = regexp.MustCompile(`^[\x21-\x7e]+$`)
	// The characters a login server URL may have (first boot's shell
	// checks the same set): no quote, space or shell syntax.
	loginServerRe = regexp.MustCompile(`^https://[A-Za-z0-9.\-_~:/\[\]%]+$`)
)

// MaxTailscaleCA is the largest CA bundle a seed may carry.
const MaxTailscaleCA = 65536

// TokenLength is the length of a generated gateway token: 64 characters
// of [A-Za-z0-9], as first boot generates them when the seed has none.
const TokenLength = 64

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NewToken returns a fresh gateway token: TokenLength characters of
// [A-Za-z0-9] from crypto/rand.
func NewToken() (string, error) {
	b := make([]byte, TokenLength)
	max := big.NewInt(int64(len(tokenAlphabet)))
	for i := range b {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b[i] = tokenAlphabet[n.Int64()]
	}
	return string(b), nil
}

// CheckGatewayToken reports what first boot refuses in a gateway token.
// The message never quotes the token.
func CheckGatewayToken(t string) error {
	if !tokenRe.MatchString(t) {
		return fmt.Errorf("the gateway token must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = - (this one has %d characters%s)",
			utf8.RuneCountInString(t), outside(t, func(r rune) bool { return strings.ContainsRune(tokenAlphabet+"._~+/=-", r) }))
	}
	return nil
}

// outside says which kinds of characters of s are not ok (a description
// for a message: never the characters themselves, s may be a secret).
func outside(s string, ok func(rune) bool) string {
	var kinds []string
	add := func(k string) {
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	for _, r := range s {
		switch {
		case ok(r):
		case r == '\n' || r == '\r':
			add("a line break")
		case r == ' ' || r == '\t':
			add("a space")
		case r < 0x20 || r == 0x7f:
			add("a control character")
		case r == '"' || r == '\'' || r == '`':
			add("a quote")
		case r >= 0x80:
			add("a non-ASCII character")
		default:
			add("punctuation outside the set")
		}
	}
	if len(kinds) == 0 {
		return ""
	}
	return ", among them " + strings.Join(kinds, ", ")
}

// CheckTailscaleAuthKey reports a Tailscale auth key that cannot be one:
// empty, longer than 1024 bytes, or holding a space, a line break or a
// character that is not printable ASCII. The message never quotes it.
func CheckTailscaleAuthKey(k string) error {
	if len(k) > 1024 || !authKeyRe.MatchString(k) {
		return fmt.Errorf("the Tailscale auth key must be 1 to 1024 printable ASCII characters without spaces (this one has %d characters%s)",
			utf8.RuneCountInString(k), outside(k, func(r rune) bool { return r > 0x20 && r < 0x7f }))
	}
	return nil
}

// CheckLoginServer reports a control server URL first boot refuses: not
// https (Tailscale clients reach the control server's DERP relay over
// HTTPS only), no host, credentials, a query or a fragment, longer than
// 512 bytes, or characters outside A-Z a-z 0-9 . - _ ~ : / [ ] %.
func CheckLoginServer(s string) error {
	const want = "the Tailscale login server must be an https URL such as https://headscale.example.net (headscale's server_url)"
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("%s: %s is not a URL", want, strconv.Quote(s))
	case u.Scheme != "https":
		return fmt.Errorf("%s: %s is not https", want, strconv.Quote(s))
	case u.Hostname() == "":
		return fmt.Errorf("%s: %s has no host", want, strconv.Quote(s))
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Contains(s, "?") || strings.Contains(s, "#"):
		// No quoting: user info may be a password.
		return fmt.Errorf("%s: this one has credentials, a query or a fragment", want)
	case len(s) > 512 || !loginServerRe.MatchString(s):
		return fmt.Errorf("%s: %s is longer than 512 bytes or has characters outside A-Z a-z 0-9 . - _ ~ : / [ ] %%", want, strconv.Quote(s))
	}
	return nil
}

// CheckTailscaleCA reports a CA bundle first boot refuses: more than
// MaxTailscaleCA bytes, no PEM certificate, a PEM block that is not a
// CERTIFICATE (a private key pasted by mistake), or a certificate that
// does not parse or is not a CA's. Text between blocks (openssl's
// "subject=" lines) is ignored, as tailscaled's crypto/x509 ignores it.
func CheckTailscaleCA(pemText string) error {
	if len(pemText) > MaxTailscaleCA {
		return fmt.Errorf("the Tailscale CA bundle is %d bytes, more than %d", len(pemText), MaxTailscaleCA)
	}
	b := []byte(pemText)
	n := 0
	for {
		blk, rest := pem.Decode(b)
		if blk == nil {
			break
		}
		n++
		if blk.Type != "CERTIFICATE" {
			// Not the block's type: it may say what a pasted secret is.
			return fmt.Errorf("the Tailscale CA bundle's PEM block %d is not a CERTIFICATE (a key pasted by mistake?); only CERTIFICATE blocks belong there", n)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fmt.Errorf("the Tailscale CA bundle: certificate %d: %v", n, err)
		}
		if !c.IsCA {
			return fmt.Errorf("the Tailscale CA bundle: certificate %d (%s) is not a CA certificate", n, c.Subject)
		}
		b = rest
	}
	if n == 0 {
		return fmt.Errorf("the Tailscale CA bundle holds no PEM CERTIFICATE block")
	}
	return nil
}

// CheckHostname reports a host name that is not one (RFC 1123: labels of
// 1 to 63 letters, digits and hyphens, no hyphen at either end, 253
// characters at most).
func CheckHostname(h string) error {
	bad := h == "" || len(h) > 253
	for _, l := range strings.Split(h, ".") {
		bad = bad || !hostLabelRe.MatchString(l)
	}
	if bad {
		return fmt.Errorf("host name %s: want letters, digits and hyphens (RFC 1123), dot-separated labels of 1 to 63 characters with no hyphen at either end, 253 characters at most", strconv.Quote(h))
	}
	return nil
}

// CheckInstanceID reports an instance id cloud-init could not use as the
// name of its instance directory.
func CheckInstanceID(id string) error {
	if !instanceIDRe.MatchString(id) {
		return fmt.Errorf("instance id %s: want 1 to 128 letters, digits and . _ : -, starting with a letter or digit", strconv.Quote(id))
	}
	return nil
}

// CheckAdminKey reports what makes line something other than one SSH
// public key on one line, in authorized_keys form without options
// ("TYPE BASE64 [COMMENT]"). A key with options (command="...",
// from=...) is refused: the seed gives the admin a plain login, and an
// option smuggled in a key file would change what that login does. The
// message never quotes the line: it may be a secret pasted by mistake.
func CheckAdminKey(line string) error {
	switch {
	case strings.Contains(line, "PRIVATE KEY"):
		return fmt.Errorf("a private key, not a public one (give the .pub file)")
	case strings.ContainsAny(line, "\n\r"):
		return fmt.Errorf("more than one line: an admin key must be one public key on one line")
	case !utf8.ValidString(line):
		return fmt.Errorf("not UTF-8 text: an admin key must be one public key on one line")
	case strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }):
		return fmt.Errorf("a control character: an admin key must be one public key on one line")
	}
	pub, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	switch {
	case err != nil:
		return fmt.Errorf("not an SSH public key (want TYPE BASE64 [COMMENT], as in a .pub file)")
	case len(opts) > 0:
		return fmt.Errorf("a public key with authorized_keys options (%s): give the plain key, without options", optionNames(opts))
	case len(rest) > 0:
		return fmt.Errorf("more than one key: an admin key must be one public key on one line")
	}
	if _, ok := pub.(*ssh.Certificate); ok {
		return fmt.Errorf("an SSH certificate, not a public key")
	}
	switch pub.Type() {
	case ssh.KeyAlgoDSA:
		return fmt.Errorf("a DSA key: OpenSSH no longer accepts DSA keys")
	case ssh.KeyAlgoRSA:
		if ck, ok := pub.(ssh.CryptoPublicKey); ok {
			if rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey); ok && rk.N.BitLen() < 1024 {
				return fmt.Errorf("an RSA key of %d bits: sshd refuses RSA keys shorter than 1024 bits", rk.N.BitLen())
			}
		}
	}
	return nil
}

// optionNames are the names of authorized_keys options, without their
// values.
func optionNames(opts []string) string {
	names := make([]string, len(opts))
	for i, o := range opts {
		n, _, _ := strings.Cut(o, "=")
		names[i] = strconv.Quote(n)
	}
	return strings.Join(names, ", ")
}

// ParseAdminKeys reads a file of public keys, one per line, as a .pub
// file or an authorized_keys file holds them (blank lines and # comments
// are skipped, a trailing CR is dropped), checking each with
// CheckAdminKey. A file that holds a private key anywhere is refused as a
// whole. The errors say the line number, never the content.
func ParseAdminKeys(data []byte) ([]string, []error) {
	if bytes.Contains(data, []byte("PRIVATE KEY")) {
		return nil, []error{fmt.Errorf("holds a private key: give the public key (the .pub file)")}
	}
	var keys []string
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := CheckAdminKey(line); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", i+1, err))
			continue
		}
		keys = append(keys, line)
	}
	if len(keys) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("holds no SSH public key"))
	}
	return keys, errs
}

// Check reports everything first boot would refuse in s (a gateway token
// outside its alphabet, an admin key that is not one plain public key on
// one line) and values that would make its meta-data wrong (a host name
// that is not one, an instance id cloud-init cannot use), all at once: one
// line each, joined (errors.Join). Empty values are not checked (every
// value is optional). No message quotes a secret.
func (s Seed) Check() error {
	var errs []error
	add := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("seed: %s%w", what, err))
		}
	}
	if s.GatewayToken != "" {
		add("", CheckGatewayToken(s.GatewayToken))
	}
	if s.TailscaleAuthKey != "" {
		add("", CheckTailscaleAuthKey(s.TailscaleAuthKey))
	}
	if s.TailscaleLoginServer != "" {
		add("", CheckLoginServer(s.TailscaleLoginServer))
	}
	if s.TailscaleCA != "" {
		add("", CheckTailscaleCA(s.TailscaleCA))
	}
	for i, k := range s.AdminKeys {
		add(fmt.Sprintf("admin key %d: ", i+1), CheckAdminKey(k))
	}
	if s.Hostname != "" {
		add("", CheckHostname(s.Hostname))
	}
	if s.InstanceID != "" {
		add("", CheckInstanceID(s.InstanceID))
	}
	return errors.Join(errs...)
}

func (s Seed) values() map[string]string {
	v := map[string]string{}
	if len(s.AdminKeys) > 0 {
		v[AdminSSHKeys] = strings.Join(s.AdminKeys, "\n") + "\n"
	}
	if s.GatewayToken != "" {
		v[GatewayToken] = s.GatewayToken + "\n"
	}
	if s.TailscaleAuthKey != "" {
		v[TailscaleAuthKey] = s.TailscaleAuthKey + "\n"
	}
	if s.TailscaleLoginServer != "" {
		v[TailscaleLoginServer] = s.TailscaleLoginServer + "\n"
	}
	if s.TailscaleCA != "" {
		v[TailscaleCA] = strings.TrimRight(s.TailscaleCA, "\n") + "\n"
	}
	return v
}

// MetaData is NoCloud's meta-data.
func (s Seed) MetaData() []byte {
	id := s.InstanceID
	if id == "" {
		id = "iid-bake"
	}
	m := cloudconfig.Map{{Key: "instance-id", Value: id}}
	if s.Hostname != "" {
		m = append(m, cloudconfig.Item{Key: "local-hostname", Value: s.Hostname})
	}
	return cloudconfig.Marshal(m)
}

// UserData is a #cloud-config with only standard keys, so cloud-init (when
// the image has it) validates it without a warning and never reports
// "degraded": ssh_authorized_keys (cloud-init installs them for its default
// user, which bake makes the admin; bake's first boot reads them too).
// Bake's own values travel beside it as files (NoCloud) or as
// write_files entries (CloudUserData).
func (s Seed) UserData() []byte {
	return cloudconfig.Document(nil, s.userData())
}

func (s Seed) userData() cloudconfig.Map {
	var m cloudconfig.Map
	if len(s.AdminKeys) > 0 {
		m = append(m, cloudconfig.Item{Key: "ssh_authorized_keys", Value: s.AdminKeys})
	}
	return m
}

// CloudUserData is user-data for a cloud instance, where there is no
// NoCloud volume: the keys as in UserData, and bake's values through
// cloud-init's standard write_files module into /run/bake/cloud-init-seed
// (a tmpfs: nothing is left on disk), which first boot reads once
// cloud-init's network stage is done. Needs cloud-init in firstboot.seed.
// A host name goes into cloud-init's standard hostname key (there is no
// meta-data of bake's on a cloud).
func (s Seed) CloudUserData() []byte {
	var m cloudconfig.Map
	if s.Hostname != "" {
		m = append(m, cloudconfig.Item{Key: "hostname", Value: s.Hostname})
	}
	m = append(m, s.userData()...)
	v := s.values()
	delete(v, AdminSSHKeys)
	if len(v) > 0 {
		var files []any
		for _, n := range slices.Sorted(maps.Keys(v)) {
			files = append(files, cloudconfig.Map{
				{Key: "path", Value: CloudInitSeedDir + "/" + n},
				{Key: "permissions", Value: "0600"},
				{Key: "owner", Value: "root:root"},
				{Key: "encoding", Value: "b64"},
				{Key: "content", Value: base64.StdEncoding.EncodeToString([]byte(v[n]))},
			})
		}
		m = append(m, cloudconfig.Item{Key: "write_files", Value: files})
	}
	return cloudconfig.Document(nil, m)
}

// NoCloudFiles are bake's values as files for a NoCloud volume (beside
// meta-data and user-data): pass them as the extra files of
// vm.WriteNoCloudSeed.
func (s Seed) NoCloudFiles() map[string][]byte {
	out := map[string][]byte{}
	for n, v := range s.values() {
		out[n] = []byte(v)
	}
	return out
}

// SMBIOSStrings are the seed as systemd credentials, one SMBIOS type 11
// string each (io.systemd.credential.binary:NAME=BASE64), sorted by name.
func (s Seed) SMBIOSStrings() []string {
	v := s.values()
	names := make([]string, 0, len(v))
	for n := range v {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, "io.systemd.credential.binary:"+n+"="+base64.StdEncoding.EncodeToString([]byte(v[n])))
	}
	return out
}

// SMBIOSArgs are QEMU arguments that pass the seed as systemd credentials
// in SMBIOS type 11 strings (SMBIOSStrings), the values on the command
// line. A caller that can write files should pass each string with
// "-smbios type=11,path=FILE" instead, so that no secret shows in the
// process list (bake verify does).
func (s Seed) SMBIOSArgs() []string {
	var args []string
	for _, val := range s.SMBIOSStrings() {
		args = append(args, "-smbios", "type=11,value="+strings.ReplaceAll(val, ",", ",,"))
	}
	return args
}
