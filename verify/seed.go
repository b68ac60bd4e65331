package verify

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/internal/cloudconfig"
	"github.com/bakeimg/bake/vm"
)

// TokenLength is the length of a gateway token: 64 characters of
// [A-Za-z0-9], as the appliance's first boot generates them.
const TokenLength = firstboot.TokenLength

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NewToken returns a fresh 64-character token from crypto/rand
// (firstboot.NewToken).
func NewToken() (string, error) { return firstboot.NewToken() }

// ValidToken reports whether s looks like a first-boot token.
func ValidToken(s string) bool {
	if len(s) != TokenLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune(tokenAlphabet, rune(s[i])) {
			return false
		}
	}
	return true
}

// Key is a throwaway SSH key pair.
type Key struct {
	Signer ssh.Signer
	// AuthorizedKey is the public key in authorized_keys form, with a
	// comment that says what it is.
	AuthorizedKey string
	// PrivatePEM is the OpenSSH private key (written only with --keep).
	PrivatePEM []byte
}

// NewKey generates a throwaway ed25519 key.
func NewKey(comment string) (*Key, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	ak := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
	if comment != "" {
		ak += " " + comment
	}
	return &Key{Signer: signer, AuthorizedKey: ak, PrivatePEM: pem.EncodeToMemory(block)}, nil
}

// Seed is what one instance is given at its first boot.
type Seed struct {
	InstanceID string // NoCloud instance-id: a new one makes cloud-init run again
	Hostname   string
	AdminUser  string
	// AuthorizedKeys of the admin user.
	AuthorizedKeys []string
	// Token for the gateway; empty lets first boot generate one.
	Token string
	// Extra is the user's cloud-config merged into user-data
	// (--user-data); nil for none.
	Extra *UserData
	// Canary is a random value only the user-data holds (in a comment):
	// secrets.seed-copies looks for it on the disk, where no copy of the
	// user-data may stay (cloud-init's stored copies are scrubbed).
	Canary string
	// The tailnet the instance joins (--tailnet-*): the auth key, login
	// server and CA of firstboot.Seed.
	TailscaleAuthKey, TailscaleLoginServer, TailscaleCA string
}

// canaryComment is the user-data comment that carries the canary.
func (s Seed) canaryComment() []string {
	if s.Canary == "" {
		return nil
	}
	return []string{"bake-verify canary (no copy may stay on the disk): " + s.Canary}
}

// Bake's own seed values are files of their own on the NoCloud volume,
// beside meta-data and user-data (docs/seed.md; package firstboot defines
// and reads them): not user-data keys, because recent cloud-init reports
// "degraded" for unknown top-level user-data keys.
const (
	SeedAdminKeysFile = firstboot.AdminSSHKeys // authorized_keys lines
	SeedTokenFile     = firstboot.GatewayToken // the gateway token, one line
)

// firstboot is the seed as package firstboot writes it (meta-data, bake's
// files): one writer of the format the image reads.
func (s Seed) firstboot() firstboot.Seed {
	return firstboot.Seed{InstanceID: s.InstanceID, Hostname: s.Hostname, AdminKeys: s.AuthorizedKeys, GatewayToken: s.Token,
		TailscaleAuthKey: s.TailscaleAuthKey, TailscaleLoginServer: s.TailscaleLoginServer, TailscaleCA: s.TailscaleCA}
}

// MetaData is the NoCloud meta-data file.
func (s Seed) MetaData() []byte { return s.firstboot().MetaData() }

// UserData is the #cloud-config user-data: verify's own (below), with
// Extra merged in when there is one (see UserData the type). It is nil only
// when Extra cannot be merged, which ParseUserData has already ruled out;
// WriteSeed says why.
func (s Seed) UserData() []byte {
	b, _ := s.userData()
	return b
}

func (s Seed) userData() ([]byte, error) {
	if s.Extra == nil {
		return s.ownUserData(), nil
	}
	return s.Extra.merge(s)
}

