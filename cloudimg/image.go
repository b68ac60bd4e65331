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
	"slices"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	"github.com/lima-vm/go-qcow2reader/convert"
	"github.com/lima-vm/go-qcow2reader/image"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"

	"github.com/bakeimg/bake/internal/imgfile"
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

// Limits on what a qcow2 may ask of the reader. Every one is far above what
// a cloud image needs (Debian's and Ubuntu's: 2-10 GiB virtual, 64 KiB
// clusters, an L1 table of a few KiB) and keeps a hostile header from making
// bake allocate, read or write more than the file's own size justifies.
const (
	// DefaultMaxVirtualSize is the largest virtual disk Open accepts
	// unless MaxVirtualSize says otherwise: 2 TiB (a cloud image is a few
	// GiB; ToRaw makes a sparse file of this size).
	DefaultMaxVirtualSize = 2 << 40
	// maxL1Bytes and maxRefcountTableBytes are QEMU's own limits
	// (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE in block/qcow2.h): QEMU
	// refuses larger tables too.
	maxL1Bytes            = 32 << 20
	maxRefcountTableBytes = 8 << 20
	// maxHostClusters bounds the bitmap of used host clusters (64 MiB):
	// 32 TiB of file at 64 KiB clusters.
	maxHostClusters = 512 << 20
	// maxCompressedClusters bounds the list of compressed clusters
	// (8 bytes each, 64 MiB): 512 GiB of data at 64 KiB clusters.
	maxCompressedClusters = 8 << 20
	// maxCompressionRatio: the compressed clusters together may expand
	// to at most this many times the file's size. qemu-img convert -c
	// leaves all-zero clusters unallocated, so a real image is 2-5x
	// (Debian 12 genericcloud and Ubuntu 24.04: 563 MiB of data in
	// about 200 MiB, 2.8x); a few hundred KiB of crafted
	// clusters cannot expand to gigabytes.
	maxCompressionRatio = 256
)

// MaxVirtualSize is the largest qcow2 virtual disk size Open accepts.
var MaxVirtualSize int64 = DefaultMaxVirtualSize

// Open opens a base image read-only, tells qcow2 from raw by its magic, and
// refuses what bake cannot use, each with a message saying what is wrong:
// anything but a regular file (opened without blocking, so a FIFO cannot
// hang it), a qcow2 with a backing file, an external data file or internal
// snapshots, an encrypted or corrupt qcow2, a qcow2 whose header or tables
// are out of bounds (see checkQcow2), a truncated file (qcow2 tables or
// clusters past the end of the file, a raw file shorter than its own GPT), a
// disk with neither GPT nor MBR, and a disk with no Linux partition. The
// checks honour ctx.
func Open(ctx context.Context, path string) (_ *Image, err error) {
	f, fi, err := imgfile.OpenRegular(path)
	if err != nil {
		return nil, fmt.Errorf("base image: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	return openFile(ctx, path, f, fi.Size())
}

// openFile makes an Image of an open regular file; on error the caller
// closes f.
func openFile(ctx context.Context, path string, f *os.File, size int64) (*Image, error) {
	im := &Image{Path: path, Format: FormatRaw, Size: size, FileSize: size, f: f}
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("base image %s: %w", path, err)
	}
	if string(magic[:]) == qcow2.Magic {
		if err := im.openQcow2(ctx); err != nil {
			return nil, fmt.Errorf("base image %s: %w", path, err)
		}
	}
	t, err := readTable(ctx, im, im.Size)
	if err != nil {
		if im.qcow != nil {
			im.qcow.Close()
		}
		return nil, fmt.Errorf("base image %s (%s): %w", path, im.Format, err)
	}
	if !t.hasLinux() {
		if im.qcow != nil {
			im.qcow.Close()
		}
		return nil, fmt.Errorf("base image %s: no Linux root partition: the %s partition table has %s", path, t.Type, t.describe())
	}
	im.Table = t
	return im, nil
}

// CheckFile opens an image handed to bake (bake verify) the way Open does
// and, for a qcow2, runs all of Open's checks of the qcow2 structure (no
// backing or data file, no snapshots, bounded tables, no cluster used
// twice, bounded expansion); the partition table is not read. It returns
// the format, FormatRaw or FormatQcow2.
func CheckFile(ctx context.Context, path string) (string, error) {
	f, fi, err := imgfile.OpenRegular(path)
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("image %s: %w", path, err)
	}
	if string(magic[:]) != qcow2.Magic {
		return FormatRaw, nil
	}
	if _, err := checkQcow2(ctx, f, fi.Size()); err != nil {
		return "", fmt.Errorf("image %s: %w", path, err)
	}
	return FormatQcow2, nil
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
		if h.headerLength < 104 || h.headerLength%8 != 0 {
			return h, fmt.Errorf("qcow2 header_length %d is invalid (at least 104 and a multiple of 8)", h.headerLength)
		}
		if h.headerLength > 104 && len(b) > 104 {
			h.compressionType = b[104]
		}
	}
	return h, nil
}

