package verify

// The containers the secret scan decodes itself: xz (its LZMA2 data by
// ulikunitz/xz's lzma package) and the legacy lz4 frame (its blocks by
// pierrec/lz4). Both are direct dependencies since issue 13; go-diskfs
// already brought them in (squashfs), the same versions.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"strings"
	"sync"

	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz/lzma"
)

// The legacy lz4 frame's blocks: 8 MiB decompressed, at most this
// compressed (LZ4_compressBound).
const (
	lz4LegacyBlock = 8 << 20
	lz4LegacyBound = lz4LegacyBlock + lz4LegacyBlock/255 + 16
)

// lz4Legacy decodes the legacy lz4 frame (lz4 -l; the kernel's and an
// initramfs's): after the magic, blocks each a 4-byte size and an lz4
// block of at most 8 MiB. It has no end mark: it ends where a size is not
// one (zeros, the next file's bytes). Its buffers are reused (pierrec's
// Reader allocates 16 MiB for each, random bytes after the magic too).
type lz4Legacy struct {
	r        *bufio.Reader
	src, dst *[]byte
	out      []byte
	blocks   int
	err      error
}

var lz4Bufs = sync.Pool{New: func() any { b := make([]byte, lz4LegacyBound); return &b }}

func (l *lz4Legacy) Read(p []byte) (int, error) {
	for len(l.out) == 0 {
		if l.err != nil {
			return 0, l.err
		}
		l.err = l.next()
	}
	n := copy(p, l.out)
	l.out = l.out[n:]
	return n, nil
}

func (l *lz4Legacy) next() error {
	hdr, err := l.r.Peek(4)
	if err != nil {
		if l.blocks > 0 && err == io.EOF {
			return io.EOF
		}
		return unexpected(err)
	}
	size := binary.LittleEndian.Uint32(hdr)
	switch {
	case size == 0x184c2102:
		l.r.Discard(4) // another legacy frame follows
		return nil
	case size == 0 || size > lz4LegacyBound:
		if l.blocks > 0 {
			return io.EOF // the frame ended
		}
		return errors.New("lz4: bad legacy block size")
	}
	l.r.Discard(4)
	if l.src == nil {
		l.src, l.dst = lz4Bufs.Get().(*[]byte), lz4Bufs.Get().(*[]byte)
	}
	src := (*l.src)[:size]
	if _, err := io.ReadFull(l.r, src); err != nil {
		return unexpected(err)
	}
	n, err := lz4.UncompressBlock(src, (*l.dst)[:lz4LegacyBlock])
	if err != nil {
		return err
	}
	l.out = (*l.dst)[:n]
	l.blocks++
	return nil
}

func (l *lz4Legacy) close() {
	if l.src != nil {
		lz4Bufs.Put(l.src)
		lz4Bufs.Put(l.dst)
		l.src, l.dst, l.out = nil, nil, nil
	}
}

// xzReader decodes one .xz stream: the container read here, each block's
// LZMA2 data by ulikunitz/xz's lzma package, so that a block's
// dictionary is checked against the bound (and reserved) before it is
// allocated: xz.NewReader takes the dictionary size from the block header
// whatever it is (up to 4 GiB). Filters: LZMA2, optionally after x86 BCJ,
// which is not undone: BCJ rewrites only the four bytes after an E8 or E9
// byte when the fourth is 00 or FF, so every run of ASCII text (a key, a
// token) comes out as it went in. Other filters are not decoded (the
// stream is reported as not scanned).
type xzReader struct {
	r        *bufio.Reader
	max      int64
	res      *reservation
	check    byte
	block    *lzma.Reader2
	cr       countReader
	usize    int64 // declared uncompressed size, -1 if none
	csize    int64 // declared compressed size, -1 if none
	out      int64
	sum      hash.Hash
	held     int64 // the largest dictionary reserved
	declared int64 // the block's dictionary size
	done     bool
	bcj      bool
}

func newXZReader(r *bufio.Reader, max int64, res *reservation) (*xzReader, error) {
	hdr := make([]byte, 12)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	if !bytes.Equal(hdr[:6], xzMagic) || hdr[6] != 0 || hdr[7]&0xf0 != 0 || crc32.ChecksumIEEE(hdr[6:8]) != binary.LittleEndian.Uint32(hdr[8:]) {
		return nil, errors.New("xz: bad stream header")
	}
	return &xzReader{r: r, max: max, res: res, check: hdr[7]}, nil
}

func (x *xzReader) note() string {
	if x.bcj {
		return "x86 BCJ filter not undone (ASCII text passes it unchanged): digest not of the content"
	}
	return ""
}

