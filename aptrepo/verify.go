package aptrepo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
)

// Apt is an apt configuration isolated from the host's (the chdist
// approach): its own sources, lists, caches and dpkg status under Root,
// none of the host's apt.conf.d, sources or trusted keys, no proxy. It needs
// no root: run as root, apt is kept from dropping to the _apt user, who
// could not write to Root.
type Apt struct {
	Root   string
	Config string // the APT_CONFIG file
}

// NewApt prepares an isolated apt configuration under root.
func NewApt(root string) (*Apt, error) {
	for _, d := range []string{
		"etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/apt/trusted.gpg.d",
		"etc/apt/preferences.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
		"var/lib/dpkg", "var/log/apt",
	} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	status := filepath.Join(root, "var/lib/dpkg/status")
	if err := os.WriteFile(status, nil, 0o644); err != nil {
		return nil, err
	}
	arch, err := execx.Default.Output(context.Background(), execx.Cmd{Name: "dpkg", Args: []string{"--print-architecture"}})
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`Dir %q;
Dir::Etc::Parts "apt.conf.d";
Dir::Etc::Main "apt.conf";
Dir::State::status %q;
APT::Architecture %q;
APT::Architectures { %q; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::http::Proxy "DIRECT";
Acquire::Retries "0";
Debug::NoLocking "true";
`, root+"/", status, strings.TrimSpace(string(arch)), strings.TrimSpace(string(arch)))
	a := &Apt{Root: root, Config: filepath.Join(root, "etc/apt/bake-isolated.conf")}
	if err := os.WriteFile(a.Config, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

// AddSource writes a deb822 source NAME.sources with Signed-By keyring.
func (a *Apt) AddSource(name, uri, suite string, components []string, keyring string) error {
	if len(components) == 0 {
		components = []string{"main"}
	}
	src := fmt.Sprintf("Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: %s\n",
		uri, suite, strings.Join(components, " "), keyring)
	return os.WriteFile(filepath.Join(a.Root, "etc/apt/sources.list.d", name+".sources"), []byte(src), 0o644)
}

// Run runs an apt command (apt-get, apt-cache) with the isolated
// configuration and returns its output.
func (a *Apt) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return execx.Default.Output(ctx, execx.Cmd{
		Name: name,
		Args: append([]string{"-q"}, args...),
		Env:  []string{"APT_CONFIG=" + a.Config, "LC_ALL=C.UTF-8"},
	})
}

// Verify runs apt-get update, isolated from the host's apt configuration,
// against the one repository uri/suite with Signed-By keyring. It fails,
// like the build's own apt-get update does, when the repository's Release
// signature does not verify with keyring, when an index does not match the
// Release hashes, or when the repository is unreachable. apt-get update
// reports some of these as warnings with exit status 0, so its output is
// checked as well.
func Verify(ctx context.Context, uri, suite string, components []string, keyring string) error {
	tmp, err := os.MkdirTemp("", "bake-aptverify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	a, err := NewApt(tmp)
	if err != nil {
		return err
	}
	if err := a.AddSource("repo", uri, suite, components, keyring); err != nil {
		return err
	}
	return a.Update(ctx)
}

// Update runs apt-get update and fails on any error or warning apt reports
// (an unsigned or badly signed repository, a hash mismatch, a fetch that
// failed), as "apt-get update --error-on=any" does on newer apt.
func (a *Apt) Update(ctx context.Context) error {
	// --error-on=any makes apt-get exit non-zero on the warnings too (W:
	// and E: go to stderr, which the error carries); Err: lines are on stdout.
	out, err := execx.Default.Output(ctx, execx.Cmd{
		Name: "apt-get",
		Args: []string{"-q", "--error-on=any", "update"},
		Env:  []string{"APT_CONFIG=" + a.Config, "LC_ALL=C.UTF-8"},
	})
	if err != nil {
		return fmt.Errorf("aptrepo: %w\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "W:") || strings.HasPrefix(line, "E:") || strings.HasPrefix(line, "Err:") {
			return fmt.Errorf("aptrepo: apt-get update: %s\n%s", line, out)
		}
	}
	return nil
}
