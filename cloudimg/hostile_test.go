package cloudimg

// Regression tests for hostile images (issue 12): every input is crafted
// here, in memory or in t.TempDir(); no binary blob is committed. Each
// refusal must come within a 30 s deadline and allocate little (the
// allocations of the call are measured with runtime.MemStats, under a
// 512 MiB soft memory limit): before the checks, these inputs made bake
// allocate terabytes, expand kilobytes into gigabytes, scan for minutes or
// block forever.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// bounded runs f under a 30 s deadline and a 512 MiB soft memory limit
// and fails when f allocated more than maxAlloc bytes or took longer than
// the deadline.
func bounded(t *testing.T, maxAlloc uint64, f func(ctx context.Context)) {
	t.Helper()
	old := debug.SetMemoryLimit(512 << 20)
	defer debug.SetMemoryLimit(old)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	f(ctx)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > maxAlloc {
		t.Errorf("allocated %d bytes, more than %d", got, maxAlloc)
	}
	if ctx.Err() != nil || took > 30*time.Second {
		t.Errorf("took %s: past the 30 s deadline", took)
	}
}

// qb builds a qcow2 v3 image in memory: the header in cluster 0, the
// refcount table in cluster 1, the L1 table from cluster 2; L2 tables and
// data clusters are appended by alloc.
type qb struct {
	b       []byte
	cluster uint64
	bits    uint32
	l1      uint64
}

func newQB(bits uint32, size uint64) *qb {
	cl := uint64(1) << bits
	l1n := (size + cl*(cl/8) - 1) / (cl * (cl / 8))
	l1Clusters := (l1n*8 + cl - 1) / cl
	q := &qb{b: make([]byte, cl*(2+l1Clusters)), cluster: cl, bits: bits, l1: 2 * cl}
	h := q.b
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[20:], bits)
	binary.BigEndian.PutUint64(h[24:], size)
	binary.BigEndian.PutUint32(h[36:], uint32(l1n))
	binary.BigEndian.PutUint64(h[40:], q.l1)
	binary.BigEndian.PutUint64(h[48:], cl)
	binary.BigEndian.PutUint32(h[56:], 1)
	binary.BigEndian.PutUint32(h[96:], 4)
	binary.BigEndian.PutUint32(h[100:], 104)
	return q
}

func (q *qb) alloc(fill byte) uint64 {
	off := uint64(len(q.b))
	q.b = append(q.b, bytes.Repeat([]byte{fill}, int(q.cluster))...)
	return off
}

func (q *qb) setL1(i int, l2 uint64) {
	binary.BigEndian.PutUint64(q.b[q.l1+uint64(i)*8:], l2|1<<63)
}

func (q *qb) setL2(l2 uint64, j int, v uint64) { binary.BigEndian.PutUint64(q.b[l2+uint64(j)*8:], v) }

func (q *qb) be32(o int, v uint32) { binary.BigEndian.PutUint32(q.b[o:], v) }
func (q *qb) be64(o int, v uint64) { binary.BigEndian.PutUint64(q.b[o:], v) }

// goodQcow2 has two L2 tables and three data clusters of its own.
func goodQcow2() *qb {
	q := newQB(9, 1<<20) // 512-byte clusters, 1 MiB: 32 L1 entries
	a, b := q.alloc(0), q.alloc(0)
	q.setL1(0, a)
	q.setL1(5, b)
	q.setL2(a, 0, q.alloc('A')|1<<63)
	q.setL2(a, 63, q.alloc('B')|1<<63)
	q.setL2(b, 1, q.alloc('C')|1<<63)
	return q
}

func checkBytes(ctx context.Context, b []byte) error {
	_, err := checkQcow2(ctx, bytes.NewReader(b), int64(len(b)))
	return err
}

