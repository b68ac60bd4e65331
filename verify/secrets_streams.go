package verify

// Compressed streams in the secret scan: recognising them at a block
// boundary, decoding them within bounds (bytes out, memory, depth), and
// telling a stream the scan read to its end (or to where its data ends)
// from one it had to stop reading, which fails the check.

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// The scanner's default bounds (Scanner's fields of the same names). A
// real appliance image (Debian, 2021 MiB of disk data) held 3422 streams
// decompressing to 281 MiB, the largest tens of MiB, scanned in 8 s; a
// synthetic disk of that shape (TestScanApplianceProfile) takes about 7
// s of CPU, 8 s on the 2-core host, with 11 MiB of decoder memory. The
// bounds leave that an order of magnitude of room, and cap what a crafted
// disk costs: the scan decodes gzip, zstd and lz4 at 170-240 MB/s of CPU,
// xz at 50, bzip2 at 17 (BENCHMARKS.md, "Secret scan").
const (
	// DefaultMaxStreamBytes: one stream may decompress to 2 GiB, three
	// times the largest layer of a Node.js image; a gzip bomb stops there
	// after 2.4 s of CPU and fails the check.
	DefaultMaxStreamBytes = 2 << 30
	// DefaultMaxTotalBytes: all streams together, 4 GiB: 14 times the
	// real image's 281 MiB; at most 25 s of CPU for gzip, 90 s for xz,
	// 4 min for bzip2.
	DefaultMaxTotalBytes = 4 << 30
	// DefaultMaxWindow: the history one stream's decoder may keep (zstd
	// window, xz dictionary), 128 MiB: what the zstd tool itself decodes
	// without --memory (window log 27); xz -9 uses 64 MiB.
	DefaultMaxWindow = 128 << 20
	// DefaultMaxMemory: the memory the streams being decoded at once may
	// reserve (windows, dictionaries, buffers): 1 GiB, room for seven
	// streams with the largest window beside many small ones; a real
	// image's streams hardly overlap and use a few MiB.
	DefaultMaxMemory = 1 << 30
	// DefaultMaxDepth: nesting. A layer's npm cache .tgz holding a
	// package's fixture .tgz holding a .gz is depth 4; a stream deeper
	// than 6 fails the check.
	DefaultMaxDepth = 6
	// DefaultMaxActive: streams decoded at once.
	DefaultMaxActive = 64
)

// streamOverhead is what any decoded stream holds besides its decoder:
// the scan buffer and the input buffer.
const streamOverhead = ChunkSize + 64<<10 + 64<<10

// magic names the compressed format starting at b, if any: the magic
// number and whatever else of the header is fixed or checksummed, so that
// random bytes seldom pass.
func magic(b []byte) string {
	switch {
	case len(b) >= 4 && b[0] == 0x1f && b[1] == 0x8b && b[2] == 8 && b[3]&0xe0 == 0:
		return "gzip"
	case len(b) >= 5 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd && b[4]&0x08 == 0:
		return "zstd"
	case len(b) >= 12 && bytes.Equal(b[:6], xzMagic) && b[6] == 0 && b[7]&0xf0 == 0 &&
		crc32.ChecksumIEEE(b[6:8]) == binary.LittleEndian.Uint32(b[8:12]):
		return "xz"
	case len(b) >= 10 && b[0] == 'B' && b[1] == 'Z' && b[2] == 'h' && b[3] >= '1' && b[3] <= '9' &&
		(bytes.Equal(b[4:10], bz2Block) || bytes.Equal(b[4:10], bz2End)):
		return "bzip2"
	case len(b) >= 7 && binary.LittleEndian.Uint32(b) == 0x184d2204 && b[4]&0xc2 == 0x40 && b[5]&0x8f == 0 && b[5]>>4 >= 4:
		return "lz4"
	case len(b) >= 8 && binary.LittleEndian.Uint32(b) == 0x184c2102 && binary.LittleEndian.Uint32(b[4:]) > 0 &&
		binary.LittleEndian.Uint32(b[4:]) <= lz4LegacyBound:
		return "lz4" // the legacy frame (the kernel's, an initramfs's)
	}
	return ""
}

var (
	xzMagic  = []byte{0xfd, '7', 'z', 'X', 'Z', 0}
	bz2Block = []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}
	bz2End   = []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90}
)

// unscannedErr: the stream is real (it decoded, or its checked header
// says so) and the scan stopped reading it for a bound: the check fails.
type unscannedErr struct{ why string }

func (e *unscannedErr) Error() string { return e.why }

func unscanned(format string, args ...any) error {
	return &unscannedErr{fmt.Sprintf(format, args...)}
}

// reservation is one stream's share of Scanner.MaxMemory.
type reservation struct {
	s *Scanner
	n int64
}

