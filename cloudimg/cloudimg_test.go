package cloudimg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

const mib = 1 << 20

type testPart struct {
	num        int
	typ        string
	start, end uint64 // sectors
	guid       string
}

// makeGPT writes a GPT disk of size bytes with the given partitions.
func makeGPT(t *testing.T, path string, size int64, parts ...testPart) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "11111111-2222-3333-4444-555555555555"}
	for _, p := range parts {
		g := p.guid
		if g == "" {
			g = fmt.Sprintf("11111111-2222-3333-4444-%012d", p.num)
		}
		tbl.Partitions = append(tbl.Partitions, &gpt.Partition{
			Index: p.num, Start: p.start, End: p.end, Size: (p.end - p.start + 1) * 512,
			Type: gpt.Type(p.typ), GUID: g, Name: fmt.Sprintf("part%d", p.num),
		})
	}
	if err := tbl.Write(f, size); err != nil {
		t.Fatal(err)
	}
}

// qcow2Header builds a minimal qcow2 v3 header; mutate tweaks it.
func qcow2File(t *testing.T, dir string, fileSize int, mutate func(h []byte)) string {
	t.Helper()
	h := make([]byte, max(fileSize, 4096))
	copy(h, "QFI\xfb")
	be32 := func(o int, v uint32) { binary.BigEndian.PutUint32(h[o:], v) }
	be64 := func(o int, v uint64) { binary.BigEndian.PutUint64(h[o:], v) }
	be32(4, 3)        // version
	be32(20, 16)      // cluster_bits: 64 KiB
	be64(24, 64*mib)  // size
	be32(36, 1)       // l1_size
	be64(40, 0x30000) // l1_table_offset
	be64(48, 0x10000) // refcount_table_offset
	be32(56, 1)       // refcount_table_clusters
	be32(96, 4)       // refcount_order
	be32(100, 104)    // header_length
	if mutate != nil {
		mutate(h)
	}
	p := filepath.Join(dir, "test.qcow2")
	if err := os.WriteFile(p, h[:fileSize], 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantErr(t *testing.T, err error, substr ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", substr)
	}
	for _, s := range substr {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestOpenRefusesQcow2(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name   string
		size   int
		mutate func(h []byte)
		want   []string
	}{
		{"backing file", 0x40000, func(h []byte) {
			binary.BigEndian.PutUint64(h[8:], 0x200)
			binary.BigEndian.PutUint32(h[16:], 8)
			copy(h[0x200:], "base.img")
		}, []string{"backing file", `"base.img"`, "qemu-img convert"}},
		{"aes", 0x40000, func(h []byte) { binary.BigEndian.PutUint32(h[32:], 1) }, []string{"encrypted qcow2 (AES)"}},
		{"luks", 0x40000, func(h []byte) { binary.BigEndian.PutUint32(h[32:], 2) }, []string{"encrypted qcow2 (LUKS)"}},
		{"corrupt", 0x40000, func(h []byte) { h[79] |= 2 }, []string{"marked corrupt"}},
		{"external data", 0x40000, func(h []byte) { h[79] |= 4 }, []string{"external data file"}},
		{"l1 past eof", 0x30000, nil, []string{"truncated qcow2", "L1 table"}},
		{"refcount past eof", 0x40000, func(h []byte) { binary.BigEndian.PutUint64(h[48:], 0x50000) }, []string{"truncated qcow2", "refcount table"}},
		{"l2 past eof", 0x40000, func(h []byte) { binary.BigEndian.PutUint64(h[0x30000:], 0x80000) }, []string{"truncated qcow2", "L2 table 0"}},
		{"cluster past eof", 0x50000, func(h []byte) {
			binary.BigEndian.PutUint64(h[0x30000:], 0x40000)   // L2 table at 0x40000
			binary.BigEndian.PutUint64(h[0x40000+8:], 0x90000) // cluster 1 at 0x90000
		}, []string{"truncated qcow2", "cluster 1 "}},
		{"compressed cluster past eof", 0x50000, func(h []byte) {
			binary.BigEndian.PutUint64(h[0x30000:], 0x40000)
			// compressed: bit 62, offset 0x4ff00, 3 additional sectors -> runs past 0x50000
			x := uint(62 - (16 - 8))
			binary.BigEndian.PutUint64(h[0x40000:], 1<<62|3<<x|0x4ff00)
		}, []string{"truncated qcow2", "compressed cluster 0"}},
		{"version 1", 0x40000, func(h []byte) { binary.BigEndian.PutUint32(h[4:], 1) }, []string{"version 1"}},
		{"short header", 50, nil, []string{"truncated qcow2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := qcow2File(t, dir, c.size, c.mutate)
			before, _ := os.ReadFile(p)
			_, err := Open(context.Background(), p)
			wantErr(t, err, c.want...)
			after, _ := os.ReadFile(p)
			if !bytes.Equal(before, after) {
				t.Error("Open modified the image")
			}
		})
	}
}

func TestOpenRefusesDisks(t *testing.T) {
	dir := t.TempDir()

	empty := filepath.Join(dir, "empty.raw")
	if err := os.WriteFile(empty, make([]byte, 4*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), empty)
	wantErr(t, err, "no partition table", "neither a GPT nor an MBR")
	if !errors.Is(err, ErrNoPartitionTable) {
		t.Errorf("error %v is not ErrNoPartitionTable", err)
	}

	noLinux := filepath.Join(dir, "nolinux.raw")
	makeGPT(t, noLinux, 64*mib,
		testPart{num: 1, typ: TypeMicrosoftData, start: 40960, end: 100000},
		testPart{num: 15, typ: TypeESP, start: 2048, end: 40959})
	_, err = Open(context.Background(), noLinux)
	wantErr(t, err, "no Linux root partition", "1 Microsoft basic data, 15 EFI system")

	// A raw disk cut short: its GPT describes 64 MiB, the file has 32.
	trunc := filepath.Join(dir, "trunc.raw")
	makeGPT(t, trunc, 64*mib, testPart{num: 1, typ: TypeLinuxData, start: 2048, end: 100000})
	if err := os.Truncate(trunc, 32*mib); err != nil {
		t.Fatal(err)
	}
	_, err = Open(context.Background(), trunc)
	wantErr(t, err, "truncated image", "backup GPT header at LBA 131071", "65536 sectors")

	// A damaged entry array.
	bad := filepath.Join(dir, "bad.raw")
	makeGPT(t, bad, 64*mib, testPart{num: 1, typ: TypeLinuxData, start: 2048, end: 100000})
	f, _ := os.OpenFile(bad, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 2*512+40)
	f.Close()
	_, err = Open(context.Background(), bad)
	wantErr(t, err, "entry array's CRC does not match")

	// MBR disks are read too.
	mbr := filepath.Join(dir, "mbr.raw")
	b := make([]byte, 8*mib)
	e := b[446:]
	e[4] = 0x83
	binary.LittleEndian.PutUint32(e[8:], 2048)
	binary.LittleEndian.PutUint32(e[12:], 8192)
	b[510], b[511] = 0x55, 0xaa
	binary.LittleEndian.PutUint32(b[440:], 0xdeadbeef)
	if err := os.WriteFile(mbr, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := Open(context.Background(), mbr)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Table.Type != TableDOS || img.Table.DiskGUID != "deadbeef" || len(img.Table.Partitions) != 1 || img.Table.Partitions[0].Offset != 2048*512 {
		t.Errorf("MBR table: %+v", img.Table)
	}
}

func TestOpenGPT(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.raw")
	makeGPT(t, p, 64*mib,
		testPart{num: 1, typ: TypeRootX8664, start: 40960, end: 131038, guid: "AAAAAAAA-BBBB-CCCC-DDDD-000000000001"},
		testPart{num: 14, typ: TypeBIOSBoot, start: 2048, end: 8191},
		testPart{num: 15, typ: TypeESP, start: 8192, end: 40959})
	img, err := Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	tb := img.Table
	if tb.Type != TableGPT || tb.DiskGUID != "11111111-2222-3333-4444-555555555555" {
		t.Errorf("table %s %s", tb.Type, tb.DiskGUID)
	}
	if len(tb.Partitions) != 3 {
		t.Fatalf("partitions: %+v", tb.Partitions)
	}
	r := tb.Partition(1)
	if r.Type != TypeRootX8664 || r.GUID != "aaaaaaaa-bbbb-cccc-dddd-000000000001" || r.Offset != 40960*512 || r.Name != "part1" {
		t.Errorf("p1: %+v", r)
	}
	if tb.Partition(14).Type != TypeBIOSBoot || tb.Partition(15).TypeName() != "EFI system" {
		t.Errorf("p14/p15: %+v", tb.Partitions)
	}
	if img.Format != FormatRaw || img.Size != 64*mib {
		t.Errorf("format %s size %d", img.Format, img.Size)
	}
}

func digests(b []byte) (string, string) {
	s := sha256.Sum256(b)
	l := sha512.Sum512(b)
	return hex.EncodeToString(s[:]), hex.EncodeToString(l[:])
}

func TestFetchPath(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "base.img")
	data := bytes.Repeat([]byte("cloud image "), 10000)
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
	s256, s512 := digests(data)
	ctx := context.Background()
	got, err := Fetch(ctx, Source{Path: p, SHA256: strings.ToUpper(s256)}, "", nil)
	if err != nil || got != p {
		t.Fatalf("Fetch = %q, %v", got, err)
	}
	if _, err := Fetch(ctx, Source{Path: p, SHA512: s512}, "", nil); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Repeat("ab", 32)
	_, err = Fetch(ctx, Source{Path: p, SHA256: wrong}, "", nil)
	var mm *MismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("err = %v, want a MismatchError", err)
	}
	wantErr(t, err, "sha256 mismatch", wrong, s256, p)
	for _, bad := range []Source{
		{Path: p},
		{Path: p, SHA256: "abc"},
		{Path: p, SHA256: s256, SHA512: s512},
		{SHA256: s256},
		{Path: p, URL: "http://x/y", SHA256: s256},
	} {
		if _, err := Fetch(ctx, bad, dir, nil); err == nil {
			t.Errorf("Fetch(%+v) accepted", bad)
		}
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(after, data) {
		t.Error("Fetch modified the input")
	}
}

func TestFetchURLResumesAndCaches(t *testing.T) {
	data := make([]byte, 3*mib+123)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	s256, _ := digests(data)
	var requests, ranged atomic.Int32
	cut := atomic.Bool{}
	cut.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		if cut.Swap(false) {
			// First request: announce everything, send a third, drop.
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			w.WriteHeader(http.StatusOK)
			w.Write(data[:len(data)/3])
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		http.ServeContent(w, r, "debian.qcow2", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	cache := t.TempDir()
	var log bytes.Buffer
	got, err := Fetch(context.Background(), Source{URL: srv.URL + "/images/debian.qcow2", SHA256: s256}, cache, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if got != filepath.Join(cache, "sha256-"+s256) {
		t.Errorf("path %s", got)
	}
	b, _ := os.ReadFile(got)
	if !bytes.Equal(b, data) {
		t.Fatal("downloaded bytes differ")
	}
	if ranged.Load() != 1 {
		t.Errorf("%d ranged requests, want 1 (resume)\n%s", ranged.Load(), log.String())
	}
	if !strings.Contains(log.String(), "resuming") || !strings.Contains(log.String(), "downloading debian.qcow2: done") {
		t.Errorf("progress lines:\n%s", log.String())
	}
	// Second fetch: from the cache, no request.
	n := requests.Load()
	if _, err := Fetch(context.Background(), Source{URL: srv.URL + "/images/debian.qcow2", SHA256: s256}, cache, nil); err != nil {
		t.Fatal(err)
	}
	if requests.Load() != n {
		t.Error("cached image downloaded again")
	}
	// Wrong digest: refused, nothing left behind under that digest.
	wrong := strings.Repeat("0", 64)
	_, err = Fetch(context.Background(), Source{URL: srv.URL + "/images/debian.qcow2", SHA256: wrong}, cache, nil)
	wantErr(t, err, "sha256 mismatch", wrong, s256)
	for _, suffix := range []string{"", ".part"} {
		if _, err := os.Stat(filepath.Join(cache, "sha256-"+wrong+suffix)); err == nil {
			t.Errorf("sha256-%s%s left in the cache", wrong, suffix)
		}
	}
	// A 404 is not retried.
	_, err = Fetch(context.Background(), Source{URL: srv.URL + "/nope", SHA256: wrong}, cache, nil)
	if err == nil {
		t.Error("404 accepted")
	}
}

// needTool skips when an external tool is missing (unit tests run anywhere).
func needTool(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedTools(t, tools...)
}

func TestToRawMatchesQemuImg(t *testing.T) {
	needTool(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	makeGPT(t, raw, 64*mib, testPart{num: 1, typ: TypeLinuxData, start: 2048, end: 131038})
	// Content: compressible text, random-ish bytes, zeros, a partial cluster.
	f, _ := os.OpenFile(raw, os.O_RDWR, 0)
	text := bytes.Repeat([]byte("bake cloud image test data\n"), 40000)
	f.WriteAt(text, 2*mib)
	noise := make([]byte, 3*mib)
	x := uint32(12345)
	for i := range noise {
		x = x*1103515245 + 12345
		noise[i] = byte(x >> 16)
	}
	f.WriteAt(noise, 20*mib+777)
	f.WriteAt([]byte("tail"), 64*mib-34*512-100)
	f.Close()
	want, _ := os.ReadFile(raw)
	for _, comp := range []string{"zlib", "zstd"} {
		t.Run(comp, func(t *testing.T) {
			q := filepath.Join(dir, comp+".qcow2")
			out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type="+comp, raw, q).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-img: %v\n%s", err, out)
			}
			img, err := Open(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Format != FormatQcow2 || img.Compression != comp || img.Size != 64*mib {
				t.Errorf("format %s compression %s size %d", img.Format, img.Compression, img.Size)
			}
			dst := filepath.Join(dir, comp+".raw")
			if err := ToRaw(context.Background(), img, dst); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(dst)
			if !bytes.Equal(got, want) {
				t.Fatal("converted raw differs from the original")
			}
			// Sparse: far fewer blocks than the virtual size.
			var st syscallStat
			if statBlocks(dst, &st) && st.bytes > 16*mib {
				t.Errorf("converted raw uses %d bytes, not sparse", st.bytes)
			}
			// Truncated by a download cut short: refused.
			qb, _ := os.ReadFile(q)
			cutp := filepath.Join(dir, comp+"-cut.qcow2")
			os.WriteFile(cutp, qb[:len(qb)*2/3], 0o644)
			_, err = Open(context.Background(), cutp)
			wantErr(t, err, "truncated")
		})
	}
	// Raw input: a sparse copy, same bytes, and never onto itself.
	img, err := Open(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	dst := filepath.Join(dir, "copy.raw")
	if err := ToRaw(context.Background(), img, dst); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, want) {
		t.Fatal("raw copy differs")
	}
	wantErr(t, ToRaw(context.Background(), img, raw), "never written")
	// Cancelled: fails and leaves nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ToRaw(ctx, img, filepath.Join(dir, "cancelled.raw")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ToRaw: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cancelled.raw")); err == nil {
		t.Error("cancelled ToRaw left its output")
	}
}

func TestParseOSRelease(t *testing.T) {
	r := parseOSRelease([]byte("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n"))
	if r != (OSRelease{ID: "debian", VersionID: "12", VersionCodename: "bookworm", PrettyName: "Debian GNU/Linux 12 (bookworm)"}) {
		t.Errorf("%+v", r)
	}
	if n := countInstalled([]byte("Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nStatus: install ok installed\n")); n != 2 {
		t.Errorf("countInstalled = %d", n)
	}
	if k := kernelVersions([]string{"vmlinuz-6.1.0-9-amd64", "config-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64", "vmlinuz", "vmlinuz-x.dpkg-tmp"}); strings.Join(k, " ") != "6.1.0-10-amd64 6.1.0-9-amd64" {
		t.Errorf("kernels %v", k)
	}
}

func TestParseContentRange(t *testing.T) {
	for in, want := range map[string][2]int64{"bytes 100-199/1000": {100, 1000}, "bytes */1000": {-1, 1000}} {
		s, n, ok := parseContentRange(in)
		if !ok || s != want[0] || n != want[1] {
			t.Errorf("%q -> %d %d %v", in, s, n, ok)
		}
	}
	if _, _, ok := parseContentRange("items 1-2/3"); ok {
		t.Error("accepted items")
	}
}

var _ = io.Discard

type syscallStat struct{ bytes int64 }

func statBlocks(p string, st *syscallStat) bool {
	var s syscall.Stat_t
	if err := syscall.Stat(p, &s); err != nil {
		return false
	}
	st.bytes = s.Blocks * 512
	return true
}

// mkext4 makes an ext4 filesystem from dir inside img at offset, like a
// cloud image's partition (no root needed: mke2fs -d at an offset).
func mkext4(t *testing.T, img string, offset, size int64, label, uuid, dir string) {
	t.Helper()
	args := []string{"-q", "-F", "-t", "ext4", "-E", fmt.Sprintf("offset=%d", offset), "-U", uuid}
	if label != "" {
		args = append(args, "-L", label)
	}
	if dir != "" {
		args = append(args, "-d", dir)
	}
	args = append(args, img, fmt.Sprintf("%dk", size/1024))
	if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInspectUbuntuShape(t *testing.T) {
	needTool(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	rootTree, bootTree := filepath.Join(dir, "root"), filepath.Join(dir, "boot")
	writeTree(t, rootTree, map[string]string{
		"usr/lib/os-release":  "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nID=ubuntu\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\n",
		"etc/os-release":      "->../usr/lib/os-release",
		"var/lib/dpkg/status": "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: install ok installed\n\nPackage: c\nStatus: install ok installed\n",
		"boot/.keep":          "",
	})
	writeTree(t, bootTree, map[string]string{
		"vmlinuz-6.8.0-45-generic":    "kernel",
		"initrd.img-6.8.0-45-generic": "initrd",
		"grub/grub.cfg":               "# cfg",
	})
	img := filepath.Join(dir, "ubuntu.raw")
	makeGPT(t, img, 96*mib,
		testPart{num: 1, typ: TypeLinuxData, start: 131072, end: 196574, guid: "0b0a7b00-0001-4c2d-8e4f-000000000001"},
		testPart{num: 14, typ: TypeBIOSBoot, start: 2048, end: 10239},
		testPart{num: 15, typ: TypeESP, start: 10240, end: 75775},
		testPart{num: 16, typ: TypeXBOOTLDR, start: 75776, end: 131071})
	mkext4(t, img, 131072*512, (196574-131072+1)*512, "cloudimg-rootfs", "0b0a7b00-0002-4c2d-8e4f-0000000000f1", rootTree)
	mkext4(t, img, 75776*512, (131071-75776+1)*512, "BOOT", "0b0a7b00-0002-4c2d-8e4f-0000000000f6", bootTree)
	before, _ := os.ReadFile(img)

	l, err := Inspect(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	l.Print(&b)
	t.Log(b.String())
	if l.Root != 1 || l.RootFoundBy != "label cloudimg-rootfs" || l.Boot != 16 || l.ESP != 15 || l.BIOSBoot != 14 {
		t.Errorf("roles: root %d (%s) boot %d esp %d bios %d", l.Root, l.RootFoundBy, l.Boot, l.ESP, l.BIOSBoot)
	}
	r := l.RootPartition().FS
	if r.Type != "ext4" || r.UUID != "0b0a7b00-0002-4c2d-8e4f-0000000000f1" || r.Label != "cloudimg-rootfs" || r.BlockSize == 0 {
		t.Errorf("root fs %+v", r)
	}
	if l.BootPartition().FS.Label != "BOOT" {
		t.Errorf("boot fs %+v", l.BootPartition().FS)
	}
	if l.OS.ID != "ubuntu" || l.OS.VersionID != "24.04" || l.Packages != 3 || strings.Join(l.Kernels, ",") != "6.8.0-45-generic" {
		t.Errorf("os %+v packages %d kernels %v notes %v", l.OS, l.Packages, l.Kernels, l.Notes)
	}
	if err := l.Supported(); err != nil {
		t.Error(err)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
		t.Error("Inspect modified the image")
	}
	// The root found by content when neither type nor label says it.
	img2 := filepath.Join(dir, "plain.raw")
	makeGPT(t, img2, 64*mib,
		testPart{num: 1, typ: TypeLinuxData, start: 2048, end: 40959},
		testPart{num: 2, typ: TypeLinuxData, start: 40960, end: 131038})
	mkext4(t, img2, 2048*512, (40959-2048+1)*512, "", "00000000-0000-4000-8000-000000000001", bootTree)
	mkext4(t, img2, 40960*512, (131038-40960+1)*512, "", "00000000-0000-4000-8000-000000000002", rootTree)
	l2, err := Inspect(context.Background(), img2)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Root != 2 || l2.RootFoundBy != "/etc/os-release" || l2.Boot != 1 {
		t.Errorf("root %d by %q, boot %d", l2.Root, l2.RootFoundBy, l2.Boot)
	}
}

func TestInspectXFSRootNotSupported(t *testing.T) {
	img := filepath.Join(t.TempDir(), "xfs.raw")
	makeGPT(t, img, 64*mib, testPart{num: 1, typ: TypeRootX8664, start: 2048, end: 131038})
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	sb := make([]byte, 512)
	copy(sb, "XFSB")
	binary.BigEndian.PutUint32(sb[4:], 4096)
	copy(sb[32:], []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	copy(sb[108:], "rootfs")
	f.WriteAt(sb, 2048*512)
	f.Close()
	l, err := Inspect(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	if fs := l.RootPartition().FS; fs.Type != "xfs" || fs.Label != "rootfs" || fs.UUID != "01020304-0506-0708-090a-0b0c0d0e0f10" {
		t.Errorf("xfs %+v", fs)
	}
	wantErr(t, l.Supported(), "xfs is not supported yet")
	wantErr(t, Extract(context.Background(), img, l, filepath.Join(t.TempDir(), "tree")), "")
}

func TestBootChainChanges(t *testing.T) {
	tree := t.TempDir()
	writeTree(t, tree, map[string]string{
		"boot/vmlinuz-6.1.0-28-cloud-amd64": "k",
		"var/lib/dpkg/status": "Package: grub-pc-bin\nStatus: install ok installed\nVersion: 2.06-13\nArchitecture: amd64\n\n" +
			"Package: linux-image-6.1.0-28-cloud-amd64\nStatus: install ok installed\nVersion: 6.1.119-1\nArchitecture: amd64\n\n" +
			"Package: curl\nStatus: install ok installed\nVersion: 7.88\nArchitecture: amd64\n",
	})
	before, err := ReadBootChain(tree)
	if err != nil {
		t.Fatal(err)
	}
	if k, l := before.Changes(before); k || l {
		t.Error("unchanged chain reported as changed")
	}
	writeTree(t, tree, map[string]string{"boot/vmlinuz-6.1.0-28-amd64": "k2"})
	after, _ := ReadBootChain(tree)
	if k, l := before.Changes(after); !k || l {
		t.Errorf("new kernel: kernel %v loader %v", k, l)
	}
	if n := before.NewKernels(after); len(n) != 1 || n[0] != "6.1.0-28-amd64" {
		t.Errorf("NewKernels = %v", n)
	}
	os.WriteFile(filepath.Join(tree, "var/lib/dpkg/status"), []byte("Package: grub-pc-bin\nStatus: install ok installed\nVersion: 2.06-14\nArchitecture: amd64\n"), 0o644)
	after, _ = ReadBootChain(tree)
	if _, l := before.Changes(after); !l {
		t.Error("GRUB upgrade not seen")
	}
}

// TestReadRootFile: a file of the root filesystem read without mounting;
// missing is fs.ErrNotExist; a directory, a symlink and a file over the
// limit are refused, and the image is not changed.
func TestReadRootFile(t *testing.T) {
	needTool(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	rootTree := filepath.Join(dir, "root")
	writeTree(t, rootTree, map[string]string{
		"etc/os-release":              "ID=debian\n",
		"usr/share/bake/claims.json":  `{"version":1}` + "\n",
		"usr/share/bake/big":          strings.Repeat("x", 5000),
		"usr/share/bake/link":         "->claims.json",
		"usr/share/bake/sub/.keep":    "",
		"usr/share/bake/name with sp": "x",
	})
	img := filepath.Join(dir, "disk.raw")
	makeGPT(t, img, 64*mib, testPart{num: 1, typ: TypeRootX8664, start: 2048, end: 131038})
	mkext4(t, img, 2048*512, (131038-2048+1)*512, "", "00000000-0000-4000-8000-0000000000aa", rootTree)
	before := fileSHA(t, img)
	ctx := context.Background()
	b, err := ReadRootFile(ctx, img, "/usr/share/bake/claims.json", 1<<20)
	if err != nil || string(b) != `{"version":1}`+"\n" {
		t.Errorf("claims.json: %q, %v", b, err)
	}
	if _, err := ReadRootFile(ctx, img, "/usr/share/bake/none.json", 1<<20); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file: %v, want fs.ErrNotExist", err)
	}
	for name, want := range map[string]string{
		"/usr/share/bake/big":            "over the limit",
		"/usr/share/bake/link":           "not a regular file",
		"/usr/share/bake/sub":            "not a regular file",
		"/usr/share/bake/name with sp":   "want a clean absolute path",
		"usr/share/bake/claims.json":     "want a clean absolute path",
		"/usr/share/bake/../claims.json": "want a clean absolute path",
	} {
		_, err := ReadRootFile(ctx, img, name, 4096)
		wantErr(t, err, want)
	}
	if fileSHA(t, img) != before {
		t.Error("ReadRootFile changed the image")
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}