func TestCheckQcow2AcceptsCrafted(t *testing.T) {
	q := goodQcow2()
	if err := checkBytes(context.Background(), q.b); err != nil {
		t.Fatal(err)
	}
	// And go-qcow2reader reads it as built.
	img, err := qcow2.Open(bytes.NewReader(q.b), nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	for _, c := range []struct {
		off  int64
		want byte
	}{{0, 'A'}, {63 * 512, 'B'}, {5*64*512 + 512, 'C'}, {512, 0}} {
		if _, err := img.ReadAt(buf, c.off); err != nil || buf[0] != c.want || buf[511] != c.want {
			t.Errorf("virtual byte %d: %q, %v; want %q", c.off, buf[0], err, c.want)
		}
	}
}

// hostileQcow2 are the crafted qcow2 images every check must refuse; the
// fuzz target starts from them too.
func hostileQcow2() []struct {
	name string
	b    []byte
	want string
} {
	var out []struct {
		name string
		b    []byte
		want string
	}
	add := func(name, want string, mutate func(q *qb)) {
		q := goodQcow2()
		mutate(q)
		out = append(out, struct {
			name string
			b    []byte
			want string
		}{name, q.b, want})
	}
	add("l1 size overflows", "L1 table of 4294967295 entries", func(q *qb) { q.be32(36, 0xffffffff) })
	add("l1 offset overflows", "L1 table offset", func(q *qb) { q.be64(40, 0xfffffffffffffe00+1) })
	add("l1 offset past eof", "truncated qcow2", func(q *qb) { q.be64(40, 1<<62) })
	add("l1 too small", "too small", func(q *qb) { q.be32(36, 1) })
	add("cluster bits 30", "cluster_bits 30", func(q *qb) { q.be32(20, 30) })
	add("cluster bits 8", "cluster_bits 8", func(q *qb) { q.be32(20, 8) })
	add("virtual size 10 TiB", "above bake's limit", func(q *qb) { q.be64(24, 10<<40) })
	add("refcount table huge", "refcount table of", func(q *qb) { q.be32(56, 0x7fffffff) })
	add("refcount table unaligned", "refcount table offset", func(q *qb) { q.be64(48, 513) })
	add("header length", "header_length", func(q *qb) { q.be32(100, 4096+8) })
	add("snapshots", "internal snapshot", func(q *qb) { q.be32(60, 1); q.be64(64, 512) })
	add("backing file", "backing file", func(q *qb) {
		q.be64(8, 200)
		q.be32(16, 10)
		copy(q.b[200:], "/etc/passw")
	})
	add("external data file", "external data file", func(q *qb) { q.b[79] |= 4 })
	add("shared L2 table", "L2 table 1 at byte", func(q *qb) {
		// Every L1 entry points at the first L2 table.
		l2 := binary.BigEndian.Uint64(q.b[q.l1:]) &^ (1 << 63)
		for i := 0; i < 32; i++ {
			q.setL1(i, l2)
		}
	})
	add("shared data cluster", "data cluster 1", func(q *qb) {
		// Every entry of an L2 table points at one data cluster.
		l2 := binary.BigEndian.Uint64(q.b[q.l1:]) &^ (1 << 63)
		d := binary.BigEndian.Uint64(q.b[l2:])
		for j := 0; j < 64; j++ {
			q.setL2(l2, j, d)
		}
	})
	add("data in the L1 table", "already used", func(q *qb) {
		l2 := binary.BigEndian.Uint64(q.b[q.l1:]) &^ (1 << 63)
		q.setL2(l2, 2, q.l1|1<<63)
	})
	add("data in the header", "already used", func(q *qb) {
		l2 := binary.BigEndian.Uint64(q.b[q.l1:]) &^ (1 << 63)
		q.setL2(l2, 2, 0x200|1<<63) // cluster 1 (the refcount table)
	})
	add("unaligned data", "not on a cluster boundary", func(q *qb) {
		*q = *newQB(10, 1<<20) // 1 KiB clusters
		l2 := q.alloc(0)
		q.setL1(0, l2)
		q.setL2(l2, 0, (q.alloc('A')+512)|1<<63)
	})
	add("shared compressed cluster", "compressed cluster at byte", func(q *qb) {
		l2 := binary.BigEndian.Uint64(q.b[q.l1:]) &^ (1 << 63)
		c := q.alloc(0)
		for j := 0; j < 64; j++ {
			q.setL2(l2, j, 1<<62|c)
		}
	})
	add("compressed in an L2 table", "compressed cluster at byte", func(q *qb) {
		l2 := binary.BigEndian.Uint64(q.b[q.l1:]) &^ (1 << 63)
		q.setL2(l2, 3, 1<<62|(l2+100))
	})
	add("compressed bomb", "decompression bomb", func(q *qb) {
		// 64 KiB clusters, 1 GiB: one L2 table of 8192 compressed
		// clusters starting one byte apart in one cluster, 512 MiB from a
		// file of 320 KiB.
		*q = *newQB(16, 1<<30)
		l2 := q.alloc(0)
		q.setL1(0, l2)
		c := q.alloc(0)
		for j := 0; j < 8192; j++ {
			q.setL2(l2, j, 1<<62|(c+uint64(j)))
		}
	})
	return out
}

func TestCheckQcow2RefusesHostile(t *testing.T) {
	for _, c := range hostileQcow2() {
		t.Run(c.name, func(t *testing.T) {
			var err error
			bounded(t, 8<<20, func(ctx context.Context) { err = checkBytes(ctx, c.b) })
			wantErr(t, err, c.want)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

// The same refusals through Open, on files: nothing but the file is
// read, and the file is not changed.
func TestOpenRefusesHostileQcow2(t *testing.T) {
	dir := t.TempDir()
	for _, c := range hostileQcow2() {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".qcow2")
			if err := os.WriteFile(p, c.b, 0o644); err != nil {
				t.Fatal(err)
			}
			var err error
			bounded(t, 8<<20, func(ctx context.Context) { _, err = Open(ctx, p) })
			wantErr(t, err, c.want, p)
			if format, err := CheckFile(context.Background(), p); err == nil {
				t.Errorf("CheckFile accepted it as %s", format)
			}
		})
	}
}

// The crafted images of the issue at their real scale: a 10 TiB virtual
// disk, an L1 table claiming 32 GiB, one L2 table shared by 4 million L1
// entries (2 MiB clusters). Refused at once, allocating a few MiB.
func TestOpenRefusesHugeQcow2(t *testing.T) {
	dir := t.TempDir()
	big := func(name string, mutate func(q *qb)) string {
		q := newQB(16, 1<<30)
		mutate(q)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, q.b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name string
		p    string
		want string
	}{
		{"10 TiB", big("10t.qcow2", func(q *qb) { q.be64(24, 10<<40); q.be32(36, 160) }), "above bake's limit"},
		{"L1 of 32 GiB", big("l1.qcow2", func(q *qb) { q.be32(36, 1<<32-1); q.be64(40, 1<<63) }), "L1 table of"},
		{"shared L2 table", big("l2.qcow2", func(q *qb) {
			// 2 MiB clusters, 2 TiB: 4 L1 entries, all one L2 table.
			q.be32(20, 21)
			q.be64(24, 2<<40)
			q.be32(36, 4)
			q.be64(40, 2<<20)
			q.be64(48, 0)
			q.be32(56, 0)
			q.b = append(q.b, make([]byte, 6<<20-len(q.b))...)
			for i := 0; i < 4; i++ {
				binary.BigEndian.PutUint64(q.b[2<<20+i*8:], 4<<20)
			}
		}), "L2 table 1 at byte"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			bounded(t, 48<<20, func(ctx context.Context) { _, err = Open(ctx, c.p) })
			wantErr(t, err, c.want)
		})
	}
}

// A cancelled context stops the scan of the tables.
func TestCheckQcow2HonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := checkBytes(ctx, goodQcow2().b)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

// A FIFO named as an image is refused at once instead of blocking in
// open(2) for a writer that never comes.
func TestOpenRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "image.qcow2")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal("mkfifo:", err)
	}
	calls := map[string]func(ctx context.Context) error{
		"Open":      func(ctx context.Context) error { _, err := Open(ctx, fifo); return err },
		"CheckFile": func(ctx context.Context) error { _, err := CheckFile(ctx, fifo); return err },
		"Inspect":   func(ctx context.Context) error { _, err := Inspect(ctx, fifo); return err },
		"Fetch": func(ctx context.Context) error {
			_, err := Fetch(ctx, Source{Path: fifo, SHA256: strings.Repeat("0", 64)}, "", nil)
			return err
		},
		"FetchOpen": func(ctx context.Context) error {
			_, err := FetchOpen(ctx, Source{Path: fifo, SHA256: strings.Repeat("0", 64)}, "", nil)
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- call(context.Background()) }()
			select {
			case err := <-done:
				wantErr(t, err, "not a regular file", "FIFO")
			case <-time.After(10 * time.Second):
				// Unblock the open so the goroutine ends.
				if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
				t.Fatal("blocked on the FIFO")
			}
		})
	}
	// A directory and /dev/null are no images either.
	for _, p := range []string{dir, "/dev/null"} {
		_, err := Open(context.Background(), p)
		wantErr(t, err, "not a regular file")
	}
}