func (im *Image) openQcow2(ctx context.Context) error {
	h, err := checkQcow2(ctx, im.f, im.FileSize)
	if err != nil {
		return err
	}
	im.Format = FormatQcow2
	im.ClusterSize = 1 << h.clusterBits
	im.Size = int64(h.size)
	im.Compression = map[uint8]string{0: "zlib", 1: "zstd"}[h.compressionType]
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

// checkQcow2 checks a qcow2 file of fileSize bytes before go-qcow2reader
// sees it: the header's fields against the format's limits and the file's
// real size (before anything is allocated from them), and then every L1
// and L2 entry: each table and cluster must lie inside the file, aligned,
// and no host cluster may be used twice (two L2 tables, two data clusters,
// or a table and data in one place), no two compressed clusters may start
// at the same byte, and the compressed clusters may not expand to more
// than maxCompressionRatio times the file. So reading the image costs at
// most what its own allocated clusters justify: a small file cannot stand
// for terabytes of data, and the scan of its tables reads each byte of the
// file at most once.
//
// Internal snapshots are refused rather than handled through refcounts: a
// snapshot legitimately shares clusters with the active layer, cloud
// images have none, and bake only ever reads the active layer (qemu-img
// convert makes an image without them).
func checkQcow2(ctx context.Context, f io.ReaderAt, fileSize int64) (qcow2Header, error) {
	hdr := make([]byte, 4096)
	n, err := f.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return qcow2Header{}, err
	}
	h, err := parseQcow2Header(hdr[:n])
	if err != nil {
		return h, err
	}
	if h.backingOffset != 0 {
		name := "?"
		if h.backingSize > 0 && h.backingSize <= 1023 && h.backingOffset < uint64(fileSize) {
			b := make([]byte, h.backingSize)
			if _, err := f.ReadAt(b, int64(h.backingOffset)); err == nil {
				name = string(b)
			}
		}
		return h, fmt.Errorf("qcow2 with a backing file (%q) is not supported: bake never opens a file an image names; it needs a self-contained image; flatten it with `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`", name)
	}
	switch h.cryptMethod {
	case 0:
	case 1:
		return h, errors.New("encrypted qcow2 (AES) is not supported: decrypt it with qemu-img convert first")
	case 2:
		return h, errors.New("encrypted qcow2 (LUKS) is not supported: decrypt it with qemu-img convert first")
	default:
		return h, fmt.Errorf("encrypted qcow2 (crypt_method %d) is not supported", h.cryptMethod)
	}
	if h.incompatible&(1<<1) != 0 {
		return h, errors.New("qcow2 is marked corrupt by QEMU; check it with `qemu-img check -r all` on a copy")
	}
	if h.incompatible&(1<<2) != 0 {
		return h, errors.New("qcow2 with an external data file is not supported: bake never opens a file an image names; it needs a self-contained image")
	}
	if unknown := h.incompatible &^ (1<<0 | 1<<3 | 1<<4); unknown != 0 {
		return h, fmt.Errorf("qcow2 uses incompatible features bake does not know (bits %#x)", unknown)
	}
	if h.clusterBits < 9 || h.clusterBits > 21 {
		return h, fmt.Errorf("qcow2 cluster_bits %d is invalid (9 to 21: 512 bytes to 2 MiB clusters)", h.clusterBits)
	}
	cluster := uint64(1) << h.clusterBits
	if uint64(h.headerLength) > cluster {
		return h, fmt.Errorf("qcow2 header_length %d is larger than a cluster (%d bytes)", h.headerLength, cluster)
	}
	if h.compressionType > 1 {
		return h, fmt.Errorf("qcow2 compression type %d is not supported (only zlib and zstd)", h.compressionType)
	}
	if h.size == 0 {
		return h, errors.New("qcow2 virtual disk size is 0")
	}
	if h.size > uint64(MaxVirtualSize) {
		return h, fmt.Errorf("qcow2 virtual disk size %d bytes (%.1f TiB) is above bake's limit of %d bytes (%.1f TiB)",
			h.size, float64(h.size)/(1<<40), MaxVirtualSize, float64(MaxVirtualSize)/(1<<40))
	}
	if h.nbSnapshots > 0 {
		return h, fmt.Errorf("qcow2 with %d internal snapshot(s) is not supported: snapshots share clusters with the disk and bake only reads self-contained images; copy the current state with `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`", h.nbSnapshots)
	}
	fsz := uint64(fileSize)
	truncated := func(what string, off, n uint64) error {
		return fmt.Errorf("truncated qcow2: %s at bytes %d-%d lies past the end of the file (%d bytes); download or copy it again", what, off, off+n, fileSize)
	}
	// inside says whether n bytes at off lie inside the file, without
	// overflowing.
	inside := func(off, n uint64) bool { return off <= fsz && n <= fsz-off }
	extended := h.incompatible&(1<<4) != 0
	entry := uint64(8)
	if extended {
		entry = 16
	}
	l2Entries := cluster / entry
	// The L1 table must cover the virtual disk (QEMU: "L1 table is too
	// small") and stay within QEMU's own limit.
	need := (h.size + cluster*l2Entries - 1) / (cluster * l2Entries)
	l1Bytes := uint64(h.l1Size) * 8
	switch {
	case l1Bytes > maxL1Bytes:
		return h, fmt.Errorf("qcow2 L1 table of %d entries (%d bytes) is larger than %d bytes: the header is damaged or hostile", h.l1Size, l1Bytes, maxL1Bytes)
	case uint64(h.l1Size) < need:
		return h, fmt.Errorf("qcow2 L1 table of %d entries is too small for a %d-byte disk (%d needed): the header is damaged", h.l1Size, h.size, need)
	case h.l1Offset%cluster != 0 || h.l1Offset == 0:
		return h, fmt.Errorf("qcow2 L1 table offset %d is not a cluster boundary after the header: the header is damaged", h.l1Offset)
	case !inside(h.l1Offset, l1Bytes):
		return h, truncated("the L1 table", h.l1Offset, l1Bytes)
	}
	rcBytes := uint64(h.refcountClusters) * cluster
	switch {
	case rcBytes > maxRefcountTableBytes:
		return h, fmt.Errorf("qcow2 refcount table of %d clusters (%d bytes) is larger than %d bytes: the header is damaged or hostile", h.refcountClusters, rcBytes, maxRefcountTableBytes)
	case h.refcountOffset%cluster != 0 || (h.refcountOffset == 0 && rcBytes > 0):
		return h, fmt.Errorf("qcow2 refcount table offset %d is not a cluster boundary after the header: the header is damaged", h.refcountOffset)
	case !inside(h.refcountOffset, rcBytes):
		return h, truncated("the refcount table", h.refcountOffset, rcBytes)
	}

	// used has a bit per host cluster of the file: set once a table or an
	// uncompressed data cluster is found there.
	hostClusters := (fsz + cluster - 1) / cluster
	if hostClusters > maxHostClusters {
		return h, fmt.Errorf("qcow2 file of %d bytes has %d clusters of %d bytes, more than bake reads (%d)", fileSize, hostClusters, cluster, maxHostClusters)
	}
	used := make([]uint64, (hostClusters+63)/64)
	claim := func(off, n uint64) bool {
		for c := off / cluster; c < (off+n+cluster-1)/cluster; c++ {
			if used[c/64]&(1<<(c%64)) != 0 {
				return false
			}
			used[c/64] |= 1 << (c % 64)
		}
		return true
	}
	twice := func(what string, off uint64) error {
		return fmt.Errorf("qcow2 %s at byte %d uses a cluster that is already used (by another table or cluster): clusters shared by several entries make a small file stand for a huge disk; refused", what, off)
	}
	claim(0, cluster) // the header
	if !claim(h.l1Offset, l1Bytes) {
		return h, twice("L1 table", h.l1Offset)
	}
	if rcBytes > 0 && !claim(h.refcountOffset, rcBytes) {
		return h, twice("refcount table", h.refcountOffset)
	}

	l1 := make([]byte, l1Bytes)
	if _, err := f.ReadAt(l1, int64(h.l1Offset)); err != nil {
		return h, fmt.Errorf("reading the qcow2 L1 table: %w", err)
	}
	x := 62 - (h.clusterBits - 8) // compressed descriptor: offset bits below x
	// hostCluster checks one host cluster a table points at: aligned,
	// inside the file, and not used by anything else.
	hostCluster := func(what, use string, off uint64) error {
		if off%cluster != 0 {
			return fmt.Errorf("qcow2 %s at byte %d is not on a cluster boundary: the image is damaged", what, off)
		}
		if !inside(off, cluster) {
			return truncated(what, off, cluster)
		}
		if !claim(off, cluster) {
			return twice(use, off)
		}
		return nil
	}
	l2 := make([]byte, cluster)
	var compressed []uint64 // start offsets of compressed clusters
	for i := uint64(0); i < uint64(h.l1Size); i++ {
		if err := ctx.Err(); err != nil {
			return h, err
		}
		l2Off := binary.BigEndian.Uint64(l1[i*8:]) & 0x00fffffffffffe00
		if l2Off == 0 {
			continue
		}
		if err := hostCluster(fmt.Sprintf("L2 table %d", i), fmt.Sprintf("L2 table %d", i), l2Off); err != nil {
			return h, err
		}
		if _, err := f.ReadAt(l2, int64(l2Off)); err != nil {
			return h, fmt.Errorf("reading qcow2 L2 table %d: %w", i, err)
		}
		for j := uint64(0); j+entry <= cluster; j += entry {
			e := binary.BigEndian.Uint64(l2[j:])
			n := i*l2Entries + j/entry // the guest cluster
			if e&(1<<62) != 0 {
				desc := e & (1<<62 - 1)
				off := desc & (1<<x - 1)
				extra := desc >> x
				// The data starts at off and ends in the extra-th sector
				// after the one holding off; that sector must start inside
				// the file (qemu does not pad the last one).
				lastSector := off&^511 + extra*512
				if off == 0 || off >= fsz || lastSector >= fsz {
					return h, truncated(fmt.Sprintf("compressed cluster %d", n), off, lastSector+512-off)
				}
				if len(compressed) >= maxCompressedClusters {
					return h, fmt.Errorf("qcow2 has more than %d compressed clusters, more than bake reads", maxCompressedClusters)
				}
				compressed = append(compressed, off)
				if uint64(len(compressed))*cluster > maxCompressionRatio*fsz {
					return h, fmt.Errorf("qcow2 compressed clusters expand to more than %d times the file's %d bytes: refused as a decompression bomb", maxCompressionRatio, fileSize)
				}
				continue
			}
			off := e & 0x00fffffffffffe00
			if off == 0 {
				continue
			}
			if err := hostCluster(fmt.Sprintf("cluster %d", n), fmt.Sprintf("data cluster %d", n), off); err != nil {
				return h, err
			}
		}
	}
	// Compressed clusters share host clusters with each other (qemu packs
	// them byte by byte) but never a start byte, and never a cluster that
	// holds a table or uncompressed data.
	slices.Sort(compressed)
	for k, off := range compressed {
		if k%65536 == 0 {
			if err := ctx.Err(); err != nil {
				return h, err
			}
		}
		if k > 0 && compressed[k-1] == off {
			return h, twice("compressed cluster", off)
		}
		c := off / cluster
		if used[c/64]&(1<<(c%64)) != 0 {
			return h, twice("compressed cluster", off)
		}
	}
	return h, nil
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
		// The context is checked on every read too: a disk whose data
		// is all zeros writes nothing, and must still stop when asked.
		if err := convert.Convert(w, ctxImage{ctx, img.qcow}, convert.Options{Workers: 4}); err != nil {
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

// ctxImage stops a conversion's reads when the context ends.
type ctxImage struct {
	ctx context.Context
	image.Image
}

func (c ctxImage) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.Image.ReadAt(p, off)
}

func (c ctxImage) Extent(start, length int64) (image.Extent, error) {
	if err := c.ctx.Err(); err != nil {
		return image.Extent{}, err
	}
	return c.Image.Extent(start, length)
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