// grow reserves up to total bytes for the stream; false when the bound
// does not leave that much.
func (r *reservation) grow(total int64) bool {
	if total <= r.n {
		return true
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.memory+total-r.n > r.s.MaxMemory {
		return false
	}
	r.s.memory += total - r.n
	r.n = total
	if r.s.memory > r.s.stats.PeakMemory {
		r.s.stats.PeakMemory = r.s.memory
	}
	return true
}

func (r *reservation) release() {
	r.s.mu.Lock()
	r.s.memory -= r.n
	r.n = 0
	r.s.mu.Unlock()
}

func (r *reservation) memoryBound(need int64) error {
	return unscanned("not decoded: it needs %s of decoder memory, and the streams being decoded at once leave less of the %s bound", iec(need), iec(r.s.MaxMemory))
}

// opened is a stream's decoder.
type opened struct {
	r     io.Reader
	close func()
	// mem: what the decoder holds at most (reserved before it runs).
	mem int64
	// note says what the content digest is not (xz with x86 BCJ).
	note func() string
}

// open checks the header of a stream of kind at br and returns its
// decoder; an error means it is not a stream of that kind after all
// (errZstdDict: a zstd frame the scan cannot decode, counted).
func (s *Scanner) open(kind string, br *bufio.Reader, res *reservation) (*opened, error) {
	switch kind {
	case "gzip":
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		return &opened{r: zr, close: func() { zr.Close() }, mem: 64 << 10}, nil
	case "zstd":
		hdr, _ := br.Peek(zstdMaxHeader)
		h, ok := parseZstdHeader(hdr)
		if !ok {
			return nil, errors.New("not a zstd frame header")
		}
		if h.dict != 0 {
			return nil, errZstdDict
		}
		if !zstdFirstBlockOK(br, h) {
			return nil, errors.New("zstd: the first block does not decode")
		}
		// A window over the bound is decoded with the bound's window (the
		// header rewritten): a frame that refers further back fails then,
		// after more than the bound's bytes (zstdReader).
		var src io.Reader = br
		window := h.window
		if window > uint64(s.MaxWindow) {
			window = uint64(s.MaxWindow)
			src = io.MultiReader(bytes.NewReader(h.withWindow(s.MaxWindow)), br)
			if _, err := br.Discard(h.size); err != nil {
				return nil, err
			}
		}
		// Later frames may use up to 8 MiB (the window of zstd -19) or
		// the first frame's, whichever is more.
		window = min(max(window, 8<<20), uint64(s.MaxWindow))
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(window), zstd.WithDecoderMaxMemory(window))
		if err != nil {
			return nil, err
		}
		// Lowmem: the window and 1 MiB, or twice the window under 2 MiB;
		// and a block's buffers.
		return &opened{r: &zstdReader{r: zr, declared: h.window, window: window}, close: zr.Close, mem: int64(window) + 2<<20 + zstdBufSize}, nil
	case "xz":
		x, err := newXZReader(br, s.MaxWindow, res)
		if err != nil {
			return nil, err
		}
		return &opened{r: x, close: func() {}, mem: 64 << 10, note: x.note}, nil
	case "bzip2":
		hdr, _ := br.Peek(4)
		level := int64(hdr[3] - '0')
		// compress/bzip2 keeps one block's BWT vector (4 bytes a byte).
		return &opened{r: bzip2.NewReader(br), close: func() {}, mem: level*100_000*4 + 256<<10}, nil
	case "lz4":
		hdr, _ := br.Peek(6)
		if binary.LittleEndian.Uint32(hdr) != 0x184d2204 {
			br.Discard(4)
			l := &lz4Legacy{r: br}
			return &opened{r: l, close: l.close, mem: 2 * lz4LegacyBound,
				note: func() string { return "legacy lz4 frame: no end mark or checksum, it ends where its blocks do" }}, nil
		}
		block := int64(64 << 10 << (2 * (hdr[5]>>4 - 4))) // 64 KiB .. 4 MiB
		zr := lz4.NewReader(br)
		if err := zr.Apply(lz4.ConcurrencyOption(1)); err != nil {
			return nil, err
		}
		// The compressed and decompressed block, and 64 KiB of history.
		return &opened{r: zr, close: func() {}, mem: 2*block + 256<<10}, nil
	}
	return nil, fmt.Errorf("unknown kind %q", kind)
}

// errZstdDict: a zstd frame naming a dictionary, which the scan does not
// have; random bytes after the magic name one three times in four, so it
// is counted (ScanStats.DictFrames), not a failure.
var errZstdDict = errors.New("zstd frame compressed with a dictionary")

