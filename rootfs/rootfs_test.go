package rootfs

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/safepath"
	"github.com/bakeimg/bake/internal/sweep"
)

func init() {
	// Unit tests run without root: what bake writes as root:root is
	// written as the test's own user.
	if os.Geteuid() != 0 {
		rootUID, rootGID = os.Getuid(), os.Getgid()
	}
}

func write(t *testing.T, root, name, content string, mode fs.FileMode) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// fakeChroot is a Chroot over a plain directory whose commands are
// recorded, not run (no root, no mounts).
func fakeChroot(t *testing.T, tree string) (*Chroot, *execx.Recorder) {
	t.Helper()
	r, err := safepath.Open(tree)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	rec := &execx.Recorder{}
	return &Chroot{tree: tree, root: r, runner: rec}, rec
}

const passwd = `root:x:0:0:root:/root:/bin/bash
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
admin:x:1000:1000:,,,:/home/admin:/bin/bash
openclaw:x:999:995::/home/openclaw:/usr/sbin/nologin
`
const group = `root:x:0:
sudo:x:27:admin
admin:x:1000:
openclaw:x:995:
docker:x:994:
`

func TestLookupOwner(t *testing.T) {
	tree := t.TempDir()
	write(t, tree, "etc/passwd", passwd, 0o644)
	write(t, tree, "etc/group", group, 0o644)
	for owner, want := range map[string][2]int{
		"":                {0, 0},
		"root":            {0, 0},
		"admin":           {1000, 1000},
		"openclaw":        {999, 995},
		"openclaw:docker": {999, 994},
		"admin:0":         {1000, 0},
		"1234:5678":       {1234, 5678},
	} {
		uid, gid, err := LookupOwner(tree, owner)
		if err != nil || uid != want[0] || gid != want[1] {
			t.Errorf("LookupOwner(%q) = %d:%d %v, want %v", owner, uid, gid, err, want)
		}
	}
	for _, bad := range []string{"nobody", "admin:nogroup", "1234"} {
		if _, _, err := LookupOwner(tree, bad); err == nil {
			t.Errorf("LookupOwner(%q) should fail", bad)
		}
	}
	// The tree's passwd, never the host's: a symlink to the host's
	// /etc/passwd resolves inside the tree.
	os.Remove(filepath.Join(tree, "etc/passwd"))
	os.Symlink("/etc/passwd.tree", filepath.Join(tree, "etc/passwd"))
	write(t, tree, "etc/passwd.tree", "root:x:0:0::/root:/bin/sh\nonly-in-tree:x:7:7::/:/bin/sh\n", 0o644)
	if uid, _, err := LookupOwner(tree, "only-in-tree"); err != nil || uid != 7 {
		t.Errorf("got %d %v", uid, err)
	}
}

func TestCopyOverlay(t *testing.T) {
	src := t.TempDir()
	tree := t.TempDir()
	outside := t.TempDir()
	write(t, src, "etc/app/config.json", "{}", 0o644)
	write(t, src, "etc/app/secret", "s", 0o644)
	write(t, src, "usr/local/bin/tool", "#!/bin/sh\n", 0o755)
	write(t, src, "etc/evil/x", "pwned", 0o644)
	write(t, src, "lib/systemd/system/app.service", "[Unit]\n", 0o644)
	os.Symlink("/etc/app/config.json", filepath.Join(src, "etc/app/link"))
	os.Symlink("/nonexistent/target", filepath.Join(src, "etc/app/dangling"))
	// The trap: the tree's etc/evil points out of the tree on the host.
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.Symlink(outside, filepath.Join(tree, "etc/evil"))
	os.MkdirAll(filepath.Join(tree, filepath.Clean(outside)), 0o755)
	// Merged /usr: lib is a symlink to usr/lib.
	os.MkdirAll(filepath.Join(tree, "usr/lib"), 0o755)
	os.Symlink("usr/lib", filepath.Join(tree, "lib"))
	os.Chmod(filepath.Join(tree, "etc"), 0o755)

	uid, gid := os.Getuid(), os.Getgid()
	err := CopyOverlay(tree, OverlayOptions{
		Source: src, Target: "/", UID: uid, GID: gid,
		Modes: map[string]fs.FileMode{"etc/app/secret": 0o600, "etc/app": 0o750},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("overlay wrote outside the tree: %v", ents)
	}
	if b, err := os.ReadFile(filepath.Join(tree, outside, "x")); err != nil || string(b) != "pwned" {
		t.Fatalf("etc/evil/x should land in TREE%s: %v", outside, err)
	}
	check := func(name string, want fs.FileMode) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
	check("etc/app/secret", 0o600)
	check("etc/app/config.json", 0o644)
	check("etc/app", fs.ModeDir|0o750)
	check("etc", fs.ModeDir|0o755) // existing dir untouched
	check("usr/local/bin/tool", 0o755)
	check("usr/lib/systemd/system/app.service", 0o644)
	if tgt, _ := os.Readlink(filepath.Join(tree, "etc/app/link")); tgt != "/etc/app/config.json" {
		t.Errorf("symlink target %q", tgt)
	}
	if tgt, _ := os.Readlink(filepath.Join(tree, "etc/app/dangling")); tgt != "/nonexistent/target" {
		t.Errorf("dangling symlink target %q", tgt)
	}
	// Into a target directory.
	if err := CopyOverlay(tree, OverlayOptions{Source: filepath.Join(src, "etc/app"), Target: "/srv/app", UID: uid, GID: gid}); err != nil {
		t.Fatal(err)
	}
	check("srv/app/secret", 0o644)
	// Bad pattern.
	if err := CopyOverlay(tree, OverlayOptions{Source: src, Modes: map[string]fs.FileMode{"[": 0o600}}); err == nil {
		t.Error("bad glob accepted")
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]fs.FileMode{"0644": 0o644, "755": 0o755, "4755": fs.ModeSetuid | 0o755, "0o1777": fs.ModeSticky | 0o777, "2750": fs.ModeSetgid | 0o750} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0999", "rwx", "17777"} {
		if _, err := ParseMode(bad); err == nil {
			t.Errorf("ParseMode(%q) accepted", bad)
		}
	}
}