// ownUserData is verify's own #cloud-config user-data. Only keys cloud-init knows
// appear, so that it never reports degraded: the keys at the top level
// (cloud-init gives them to its default user, which bake's appliance makes
// the admin; bake's first boot reads them from here too), and the admin as
// a user of its own with the keys and passwordless sudo, so that an image
// whose default user is someone else (a plain cloud image) still lets the
// admin in; no password authentication, no root login.
func (s Seed) ownUserData() []byte {
	var m cloudconfig.Map
	if s.Hostname != "" {
		m = append(m, cloudconfig.Item{Key: "hostname", Value: s.Hostname})
	}
	m = append(m,
		cloudconfig.Item{Key: "ssh_authorized_keys", Value: s.AuthorizedKeys},
		cloudconfig.Item{Key: "users", Value: []any{"default", s.adminUser()}},
		cloudconfig.Item{Key: "ssh_pwauth", Value: false},
		cloudconfig.Item{Key: "disable_root", Value: true},
	)
	return cloudconfig.Document(append([]string{"Written by bake verify for a throwaway instance."}, s.canaryComment()...), m)
}

// adminUser is the admin's entry of users.
func (s Seed) adminUser() cloudconfig.Map {
	return cloudconfig.Map{
		{Key: "name", Value: s.AdminUser},
		{Key: "shell", Value: "/bin/bash"},
		{Key: "lock_passwd", Value: true},
		{Key: "sudo", Value: "ALL=(ALL) NOPASSWD:ALL"},
		{Key: "ssh_authorized_keys", Value: s.AuthorizedKeys},
	}
}

// BakeFiles are bake's own files of the seed: the admin's keys, and the
// gateway token when one is given (without it first boot generates one).
func (s Seed) BakeFiles() map[string][]byte { return s.firstboot().NoCloudFiles() }

// Files returns every file of the seed volume by name.
func (s Seed) Files() map[string][]byte {
	m := s.BakeFiles()
	m["meta-data"] = s.MetaData()
	m["user-data"] = s.UserData()
	return m
}

// WriteSeed writes s as a NoCloud ISO9660 volume labelled cidata.
func WriteSeed(path string, s Seed) error {
	if s.InstanceID == "" || s.AdminUser == "" || len(s.AuthorizedKeys) == 0 {
		return fmt.Errorf("verify: seed needs an instance id, an admin user and a key")
	}
	if err := s.firstboot().Check(); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	ud, err := s.userData()
	if err != nil {
		return err
	}
	return vm.WriteNoCloudSeed(path, s.MetaData(), ud, s.BakeFiles())
}

// How an instance gets its seed (Options.SeedVia, --seed-via).
const (
	// SeedNoCloud: a NoCloud ISO9660 volume labelled cidata with
	// meta-data, verify's user-data (with --user-data merged in) and
	// bake's own files (admin keys, token): what cloud-init and bake's
	// first boot read.
	SeedNoCloud = "nocloud"
	// SeedSMBIOS: bake's values only (the admin's keys, the token) as
	// systemd credentials in SMBIOS type 11 strings, no NoCloud volume and
	// no user-data: what a hypervisor that cannot attach a disk passes
	// (bake seed --format smbios). The image must already have the admin
	// user (bake's appliance does; a plain cloud image does not).
	SeedSMBIOS = "smbios"
)

// SeedVias are the accepted values of Options.SeedVia.
var SeedVias = []string{SeedNoCloud, SeedSMBIOS}

// ParseSeedVia parses a --seed-via list ("nocloud", "nocloud,smbios").
func ParseSeedVia(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(SeedVias, f) {
			return nil, fmt.Errorf("--seed-via: %q is not a seed path; write one or more of %s, separated by commas (e.g. --seed-via nocloud,smbios)", f, strings.Join(SeedVias, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// writeSMBIOSCredentials writes each SMBIOS type 11 string of seed to a
// file of its own (mode 0600) in dir and returns the QEMU arguments that
// pass them (-smbios type=11,path=FILE).
func writeSMBIOSCredentials(dir, name string, s Seed) ([]string, error) {
	fb := s.firstboot()
	if err := fb.Check(); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	var args []string
	for i, v := range fb.SMBIOSStrings() {
		p := filepath.Join(dir, fmt.Sprintf("smbios-%s-%d", name, i))
		if strings.Contains(p, ",") {
			return nil, fmt.Errorf("verify: %s: a comma in the path cannot be passed to QEMU", p)
		}
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "-smbios", "type=11,path="+p)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("verify: nothing to pass as credentials")
	}
	return args, nil
}
