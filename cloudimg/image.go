package cloudimg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	"github.com/lima-vm/go-qcow2reader/convert"
	"github.com/lima-vm/go-qcow2reader/image"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// Image formats Open accepts.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Image is an opened base image: the file is open read-only and never
// written. ReadAt reads the virtual disk (through qcow2 when it is one).
type Image struct {
	Path        string
	Format      string // FormatRaw or FormatQcow2
	Size        int64  // virtual disk size in bytes
	FileSize    int64  // bytes of the file
	Compression string // qcow2: "zlib" or "zstd" (the kind compressed clusters would use)
	ClusterSize int    // qcow2 only
	Table       *Table // the partition table, already checked

	f    *os.File
	qcow image.Image
}

// ReadAt reads the virtual disk.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if im.qcow != nil {
		return im.qcow.ReadAt(p, off)
	}
	return im.f.ReadAt(p, off)
}

// Close closes the file.
func (im *Image) Close() error {
	if im.qcow != nil {
		return im.qcow.Close() // closes im.f
	}
	return im.f.Close()
}

// Open opens a base image read-only, tells qcow2 from raw by its magic, and
// refuses what bake cannot use, each with a message saying what is wrong:
// a qcow2 with a backing file, an encrypted or corrupt qcow2, a truncated
// file (qcow2 tables or clusters past the end of the file, a raw file shorter
// than its own GPT), a disk with neither GPT nor MBR, and a disk with no
// Linux partition.
func Open(path string) (_ *Image, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("base image: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("base image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("base image %s: not a regular file", path)
	}
	im := &Image{Path: path, Format: FormatRaw, Size: fi.Size(), FileSize: fi.Size(), f: f}
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("base image %s: %w", path, err)
	}
	if string(magic[:]) == qcow2.Magic {
		if err := im.openQcow2(); err != nil {
			return nil, fmt.Errorf("base image %s: %w", path, err)
		}
	}
	t, err := readTable(im, im.Size)
	if err != nil {
		return nil, fmt.Errorf("base image %s (%s): %w", path, im.Format, err)
	}
	if !t.hasLinux() {
		return nil, fmt.Errorf("base image %s: no Linux root partition: the %s partition table has %s", path, t.Type, t.describe())
	}
	im.Table = t
	return im, nil
}

// qcow2Header is the part of the qcow2 header (docs/interop/qcow2.txt)
// bake checks before handing the file to go-qcow2reader.
type qcow2Header struct {
	version, clusterBits, cryptMethod, l1Size, refcountClusters, nbSnapshots uint32
	backingOffset                                                            uint64
	backingSize                                                              uint32
	size, l1Offset, refcountOffset, snapshotsOffset                          uint64
	incompatible                                                             uint64
	headerLength                                                             uint32
	compressionType                                                          uint8
}

func parseQcow2Header(b []byte) (qcow2Header, error) {
	if len(b) < 72 {
		return qcow2Header{}, errors.New("truncated qcow2: the file is shorter than a qcow2 header")
	}
	be32 := func(o int) uint32 { return binary.BigEndian.Uint32(b[o:]) }
	be64 := func(o int) uint64 { return binary.BigEndian.Uint64(b[o:]) }
	h := qcow2Header{
		version: be32(4), backingOffset: be64(8), backingSize: be32(16), clusterBits: be32(20),
		size: be64(24), cryptMethod: be32(32), l1Size: be32(36), l1Offset: be64(40),
		refcountOffset: be64(48), refcountClusters: be32(56), nbSnapshots: be32(60), snapshotsOffset: be64(64),
		headerLength: 72,
	}
	if h.version != 2 && h.version != 3 {
		return h, fmt.Errorf("qcow2 version %d is not supported (only 2 and 3)", h.version)
	}
	if h.version == 3 {
		if len(b) < 104 {
			return h, errors.New("truncated qcow2: the file is shorter than a version 3 header")
		}
		h.incompatible = be64(72)
		h.headerLength = be32(100)
		if h.headerLength > 104 && len(b) > 104 {
			h.compressionType = b[104]
		}
	}
	return h, nil
}

