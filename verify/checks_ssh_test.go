package verify

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// fakeAccounts puts a getent (shadow) and a chpasswd that records its
// stdin in a directory for PATH.
func fakeAccounts(t *testing.T, shadow string, chpasswdRC int) (dir, got string) {
	t.Helper()
	dir = t.TempDir()
	got = filepath.Join(dir, "chpasswd.in")
	os.WriteFile(filepath.Join(dir, "getent"), []byte("#!/bin/sh\n[ \"$1\" = shadow ] || exit 2\ncase \"$2\" in root|admin) printf '%s:%s\\n' \"$2\" '"+shadow+":19000:0:99999:7:::';; *) exit 2;; esac\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "chpasswd"), []byte("#!/bin/sh\ncat >"+got+"\nexit "+strconv.Itoa(chpasswdRC)+"\n"), 0o755)
	return dir, got
}

func runScript(t *testing.T, path, script, stdin string) (string, error) {
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+path+":"+os.Getenv("PATH"))
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	return string(out), err
}

// ssh.password-refused and root-refused read the old hash and set the
// throwaway password in one sudo: the hash comes first, the password
// from stdin, nothing is set without a hash to put back.
func TestSetPasswordScript(t *testing.T) {
	testenv.NeedTools(t, "sh", "cut")
	dir, got := fakeAccounts(t, "$y$j9T$abc$def", 0)
	out, err := runScript(t, dir, setPasswordScript("admin"), "admin:Bv-secret\n")
	hash, ok := passwordSet(out)
	if err != nil || !ok || hash != "$y$j9T$abc$def" {
		t.Fatalf("err %v, hash %q ok %v, output %q", err, hash, ok, out)
	}
	if b, _ := os.ReadFile(got); string(b) != "admin:Bv-secret\n" {
		t.Errorf("chpasswd read %q", b)
	}
	if h := hideHash(cmdResult{Stdout: out}).Stdout; strings.Contains(h, "abc") || !strings.Contains(h, "hash:(not shown)") {
		t.Errorf("hideHash: %q", h)
	}
	// No such user: nothing set.
	os.Remove(got)
	out, err = runScript(t, dir, setPasswordScript("nobody-here"), "nobody-here:x\n")
	if _, ok := passwordSet(out); err == nil || ok {
		t.Errorf("no user: err %v, output %q", err, out)
	}
	if _, err := os.Stat(got); err == nil {
		t.Error("chpasswd ran with no hash to put back")
	}
	// chpasswd fails: the hash is known, the password not set.
	dir, _ = fakeAccounts(t, "*", 1)
	out, _ = runScript(t, dir, setPasswordScript("root"), "root:x\n")
	if hash, ok := passwordSet(out); ok || hash != "*" {
		t.Errorf("chpasswd failing: hash %q ok %v (%q)", hash, ok, out)
	}
	if h, ok := passwordSet("hash:\npassword-set\n"); ok || h != "" {
		t.Errorf("an empty hash: %q %v", h, ok)
	}
	if s := restoreHashScript("root", "$y$j9T$a'b"); s != `usermod -p '$y$j9T$a'\''b' root` {
		t.Errorf("restoreHashScript: %s", s)
	}
}

// ssh.root-refused's setup: root's authorized_keys kept aside, the key
// appended, then the password (here in a directory standing for /root).
func TestRootSetupScript(t *testing.T) {
	testenv.NeedTools(t, "sh", "cut", "cp")
	dir, got := fakeAccounts(t, "!", 0)
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), []byte("ssh-ed25519 AAAAold root\n"), 0o600)
	script := rootSetupScript("ssh-ed25519 AAAAnew bake-verify")
	if strings.Count(script, "/root/") != 5 {
		t.Fatalf("the script's paths: %s", script)
	}
	out, err := runScript(t, dir, strings.ReplaceAll(script, "/root/", home+"/"), "root:Bv-pw\n")
	if err != nil || !strings.Contains(out, "key-added\n") {
		t.Fatalf("err %v, output %q", err, out)
	}
	if hash, ok := passwordSet(out); !ok || hash != "!" {
		t.Errorf("hash %q ok %v", hash, ok)
	}
	keys, _ := os.ReadFile(filepath.Join(home, ".ssh", "authorized_keys"))
	kept, _ := os.ReadFile(filepath.Join(home, ".ssh", ".authorized_keys.bake-verify"))
	if string(keys) != "ssh-ed25519 AAAAold root\nssh-ed25519 AAAAnew bake-verify\n" || string(kept) != "ssh-ed25519 AAAAold root\n" {
		t.Errorf("authorized_keys %q, kept %q", keys, kept)
	}
	if b, _ := os.ReadFile(got); string(b) != "root:Bv-pw\n" {
		t.Errorf("chpasswd read %q", b)
	}
}
