package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/vm"
)

// captureRun replaces startRun for a test: the plan bake run would boot
// is recorded instead.
func captureRun(t *testing.T) **runPlan {
	t.Helper()
	var got *runPlan
	old := startRun
	startRun = func(_ context.Context, p *runPlan, _ *runOptions) error {
		got = p
		return nil
	}
	t.Cleanup(func() { startRun = old })
	return &got
}

func pubKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " " + comment
}

// bake run: every mistake on the command line, and an image bake cannot
// read, is exit status 2 with one clear line; nothing is started and no
// work dir is made.
func TestRunUsage(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	home := t.TempDir() // no ~/.ssh
	t.Setenv("HOME", home)
	got := captureRun(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "app.raw")
	gptImage(t, img)
	notDisk := filepath.Join(dir, "notes.raw")
	os.WriteFile(notDisk, make([]byte, 1<<20), 0o644)
	fifo := filepath.Join(dir, "fifo.raw")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	backing := filepath.Join(dir, "backing.qcow2")
	h := make([]byte, 3*512)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint64(h[8:], 200)
	binary.BigEndian.PutUint32(h[16:], 11)
	binary.BigEndian.PutUint32(h[20:], 9)
	binary.BigEndian.PutUint64(h[24:], 1<<20)
	binary.BigEndian.PutUint32(h[36:], 32)
	binary.BigEndian.PutUint64(h[40:], 2*512)
	binary.BigEndian.PutUint64(h[48:], 512)
	binary.BigEndian.PutUint32(h[56:], 1)
	binary.BigEndian.PutUint32(h[100:], 104)
	copy(h[200:], "/etc/shadow")
	os.WriteFile(backing, h, 0o644)
	key := filepath.Join(dir, "admin.pub")
	os.WriteFile(key, []byte(pubKey(t, "admin@test")+"\n"), 0o644)
	private := filepath.Join(dir, "id_ed25519")
	os.WriteFile(private, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600)
	empty := filepath.Join(dir, "empty.pub")
	os.WriteFile(empty, []byte("# no keys\n"), 0o644)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "one IMAGE, got 0"},
		{[]string{"run", img, img}, "one IMAGE, got 2"},
		{[]string{"run", img, "--firmware", "efi"}, `--firmware "efi": want auto, bios or uefi`},
		{[]string{"run", img, "--memory", "100"}, "--memory 100: want at least 256"},
		{[]string{"run", img, "--cpus", "65"}, "--cpus 65"},
		{[]string{"run", img, "--grace", "0s"}, "--grace 0s"},
		{[]string{"run", img, "--seed", key, "--admin-key", key}, "--seed and --admin-key: give one"},
		{[]string{"run", img, "--seed", key, "--hostname", "gw"}, "--hostname goes into the seed bake run makes"},
		{[]string{"run", img, "--admin-key", key, "--hostname", "-bad-"}, "--hostname"},
		{[]string{"run", img, "--admin-key", key, "--admin", "root;reboot"}, `--admin "root;reboot": want a user name`},
		{[]string{"run", img, "--admin-key", key, "--admin", ""}, `--admin "": empty`},
		{[]string{"run", filepath.Join(dir, "none.raw"), "--admin-key", key}, "no such file"},
		{[]string{"run", dir, "--admin-key", key}, "not a regular file"},
		{[]string{"run", fifo, "--admin-key", key}, "not a regular file (a FIFO)"},
		{[]string{"run", notDisk, "--admin-key", key}, "no partition table"},
		{[]string{"run", backing, "--admin-key", key}, `backing file ("/etc/shadow")`},
		{[]string{"run", img, "--admin-key", private}, "--admin-key " + private},
		{[]string{"run", img, "--admin-key", filepath.Join(dir, "nokey.pub")}, "--admin-key: open"},
		{[]string{"run", img, "--admin-key", empty}, "--admin-key " + empty + ": holds no SSH public key"},
		{[]string{"run", img}, "no SSH public key for the admin: ~/.ssh has no *.pub file bake can use; give --admin-key FILE (or --seed FILE)"},
		{[]string{"run", img, "--seed", key}, "--seed " + key + ": neither an ISO9660 nor a FAT volume"},
		{[]string{"run", img, "--seed", fifo}, "not a regular file (a FIFO)"},
		{[]string{"run", img, "--nosuch"}, "unknown flag"},
	} {
		*got = nil
		_, errs, code := run(t, c.args...)
		if code != 2 || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line with %q", c.args, code, errs, c.want)
		}
		if *got != nil {
			t.Errorf("%v: bake run started a VM", c.args)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("refused runs left %v in TMPDIR", left)
	}
	out, _, code := run(t, "run", "--help")
	for _, want := range []string{"copy-on-write", "--admin-key", "~/.ssh/*.pub", "Ctrl-] three times", "SIGTERM", "127.0.0.1", "Exit status"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}

