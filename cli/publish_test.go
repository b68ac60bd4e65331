package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bake publish's bad usage: exit 2 with one line, nothing written.
func TestPublishUsage(t *testing.T) {
	// s3 credentials from the environment, none from the machine's files.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	dir := t.TempDir()
	raw := filepath.Join(dir, "app.raw")
	os.WriteFile(raw, make([]byte, 4096), 0o644)
	os.WriteFile(filepath.Join(dir, "app.manifest.json"), []byte(`{"recipe":{"name":"app"},"source_date_epoch":1700000000,"outputs":[]}`), 0o644)
	noManifest := filepath.Join(dir, "other.qcow2")
	os.WriteFile(noManifest, append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 200)...), 0o644)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte("not a certificate\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"publish", raw}, "no --to given"},
		{[]string{"publish", "--to", "oci://r.example/a:1"}, "publish takes one IMAGE"},
		{[]string{"publish", raw, "--to", "r.example/a:1"}, "want oci://REGISTRY/REPO:TAG"},
		{[]string{"publish", raw, "--to", "oci://r.example/a"}, "tag"},
		{[]string{"publish", raw, "--to", "libvirt://x"}, "want libvirt://POOL/NAME"},
		{[]string{"publish", raw, "--to", "oci://r.example/a:1", "--connect", "qemu:///system"}, "--connect: for libvirt:// destinations only"},
		{[]string{"publish", raw, "--to", "oci://r.example/a:1", "--ca", ca}, "no PEM certificate"},
		{[]string{"publish", raw, "--to", "oci://r.example/a:1"}, "not a qcow2"},
		{[]string{"publish", noManifest, "--to", "oci://r.example/a:1"}, "other.manifest.json: no build manifest"},
		{[]string{"publish", raw, "--to", "s3://Bucket/a"}, "lower-case"},
		{[]string{"publish", raw, "--to", "s3://b/a", "--endpoint", "https://127.0.0.1:1"}, "bucket \"b\": want 3 to 63"},
		{[]string{"publish", raw, "--to", "s3://bucket"}, "no object key"},
		{[]string{"publish", raw, "--to", "s3://bucket/a", "--endpoint", "http://127.0.0.1:9000"}, "only HTTPS"},
		{[]string{"publish", raw, "--to", "s3://bucket/a", "--part-size", "4", "--endpoint", "https://127.0.0.1:1"}, "parts of 5 MiB to 5 GiB"},
		{[]string{"publish", raw, "--to", "s3://bucket/a", "--ca", ca}, "no PEM certificate"},
		{[]string{"publish", noManifest, "--to", "s3://bucket/a", "--endpoint", "https://127.0.0.1:1"}, "other.manifest.json: no build manifest"},
		{[]string{"publish", raw, "--to", "oci://r.example/a:1", "--abort"}, "are for s3:// destinations"},
		{[]string{"publish", raw, "--to", "oci://r.example/a:1", "--region", "eu-west-1"}, "are for s3:// destinations"},
		{[]string{"publish", raw, "--to", "libvirt://p/n", "--region", "eu-west-1", "--virt-type", "qemu", "--firmware", "bios"}, "are for s3:// destinations"},
		{[]string{"publish", raw, "--to", "s3://bucket/a", "--start"}, "--start: for libvirt:// destinations only"},
		{[]string{"publish", raw, "--to", "libvirt://p/n", "--force"}, "--ca and --force are for oci:// and s3:// destinations"},
	} {
		out, errs, code := run(t, c.args...)
		if code != ExitUsage || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and one line with %q", c.args, code, out, errs, c.want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 4 {
		t.Errorf("files left: %v", ents)
	}
	out, _, code := run(t, "publish", "--help")
	if code != 0 || !strings.Contains(out, "107:107") || !strings.Contains(out, "IMAGE.publish.json") || !strings.Contains(out, "s3://BUCKET/KEY") || !strings.Contains(out, "AWS_ACCESS_KEY_ID") || !strings.Contains(out, "libvirt://POOL/NAME") || !strings.Contains(out, "--ssh-forward") {
		t.Errorf("help: %d\n%s", code, out)
	}
}
