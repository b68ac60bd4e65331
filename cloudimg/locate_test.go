package cloudimg

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLocateOffsets: where a byte of a disk lies, as secret findings name
// it: a file's block (by path), a free block a removed file held, a byte
// outside every partition, a partition without ext.
func TestLocateOffsets(t *testing.T) {
	needTool(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	tree := filepath.Join(dir, "root")
	kept := "KEPT-" + strings.Repeat("k", 40)
	gone := "GONE-" + strings.Repeat("g", 40)
	writeTree(t, tree, map[string]string{
		"var/log/app/kept.log": strings.Repeat("x", 5000) + kept + "\n",
		"var/tmp/gone.txt":     strings.Repeat("y", 100) + gone + "\n",
	})
	img := filepath.Join(dir, "disk.raw")
	makeGPT(t, img, 64*mib,
		testPart{num: 1, typ: TypeLinuxData, start: 34816, end: 131038},
		testPart{num: 15, typ: TypeESP, start: 2048, end: 34815})
	mkext4(t, img, 34816*512, (131038-34816+1)*512, "root", "0b0a7b00-0002-4c2d-8e4f-0000000000f1", tree)
	// The removed file's block is free and still holds its bytes.
	if out, err := exec.Command("debugfs", "-w", "-R", "rm /var/tmp/gone.txt", fmt.Sprintf("%s?offset=%d", img, 34816*512)).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rm: %v\n%s", err, out)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) int64 {
		i := bytes.Index(b, []byte(s))
		if i < 0 {
			t.Fatalf("%s not on the disk", s)
		}
		return int64(i)
	}
	offs := []int64{at(kept), at(gone), 100, 2048*512 + 4096}
	got, err := LocateOffsets(context.Background(), img, offs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(offs) {
		t.Fatalf("%d answers for %d offsets: %q", len(got), len(offs), got)
	}
	for i, want := range []string{
		`partition 1 (ext4), block `,
		`partition 1 (ext4), block `,
		`outside every partition`,
		`partition 15, 4096 bytes in (no filesystem`,
	} {
		if !strings.HasPrefix(got[i], want) {
			t.Errorf("offset %#x: %q, want it to start with %q", offs[i], got[i], want)
		}
	}
	if !strings.Contains(got[0], `"/var/log/app/kept.log"`) {
		t.Errorf("the kept file's byte: %q, want its path", got[0])
	}
	if !strings.Contains(got[1], "a free block") {
		t.Errorf("the removed file's byte: %q, want a free block", got[1])
	}
	for _, s := range got {
		t.Log(s)
	}
}