// gptDisk builds a raw disk of sectors sectors: a protective MBR, a GPT
// header at LBA 1 describing numEntries entries of entrySize bytes at
// entriesLBA, and, when the array fits, the array with one Linux partition
// in entry 1 (and n more when more > 0). Both CRCs are right.
func gptDisk(sectors uint64, entriesLBA uint64, numEntries, entrySize uint32, more int) []byte {
	b := make([]byte, sectors*SectorSize)
	b[446+4] = 0xee
	binary.LittleEndian.PutUint32(b[446+8:], 1)
	binary.LittleEndian.PutUint32(b[446+12:], uint32(sectors-1))
	b[510], b[511] = 0x55, 0xaa
	arrLen := uint64(numEntries) * uint64(entrySize)
	var arr []byte
	if arrLen <= 1<<20 && entriesLBA < sectors && entriesLBA*SectorSize+arrLen <= uint64(len(b)) {
		arr = b[entriesLBA*SectorSize : entriesLBA*SectorSize+arrLen]
		linux := []byte{0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4}
		for i := 0; i <= more && uint32(i) < numEntries; i++ {
			e := arr[uint64(i)*uint64(entrySize):]
			copy(e, linux)
			e[16] = byte(i + 1)
			lba := 2 + uint64(i)%(sectors-3)
			binary.LittleEndian.PutUint64(e[32:], lba)
			binary.LittleEndian.PutUint64(e[40:], lba)
		}
	}
	h := b[SectorSize : 2*SectorSize]
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x10000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], 1)
	binary.LittleEndian.PutUint64(h[32:], sectors-1)
	binary.LittleEndian.PutUint64(h[40:], 2+(arrLen+SectorSize-1)/SectorSize)
	binary.LittleEndian.PutUint64(h[48:], sectors-2)
	binary.LittleEndian.PutUint64(h[72:], entriesLBA)
	binary.LittleEndian.PutUint32(h[80:], numEntries)
	binary.LittleEndian.PutUint32(h[84:], entrySize)
	binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(arr))
	clear(h[16:20])
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return b
}