func TestSysprep(t *testing.T) {
	tree := t.TempDir()
	outside := t.TempDir()
	write(t, outside, "keep", "host file", 0o644)
	files := map[string]string{
		"etc/machine-id":                       "0123456789abcdef0123456789abcdef\n",
		"var/lib/dbus/machine-id":              "0123456789abcdef0123456789abcdef\n",
		"etc/ssh/ssh_host_ed25519_key":         "PRIVATE",
		"etc/ssh/ssh_host_ed25519_key.pub":     "pub",
		"etc/ssh/sshd_config":                  "keep",
		"var/lib/systemd/random-seed":          "seed",
		"var/lib/systemd/credential.secret":    "secret",
		"var/lib/cloud/instance/boot-finished": "x",
		"var/lib/tailscale/tailscaled.state":   "node key",
		"usr/sbin/policy-rc.d":                 policyRCD,
		"var/log/syslog":                       "log line",
		"var/log/syslog.1":                     "old",
		"var/log/dpkg.log.2.gz":                "old",
		"var/log/apt/history.log":              "apt",
		"var/log/journal/abc/system.journal":   "j",
		"var/lib/apt/lists/ftp.example.org_debian_dists_bookworm_InRelease": "idx",
		"var/cache/apt/pkgcache.bin":                                        "bin",
		"var/cache/apt/archives/libc6.deb":                                  "deb",
		"var/lib/dpkg/status-old":                                           "old",
		"root/.bash_history":                                                "history",
		"home/admin/.bash_history":                                          "history",
		"home/admin/.profile":                                               "keep",
		"tmp/build-file":                                                    "x",
		"var/tmp/x/y":                                                       "x",
		"run/lock/foo":                                                      "x",
		"etc/resolv.conf":                                                   "nameserver 10.0.0.1\n",
		"etc/hostname":                                                      "buildhost\n",
		"etc/apt/apt.conf.d/99mmdebstrap":                                   "Acquire::http::Proxy \"http://proxy:3142\";\n",
		"etc/apt/apt.conf.d/01proxy":                                        "Acquire {\n  https {\n    Proxy \"http://p\";\n  };\n};\n",
		"etc/dpkg/dpkg.cfg.d/99mmdebstrap":                                  "force-unsafe-io\n",
		"etc/apt/apt.conf.d/01autoremove":                                   "APT { NeverAutoRemove { \"^linux-image.*\"; }; };\n",
		"var/lib/dpkg/diversions": "/usr/sbin/update-grub\n/usr/sbin/update-grub.bake-diverted\n:\n" +
			"/usr/sbin/grub-probe\n/usr/sbin/grub-probe.bake-diverted\n:\n" +
			"/usr/bin/other\n/usr/bin/other.distrib\nsomepkg\n",
		"usr/sbin/update-grub":               "#!/bin/sh\n# bake: no-op\nexit 0\n",
		"usr/sbin/update-grub.bake-diverted": "#!/bin/sh\nreal update-grub\n",
		"usr/sbin/grub-probe":                "#!/bin/sh\n# bake: no-op\nexit 0\n",
	}
	for n, c := range files {
		write(t, tree, n, c, 0o644)
	}
	os.Chmod(filepath.Join(tree, "var/log/syslog"), 0o640)
	// Traps: a log dir symlinked out of the tree, and a tmp entry that is
	// a symlink out of it.
	os.Symlink(outside, filepath.Join(tree, "var/log/evil"))
	os.Symlink(outside, filepath.Join(tree, "tmp/evil"))

	if err := sysprep(tree, sysprepHost{hostname: "buildhost"}); err != nil {
		t.Fatal(err)
	}
	gone := []string{
		"var/lib/dbus/machine-id", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
		"var/lib/systemd/random-seed", "var/lib/systemd/credential.secret", "var/lib/cloud", "var/lib/tailscale",
		"usr/sbin/policy-rc.d", "var/log/syslog.1", "var/log/dpkg.log.2.gz", "var/log/journal/abc/system.journal",
		"var/lib/apt/lists/ftp.example.org_debian_dists_bookworm_InRelease", "var/cache/apt/pkgcache.bin",
		"var/cache/apt/archives/libc6.deb", "var/lib/dpkg/status-old", "root/.bash_history",
		"home/admin/.bash_history", "tmp/build-file", "var/tmp/x", "run/lock", "etc/resolv.conf",
		"etc/apt/apt.conf.d/99mmdebstrap", "etc/apt/apt.conf.d/01proxy", "usr/sbin/update-grub.bake-diverted",
		"usr/sbin/grub-probe", "tmp/evil", "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
	}
	for _, g := range gone {
		if exists(filepath.Join(tree, g)) {
			t.Errorf("%s survived sysprep", g)
		}
	}
	kept := []string{"etc/ssh/sshd_config", "home/admin/.profile", "etc/apt/apt.conf.d/01autoremove", "var/log/apt", "var/log/journal/abc", "var/lib/apt/lists", "tmp", "var/tmp", "run", "var/log/evil"}
	for _, k := range kept {
		if !exists(filepath.Join(tree, k)) {
			t.Errorf("%s removed", k)
		}
	}
	fi, err := os.Stat(filepath.Join(tree, "etc/machine-id"))
	if err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o444 {
		t.Errorf("machine-id: %v %v", fi, err)
	}
	fi, err = os.Stat(filepath.Join(tree, "var/log/syslog"))
	if err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o640 {
		t.Errorf("syslog must be truncated in place: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(tree, "usr/sbin/update-grub")); string(b) != "#!/bin/sh\nreal update-grub\n" {
		t.Errorf("update-grub not restored: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(tree, "var/lib/dpkg/diversions")); string(b) != "/usr/bin/other\n/usr/bin/other.distrib\nsomepkg\n" {
		t.Errorf("diversions: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(tree, "etc/hostname")); string(b) != "localhost\n" {
		t.Errorf("hostname %q", b)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "host file" {
		t.Errorf("sysprep touched a file outside the tree: %q %v", b, err)
	}
	// The resolved symlink stays; idempotent second run.
	os.Symlink(ResolvedStubLink, filepath.Join(tree, "etc/resolv.conf"))
	if err := sysprep(tree, sysprepHost{hostname: "buildhost"}); err != nil {
		t.Fatal(err)
	}
	if tgt, _ := os.Readlink(filepath.Join(tree, "etc/resolv.conf")); tgt != ResolvedStubLink {
		t.Error("resolved symlink removed")
	}
	if len(SysprepItems()) != len(sysprepTable) {
		t.Error("SysprepItems")
	}
}

func TestBootstrapCommand(t *testing.T) {
	tree := filepath.Join(t.TempDir(), "tree")
	cache := filepath.Join(t.TempDir(), "debs")
	rec := &execx.Recorder{}
	err := Bootstrap(context.Background(), BootstrapOptions{
		Suite: "bookworm", Packages: []string{"systemd", "linux-image-amd64", "systemd"},
		Mirror: "http://mirror.example/debian", BuildMirror: "http://build.example/debian",
		CacheDir: cache, Tree: tree, Runner: rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	var mm execx.Cmd
	for _, c := range rec.Cmds {
		if c.Name == "mmdebstrap" {
			mm = c
		}
	}
	line := strings.Join(mm.Args, "\n")
	for _, want := range []string{
		"--mode=root", "--format=directory", "--variant=minbase", "--components=main",
		"--include=systemd,linux-image-amd64", "--skip=download/empty", "--dpkgopt=force-unsafe-io",
		// A snapshot in (by cp, never tar: debcache.go), a dir of its own out.
		"--setup-hook=cp -a --reflink=auto " + cache + "/" + debSnapshotPrefix,
		"--customize-hook=sync-out /var/cache/apt/archives " + cache + "/" + debIncomingPrefix,
		"bookworm\n" + tree + "\ndeb http://build.example/debian bookworm main\ndeb http://build.example/debian bookworm-updates main",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("mmdebstrap args lack %q:\n%s", want, line)
		}
	}
	if strings.Contains(line, "mirror.example") {
		t.Error("the image's mirror is not the build mirror")
	}
	// Its temp dir (the essential hook, mmdebstrap's TMPDIR for its
	// gpghome) is beside the tree, named after its owner, and gone after.
	tmp := ""
	for _, e := range mm.Env {
		if v, ok := strings.CutPrefix(e, "TMPDIR="); ok {
			tmp = v
		}
	}
	if want := filepath.Join(filepath.Dir(tree), bootstrapTempPrefix+strconv.Itoa(sweep.OwnerPID())+"-"); !strings.HasPrefix(tmp, want) {
		t.Errorf("mmdebstrap's TMPDIR %q, want %s*", tmp, want)
	}
	if !strings.Contains(line, "--essential-hook="+filepath.Join(tmp, "divert-boot-hooks")) {
		t.Errorf("the essential hook is not in %s:\n%s", tmp, line)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("bootstrap's temp dir %s is left: %v", tmp, err)
	}
	// The image names Mirror only.
	b, err := os.ReadFile(filepath.Join(tree, "etc/apt/sources.list.d/debian.sources"))
	if err != nil || !strings.Contains(string(b), "URIs: http://mirror.example/debian\n") || strings.Contains(string(b), "build.example") {
		t.Errorf("debian.sources: %q %v", b, err)
	}
	if !strings.Contains(divertScript(), "dpkg-divert --quiet --local --rename --divert \"$f.bake-diverted\" --add \"$f\"") {
		t.Error(divertScript())
	}
	// Not empty: refused.
	if err := Bootstrap(context.Background(), BootstrapOptions{Suite: "bookworm", Tree: tree, Runner: rec, Mirror: "http://m/debian"}); err == nil {
		t.Error("bootstrap into a non-empty tree")
	}
}

func TestAddAptRepository(t *testing.T) {
	tree := t.TempDir()
	dir := t.TempDir()
	// A binary public key packet header (old format, tag 6) is enough
	// for the check; apt verifies the key itself.
	bin := []byte{0x99, 0x01, 0x0d, 0x04}
	os.WriteFile(filepath.Join(dir, "key.gpg"), bin, 0o644)
	os.WriteFile(filepath.Join(dir, "key.asc"), []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "junk"), []byte("hello"), 0o644)
	rec := &execx.Recorder{Respond: func(c execx.Cmd) ([]byte, error) { return []byte{0xc6, 0x01}, nil }}
	ctx := context.Background()
	if err := AddAptRepository(ctx, tree, AptRepository{Name: "tailscale", URI: "https://pkgs.example/debian", Suite: "bookworm", KeyFile: filepath.Join(dir, "key.gpg"), Runner: rec}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(tree, "etc/apt/sources.list.d/tailscale.sources"))
	want := "# Written by bake.\nTypes: deb\nURIs: https://pkgs.example/debian\nSuites: bookworm\nComponents: main\nSigned-By: /etc/apt/keyrings/tailscale.gpg\n"
	if string(b) != want {
		t.Errorf("got\n%s", b)
	}
	if k, _ := os.ReadFile(filepath.Join(tree, "etc/apt/keyrings/tailscale.gpg")); !reflect.DeepEqual(k, bin) {
		t.Errorf("keyring %x", k)
	}
	if err := AddAptRepository(ctx, tree, AptRepository{Name: "local", URI: "file:/srv/repo", Suite: "./", KeyFile: filepath.Join(dir, "key.asc"), Runner: rec}); err != nil {
		t.Fatal(err)
	}
	if len(rec.Cmds) != 1 || rec.Cmds[0].Name != "gpg" || !strings.Contains(rec.Cmds[0].String(), "--dearmor") {
		t.Errorf("armored key not dearmored with gpg: %v", rec.Cmds)
	}
	b, _ = os.ReadFile(filepath.Join(tree, "etc/apt/sources.list.d/local.sources"))
	if strings.Contains(string(b), "Components") || !strings.Contains(string(b), "Suites: ./\n") {
		t.Errorf("flat repo:\n%s", b)
	}
	for _, bad := range []AptRepository{
		{Name: "bad name", URI: "u", Suite: "s", KeyFile: filepath.Join(dir, "key.gpg")},
		{Name: "x", URI: "u", Suite: "s", KeyFile: filepath.Join(dir, "junk")},
		{Name: "x", URI: "u", Suite: "./", Components: []string{"main"}, KeyFile: filepath.Join(dir, "key.gpg")},
	} {
		bad.Runner = rec
		if err := AddAptRepository(ctx, tree, bad); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

func TestChrootCmdHasCleanEnv(t *testing.T) {
	ch, _ := fakeChroot(t, t.TempDir())
	c := ch.Cmd("apt-get", "update")
	if c.Name != "/usr/bin/env" || c.Args[0] != "-i" {
		t.Fatalf("%v", c)
	}
	if got := strings.Join(c.Args[len(c.Args)-4:], " "); got != "/usr/sbin/chroot "+ch.Tree()+" apt-get update" {
		t.Errorf("tail %q", got)
	}
	if len(c.Env) != 0 {
		t.Error("host env added")
	}
}

func TestAddUserCommands(t *testing.T) {
	tree := t.TempDir()
	write(t, tree, "etc/passwd", passwd, 0o644)
	write(t, tree, "etc/group", group, 0o644)
	write(t, tree, "usr/sbin/visudo", "", 0o755)
	ch, rec := fakeChroot(t, tree)
	ctx := context.Background()
	uid := 1001
	// The recorder does not run useradd; pre-seed the entry it would add.
	err := AddUser(ctx, ch, UserOptions{Name: "ops.user", UID: &uid, Groups: []string{"sudo"}, SudoNopasswd: true})
	if err != nil {
		t.Fatal(err)
	}
	got := rec.Cmds[0].String()
	for _, want := range []string{"useradd --shell /bin/bash --home-dir /home/ops.user --uid 1001 --password * --create-home --user-group --groups sudo -- ops.user"} {
		if !strings.Contains(got, want) {
			t.Errorf("%s\nlacks %s", got, want)
		}
	}
	b, err := os.ReadFile(filepath.Join(tree, "etc/sudoers.d/90-bake-ops_user"))
	if err != nil || string(b) != "# Written by bake.\nops.user ALL=(ALL:ALL) NOPASSWD: ALL\n" {
		t.Errorf("sudoers %q %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(tree, "etc/sudoers.d/90-bake-ops_user")); fi.Mode().Perm() != 0o440 {
		t.Errorf("sudoers mode %v", fi.Mode())
	}
	if !strings.Contains(rec.Cmds[1].String(), "visudo -c -q -f /etc/sudoers.d/90-bake-ops_user") {
		t.Errorf("%v", rec.Cmds[1])
	}
	// A system user joining a group of its own name made earlier.
	rec.Cmds = nil
	write(t, tree, "etc/group", group+"svc:x:990:\n", 0o644)
	if err := AddUser(ctx, ch, UserOptions{Name: "svc", System: true}); err != nil {
		t.Fatal(err)
	}
	if got := rec.Cmds[0].String(); !strings.Contains(got, "useradd --shell /usr/sbin/nologin --home-dir /home/svc --system --no-create-home --gid svc -- svc") {
		t.Errorf("%s", got)
	}
	// Existing user, existing group with another gid.
	if err := AddUser(ctx, ch, UserOptions{Name: "admin"}); err == nil {
		t.Error("existing user accepted")
	}
	gid := 1
	if err := AddGroup(ctx, ch, "docker", &gid, true); err == nil {
		t.Error("gid mismatch accepted")
	}
	rec.Cmds = nil
	if err := AddGroup(ctx, ch, "docker", nil, true); err != nil || len(rec.Cmds) != 0 {
		t.Errorf("existing group: %v %v", err, rec.Cmds)
	}
}

func TestAuthorizedKeys(t *testing.T) {
	tree := t.TempDir()
	write(t, tree, "etc/passwd", "root:x:0:0::/root:/bin/sh\nu:x:"+itoa(os.Getuid())+":"+itoa(os.Getgid())+"::/home/u:/bin/sh\n", 0o644)
	if err := writeAuthorizedKeys(tree, "u", []string{"ssh-ed25519 AAAA k1 ", "ssh-ed25519 BBBB k2"}); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(tree, "home/u/.ssh"))
	if fi.Mode().Perm() != 0o700 {
		t.Errorf(".ssh %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(tree, "home/u/.ssh/authorized_keys"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("authorized_keys %v", fi.Mode())
	}
	b, _ := os.ReadFile(filepath.Join(tree, "home/u/.ssh/authorized_keys"))
	if string(b) != "ssh-ed25519 AAAA k1\nssh-ed25519 BBBB k2\n" {
		t.Errorf("%q", b)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