func (im *Image) openQcow2() error {
	hdr := make([]byte, 4096)
	n, err := im.f.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	h, err := parseQcow2Header(hdr[:n])
	if err != nil {
		return err
	}
	im.Format = FormatQcow2
	if h.backingOffset != 0 {
		name := "?"
		if h.backingSize > 0 && h.backingSize <= 1023 {
			b := make([]byte, h.backingSize)
			if _, err := im.f.ReadAt(b, int64(h.backingOffset)); err == nil {
				name = string(b)
			}
		}
		return fmt.Errorf("qcow2 with a backing file (%q) is not supported: bake needs a self-contained image; flatten it with `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`", name)
	}
	switch h.cryptMethod {
	case 0:
	case 1:
		return errors.New("encrypted qcow2 (AES) is not supported: decrypt it with qemu-img convert first")
	case 2:
		return errors.New("encrypted qcow2 (LUKS) is not supported: decrypt it with qemu-img convert first")
	default:
		return fmt.Errorf("encrypted qcow2 (crypt_method %d) is not supported", h.cryptMethod)
	}
	if h.incompatible&(1<<1) != 0 {
		return errors.New("qcow2 is marked corrupt by QEMU; check it with `qemu-img check -r all` on a copy")
	}
	if h.incompatible&(1<<2) != 0 {
		return errors.New("qcow2 with an external data file is not supported: bake needs a self-contained image")
	}
	if unknown := h.incompatible &^ (1<<0 | 1<<3 | 1<<4); unknown != 0 {
		return fmt.Errorf("qcow2 uses incompatible features bake does not know (bits %#x)", unknown)
	}
	if h.clusterBits < 9 || h.clusterBits > 21 {
		return fmt.Errorf("qcow2 cluster_bits %d is invalid", h.clusterBits)
	}
	if h.size == 0 {
		return errors.New("qcow2 virtual disk size is 0")
	}
	im.ClusterSize = 1 << h.clusterBits
	im.Size = int64(h.size)
	switch h.compressionType {
	case 0:
		im.Compression = "zlib"
	case 1:
		im.Compression = "zstd"
	default:
		return fmt.Errorf("qcow2 compression type %d is not supported (only zlib and zstd)", h.compressionType)
	}
	if err := checkQcow2Extents(im.f, h, im.FileSize); err != nil {
		return err
	}
	q, err := qcow2.Open(im.f, nil)
	if err != nil {
		return err
	}
	if err := q.Readable(); err != nil {
		q.Close()
		return err
	}
	im.qcow = q
	return nil
}

// checkQcow2Extents refuses a qcow2 whose tables or clusters lie past the end
// of the file: that is what an interrupted download or copy leaves, and
// without this check it would only show as an I/O error (or zeros) deep
// inside the extraction.
func checkQcow2Extents(f io.ReaderAt, h qcow2Header, fileSize int64) error {
	cluster := uint64(1) << h.clusterBits
	fsz := uint64(fileSize)
	truncated := func(what string, off, n uint64) error {
		return fmt.Errorf("truncated qcow2: %s at bytes %d-%d lies past the end of the file (%d bytes); download or copy it again", what, off, off+n, fileSize)
	}
	if l1 := uint64(h.l1Size) * 8; h.l1Offset+l1 > fsz {
		return truncated("the L1 table", h.l1Offset, l1)
	}
	if rc := uint64(h.refcountClusters) * cluster; h.refcountOffset+rc > fsz {
		return truncated("the refcount table", h.refcountOffset, rc)
	}
	if h.nbSnapshots > 0 && h.snapshotsOffset >= fsz {
		return truncated("the snapshot table", h.snapshotsOffset, 0)
	}
	l1 := make([]byte, uint64(h.l1Size)*8)
	if _, err := f.ReadAt(l1, int64(h.l1Offset)); err != nil {
		return fmt.Errorf("reading the qcow2 L1 table: %w", err)
	}
	extended := h.incompatible&(1<<4) != 0
	entry := uint64(8)
	if extended {
		entry = 16
	}
	x := 62 - (h.clusterBits - 8) // compressed descriptor: offset bits below x
	l2 := make([]byte, cluster)
	for i := uint64(0); i < uint64(h.l1Size); i++ {
		l2Off := binary.BigEndian.Uint64(l1[i*8:]) & 0x00fffffffffffe00
		if l2Off == 0 {
			continue
		}
		if l2Off+cluster > fsz {
			return truncated(fmt.Sprintf("L2 table %d", i), l2Off, cluster)
		}
		if _, err := f.ReadAt(l2, int64(l2Off)); err != nil {
			return fmt.Errorf("reading qcow2 L2 table %d: %w", i, err)
		}
		for j := uint64(0); j+entry <= cluster; j += entry {
			e := binary.BigEndian.Uint64(l2[j:])
			if e&(1<<62) != 0 {
				desc := e & (1<<62 - 1)
				off := desc & (1<<x - 1)
				extra := desc >> x
				// The data starts at off and ends in the extra-th sector
				// after the one holding off; that sector must start inside
				// the file (qemu does not pad the last one).
				lastSector := off&^511 + extra*512
				if off >= fsz || lastSector >= fsz {
					return truncated(fmt.Sprintf("compressed cluster %d", i*cluster/entry+j/entry), off, lastSector+512-off)
				}
				continue
			}
			off := e & 0x00fffffffffffe00
			if off != 0 && off+cluster > fsz {
				return truncated(fmt.Sprintf("cluster %d", i*cluster/entry+j/entry), off, cluster)
			}
		}
	}
	return nil
}

