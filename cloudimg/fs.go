package cloudimg

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// Filesystem is what a partition's superblock says about its filesystem.
// Only the fields bake needs to rebuild it with the same identity are read;
// nothing here walks the filesystem (DESIGN.md section 1: no Go ext4 reader
// is trusted for content).
type Filesystem struct {
	// Type is "ext2", "ext3", "ext4", "vfat", "xfs", "btrfs", or "" when no
	// known superblock was found.
	Type  string
	UUID  string // as blkid prints it: lower-case UUID, or XXXX-XXXX for FAT
	Label string
	// ext2/3/4 only.
	HashSeed    string // s_hash_seed as a UUID (mke2fs -E hash_seed=)
	BlockSize   int
	InodeSize   int
	Blocks      int64
	NeedsReplay bool // the journal has not been replayed (dirty); read with noload
	Features    []string
	// vfat only: the volume serial number (what fstab's UUID=XXXX-XXXX is).
	VolumeID uint32
	FATBits  int // 12, 16 or 32
}

// IsExt says whether the filesystem is ext2, ext3 or ext4.
func (f Filesystem) IsExt() bool { return strings.HasPrefix(f.Type, "ext") }

func uuidString(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}

// ext4 feature bits (include/linux/ext2_fs.h in e2fsprogs) used to name the
// filesystem type and shown by Inspect.
var (
	extCompat = map[uint32]string{
		0x4: "has_journal", 0x8: "ext_attr", 0x10: "resize_inode", 0x20: "dir_index", 0x200: "sparse_super2",
		0x400: "fast_commit", 0x800: "stable_inodes", 0x1000: "orphan_file",
	}
	extIncompat = map[uint32]string{
		0x2: "filetype", 0x4: "needs_recovery", 0x8: "journal_dev", 0x10: "meta_bg", 0x40: "extent", 0x80: "64bit",
		0x100: "mmp", 0x200: "flex_bg", 0x400: "ea_inode", 0x1000: "dirdata", 0x2000: "metadata_csum_seed",
		0x4000: "large_dir", 0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold",
	}
	extROCompat = map[uint32]string{
		0x1: "sparse_super", 0x2: "large_file", 0x8: "huge_file", 0x10: "uninit_bg", 0x20: "dir_nlink",
		0x40: "extra_isize", 0x100: "quota", 0x200: "bigalloc", 0x400: "metadata_csum", 0x1000: "read-only",
		0x2000: "project", 0x8000: "verity", 0x10000: "orphan_present",
	}
)

func featureNames(v uint32, names map[uint32]string) []string {
	var out []string
	for bit := uint32(1); bit != 0; bit <<= 1 {
		if v&bit == 0 {
			continue
		}
		if n, ok := names[bit]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("unknown_%#x", bit))
		}
	}
	return out
}

// probeFS reads the superblock of the filesystem at off (size bytes).
func probeFS(r io.ReaderAt, off, size int64) (Filesystem, error) {
	// ext2/3/4: superblock at 1024, magic 0xEF53 at 0x38.
	sb := make([]byte, 1024)
	if size >= 2048 {
		if _, err := r.ReadAt(sb, off+1024); err != nil {
			return Filesystem{}, fmt.Errorf("reading the superblock: %w", err)
		}
		if binary.LittleEndian.Uint16(sb[0x38:]) == 0xEF53 {
			return parseExt(sb), nil
		}
	}
	head := make([]byte, 512)
	if _, err := r.ReadAt(head, off); err != nil {
		return Filesystem{}, fmt.Errorf("reading the first sector: %w", err)
	}
	if string(head[0:4]) == "XFSB" {
		return Filesystem{Type: "xfs", UUID: uuidString(head[32:48]), Label: cString(head[108:120]),
			BlockSize: int(binary.BigEndian.Uint32(head[4:8]))}, nil
	}
	if head[510] == 0x55 && head[511] == 0xaa {
		if fs, ok := parseFAT(head); ok {
			return fs, nil
		}
	}
	if size >= 0x10000+0x1000 {
		b := make([]byte, 0x1000)
		if _, err := r.ReadAt(b, off+0x10000); err == nil && string(b[0x40:0x48]) == "_BHRfS_M" {
			return Filesystem{Type: "btrfs", UUID: uuidString(b[0x20:0x30]), Label: cString(b[0x12b : 0x12b+256])}, nil
		}
	}
	return Filesystem{}, nil
}

func parseExt(sb []byte) Filesystem {
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(sb[o:]) }
	compat, incompat, ro := le32(0x5c), le32(0x60), le32(0x64)
	fs := Filesystem{
		UUID:      uuidString(sb[0x68:0x78]),
		Label:     cString(sb[0x78:0x88]),
		BlockSize: 1024 << le32(0x18),
		InodeSize: int(binary.LittleEndian.Uint16(sb[0x58:])),
		Blocks:    int64(le32(0x04)),
	}
	if incompat&0x80 != 0 {
		fs.Blocks |= int64(le32(0x150)) << 32
	}
	if seed := sb[0xec:0xfc]; !bytes.Equal(seed, make([]byte, 16)) {
		fs.HashSeed = uuidString(seed)
	}
	fs.NeedsReplay = incompat&0x4 != 0
	fs.Features = append(append(featureNames(compat, extCompat), featureNames(incompat, extIncompat)...), featureNames(ro, extROCompat)...)
	// The way blkid names them: journal -> ext3, any ext4-only feature -> ext4.
	switch {
	case incompat&^(0x2|0x4|0x10) != 0 || ro&^(0x1|0x2) != 0:
		fs.Type = "ext4"
	case compat&0x4 != 0:
		fs.Type = "ext3"
	default:
		fs.Type = "ext2"
	}
	return fs
}

func parseFAT(bs []byte) (Filesystem, bool) {
	bytesPerSector := binary.LittleEndian.Uint16(bs[11:13])
	if bytesPerSector == 0 || bytesPerSector%512 != 0 || bs[13] == 0 {
		return Filesystem{}, false
	}
	fs := Filesystem{Type: "vfat"}
	var idOff, labelOff int
	switch {
	case binary.LittleEndian.Uint16(bs[22:24]) == 0 && bs[0x42] == 0x29:
		// FAT32: sectors per FAT (16-bit) is 0, extended boot signature at 0x42.
		fs.FATBits, idOff, labelOff = 32, 0x43, 0x47
	case bs[0x26] == 0x29:
		fs.FATBits, idOff, labelOff = 16, 0x27, 0x2b
		if string(bs[0x36:0x3b]) == "FAT12" {
			fs.FATBits = 12
		}
	default:
		return Filesystem{}, false
	}
	fs.VolumeID = binary.LittleEndian.Uint32(bs[idOff:])
	fs.UUID = fmt.Sprintf("%04X-%04X", fs.VolumeID>>16, fs.VolumeID&0xffff)
	if l := cString(bs[labelOff : labelOff+11]); l != "NO NAME" {
		fs.Label = l
	}
	return fs, true
}

// ProbeFS reads the file system superblock of the size bytes at off of r
// (a disk): its type, UUID and label, as Inspect fills Partition.FS.
func ProbeFS(r io.ReaderAt, off, size int64) (Filesystem, error) { return probeFS(r, off, size) }
