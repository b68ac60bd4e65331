package cloudimg

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// FuzzQcow2Header feeds a qcow2 file (header, L1 and L2 tables, data) to
// the checks Open runs before go-qcow2reader sees the file, and what passes
// them to go-qcow2reader and the partition-table reader. Nothing may panic,
// allocate more than the file's size justifies or run long. The seeds are
// a valid crafted image and every crafted hostile one of hostile_test.go;
// `go test` runs them as a unit test.
//
//	go test -run '^$' -fuzz FuzzQcow2Header -fuzztime 2m -fuzzminimizetime 5s ./cloudimg/
//
// (The default minimization, 60 s per new input, looks like a hang: the
// exec count stands still while the worker minimizes.)
func FuzzQcow2Header(f *testing.F) {
	f.Add(goodQcow2().b)
	for _, c := range hostileQcow2() {
		// The decompression bomb (320 KiB) stays a unit test: the
		// fuzzing engine crawls with inputs that large.
		if len(c.b) <= 64<<10 {
			f.Add(c.b)
		}
	}
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h, err := checkQcow2(ctx, bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if h.backingOffset != 0 || h.nbSnapshots != 0 || h.size > uint64(MaxVirtualSize) || h.clusterBits < 9 || h.clusterBits > 21 {
			t.Fatalf("accepted header %+v", h)
		}
		q, err := qcow2.Open(bytes.NewReader(b), nil)
		if err != nil || q.Readable() != nil {
			return
		}
		im := &Image{Format: FormatQcow2, Size: int64(h.size), qcow: q}
		readTable(ctx, im, im.Size)
		buf := make([]byte, 16<<10)
		for off := int64(0); off < im.Size && off < 128<<10; off += int64(len(buf)) {
			if _, err := im.ReadAt(buf, off); err != nil {
				break
			}
		}
	})
}

// FuzzGPT feeds a raw disk to the partition-table reader (GPT, and MBR
// when there is no GPT header). The seeds are good GPT and MBR disks and
// every crafted hostile GPT of hostile_test.go.
//
//	go test -run '^$' -fuzz FuzzGPT -fuzztime 2m -fuzzminimizetime 5s ./cloudimg/
func FuzzGPT(f *testing.F) {
	f.Add(gptDisk(8, 2, 4, 128, 0))
	f.Add(gptDisk(16, 2, 8, 256, 3))
	for _, c := range hostileGPT() {
		f.Add(c.b)
	}
	mbr := make([]byte, 4096)
	mbr[446+4] = 0x83
	mbr[446+8] = 2
	mbr[446+12] = 4
	mbr[510], mbr[511] = 0x55, 0xaa
	f.Add(mbr)
	f.Fuzz(func(t *testing.T, b []byte) {
		tb, err := readTable(context.Background(), bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if len(tb.Partitions) > maxPartitions {
			t.Fatalf("%d partitions", len(tb.Partitions))
		}
		for _, p := range tb.Partitions {
			if p.Offset < 0 || p.Size <= 0 || p.Offset+p.Size > int64(len(b)) {
				t.Fatalf("partition %d at %d+%d outside the %d-byte disk", p.Number, p.Offset, p.Size, len(b))
			}
		}
	})
}