func hostileGPT() []struct {
	name string
	b    []byte
	want string
} {
	return []struct {
		name string
		b    []byte
		want string
	}{
		{"entry size 2 GiB", gptDisk(16, 2, 4096, 1<<31, 0), "entry size of 2147483648 bytes"},
		{"entry size 4 GiB - 8", gptDisk(16, 2, 4096, 1<<32-8, 0), "entry size"},
		{"entry size 136", gptDisk(16, 2, 128, 136, 0), "entry size of 136"},
		{"entry size 8192", gptDisk(16, 2, 4, 8192, 0), "entry size of 8192"},
		{"array of 4 GiB", gptDisk(16, 2, 1<<31-1, 4096, 0), "not a valid entry array"},
		{"array of 2 MiB", gptDisk(16, 2, 16384, 128, 0), "not a valid entry array"},
		{"no entries", gptDisk(16, 2, 0, 128, 0), "not a valid entry array"},
		{"array past the disk", gptDisk(16, 1<<60, 128, 128, 0), "does not lie inside the disk"},
		{"array over the header", gptDisk(16, 1, 128, 128, 0), "does not lie inside the disk"},
		{"array at the end", gptDisk(16, 12, 128, 128, 0), "does not lie inside the disk"},
		{"200 partitions", gptDisk(80, 2, 256, 128, 199), "more than 128 partitions"},
	}
}