// zstdMaxHeader: magic, descriptor, window, dictionary ID, content size,
// the first block's header.
const zstdMaxHeader = 4 + 1 + 1 + 4 + 8 + 3

type zstdFrameHeader struct {
	fhd    byte
	window uint64
	dict   uint32
	fcs    []byte // the content size field as written
	size   int    // bytes of the frame header
}

// parseZstdHeader parses a zstd frame header and checks the first
// block's header; ok false when the bytes cannot be a frame (reserved
// bit, block type, a block larger than the window or 128 KiB).
func parseZstdHeader(b []byte) (h zstdFrameHeader, ok bool) {
	if len(b) < 6 || binary.LittleEndian.Uint32(b) != 0xfd2fb528 {
		return h, false
	}
	h.fhd = b[4]
	if h.fhd&0x08 != 0 {
		return h, false
	}
	single := h.fhd&0x20 != 0
	pos := 5
	if !single {
		wd := b[pos]
		pos++
		base := uint64(1) << (10 + wd>>3)
		h.window = base + base/8*uint64(wd&7)
	}
	didSize := [4]int{0, 1, 2, 4}[h.fhd&3]
	fcsSize := [4]int{0, 2, 4, 8}[h.fhd>>6]
	if single && fcsSize == 0 {
		fcsSize = 1
	}
	if len(b) < pos+didSize+fcsSize+3 {
		return h, false
	}
	for i := range didSize {
		h.dict |= uint32(b[pos+i]) << (8 * i)
	}
	pos += didSize
	h.fcs = b[pos : pos+fcsSize]
	var fcs uint64
	for i := range fcsSize {
		fcs |= uint64(b[pos+i]) << (8 * i)
	}
	if fcsSize == 2 {
		fcs += 256
	}
	pos += fcsSize
	h.size = pos
	if single {
		h.window = max(fcs, 1<<10)
	}
	bh := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
	if typ := bh >> 1 & 3; typ == 3 || uint64(bh>>3) > min(h.window, 128<<10) {
		return h, false
	}
	return h, true
}

// zstdProbe decodes a frame's first block by itself (it cannot refer to
// anything before it), so that random bytes after the magic are told from
// a frame before a decoder allocates the window the header names.
var zstdProbe = sync.OnceValue(func() *zstd.Decoder {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(256<<10))
	if err != nil {
		panic(err)
	}
	return d
})

// zstdBufSize: a zstd stream's input buffer holds a frame header and two
// blocks, for zstdFirstBlockOK.
const zstdBufSize = 320 << 10

// zstdFirstBlockOK: the first compressed block decodes (after raw and RLE
// blocks, at most one, whose next block header must be valid too); true
// as well when the data ends first (the decoder then reads what there is).
func zstdFirstBlockOK(br *bufio.Reader, h zstdFrameHeader) bool {
	pos := h.size
	for range 2 {
		b, err := br.Peek(pos + 3)
		if err != nil {
			return true
		}
		bh := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		typ, size, last := bh>>1&3, int(bh>>3), bh&1 == 1
		if typ == 3 || uint64(size) > min(h.window, 128<<10) {
			return false
		}
		switch typ {
		case 2:
			blk, err := br.Peek(pos + 3 + size)
			if err != nil {
				return true
			}
			// The block alone, as the last of a frame with a 128 KiB window.
			frame := append([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3, byte(bh | 1), byte(bh >> 8), byte(bh >> 16)}, blk[pos+3:]...)
			_, err = zstdProbe().DecodeAll(frame, nil)
			return err == nil
		case 0:
			pos += 3 + size
		case 1:
			pos += 3 + 1
		}
		if last {
			return true
		}
	}
	return true
}

// withWindow is the header with its window set to the largest a window
// descriptor can say within max (a single-segment frame made a framed
// one, keeping its content size).
func (h zstdFrameHeader) withWindow(max int64) []byte {
	var wd byte
	for e := byte(0); e < 32; e++ {
		for m := byte(0); m < 8; m++ {
			base := uint64(1) << (10 + e)
			if base+base/8*uint64(m) <= uint64(max) {
				wd = e<<3 | m
			}
		}
	}
	fhd := h.fhd &^ 0x20
	if len(h.fcs) == 1 {
		fhd &^= 0xc0 // a one-byte size exists only in single-segment frames: dropped
		return []byte{0x28, 0xb5, 0x2f, 0xfd, fhd, wd}
	}
	return append([]byte{0x28, 0xb5, 0x2f, 0xfd, fhd, wd}, h.fcs...)
}

// zstdReader tells a frame that needs more history than the window the
// scan allows from a corrupt one: the first refers further back than
// that window after more than that many bytes.
type zstdReader struct {
	r        io.Reader
	n        int64
	declared uint64
	window   uint64
}

