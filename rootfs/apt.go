package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/bakeimg/bake/internal/apt"
	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/safepath"
)

// aptArchives is where apt keeps downloaded .debs in the tree.
const aptArchives = "/var/cache/apt/archives"

// AptGetOptions are passed to every apt-get bake runs in the tree.
//
// APT::Update::Error-Mode=any: apt-get update exits 0 when a source fails to
// fetch or its index is unusable, and only warns; bake wants a repository
// whose signature does not verify, or that cannot be reached, to fail the
// build, not to yield an image missing its packages. (apt >= 2.2 knows it;
// older apt ignores an unknown -o option.) Signature failures are already
// errors as long as nothing passes allow-insecure, which bake never does.
var AptGetOptions = []string{
	"-o", "APT::Update::Error-Mode=any",
	"-o", "Acquire::Retries=3",
	"-o", "Dpkg::Options::=--force-confdef",
	"-o", "Dpkg::Options::=--force-confold",
	"-o", "Dpkg::Use-Pty=0",
	// No fsync per unpacked file: a failed build is discarded whole.
	"-o", "Dpkg::Options::=--force-unsafe-io",
}

// InstallPackages runs apt-get update and apt-get install
// --no-install-recommends pkgs in the chroot. With cacheDir, the build's
// .deb cache (the one Bootstrap uses) is bind-mounted on the tree's apt
// archive for the duration, so packages fetched by an earlier build are not
// fetched again and none is left in the tree. The build host's proxy, if
// any, is passed on the command line only.
func InstallPackages(ctx context.Context, ch *Chroot, pkgs []string, cacheDir string) (err error) {
	pkgs = dedupe(pkgs)
	if len(pkgs) == 0 {
		return nil
	}
	if cacheDir != "" {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return err
		}
		// One apt at a time on the shared cache (debcache.go).
		unlock, err := lockDebCache(ctx, cacheDir)
		if err != nil {
			return err
		}
		defer unlock()
		unmount, err := ch.BindMount(cacheDir, aptArchives)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, unmount()) }()
	}
	if err := ch.ensureResolvConf(); err != nil {
		return err
	}
	opts := append([]string(nil), AptGetOptions...)
	for _, p := range apt.HostProxies(ctx, ch.runner) {
		opts = append(opts, "-o", p)
	}
	if err := ch.Run(ctx, append(append([]string{"apt-get"}, opts...), "update")...); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	args := append(append([]string{"apt-get"}, opts...), "install", "-y", "--no-install-recommends", "--")
	if err := ch.Run(ctx, append(args, pkgs...)...); err != nil {
		return fmt.Errorf("installing %s: %w", strings.Join(pkgs, " "), err)
	}
	return nil
}

// AptRepository is a third-party apt repository added to the image.
type AptRepository struct {
	Name       string   // file name: NAME.sources, keyring NAME.gpg
	URI        string   // e.g. https://pkgs.tailscale.com/stable/debian
	Suite      string   // e.g. bookworm; a suite ending in "/" is a flat repository
	Components []string // e.g. [main]; none for a flat repository
	KeyFile    string   // host path of the signing key, armored or binary
	Runner     execx.Runner
}

var aptNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// AddAptRepository writes /etc/apt/sources.list.d/NAME.sources (deb822)
// with Signed-By: /etc/apt/keyrings/NAME.gpg, the key converted to a binary
// keyring. The key applies to this repository only (never to the Debian
// archive, unlike a key dropped into trusted.gpg.d), and a repository whose
// Release signature does not verify with it makes apt-get update fail, so
// InstallPackages fails the build.
func AddAptRepository(ctx context.Context, tree string, repo AptRepository) error {
	if !aptNameRE.MatchString(repo.Name) {
		// apt silently ignores sources files with other characters.
		return fmt.Errorf("apt repository name %q: only letters, digits, '_', '-' and '.' are allowed", repo.Name)
	}
	if repo.URI == "" || repo.Suite == "" || repo.KeyFile == "" {
		return fmt.Errorf("apt repository %s: uri, suite and key are required", repo.Name)
	}
	flat := strings.HasSuffix(repo.Suite, "/")
	if flat && len(repo.Components) > 0 {
		return fmt.Errorf("apt repository %s: a flat repository (suite %q) has no components", repo.Name, repo.Suite)
	}
	if !flat && len(repo.Components) == 0 {
		repo.Components = []string{"main"}
	}
	if repo.Runner == nil {
		repo.Runner = execx.Default
	}
	key, err := os.ReadFile(repo.KeyFile)
	if err != nil {
		return fmt.Errorf("apt repository %s: %w", repo.Name, err)
	}
	keyring, err := binaryKeyring(ctx, repo.Runner, key)
	if err != nil {
		return fmt.Errorf("apt repository %s: key %s: %w", repo.Name, repo.KeyFile, err)
	}
	root, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	keyPath := "/etc/apt/keyrings/" + repo.Name + ".gpg"
	if err := root.MkdirAll("/etc/apt/keyrings", 0o755, rootUID, rootGID); err != nil {
		return err
	}
	if err := root.WriteFile(keyPath, keyring, 0o644, rootUID, rootGID); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by bake.\nTypes: deb\nURIs: %s\nSuites: %s\n", repo.URI, repo.Suite)
	if !flat {
		fmt.Fprintf(&b, "Components: %s\n", strings.Join(repo.Components, " "))
	}
	fmt.Fprintf(&b, "Signed-By: %s\n", keyPath)
	return root.WriteFile("/etc/apt/sources.list.d/"+repo.Name+".sources", []byte(b.String()), 0o644, rootUID, rootGID)
}

// binaryKeyring returns key as a binary OpenPGP keyring: an armored key is
// dearmored with the host's gpg (golang.org/x/crypto/openpgp is deprecated);
// a binary one is checked to start with an OpenPGP public key packet.
func binaryKeyring(ctx context.Context, r execx.Runner, key []byte) ([]byte, error) {
	if bytes.Contains(key, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
		home, err := os.MkdirTemp("", "bake-gpg-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(home)
		out, err := r.Output(ctx, execx.Cmd{
			Name:  "gpg",
			Args:  []string{"--homedir", home, "--batch", "--no-tty", "--dearmor"},
			Stdin: bytes.NewReader(key),
		})
		if err != nil {
			return nil, err
		}
		key = out
	}
	if !isPublicKeyPacket(key) {
		return nil, errors.New("not an OpenPGP public key (armored or binary)")
	}
	return key, nil
}

// isPublicKeyPacket checks the first OpenPGP packet header for tag 6
// (public key), in the old or the new packet format.
func isPublicKeyPacket(b []byte) bool {
	if len(b) < 2 || b[0]&0x80 == 0 {
		return false
	}
	if b[0]&0x40 != 0 {
		return b[0]&0x3f == 6
	}
	return (b[0]>>2)&0x0f == 6
}
