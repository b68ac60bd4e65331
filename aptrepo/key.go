package aptrepo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// Key is a repository signing key kept in a private GnuPG home.
//
// Layout of the key directory:
//
//	DIR/gnupg/      GNUPGHOME (mode 0700) holding the secret key; never serve it
//	DIR/public.gpg  the public key as a binary keyring (for Signed-By)
//	DIR/public.asc  the same key, ASCII-armored
type Key struct {
	Dir         string
	Home        string // GNUPGHOME
	Fingerprint string // primary key fingerprint, upper-case hex
	Keyring     string // binary public keyring: DIR/public.gpg
	Armored     string // armored public key: DIR/public.asc

	mu   sync.Mutex // one gpg session at a time
	home string     // the --homedir of the current session
}

// keyUID is the user ID of generated keys. The address is deliberately not
// routable: the key exists only to sign a local repository.
const keyUID = "bake local apt repository <apt@bake.invalid>"

// gpgTimeout bounds every gpg call (key generation included).
const gpgTimeout = 2 * time.Minute

// NewKey generates an ed25519 signing key without a passphrase in a new,
// private GnuPG home DIR/gnupg and exports its public part as a binary
// keyring (DIR/public.gpg) and armored (DIR/public.asc). It refuses a DIR
// that already holds a key; use OpenKey to reuse one.
func NewKey(dir string) (*Key, error) {
	k := keyIn(dir)
	if _, err := os.Stat(k.Home); err == nil {
		return nil, fmt.Errorf("aptrepo: %s already holds a key (use OpenKey)", k.Home)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(k.Home, 0o700); err != nil {
		return nil, err
	}
	err := k.session(func(ctx context.Context) error {
		if err := k.gpg(ctx, nil, "--quick-generate-key", keyUID, "ed25519", "sign", "never"); err != nil {
			return err
		}
		if err := k.load(ctx); err != nil {
			return err
		}
		return k.export(ctx)
	})
	if err != nil {
		os.RemoveAll(k.Home)
		return nil, fmt.Errorf("aptrepo: new key in %s: %w", dir, err)
	}
	return k, nil
}

// OpenKey opens a key made earlier by NewKey in dir and re-exports its public
// parts, so that repositories re-signed with it keep verifying with the
// keyring that users already have.
func OpenKey(dir string) (*Key, error) {
	k := keyIn(dir)
	if _, err := os.Stat(k.Home); err != nil {
		return nil, fmt.Errorf("aptrepo: open key: %w", err)
	}
	err := k.session(func(ctx context.Context) error {
		if err := k.load(ctx); err != nil {
			return err
		}
		return k.export(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("aptrepo: open key in %s: %w", dir, err)
	}
	return k, nil
}

// OpenOrNewKey opens the key in dir, or makes one if there is none.
func OpenOrNewKey(dir string) (*Key, error) {
	if _, err := os.Stat(filepath.Join(dir, "gnupg")); err == nil {
		return OpenKey(dir)
	}
	return NewKey(dir)
}

func keyIn(dir string) *Key {
	return &Key{
		Dir:     dir,
		Home:    filepath.Join(dir, "gnupg"),
		Keyring: filepath.Join(dir, "public.gpg"),
		Armored: filepath.Join(dir, "public.asc"),
	}
}

// Sign signs the file release (a Release file) the way apt expects: an
// inline-signed InRelease beside it and a detached, armored release+".gpg"
// (Release.gpg), both with SHA512.
func (k *Key) Sign(release string) error {
	inRelease := filepath.Join(filepath.Dir(release), "InRelease")
	common := []string{"--local-user", k.Fingerprint, "--digest-algo", "SHA512"}
	err := k.session(func(ctx context.Context) error {
		if err := k.gpg(ctx, nil, append(common, "--clearsign", "--output", inRelease, release)...); err != nil {
			return err
		}
		return k.gpg(ctx, nil, append(common, "--armor", "--detach-sign", "--output", release+".gpg", release)...)
	})
	if err != nil {
		return fmt.Errorf("aptrepo: sign %s: %w", release, err)
	}
	return nil
}

// load reads the fingerprint of the (single) secret key.
func (k *Key) load(ctx context.Context) error {
	var out bytes.Buffer
	if err := k.gpg(ctx, &out, "--with-colons", "--list-secret-keys"); err != nil {
		return err
	}
	// sec:...\nfpr:::::::::FINGERPRINT:\n: the first fpr after sec is the primary key's.
	sc := bufio.NewScanner(&out)
	inSec := false
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		switch {
		case f[0] == "sec":
			inSec = true
		case f[0] == "fpr" && inSec && len(f) > 9:
			k.Fingerprint = f[9]
			return nil
		}
	}
	return errors.New("no secret key found")
}

func (k *Key) export(ctx context.Context) error {
	for _, e := range []struct {
		path  string
		armor bool
	}{{k.Keyring, false}, {k.Armored, true}} {
		args := []string{"--export"}
		if e.armor {
			args = []string{"--armor", "--export"}
		}
		var out bytes.Buffer
		if err := k.gpg(ctx, &out, append(args, k.Fingerprint)...); err != nil {
			return err
		}
		if out.Len() == 0 {
			return fmt.Errorf("gpg exported nothing for %s", k.Fingerprint)
		}
		if err := writeFileAtomic(e.path, out.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// session runs fn, whose gpg calls share the one gpg-agent that the first
// of them starts, then stops that agent and waits until it is gone: no agent
// outlives the call, and the next session never reaches a dying agent (gpg
// then fails with "can't connect to the agent: End of file").
func (k *Key) session(fn func(ctx context.Context) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), gpgTimeout)
	defer cancel()
	home, cleanup, err := shortHome(k.Home)
	if err != nil {
		return err
	}
	defer cleanup()
	k.home = home
	defer func() { k.home = "" }()
	defer stopAgent(home)
	return fn(ctx)
}

// stopAgent stops the gpg-agent of home, if one runs, and waits (up to
// 10 s) until its socket no longer accepts connections.
func stopAgent(home string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sock, err := execx.Default.Output(ctx, execx.Cmd{
		Name: "gpgconf", Args: []string{"--homedir", home, "--list-dirs", "agent-socket"},
	})
	run(ctx, execx.Cmd{Name: "gpgconf", Args: []string{"--homedir", home, "--kill", "gpg-agent"}})
	path := strings.TrimSpace(string(sock))
	if err != nil || path == "" {
		return
	}
	for ctx.Err() == nil {
		c, err := net.Dial("unix", path)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
}

// gpg runs gpg non-interactively in the key's home; only within a session.
func (k *Key) gpg(ctx context.Context, stdout *bytes.Buffer, args ...string) error {
	home := k.home
	if home == "" {
		return errors.New("aptrepo: gpg outside a session")
	}
	base := []string{"--homedir", home, "--batch", "--no-tty", "--yes",
		"--pinentry-mode", "loopback", "--passphrase", ""}
	c := execx.Cmd{Name: "gpg", Args: append(base, args...)}
	out, err := execx.Default.Output(ctx, c)
	if stdout != nil {
		stdout.Write(out)
	}
	return err
}

// run runs c and keeps its stderr for the error. It uses Output, not
// execx's Run: Host.Run hands stdout and stderr to two goroutines that
// write into one unsynchronised buffer (a data race under -race).
func run(ctx context.Context, c execx.Cmd) error {
	_, err := execx.Default.Output(ctx, c)
	return err
}

// shortHome works around the 108-byte limit of Unix socket paths: gpg puts
// its agent socket in GNUPGHOME when /run/user/UID does not exist (root, CI),
// so a deep home is reached through a short symlink in the temp directory.
func shortHome(home string) (string, func(), error) {
	abs, err := filepath.Abs(home)
	if err != nil {
		return "", nil, err
	}
	if len(abs) <= 80 {
		return abs, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "bake-gpg-")
	if err != nil {
		return "", nil, err
	}
	link := filepath.Join(tmp, "h")
	if err := os.Symlink(abs, link); err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	return link, func() { os.RemoveAll(tmp) }, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
