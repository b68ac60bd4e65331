//go:build integration

package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// bake convert of a qcow2 (made from a GPT image by qemu-img) to ova, vhd
// and gce: every file appears, SHA256SUMS keeps the build's line and gains
// one correct line per output, the OVA says UEFI (the image has an ESP),
// and nothing temporary is left.
func TestConvertCommand(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is not installed (scripts/install-deps.sh installs it)")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "app.raw")
	gptImage(t, raw)
	q := filepath.Join(dir, "app.qcow2")
	if b, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	os.Remove(raw)
	build := strings.Repeat("0", 64) + "  app.qcow2\n"
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(build), 0o644)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out, errs, code := run(t, "convert", q, "--format", "ova,vhd", "-f", "gce")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	t.Log(out)
	if !strings.Contains(out, "firmware uefi (from the partition table)") || !strings.Contains(out, "guest bytes equal the raw image's") {
		t.Errorf("output:\n%s", out)
	}
	sums, _ := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if !strings.Contains(string(sums), build) {
		t.Errorf("the build's line is gone:\n%s", sums)
	}
	for _, name := range []string{"app.ova", "app.vhd", "app.tar.gz"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		if !strings.Contains(string(sums), hex.EncodeToString(s[:])+"  "+name+"\n") {
			t.Errorf("SHA256SUMS lacks a right line for %s:\n%s", name, sums)
		}
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "SHA256SUMS app.ova app.qcow2 app.tar.gz app.vhd" {
		t.Errorf("folder holds %s", got)
	}
	ovf, err := exec.Command("tar", "-xOf", filepath.Join(dir, "app.ova"), "app.ovf").Output()
	if err != nil || !strings.Contains(string(ovf), `vmw:key="firmware" vmw:value="efi"`) || !strings.Contains(string(ovf), `vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="false"`) {
		t.Errorf("OVF (%v):\n%s", err, ovf)
	}
	// sha256sum -c agrees.
	cmd := exec.Command("sha256sum", "-c", "--ignore-missing", "--quiet", "SHA256SUMS")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "app.qcow2: FAILED") || strings.Count(string(b), "FAILED") != 1 {
		t.Errorf("sha256sum -c: only the made-up qcow2 line should fail: %v\n%s", err, b)
	}
	// --firmware bios is recorded as given; --format raw beside IMAGE
	// named as IMAGE is refused.
	out, errs, code = run(t, "convert", q, "-f", "ova", "--firmware", "bios", "--name", "bios", "-o", filepath.Join(dir, "b"))
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	ovf, _ = exec.Command("tar", "-xOf", filepath.Join(dir, "b", "bios.ova"), "bios.ovf").Output()
	if !strings.Contains(string(ovf), `vmw:value="bios"`) {
		t.Errorf("--firmware bios:\n%s", ovf)
	}
	if _, errs, code := run(t, "convert", q, "-f", "qcow2"); code != 2 || !strings.Contains(errs, "over IMAGE itself") {
		t.Errorf("convert over the image: exit %d, %s", code, errs)
	}
}