// What bake run decides from the image, ~/.ssh, the manifest and the
// flags.
func TestRunPlan(t *testing.T) {
	got := captureRun(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "app.raw")
	gptImage(t, img)
	home := t.TempDir()
	t.Setenv("HOME", home)
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	k1, k2 := pubKey(t, "one@laptop"), pubKey(t, "two@laptop")
	os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519.pub"), []byte(k1+"\n"), 0o644)
	os.WriteFile(filepath.Join(home, ".ssh", "work.pub"), []byte(k2+"\n"+k1+"\n"), 0o644)
	os.WriteFile(filepath.Join(home, ".ssh", "broken.pub"), []byte("ssh-ed25519 AAAAnotbase64!! x\n"), 0o644)

	// ~/.ssh: every usable .pub, each key once; a broken one is named
	// and left out.
	_, errs, code := run(t, "run", img)
	p := *got
	if code != 0 || p == nil {
		t.Fatalf("exit %d, %s", code, errs)
	}
	if len(p.keys) != 2 || p.keys[0] != k1 || p.keys[1] != k2 || len(p.keyFrom) != 2 {
		t.Errorf("keys %q from %q; want %q and %q from id_ed25519.pub and work.pub", p.keys, p.keyFrom, k1, k2)
	}
	if !strings.Contains(errs, "not using "+filepath.Join(home, ".ssh", "broken.pub")) {
		t.Errorf("no warning about broken.pub: %q", errs)
	}
	if p.firmware != vm.BIOS || p.format != cloudimg.FormatRaw || p.image != img {
		t.Errorf("firmware %s (%s), format %s, image %s; want bios, raw, %s", p.firmware, p.fwWhy, p.format, p.image, img)
	}
	if p.admin != "admin" || !strings.Contains(p.adminWhy, "no manifest") || p.sshPort != 22 {
		t.Errorf("admin %q (%s), port %d; want admin by default, no manifest, 22", p.admin, p.adminWhy, p.sshPort)
	}
	if p.memory != 2048 || p.cpus != 0 || p.grace != DefaultRunGrace || p.seedFile != "" {
		t.Errorf("memory %d, cpus %d, grace %s, seed %q", p.memory, p.cpus, p.grace, p.seedFile)
	}

	// --admin-key replaces ~/.ssh; --firmware, --admin, --memory.
	key := filepath.Join(dir, "k.pub")
	os.WriteFile(key, []byte(k2+"\n"), 0o644)
	_, errs, code = run(t, "run", img, "--admin-key", key, "--firmware", "uefi", "--admin", "ops", "--memory", "1024", "--cpus", "1", "--hostname", "gw-1")
	p = *got
	if code != 0 || len(p.keys) != 1 || p.keys[0] != k2 || p.firmware != vm.UEFI || p.admin != "ops" || p.memory != 1024 || p.cpus != 1 || p.hostname != "gw-1" {
		t.Errorf("exit %d %s: plan %+v", code, errs, p)
	}

	// The manifest beside the image names the recipe: its admin and SSH
	// port.
	rdir := t.TempDir()
	rec := filepath.Join(rdir, "app.yaml")
	os.WriteFile(rec, []byte(`apiVersion: bake/v1
name: app
base:
  debian:
    suite: bookworm
users:
  - {name: ops, groups: [sudo], sudo: nopasswd}
ssh:
  port: 2222
`), 0o644)
	man, _ := json.Marshal(map[string]any{"recipe": map[string]any{"name": "app", "path": rec, "sha256": "x"}})
	os.WriteFile(filepath.Join(dir, "app.manifest.json"), man, 0o644)
	_, errs, code = run(t, "run", img, "--admin-key", key)
	p = *got
	if code != 0 || p.admin != "ops" || p.sshPort != 2222 || !strings.Contains(p.adminWhy, "recipe "+rec) {
		t.Errorf("exit %d %s: admin %q (%s), port %d; want ops from the recipe, 2222", code, errs, p.admin, p.adminWhy, p.sshPort)
	}
	// --admin still wins; the port stays the recipe's.
	run(t, "run", img, "--admin-key", key, "--admin", "debian")
	if p = *got; p.admin != "debian" || p.sshPort != 2222 {
		t.Errorf("admin %q, port %d; want debian (--admin), 2222", p.admin, p.sshPort)
	}
	// A manifest whose recipe is gone: the default, saying why.
	os.Remove(rec)
	run(t, "run", img, "--admin-key", key)
	if p = *got; p.admin != "admin" || !strings.Contains(p.adminWhy, "cannot be read") {
		t.Errorf("admin %q (%s); want admin by default, the recipe cannot be read", p.admin, p.adminWhy)
	}

	// --seed: an ISO or FAT seed made by bake seed's writer, attached as
	// it is.
	s := firstboot.Seed{AdminKeys: []string{k1}, InstanceID: "iid-test"}
	for _, kind := range []string{seedISO, seedFAT} {
		seed := filepath.Join(dir, "seed."+kind)
		if err := writeNoCloud(kind, seed, s); err != nil {
			t.Fatal(err)
		}
		_, errs, code = run(t, "run", img, "--seed", seed)
		p = *got
		if code != 0 || p.seedFile != seed || p.seedKind != kind || len(p.keys) != 0 {
			t.Errorf("--seed %s: exit %d %s, seed %q kind %q keys %d", kind, code, errs, p.seedFile, p.seedKind, len(p.keys))
		}
	}
}