func init() {
	qcow2.SetDecompressor(qcow2.CompressionTypeZstd, newZstdReader)
	qcow2.SetDecompressor(qcow2.CompressionTypeZlib, newFlateReader)
}

// Deflate readers are reused too: go-qcow2reader's default makes a new
// compress/flate reader (and a bufio.Reader for it) for every cluster,
// which made converting Debian's zlib-compressed images 4x slower than
// zstd ones here. klauspost's flate is a drop-in, faster decoder.
var flateReaders sync.Pool

type flateReader struct {
	br *bufio.Reader
	fr io.ReadCloser
}

func (f *flateReader) Read(p []byte) (int, error) { return f.fr.Read(p) }

func (f *flateReader) Close() error {
	f.br.Reset(nil)
	flateReaders.Put(f)
	return nil
}

func newFlateReader(r io.Reader) (io.ReadCloser, error) {
	if f, ok := flateReaders.Get().(*flateReader); ok {
		f.br.Reset(r)
		if err := f.fr.(flate.Resetter).Reset(f.br, nil); err == nil {
			return f, nil
		}
	}
	br := bufio.NewReaderSize(r, 64<<10)
	return &flateReader{br: br, fr: flate.NewReader(br)}, nil
}

// zstd decoders are reused: one is needed per compressed cluster read, and
// making one allocates its window buffers.
var zstdDecoders sync.Pool

type zstdReader struct{ d *zstd.Decoder }

func (z *zstdReader) Read(p []byte) (int, error) { return z.d.Read(p) }

func (z *zstdReader) Close() error {
	_ = z.d.Reset(nil)
	zstdDecoders.Put(z.d)
	return nil
}

func newZstdReader(r io.Reader) (io.ReadCloser, error) {
	if d, ok := zstdDecoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return &zstdReader{d}, nil
		}
		d.Close()
	}
	d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return &zstdReader{d}, nil
}

// ToRaw writes the image's virtual disk to dst as a sparse raw file
// (created or replaced; removed again on failure). A qcow2 is converted with
// go-qcow2reader (zlib and zstd clusters); a raw image is copied, leaving
// holes where the input has zeros. The input is only read. Callers that
// only read the disk (Inspect, Extract) may use a raw image's own path
// instead of a copy.
func ToRaw(ctx context.Context, img *Image, dst string) (err error) {
	if fi, err := os.Stat(dst); err == nil {
		if src, serr := img.f.Stat(); serr == nil && os.SameFile(fi, src) {
			return fmt.Errorf("to raw: %s is the base image itself; it is never written", dst)
		}
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("to raw: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("to raw: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := out.Truncate(img.Size); err != nil {
		return fmt.Errorf("to raw: %w", err)
	}
	w := &ctxWriterAt{ctx: ctx, w: out}
	if img.qcow != nil {
		if err := convert.Convert(w, img.qcow, convert.Options{Workers: 4}); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("to raw: converting %s: %w", img.Path, err)
		}
	} else if err := sparseCopy(w, img.f, img.Size); err != nil {
		return fmt.Errorf("to raw: copying %s: %w", img.Path, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("to raw: %w", err)
	}
	return nil
}

// ctxWriterAt stops a conversion when the context ends.
type ctxWriterAt struct {
	ctx context.Context
	w   io.WriterAt
}

func (c *ctxWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.WriteAt(p, off)
}

// sparseCopy copies size bytes, skipping all-zero blocks (the output was
// truncated to size, so they stay holes).
func sparseCopy(w *ctxWriterAt, r io.ReaderAt, size int64) error {
	const block = 1 << 20
	buf := make([]byte, block)
	zero := make([]byte, block)
	for off := int64(0); off < size; off += block {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		n := int(min(block, size-off))
		if _, err := r.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if bytes.Equal(buf[:n], zero[:n]) {
			continue
		}
		if _, err := w.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return nil
}