func (z *zstdReader) Read(p []byte) (int, error) {
	k, err := z.r.Read(p)
	z.n += int64(k)
	if err != nil && z.declared > z.window && uint64(z.n) > z.window && strings.Contains(err.Error(), "bigger than current history") {
		return k, unscanned("zstd window of %s, over the %s bound: the first %s scanned, then it refers further back", iec(int64(z.declared)), iec(int64(z.window)), iec(z.n))
	}
	return k, err
}

// boundedReader hands the scan at most limit bytes of a stream, and no
// more than the scan's total bound leaves; past either it reads one byte
// more to tell whether the stream goes on: if it does, it returns an
// *unscannedErr (the stream was not read to its end).
type boundedReader struct {
	r     io.Reader
	s     *Scanner
	n     int64
	limit int64
	why   string // when limit is reached and the stream goes on
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	want := min(int64(len(p)), b.limit-b.n)
	grant := b.s.take(want)
	if grant == 0 {
		var one [1]byte
		k, err := io.ReadFull(b.r, one[:])
		if k == 0 {
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			return 0, err
		}
		if want == 0 {
			return 0, &unscannedErr{b.why}
		}
		return 0, unscanned("the bound on decompressed bytes for the whole scan (%s) was reached", iec(b.s.MaxTotalBytes))
	}
	k, err := b.r.Read(p[:grant])
	if int64(k) < grant {
		b.s.take(int64(k) - grant) // give back what was not read
	}
	b.n += int64(k)
	return k, err
}

// take grants up to n bytes of the scan's total bound (n < 0 gives back).
func (s *Scanner) take(n int64) int64 {
	for {
		used := s.used.Load()
		g := min(n, s.MaxTotalBytes-used)
		if n > 0 && g <= 0 {
			return 0
		}
		if s.used.CompareAndSwap(used, used+g) {
			return g
		}
	}
}

// decode decodes one stream of kind read from r (a pipe the parent's scan
// feeds from the stream's first byte on) and scans what comes out.
func (s *Scanner) decode(ctx context.Context, r io.Reader, kind, where string, depth int) Stream {
	st := Stream{Where: where, Kind: kind}
	res := &reservation{s: s}
	defer res.release()
	size := 64 << 10
	if kind == "zstd" {
		size = zstdBufSize
	}
	br := bufio.NewReaderSize(r, size)
	dec, err := s.open(kind, br, res)
	if err != nil {
		var ue *unscannedErr
		if errors.As(err, &ue) {
			st.Unscanned = ue.why
		} else {
			st.Err = err.Error() // not a stream after all
		}
		return st
	}
	defer dec.close()
	if need := res.n + dec.mem + streamOverhead; !res.grow(need) {
		st.Unscanned = res.memoryBound(need).Error()
		return st
	}
	br2 := &boundedReader{r: dec.r, s: s, limit: s.MaxStreamBytes,
		why: fmt.Sprintf("decodes to more than %s (the bound for one stream): the first %s scanned", iec(s.MaxStreamBytes), iec(s.MaxStreamBytes))}
	if depth > s.MaxDepth {
		br2.limit, br2.why = 0, fmt.Sprintf("nested %d deep, deeper than the scan's bound (%d): not scanned", depth, s.MaxDepth)
	}
	h := sha256.New()
	n, err := s.scan(ctx, &errReader{r: io.TeeReader(br2, h)}, where, 0, depth, func(int) {})
	st.Size = n
	var de *decodeErr
	switch {
	case err == nil:
		st.Complete = true
	case errors.As(err, &de):
		var ue *unscannedErr
		switch e := de.err; {
		case errors.As(e, &ue):
			st.Unscanned = ue.why
		case n > 0 && endedCleanly(kind, e):
			// The stream ended; what follows on the disk is not more of it.
			st.Complete = true
		default:
			st.Err = e.Error()
		}
	default:
		st.Err = err.Error()
	}
	if st.Complete {
		st.SHA256 = fmtDigest(h)
		if dec.note != nil && dec.note() != "" {
			st.SHA256, st.Note = "", dec.note()
		}
	}
	return st
}

func fmtDigest(h hash.Hash) string { return fmt.Sprintf("%x", h.Sum(nil)) }

// endedCleanly: the decoder read a whole stream and then found bytes that
// do not continue it (the next file's or free blocks'), which zstd and
// compress/bzip2 report as errors.
func endedCleanly(kind string, err error) bool {
	switch kind {
	case "zstd":
		return strings.Contains(err.Error(), "magic number mismatch")
	case "bzip2":
		return strings.Contains(err.Error(), "bad magic value in continuation file")
	}
	return false
}

// iec prints a byte count: 2 GiB, 128 MiB, 1.5 MiB, 12 KiB.
func iec(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