func TestBootFirmware(t *testing.T) {
	gpt := func(types ...string) *cloudimg.Table {
		tb := &cloudimg.Table{Type: cloudimg.TableGPT}
		for _, ty := range types {
			tb.Partitions = append(tb.Partitions, cloudimg.Partition{Type: ty})
		}
		return tb
	}
	for _, c := range []struct {
		t    *cloudimg.Table
		want string
	}{
		{gpt(cloudimg.TypeRootX8664, cloudimg.TypeBIOSBoot, cloudimg.TypeESP), vm.BIOS},
		{gpt(cloudimg.TypeESP, cloudimg.TypeRootX8664), vm.UEFI},
		{gpt(cloudimg.TypeLinuxData), vm.BIOS},
		{&cloudimg.Table{Type: cloudimg.TableDOS, Partitions: []cloudimg.Partition{{Type: "0xef"}, {Type: "0x83"}}}, vm.BIOS},
		{nil, vm.BIOS},
	} {
		if got, why := bootFirmware(c.t); got != c.want || why == "" {
			t.Errorf("%+v: %s (%s), want %s", c.t, got, why, c.want)
		}
	}
}

func TestEscapeScanner(t *testing.T) {
	var e escapeScanner
	for _, c := range []struct {
		in   string
		want bool
	}{
		{"ls\r", false},
		{"\x1d\x1d", false},
		{"a\x1d", false}, // "a" started the count again
		{"\x1d", false},
		{"\x1d", true}, // three in a row across reads
		{"\x1d\x1d", false},
		{"\x1dx", true}, // the escape is complete before x
		{"\x1d\x1d\x1d\x1d", true},
	} {
		if got := e.scan([]byte(c.in)); got != c.want {
			t.Errorf("scan(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestCheckUserName(t *testing.T) {
	for _, ok := range []string{"admin", "debian", "_svc", "ops-1", "a.b"} {
		if err := checkUserName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Admin", "1ops", "-x", "a b", "root;reboot", "a$", strings.Repeat("a", 33)} {
		if checkUserName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