func (x *xzReader) Read(p []byte) (int, error) {
	for {
		if x.done {
			return 0, io.EOF
		}
		if x.block == nil {
			if err := x.nextBlock(); err != nil {
				return 0, err
			}
			continue
		}
		n, err := x.block.Read(p)
		x.out += int64(n)
		if err != nil && err != io.EOF && x.declared > x.max && x.out > x.max && strings.Contains(err.Error(), "distance out of range") {
			return n, unscanned("xz dictionary of %s, over the %s bound: the first %s of a block scanned, then it refers further back", iec(x.declared), iec(x.max), iec(x.out))
		}
		if x.sum != nil {
			x.sum.Write(p[:n])
		}
		if err == io.EOF {
			err = x.endBlock()
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		return n, err
	}
}

var crc64Table = crc64.MakeTable(crc64.ECMA)

// nextBlock reads a block header (or the index, which ends the blocks).
func (x *xzReader) nextBlock() error {
	size, err := x.r.ReadByte()
	if err != nil {
		return unexpected(err)
	}
	if size == 0 {
		x.done = true // the index: no more blocks
		return nil
	}
	hdr := make([]byte, (int(size)+1)*4)
	hdr[0] = size
	if _, err := io.ReadFull(x.r, hdr[1:]); err != nil {
		return unexpected(err)
	}
	end := len(hdr) - 4
	if crc32.ChecksumIEEE(hdr[:end]) != binary.LittleEndian.Uint32(hdr[end:]) {
		return errors.New("xz: block header checksum mismatch")
	}
	flags := hdr[1]
	if flags&0x3c != 0 {
		return errors.New("xz: reserved block flags set")
	}
	pos := 2
	vli := func() (int64, error) {
		var v uint64
		for i := 0; i < 9 && pos < end; i++ {
			c := hdr[pos]
			pos++
			v |= uint64(c&0x7f) << (7 * i)
			if c&0x80 == 0 {
				if v > 1<<62 {
					break
				}
				return int64(v), nil
			}
		}
		return 0, errors.New("xz: bad number in block header")
	}
	x.csize, x.usize = -1, -1
	if flags&0x40 != 0 {
		if x.csize, err = vli(); err != nil {
			return err
		}
	}
	if flags&0x80 != 0 {
		if x.usize, err = vli(); err != nil {
			return err
		}
	}
	nf := int(flags&3) + 1
	var dict int64 = -1
	for i := range nf {
		id, err := vli()
		if err != nil {
			return err
		}
		psize, err := vli()
		if err != nil {
			return err
		}
		if int64(end-pos) < psize {
			return errors.New("xz: filter properties past the block header")
		}
		props := hdr[pos : pos+int(psize)]
		pos += int(psize)
		switch {
		case i == nf-1 && id == 0x21 && psize == 1:
			bits := props[0] & 0x3f
			if bits > 40 {
				return errors.New("xz: bad LZMA2 dictionary size")
			}
			dict = int64(0xffffffff)
			if bits < 40 {
				dict = int64(2|bits&1) << (bits/2 + 11)
			}
		case i < nf-1 && id == 0x04 && (psize == 0 || psize == 4):
			x.bcj = true
		default:
			return unscanned("xz filter %#x not decoded (only LZMA2, after x86 BCJ or not)", id)
		}
	}
	if dict < 0 {
		return errors.New("xz: no LZMA2 filter")
	}
	for _, c := range hdr[pos:end] {
		if c != 0 {
			return errors.New("xz: block header padding not zero")
		}
	}
	// No match reaches further back than the block's start.
	if x.usize >= 0 && x.usize < dict {
		dict = x.usize
	}
	dict = max(dict, lzma.MinDictCap)
	// A dictionary over the bound is decoded with the bound's: a block
	// that refers further back fails then, after more than that (Read).
	x.declared = dict
	dict = min(dict, x.max)
	if dict > x.held {
		if need := x.res.n - x.held + dict; !x.res.grow(need) {
			return x.res.memoryBound(need)
		}
		x.held = dict
	}
	x.cr = countReader{r: x.r}
	lr, err := lzma.Reader2Config{DictCap: int(dict)}.NewReader2(&x.cr)
	if err != nil {
		return err
	}
	x.block, x.out = lr, 0
	switch check := x.check; {
	case x.bcj:
		x.sum = nil // the check is of the content, which BCJ changed
	case check == 1:
		x.sum = crc32.NewIEEE()
	case check == 4:
		x.sum = crc64.New(crc64Table)
	case check == 10:
		x.sum = sha256.New()
	default:
		x.sum = nil
	}
	return nil
}

// xzCheckSize is the size of a block's check field by check type.
var xzCheckSize = [16]int{0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64}

// endBlock reads what follows a block's LZMA2 data (padding, check) and
// verifies the sizes the header declared and the check.
func (x *xzReader) endBlock() error {
	x.block = nil
	if (x.csize >= 0 && x.cr.n != x.csize) || (x.usize >= 0 && x.out != x.usize) {
		return errors.New("xz: block size differs from its header")
	}
	pad := make([]byte, (4-x.cr.n%4)%4+int64(xzCheckSize[x.check]))
	if _, err := io.ReadFull(x.r, pad); err != nil {
		return unexpected(err)
	}
	npad := len(pad) - xzCheckSize[x.check]
	for _, c := range pad[:npad] {
		if c != 0 {
			return errors.New("xz: block padding not zero")
		}
	}
	if x.sum != nil {
		got := x.sum.Sum(nil)
		if x.check == 1 || x.check == 4 {
			// CRC32 and CRC64 are stored little-endian.
			for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
				got[i], got[j] = got[j], got[i]
			}
		}
		if !bytes.Equal(got, pad[npad:]) {
			return errors.New("xz: block check mismatch")
		}
	}
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
