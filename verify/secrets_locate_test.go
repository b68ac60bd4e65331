package verify

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/testenv"
)

// A secret found on a disk names the file that holds it (or says the
// block is free), in the summary line and the evidence, with the secret
// itself redacted there too, even in a file's name.
func TestSecretsLocated(t *testing.T) {
	testenv.NeedTools(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	tok := strings.Repeat("T0k", 20) + "abcd"
	tree := filepath.Join(dir, "tree")
	for name, content := range map[string]string{
		"var/log/app/out.log":    "started\ntoken=" + tok + "\n",
		"home/u/" + tok + ".txt": "a file named after the token\n",
	} {
		p := filepath.Join(tree, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw := filepath.Join(dir, "disk.raw")
	const size = 32 << 20
	gptDisk(t, raw, size)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 2048*512), "-d", tree, raw,
		fmt.Sprintf("%dk", (size/512-34-2048+1)/2)).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	s := NewScanner(NeedleRule("instance-gateway-token", tok))
	if err := s.ScanFile(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	s.locate(context.Background(), raw)
	st, ev := s.verdict()
	t.Log(ev)
	if st != Fail {
		t.Fatalf("status %s", st)
	}
	first := strings.SplitN(ev, "\n", 2)[0]
	if !strings.Contains(first, `instance-gateway-token at disk+0x`) || !strings.Contains(first, `partition 1 (ext4), block `) || !strings.Contains(first, `"/var/log/app/out.log"`) {
		t.Errorf("summary line %q: want the rule, the offset and the file", first)
	}
	if !strings.Contains(ev, "FOUND instance-gateway-token at disk+0x") {
		t.Errorf("no FOUND line")
	}
	if strings.Contains(ev, tok) {
		t.Errorf("the token is in the evidence")
	}
}
