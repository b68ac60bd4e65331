package oci

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The sandbox's command: every namespace, nobody with nothing, a clean
// environment, and a script sh accepts. (TestNpmScriptSandbox, integration
// tier, runs it as root and checks from inside.)
func TestNpmSandboxCmd(t *testing.T) {
	c := npmSandboxCmd("/w/app", "/w/home", "/w/node", []string{"npm_config_update_notifier=false", "PATH=/evil", "HOME=/root"}, []string{"npm", "rebuild", "openclaw"})
	if c.Name != "unshare" {
		t.Fatalf("runs %s", c.Name)
	}
	for _, want := range []string{"--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc",
		"env", "-i", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
		"npm_config_update_notifier=false", "HOME=/tmp/home", "PATH=/tmp/node:/usr/local/bin:/usr/bin:/bin"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("no %q in %q", want, c.Args)
		}
	}
	for _, bad := range []string{"PATH=/evil", "HOME=/root"} {
		if slices.Contains(c.Args, bad) {
			t.Errorf("the caller's %s reached the sandbox", bad)
		}
	}
	if tail := c.Args[len(c.Args)-3:]; strings.Join(tail, " ") != "npm rebuild openclaw" {
		t.Errorf("argv not last: %q", tail)
	}
	// setpriv comes after env -i, and the script is valid sh.
	if slices.Index(c.Args, "setpriv") < slices.Index(c.Args, "-i") {
		t.Error("setpriv before env -i")
	}
	i := slices.Index(c.Args, "-c")
	f := filepath.Join(t.TempDir(), "s.sh")
	os.WriteFile(f, []byte(c.Args[i+1]), 0o644)
	if out, err := exec.Command("sh", "-n", f).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v\n%s", err, out)
	}
	if !strings.Contains(c.Args[i+1], "mount -o remount,bind,ro /tmp/node") {
		t.Error("node is not read-only in the sandbox")
	}
}
