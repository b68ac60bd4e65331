package oci

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
)

// The app's install scripts (NpmApp.Scripts) are code from the npm
// registry, and bake runs as root on the build host. They run in a
// sandbox (npmScriptSandbox):
//
//   - as nobody (65534:65534), no supplementary groups, no capabilities
//     (bounding and inheritable sets emptied), no_new_privs: setuid
//     binaries do not help;
//   - with no network: a network namespace of their own holds only a
//     loopback that is down;
//   - in a mount namespace of their own where /tmp, /var/tmp and /dev/shm
//     are empty tmpfs (nothing of the build host's temp files, nowhere to
//     leave anything), the app's folder, a HOME and npm's cache are
//     bind-mounted at fixed paths under /tmp (writable by nobody: the
//     only writable places besides the tmpfs), and the image's Node
//     binary read-only;
//   - in a PID namespace of their own (they see no host process and
//     cannot signal one; a daemon they fork dies with them: --kill-child);
//   - bounded in time by the build's context.
//
// What stays readable is what the build host lets any user read (world-
// readable files). The scripts' output is what they write into the app's
// folder, which becomes the app layer (owners normalized to root).
const (
	npmSandboxUID     = 65534
	npmSandboxApp     = "/tmp/app"
	npmSandboxHome    = "/tmp/home"
	npmSandboxCache   = "/tmp/npm-cache"
	npmSandboxNodeDir = "/tmp/node"
	// npmSandboxVersion goes into the app layer's cache key: a layer made
	// outside the sandbox is made again.
	npmSandboxVersion = "1"
)

// npmScriptSandbox wraps argv (run in npmSandboxApp) in the sandbox. app and
// home are host folders made writable by nobody for the run; nodeDir (may
// be "") holds the node binary put first on PATH.
func npmScriptSandbox(app, home, nodeDir string, env []string, argv []string) (execx.Cmd, error) {
	// Only root can give the folders away (and only root can run the
	// sandbox: unshare refuses others, so nothing runs outside it).
	if os.Geteuid() == 0 {
		for _, d := range []string{app, home} {
			if err := npmChownTree(d, npmSandboxUID, npmSandboxUID); err != nil {
				return execx.Cmd{}, fmt.Errorf("sandbox: %w", err)
			}
		}
	}
	return npmSandboxCmd(app, home, nodeDir, env, argv), nil
}

// npmSandboxCmd is the command npmScriptSandbox runs.
func npmSandboxCmd(app, home, nodeDir string, env []string, argv []string) execx.Cmd {
	path := "/usr/local/bin:/usr/bin:/bin"
	// The folders are opened before /tmp is covered (they may lie below
	// it) and bind-mounted from their descriptors.
	var opens, binds strings.Builder
	opens.WriteString(`exec 3<"$BAKE_SANDBOX_APP" 4<"$BAKE_SANDBOX_HOME"` + "\n")
	binds.WriteString(`mkdir -p ` + npmSandboxApp + ` ` + npmSandboxHome + ` ` + npmSandboxCache + "\n")
	binds.WriteString(`mount --bind /proc/self/fd/3 ` + npmSandboxApp + "\n")
	binds.WriteString(`mount --bind /proc/self/fd/4 ` + npmSandboxHome + "\n")
	binds.WriteString(`chown ` + fmt.Sprintf("%d:%d", npmSandboxUID, npmSandboxUID) + ` ` + npmSandboxCache + "\n")
	if nodeDir != "" {
		opens.WriteString(`exec 5<"$BAKE_SANDBOX_NODE"` + "\n")
		binds.WriteString(`mkdir -p ` + npmSandboxNodeDir + "\n")
		binds.WriteString(`mount --bind /proc/self/fd/5 ` + npmSandboxNodeDir + "\n")
		binds.WriteString(`mount -o remount,bind,ro ` + npmSandboxNodeDir + "\n")
		path = npmSandboxNodeDir + ":" + path
	}
	binds.WriteString("exec 3<&- 4<&- 5<&-\n")
	script := `set -eu
` + opens.String() + `mount -t tmpfs -o mode=1777,size=1g bake-sandbox /tmp
mount -t tmpfs -o mode=1777,size=64m bake-sandbox /var/tmp
mount -t tmpfs -o mode=1777,size=64m bake-sandbox /dev/shm
` + binds.String() + `cd ` + npmSandboxApp + `
exec "$@"`
	// The scripts get an environment of their own (env -i): nothing of
	// bake's (a CI job's tokens) reaches them.
	clean := []string{"HOME=" + npmSandboxHome, "PATH=" + path, "npm_config_cache=" + npmSandboxCache, "TMPDIR=/tmp", "LANG=C.UTF-8"}
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		switch k {
		case "HOME", "PATH", "TMPDIR", "npm_config_cache", "LANG":
			continue // the sandbox's own
		}
		clean = append(clean, e)
	}
	args := []string{"--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
		"--", "sh", "-c", script, "bake-sandbox", "env", "-i"}
	args = append(args, clean...)
	args = append(args, "setpriv", "--reuid="+fmt.Sprint(npmSandboxUID), "--regid="+fmt.Sprint(npmSandboxUID),
		"--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--")
	args = append(args, argv...)
	cmdEnv := []string{"BAKE_SANDBOX_APP=" + app, "BAKE_SANDBOX_HOME=" + home, "BAKE_SANDBOX_NODE=" + nodeDir}
	return execx.Cmd{Name: "unshare", Args: args, Env: cmdEnv}
}

// npmChownTree gives dir and everything in it (symlinks themselves, never
// followed) to uid:gid.
func npmChownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}
