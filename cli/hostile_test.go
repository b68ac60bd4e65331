package cli

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// craftQcow2 writes a minimal qcow2 v3 header (1 MiB virtual, 512-byte
// clusters, one L1 entry) changed by mutate, as dir/name.
func craftQcow2(t *testing.T, dir, name string, mutate func(h []byte)) string {
	t.Helper()
	h := make([]byte, 3*512)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[20:], 9)
	binary.BigEndian.PutUint64(h[24:], 1<<20)
	binary.BigEndian.PutUint32(h[36:], 32)
	binary.BigEndian.PutUint64(h[40:], 2*512)
	binary.BigEndian.PutUint64(h[48:], 512)
	binary.BigEndian.PutUint32(h[56:], 1)
	binary.BigEndian.PutUint32(h[100:], 104)
	mutate(h)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, h, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A recipe cannot reach out (issue 12): a context above the repository
// root is refused by validate, plan and build (exit 2) unless --context
// allows it; .git and what .bakeignore names are refused where the recipe
// names them; plan lists the .bakeignore it read; the checks that need no
// build all fail at validate, every one at once, with file:line:col.
func TestRecipeReach(t *testing.T) {
	work := t.TempDir()
	for p, c := range map[string]string{
		"mono/.git/config":   "[http] extraheader = token",
		"mono/.bakeignore":   "*.key\n",
		"mono/r/host.key":    "k",
		"mono/r/up.yaml":     "apiVersion: bake/v1\nname: up\ncontext: ../..\nbase: {debian: {suite: bookworm}}\n",
		"mono/r/git.yaml":    "apiVersion: bake/v1\nname: g\ncontext: ..\nbase: {debian: {suite: bookworm}}\nfiles:\n  - {path: /etc/a, source: ../.git/config}\n  - {path: /etc/b, source: host.key}\n",
		"mono/r/checks.yaml": "apiVersion: bake/v1\nname: c\nbase: {debian: {suite: bookworm}}\nusers: [{name: admin}]\nfiles: [{path: /etc/a, content: x, owner: \"admin:wheel\"}]\nkernel: {cmdline: \"quiet x;reboot\"}\nfirstboot: {admin_user: root}\n",
		"mono/r/fine.yaml":   "apiVersion: bake/v1\nname: fine\nbase: {debian: {suite: bookworm}}\n",
	} {
		full := filepath.Join(work, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(work)
	real, _ := filepath.EvalSymlinks(work)
	for _, c := range []struct {
		args []string
		code int
		want []string // lines of stderr (prefixes), or of stdout when code is 0
	}{
		{[]string{"validate", "mono/r/up.yaml"}, 2, []string{
			"mono/r/up.yaml:3:10: context: context ../.. resolves to " + real + ", above the repository root " + real + "/mono (keep the context inside the repository",
			"bake: 1 problem(s) in the recipe; nothing was built"}},
		{[]string{"plan", "mono/r/up.yaml"}, 2, []string{"mono/r/up.yaml:3:10: context: context ../.. resolves to", "bake: 1 problem(s)"}},
		{[]string{"build", "mono/r/up.yaml"}, 2, []string{"mono/r/up.yaml:3:10: context: context ../.. resolves to", "bake: 1 problem(s)"}},
		{[]string{"validate", "--context", ".", "mono/r/up.yaml"}, 0, []string{`mono/r/up.yaml: recipe "up" is valid`}},
		{[]string{"validate", "--context", "mono", "mono/r/up.yaml"}, 2, []string{"mono/r/up.yaml:3:10: context: context ../.. resolves to " + real + ", outside --context " + real + "/mono", "bake: 1 problem(s)"}},
		{[]string{"validate", "--context", "/", "mono/r/fine.yaml"}, 2, []string{"mono/r/fine.yaml: --context / is / (the whole build host)", "bake: 1 problem(s)"}},
		{[]string{"validate", "mono/r/git.yaml"}, 2, []string{
			"mono/r/git.yaml:6:28: files[0].source: ../.git/config is inside .git, which is never read by bake",
			"mono/r/git.yaml:7:28: files[1].source: host.key is excluded by " + real + "/mono/.bakeignore",
			"bake: 2 problem(s)"}},
		{[]string{"validate", "mono/r/checks.yaml"}, 2, []string{
			`mono/r/checks.yaml:5:43: files[0].owner: group "wheel" is neither declared`,
			`mono/r/checks.yaml:6:19: kernel.cmdline: argument "x;reboot" contains ';'`,
			"mono/r/checks.yaml:7:25: firstboot.admin_user: the admin user must not be root",
			"bake: 3 problem(s)"}},
	} {
		out, errs, code := run(t, c.args...)
		text := errs
		if c.code == 0 {
			text = out
		}
		lines := strings.Split(strings.TrimSpace(text), "\n")
		ok := code == c.code && len(lines) == len(c.want)
		for i := 0; ok && i < len(lines); i++ {
			ok = strings.HasPrefix(lines[i], c.want[i])
		}
		if !ok {
			t.Errorf("bake %s: exit %d, stdout %q, stderr:\n%s\nwant exit %d and lines starting with\n%s", strings.Join(c.args, " "), code, out, errs, c.code, strings.Join(c.want, "\n"))
		}
	}
	// plan shows the .bakeignore among what it reads.
	os.WriteFile(filepath.Join(work, "mono/r/plan.yaml"), []byte("apiVersion: bake/v1\nname: p\ncontext: ..\nbase: {debian: {suite: bookworm}}\n"), 0o644)
	out, errs, code := run(t, "plan", "mono/r/plan.yaml")
	if want := "        ignore file: " + real + "/mono/.bakeignore\n"; code != 0 || !strings.Contains(out, "reads from the build host:\n        recipe: "+real+"/mono/r/plan.yaml\n        context: "+real+"/mono\n"+want) {
		t.Errorf("bake plan: exit %d, stderr %s, stdout:\n%s\nwant the lines\n%s", code, errs, out, want)
	}
}
