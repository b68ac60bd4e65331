package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --user-data that is not a #cloud-config mapping, or is missing, is a
// usage error (exit 2) found before anything boots.
func TestVerifyUserDataRefused(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	for _, c := range []struct{ name, content, want string }{
		{"script.sh", "#!/bin/sh\necho hi\n", "first line must be #cloud-config"},
		{"list.yaml", "#cloud-config\n- a\n", "not a cloud-config mapping"},
		{"missing.yaml", "", "no such file"},
	} {
		p := filepath.Join(dir, c.name)
		if c.content != "" {
			os.WriteFile(p, []byte(c.content), 0o644)
		}
		_, errs, code := run(t, "verify", img, "--user-data", p)
		if code != 2 || !strings.Contains(errs, "--user-data") || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", c.name, code, errs, c.want)
		}
	}
}
