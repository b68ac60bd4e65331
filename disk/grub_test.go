package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bakeimg/bake/internal/execx"
)

// syntheticBootImg is a 512-byte "boot.img": recognisable bytes, a 0xEB jmp
// at the drive check, and the boot signature.
func syntheticBootImg() []byte {
	b := make([]byte, 512)
	for i := range b {
		b[i] = byte(i)
	}
	b[bootDriveCheck], b[bootDriveCheck+1] = 0xeb, 0x05
	b[510], b[511] = 0x55, 0xaa
	return b
}

func TestPatchBootImage(t *testing.T) {
	in := syntheticBootImg()
	orig := bytes.Clone(in)
	code, err := patchBootImage(in, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, orig) {
		t.Error("patchBootImage modified its input")
	}
	if len(code) != 440 {
		t.Fatalf("boot code is %d bytes, want 440 (the partition table starts at 446)", len(code))
	}
	if got := binary.LittleEndian.Uint64(code[0x5c:]); got != 2048 {
		t.Errorf("kernel sector = %d, want 2048", got)
	}
	if code[0x66] != 0x90 || code[0x67] != 0x90 {
		t.Errorf("drive check = %#x %#x, want NOPs", code[0x66], code[0x67])
	}
	// Everything else is boot.img unchanged.
	for i := range code {
		if (i >= 0x5c && i < 0x64) || i == 0x66 || i == 0x67 {
			continue
		}
		if code[i] != orig[i] {
			t.Fatalf("byte %#x changed: %#x -> %#x", i, orig[i], code[i])
		}
	}

	if _, err := patchBootImage(in[:400], 1); err == nil {
		t.Error("short boot.img accepted")
	}
	bad := bytes.Clone(orig)
	bad[511] = 0
	if _, err := patchBootImage(bad, 1); err == nil {
		t.Error("boot.img without signature accepted")
	}
}

// syntheticCore is a core.img the way grub-mkimage writes it: the first
// blocklist entry says {start 2, len sectors-1, segment 0x820}, the entry
// below it is the zero terminator.
func syntheticCore(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xa5
	}
	clear(b[400:500])
	sectors := (n + 511) / 512
	binary.LittleEndian.PutUint64(b[500:], 2)
	binary.LittleEndian.PutUint16(b[508:], uint16(sectors-1))
	binary.LittleEndian.PutUint16(b[510:], 0x820)
	return b
}

func TestPatchCoreImage(t *testing.T) {
	core := syntheticCore(146935) // a real Debian 12 core.img size: 287 sectors
	out, err := patchCoreImage(core, 2048, mib)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 287*512 {
		t.Fatalf("patched core.img is %d bytes, want padding to 287 sectors", len(out))
	}
	start := binary.LittleEndian.Uint64(out[500:])
	n := binary.LittleEndian.Uint16(out[508:])
	seg := binary.LittleEndian.Uint16(out[510:])
	if start != 2049 || n != 286 || seg != 0x820 {
		t.Errorf("blocklist = {start %d, len %d, seg %#x}, want {2049, 286, 0x820}", start, n, seg)
	}
	if !bytes.Equal(out[488:500], make([]byte, 12)) {
		t.Error("second blocklist entry is not a terminator")
	}
	if !bytes.Equal(out[512:len(core)], core[512:]) || !bytes.Equal(out[:400], core[:400]) {
		t.Error("core.img bytes outside the blocklist changed")
	}

	// Stale entries below the first one are cleared.
	stale := syntheticCore(4096)
	binary.LittleEndian.PutUint64(stale[488:], 99)
	binary.LittleEndian.PutUint16(stale[496:], 3)
	out, err = patchCoreImage(stale, 100, mib)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out[488:500], make([]byte, 12)) {
		t.Error("stale second blocklist entry not cleared")
	}
	if got := binary.LittleEndian.Uint64(out[500:]); got != 101 {
		t.Errorf("start = %d, want 101", got)
	}

	if _, err := patchCoreImage(syntheticCore(int(mib)+1), 2048, mib); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("core.img larger than the partition: err = %v", err)
	}
	if _, err := patchCoreImage(make([]byte, 300), 2048, mib); err == nil {
		t.Error("one-sector core.img accepted")
	}
}

func TestEarlyConfig(t *testing.T) {
	golden(t, "early.cfg.golden", []byte(earlyConfig("0f3c2d9e-8a4b-5c6d-9e0f-112233445566")))
}

func TestMkimageCommand(t *testing.T) {
	tree := fakeTree(t)
	rec := &fakeRunner{onMkimage: func(c execx.Cmd) {
		// The early config must exist inside the chroot while grub-mkimage runs.
		cfg := c.Args[slices.Index(c.Args, "--config")+1]
		data, err := os.ReadFile(filepath.Join(tree, cfg))
		if err != nil {
			t.Errorf("early config not in the tree during grub-mkimage: %v", err)
		}
		if !strings.Contains(string(data), "--fs-uuid --set=root 0f3c") {
			t.Errorf("early config = %q", data)
		}
	}}
	before, _ := os.Stat(tree)
	img, err := mkimage(context.Background(), rec, tree, "i386-pc", "0f3c2d9e-8a4b-5c6d-9e0f-112233445566", biosModules)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != 146935 {
		t.Errorf("image is %d bytes", len(img))
	}
	c := rec.Cmds[0]
	got := c.String()
	for _, want := range []string{"chroot " + tree + " /usr/bin/grub-mkimage --format i386-pc --directory /usr/lib/grub/i386-pc --prefix /boot/grub --config /.bake-grub-", "biosdisk part_gpt", "search_fs_uuid"} {
		if !strings.Contains(got, want) {
			t.Errorf("command %q lacks %q", got, want)
		}
	}
	entries, _ := os.ReadDir(tree)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".bake-grub-") {
			t.Errorf("temporary %s left in the tree", e.Name())
		}
	}
	after, _ := os.Stat(tree)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("tree root mtime changed: %v -> %v", before.ModTime(), after.ModTime())
	}

	if _, err := mkimage(context.Background(), rec, t.TempDir(), "i386-pc", "x", nil); err == nil || !strings.Contains(err.Error(), "grub-mkimage") {
		t.Errorf("tree without grub-mkimage: err = %v", err)
	}
}

func TestKernelArgSafe(t *testing.T) {
	for _, ok := range []string{"", "console=ttyS0,115200n8 quiet", "net.ifnames=0 systemd.unit=multi-user.target"} {
		if err := kernelArgSafe(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"a;reboot", "x=$foo", "'q'", "a\nb", "{x}"} {
		if err := kernelArgSafe(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