func TestReadTableRefusesHostileGPT(t *testing.T) {
	// The disk is a good one with the right values.
	if tb, err := readTable(context.Background(), bytes.NewReader(gptDisk(2048, 2, 128, 128, 0)), 2048*SectorSize); err != nil || len(tb.Partitions) != 1 {
		t.Fatalf("good GPT: %v %+v", err, tb)
	}
	if tb, err := readTable(context.Background(), bytes.NewReader(gptDisk(2048, 2, 64, 256, 3)), 2048*SectorSize); err != nil || len(tb.Partitions) != 4 {
		t.Fatalf("good GPT with 256-byte entries: %v %+v", err, tb)
	}
	dir := t.TempDir()
	for _, c := range hostileGPT() {
		t.Run(c.name, func(t *testing.T) {
			var err error
			bounded(t, 4<<20, func(ctx context.Context) {
				_, err = readTable(ctx, bytes.NewReader(c.b), int64(len(c.b)))
			})
			wantErr(t, err, c.want)
			// And through Open, as bake inspect reads it.
			p := filepath.Join(dir, "disk.raw")
			if err := os.WriteFile(p, c.b, 0o644); err != nil {
				t.Fatal(err)
			}
			bounded(t, 4<<20, func(ctx context.Context) { _, err = Open(ctx, p) })
			wantErr(t, err, c.want)
		})
	}
}

// A download stops at the size limit: a declared size above it is refused
// before the body is read, an undeclared one is cut off one byte past it;
// either way nothing is left in the cache.
func TestFetchStopsAtMaxSize(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 3<<20)
	var declared atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if declared.Load() {
			w.Header().Set("Content-Length", "3145728")
		}
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	}))
	defer srv.Close()
	s256, _ := digests(body)
	for _, d := range []bool{true, false} {
		declared.Store(d)
		cache := t.TempDir()
		var err error
		bounded(t, 16<<20, func(ctx context.Context) {
			_, err = Fetch(ctx, Source{URL: srv.URL + "/big.qcow2", SHA256: s256, MaxSize: 1 << 20}, cache, nil)
		})
		var big *TooLargeError
		if !errors.As(err, &big) {
			t.Fatalf("declared=%v: err %v, want a TooLargeError", d, err)
		}
		wantErr(t, err, "1048576 bytes")
		left, _ := filepath.Glob(filepath.Join(cache, "sha256-*"))
		for _, l := range left {
			if !strings.HasSuffix(l, ".lock") {
				t.Errorf("declared=%v: left %s behind", d, l)
			}
		}
	}
	// At the limit exactly, it is accepted.
	declared.Store(false)
	if _, err := Fetch(context.Background(), Source{URL: srv.URL + "/big.qcow2", SHA256: s256, MaxSize: 3 << 20}, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if (Source{}).maxSize() != DefaultMaxSize || DefaultMaxSize != 16<<30 {
		t.Error("default limit")
	}
}

// FetchOpen builds the Image from the descriptor it hashed: a file put in
// the place of the path afterwards is not what the Image reads.
func TestFetchOpenUsesTheHashedFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.raw")
	makeGPT(t, p, 8*mib, testPart{num: 1, typ: TypeLinuxData, start: 2048, end: 8191})
	good, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s256, _ := digests(good)
	img, err := FetchOpen(context.Background(), Source{Path: p, SHA256: s256}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	evil := filepath.Join(dir, "evil.raw")
	if err := os.WriteFile(evil, bytes.Repeat([]byte{0xee}, len(good)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(evil, p); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(good))
	if _, err := img.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, good) {
		t.Error("the Image reads the file now at the path, not the one hashed")
	}
	// And a mismatch is refused before any parsing.
	if _, err := FetchOpen(context.Background(), Source{Path: p, SHA256: s256}, "", nil); err == nil {
		t.Error("FetchOpen accepted the replaced file")
	}
}

// A raw disk whose data is all zeros writes nothing during ToRaw; a
// cancelled context must still stop it (the reads check it too).
func TestToRawHonoursContext(t *testing.T) {
	q := goodQcow2()
	p := filepath.Join(t.TempDir(), "x.qcow2")
	if err := os.WriteFile(p, q.b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	qi, err := qcow2.Open(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	im := &Image{Path: p, Format: FormatQcow2, Size: qi.Size(), f: f, qcow: qi}
	defer im.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dst := filepath.Join(t.TempDir(), "out.raw")
	if err := ToRaw(ctx, im, dst); !errors.Is(err, context.Canceled) {
		t.Errorf("ToRaw with a cancelled context: %v", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("ToRaw left %s behind", dst)
	}
}
