package firstboot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runState runs shell code with the state script loaded as a library, under
// dash (the image's /bin/sh), with the volume at mnt and state paths under
// root; binds are recorded ("BIND SRC TARGET" lines), not made.
func runState(t *testing.T, root, mnt, conf, code string, env ...string) (string, error) {
	t.Helper()
	needTools(t, "dash")
	lib := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(lib, []byte(StateScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dash", "-c", "fakebind() { echo \"BIND $1 $2\"; }\n. "+lib+"\n"+code)
	cmd.Env = append([]string{"BAKE_STATE_LIB=1", "PATH=" + os.Getenv("PATH"), "BAKE_STATE_CONF=" + conf,
		"BAKE_STATE_ROOT=" + root, "BAKE_STATE_MNT=" + mnt, "BAKE_STATE_STATUS=" + filepath.Join(mnt, "..", "status"),
		"BAKE_STATE_BIND=fakebind"}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestStateScriptSyntax(t *testing.T) {
	needTools(t, "dash")
	f := filepath.Join(t.TempDir(), "state")
	os.WriteFile(f, []byte(StateScript()), 0o755)
	if out, err := exec.Command("dash", "-n", f).CombinedOutput(); err != nil {
		t.Errorf("dash -n: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("shellcheck"); err == nil {
		if out, err := exec.Command("shellcheck", "-s", "sh", "-e", "SC1090,SC2034", f).CombinedOutput(); err != nil {
			t.Errorf("shellcheck: %s", out)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func stateConf(t *testing.T, o StateOptions) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "state.conf")
	writeFile(t, f, StateConfig(o))
	return f
}

// The first use copies the image's contents onto the volume and binds them;
// the next boot (another image) binds the volume's copies as they are:
// instance state wins over what the new image carries.
func TestStateFirstUseThenReuse(t *testing.T) {
	needTools(t, "ssh-keygen")
	dir := t.TempDir()
	root, mnt := filepath.Join(dir, "root"), filepath.Join(dir, "vol")
	os.MkdirAll(mnt, 0o755)
	const midA, midB = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	writeFile(t, root+"/etc/machine-id", midA+"\n")
	writeFile(t, root+"/home/oc/.openclaw/openclaw.json", "token-a")
	writeFile(t, root+"/etc/ssh/sshd_config", "image")
	conf := stateConf(t, StateOptions{Label: "bake-state", Paths: []string{"/home/oc/.openclaw", "/etc/ssh/ssh_host_*", "/home/admin/.ssh", "/etc/machine-id", "/var/lib/bake/firstboot"}, ImageName: "img-a", ImageVersion: "1", ImageDigest: "sha256:aa"})

	out, err := runState(t, root, mnt, conf, `. "$BAKE_STATE_CONF"; setup`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Log(out)
	if got := readFile(t, mnt+"/data/home/oc/.openclaw/openclaw.json"); got != "token-a" {
		t.Errorf("volume's openclaw.json %q", got)
	}
	if got := readFile(t, mnt+"/data/etc/machine-id"); got != midA+"\n" {
		t.Errorf("volume's machine-id %q", got)
	}
	for _, k := range []string{"ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub"} {
		if _, err := os.Stat(mnt + "/data/etc/ssh/" + k); err != nil {
			t.Errorf("host key not made on the volume: %v", err)
		}
		if !strings.Contains(out, "BIND "+mnt+"/data/etc/ssh/"+k+" "+root+"/etc/ssh/"+k+"\n") {
			t.Errorf("%s not bound", k)
		}
	}
	if strings.Contains(out, "sshd_config") {
		t.Error("sshd_config (the image's) taken for state")
	}
	for _, p := range []string{"/home/oc/.openclaw", "/home/admin/.ssh", "/var/lib/bake/firstboot"} {
		if !strings.Contains(out, "BIND "+mnt+"/data"+p+" "+root+p+"\n") {
			t.Errorf("%s not bound:\n%s", p, out)
		}
		if fi, err := os.Stat(root + p); err != nil || !fi.IsDir() {
			t.Errorf("mount point %s not made: %v", p, err)
		}
	}
	rec := readFile(t, mnt+"/bake-state/image")
	if !strings.Contains(rec, "NAME=img-a\n") || !strings.Contains(rec, "DIGEST=sha256:aa\n") || readFile(t, mnt+"/bake-state/format") != "1\n" {
		t.Errorf("record:\n%s", rec)
	}
	key := readFile(t, mnt+"/data/etc/ssh/ssh_host_ed25519_key.pub")

	// Image B: a new root disk (new machine ID, its own openclaw.json).
	root = filepath.Join(dir, "rootB")
	writeFile(t, root+"/etc/machine-id", midB+"\n")
	writeFile(t, root+"/home/oc/.openclaw/openclaw.json", "token-b")
	// Mount points of an earlier boot: the * must stay keep's pattern,
	// not become the shell's list of these files.
	writeFile(t, root+"/etc/ssh/ssh_host_ed25519_key", "")
	writeFile(t, root+"/etc/ssh/ssh_host_ed25519_key.pub", "")
	conf = stateConf(t, StateOptions{Label: "bake-state", Paths: []string{"/home/oc/.openclaw", "/etc/ssh/ssh_host_*", "/home/admin/.ssh", "/etc/machine-id", "/var/lib/bake/firstboot"}, ImageName: "img-b"})
	out, err = runState(t, root, mnt, conf, `. "$BAKE_STATE_CONF"; setup`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Log(out)
	if !strings.Contains(out, "/etc/ssh/ssh_host_*: 4 file(s) from the state volume") || !strings.Contains(out, "state volume ready: 5 path(s) bound") {
		t.Errorf("the host keys' pattern was not kept as one path:\n%s", out)
	}
	if strings.Contains(out, "first use") {
		t.Errorf("B copied onto a volume that had the paths:\n%s", out)
	}
	if got := readFile(t, mnt+"/data/home/oc/.openclaw/openclaw.json"); got != "token-a" {
		t.Errorf("B overwrote the instance's openclaw.json: %q", got)
	}
	if got := readFile(t, root+"/etc/machine-id"); got != midA+"\n" {
		t.Errorf("B's machine-id %q, want A's", got)
	}
	if readFile(t, mnt+"/data/etc/ssh/ssh_host_ed25519_key.pub") != key {
		t.Error("host key remade")
	}
	if !strings.Contains(readFile(t, mnt+"/bake-state/image"), "NAME=img-b\n") {
		t.Error("the record does not name B")
	}
	if got := readFile(t, filepath.Join(dir, "status")); got != "ok\n" {
		t.Errorf("status %q", got)
	}
}

func TestStateCheckFormat(t *testing.T) {
	cases := []struct {
		name, format string
		ok           bool
	}{
		{"new volume", "", true},
		{"same", "1\n", true},
		{"older", "0\n", true},
		{"newer", "2\n", false},
		{"much newer", "17\n", false},
		{"not a number", "two\n", false},
		{"empty", "\n", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			mnt := filepath.Join(dir, "vol")
			os.MkdirAll(mnt, 0o755)
			if c.format != "" {
				writeFile(t, mnt+"/bake-state/format", c.format)
				writeFile(t, mnt+"/bake-state/image", "NAME=future\nVERSION=9\nDIGEST=sha256:ff\n")
			}
			out, err := runState(t, dir, mnt, "/nonexistent", `check_format "$BAKE_STATE_MNT"`)
			if (err == nil) != c.ok {
				t.Fatalf("check_format: err %v, want ok=%v\n%s", err, c.ok, out)
			}
			if c.name == "newer" && (!strings.Contains(out, "newer than this image understands (1)") || !strings.Contains(out, "future 9 sha256:ff") || !strings.Contains(out, "do not start")) {
				t.Errorf("the refusal does not say why:\n%s", out)
			}
		})
	}
}

// classify reads the disk as it is: only a disk with nothing on it at all
// is blank; only an ext4 file system with our label is ours.
func TestStateClassify(t *testing.T) {
	needTools(t, "blkid", "wipefs", "lsblk", "mkfs.ext4", "mkfs.vfat", "sfdisk")
	dir := t.TempDir()
	mk := func(name string, size int64, cmd ...string) string {
		f := filepath.Join(dir, name)
		fd, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		fd.Truncate(size)
		fd.Close()
		if len(cmd) > 0 {
			c := exec.Command(cmd[0], append(cmd[1:], f)...)
			if strings.HasPrefix(cmd[0], "sfdisk") {
				c = exec.Command(cmd[0], append(cmd[1:], f)...)
				c.Stdin = strings.NewReader("label: gpt\n,\n")
			}
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", cmd, err, out)
			}
		}
		return f
	}
	cases := map[string]string{
		mk("blank", 64<<20): "blank",
		mk("ours", 64<<20, "mkfs.ext4", "-q", "-L", "bake-state"):  "ours",
		mk("other-label", 64<<20, "mkfs.ext4", "-q", "-L", "data"): "foreign",
		mk("unlabelled", 64<<20, "mkfs.ext4", "-q"):                "foreign",
		mk("fat", 64<<20, "mkfs.vfat", "-n", "bake-state"):         "foreign",
		mk("gpt", 64<<20, "sfdisk", "-q"):                          "foreign",
	}
	for f, want := range cases {
		out, err := runState(t, dir, dir, "/nonexistent", `classify `+f)
		if err != nil {
			t.Fatalf("%s: %v\n%s", f, err, out)
		}
		if got := strings.TrimSpace(out); got != want {
			t.Errorf("%s: %q, want %q", filepath.Base(f), got, want)
		}
	}
}

// No state volume: the instance runs from the root disk (exit 0), and
// says so loudly.
func TestStateMissingVolume(t *testing.T) {
	needTools(t, "mountpoint")
	dir := t.TempDir()
	mnt := filepath.Join(dir, "vol")
	conf := stateConf(t, StateOptions{Label: "bake-state", Serial: "no-such-disk-x", Paths: []string{"/var/lib/x"}})
	out, err := runState(t, dir, mnt, conf, `main`, "BAKE_STATE_WAIT=0")
	if err != nil {
		t.Fatalf("a missing volume is not a failure: %v\n%s", err, out)
	}
	if !strings.Contains(out, "NO STATE VOLUME") || !strings.Contains(out, "virtio-no-such-disk-x") || !strings.Contains(out, "LOST") {
		t.Errorf("not said loudly:\n%s", out)
	}
	if got := readFile(t, filepath.Join(dir, "status")); got != "missing\n" {
		t.Errorf("status %q", got)
	}
	if strings.Contains(out, "BIND") {
		t.Error("bound without a volume")
	}
}

func TestStateUnit(t *testing.T) {
	o := StateOptions{Label: "bake-state", Paths: []string{"/a"}, Guarded: []string{"docker.service", "bake-container-gw.service"}, Before: []string{"bake-container-gw.service"}}
	u := StateUnit(o)
	before := ""
	for _, l := range strings.Split(u, "\n") {
		if strings.HasPrefix(l, "Before=") {
			before = l
		}
	}
	for _, want := range []string{"sysinit.target", "ssh.service", "ssh.socket", "bake-hostkeys.service", UnitName, "docker.service", "tailscaled.service",
		"systemd-machine-id-commit.service", "cloud-init-local.service", "systemd-networkd.service", "bake-container-gw.service"} {
		if !strings.Contains(" "+strings.TrimPrefix(before, "Before=")+" ", " "+want+" ") {
			t.Errorf("bake-state.service is not ordered before %s: %s", want, before)
		}
	}
	if !strings.Contains(u, "DefaultDependencies=no\n") || !strings.Contains(u, "After=local-fs.target systemd-remount-fs.service") || !strings.Contains(u, "WantedBy=sysinit.target") {
		t.Errorf("unit:\n%s", u)
	}
	fs := StateFiles(o)
	var guards []string
	for _, f := range fs {
		if strings.HasSuffix(f.Path, ".d/20-bake-state.conf") {
			guards = append(guards, f.Path)
			if !strings.Contains(string(f.Content), "Requires=bake-state.service\nAfter=bake-state.service\n") {
				t.Errorf("%s:\n%s", f.Path, f.Content)
			}
		}
	}
	if len(guards) != 2 {
		t.Errorf("guards %v", guards)
	}
}

// A path's * is the script's pattern, matched in the volume's and the image's
// folder, never the shell's glob over the running system: /etc/pass*
// matches /etc/passwd on the host running the test, which must not become
// a path of its own.
func TestStatePatternNotGlobbed(t *testing.T) {
	dir := t.TempDir()
	root, mnt := filepath.Join(dir, "root"), filepath.Join(dir, "vol")
	os.MkdirAll(mnt, 0o755)
	writeFile(t, root+"/etc/passwd-image", "x")
	conf := stateConf(t, StateOptions{Label: "bake-state", Paths: []string{"/etc/pass*"}})
	out, err := runState(t, root, mnt, conf, `. "$BAKE_STATE_CONF"; setup`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "/etc/pass*: 1 file(s) from the state volume") || !strings.Contains(out, "ready: 1 path(s)") || strings.Contains(out, "/etc/passwd:") {
		t.Errorf("the pattern was globbed by the shell:\n%s", out)
	}
	if got := readFile(t, mnt+"/data/etc/passwd-image"); got != "x" {
		t.Errorf("volume copy %q", got)
	}
}

// The rollback: A, then B, then A again on a fresh root disk from A's image
// (as a cloud relaunches it): the volume's state is used as B left it
// (nothing copied, the machine ID and host keys A made), the record names
// A again and the format stays 1; a volume B marked with a newer format
// is refused by A, untouched.
func TestStateRollback(t *testing.T) {
	needTools(t, "ssh-keygen", "mountpoint")
	dir := t.TempDir()
	mnt := filepath.Join(dir, "vol")
	os.MkdirAll(mnt, 0o755)
	paths := []string{"/home/oc/.openclaw", "/etc/ssh/ssh_host_*", "/etc/machine-id", "/var/lib/bake/firstboot"}
	confA := stateConf(t, StateOptions{Label: "bake-state", Paths: paths, ImageName: "img-a", ImageVersion: "1", ImageDigest: "sha256:aa"})
	confB := stateConf(t, StateOptions{Label: "bake-state", Paths: paths, ImageName: "img-b", ImageVersion: "2", ImageDigest: "sha256:bb"})
	boot := func(name, conf, mid, token string) (string, string) {
		t.Helper()
		root := filepath.Join(dir, name)
		writeFile(t, root+"/etc/machine-id", mid+"\n")
		writeFile(t, root+"/home/oc/.openclaw/openclaw.json", token)
		out, err := runState(t, root, mnt, conf, `. "$BAKE_STATE_CONF"; setup`)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		return root, out
	}
	const midA, midB, midA2 = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210", "11111111111111111111111111111111"
	boot("rootA", confA, midA, "token-image-a")
	key := readFile(t, mnt+"/data/etc/ssh/ssh_host_ed25519_key")
	_, out := boot("rootB", confB, midB, "token-image-b")
	if strings.Contains(out, "first use") {
		t.Errorf("B copied:\n%s", out)
	}
	writeFile(t, mnt+"/data/home/oc/.openclaw/written-by-b", "b")
	root, out := boot("rootA2", confA, midA2, "token-image-a")
	if strings.Contains(out, "first use") {
		t.Errorf("the rollback copied:\n%s", out)
	}
	if got := readFile(t, root+"/etc/machine-id"); got != midA+"\n" {
		t.Errorf("the rollback's machine-id %q, want the instance's %s", got, midA)
	}
	if readFile(t, mnt+"/data/etc/ssh/ssh_host_ed25519_key") != key {
		t.Error("the rollback remade the host key")
	}
	if got := readFile(t, mnt+"/data/home/oc/.openclaw/openclaw.json"); got != "token-image-a" {
		t.Errorf("the instance's openclaw.json %q", got)
	}
	if _, err := os.Stat(mnt + "/data/home/oc/.openclaw/written-by-b"); err != nil {
		t.Errorf("what B wrote into the state is gone after the rollback: %v", err)
	}
	rec := readFile(t, mnt+"/bake-state/image")
	if !strings.Contains(rec, "NAME=img-a\n") || !strings.Contains(rec, "DIGEST=sha256:aa\n") || readFile(t, mnt+"/bake-state/format") != "1\n" {
		t.Errorf("the record after the rollback:\n%s", rec)
	}

	// A newer bake wrote the volume: A refuses it and leaves it as it is.
	writeFile(t, mnt+"/bake-state/format", "2\n")
	before := readFile(t, mnt+"/bake-state/image")
	out, err := runState(t, root, mnt, confA, `. "$BAKE_STATE_CONF"; check_format "$BAKE_STATE_MNT" || exit 3; setup`)
	if err == nil || !strings.Contains(out, "state volume format 2 is newer than this image understands (1); it was last written by: img-a 1 sha256:aa") {
		t.Errorf("A used a volume of a newer format: %v\n%s", err, out)
	}
	if strings.Contains(out, "BIND") || readFile(t, mnt+"/bake-state/image") != before || readFile(t, mnt+"/bake-state/format") != "2\n" {
		t.Errorf("A touched the volume of a newer format:\n%s", out)
	}
}
