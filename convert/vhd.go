package convert

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bakeimg/bake/internal/imgfile"
)

// The VHD footer (Microsoft's Virtual Hard Disk Image Format Specification,
// "Hard Disk Footer Format"): the last 512 bytes of every VHD, the whole
// metadata of a fixed one. Big-endian.

// VHDFooterSize is the footer's size.
const VHDFooterSize = 512

// VHD disk types.
const (
	VHDFixed        = 2
	VHDDynamic      = 3
	VHDDifferencing = 4
)

const (
	vhdCookie        = "conectix"
	vhdVersion       = 0x00010000
	vhdFeatureAlways = 0x00000002 // "reserved, must always be set"
	vhdNoDataOffset  = ^uint64(0) // a fixed disk has no dynamic header
)

// VHDFooter is a parsed footer.
type VHDFooter struct {
	Features       uint32
	FormatVersion  uint32
	DataOffset     uint64
	Timestamp      uint32 // seconds since 2000-01-01 00:00:00 UTC
	CreatorApp     string // 4 characters, e.g. "qem2"
	CreatorVersion uint32
	CreatorHostOS  string // "Wi2k"
	OriginalSize   uint64
	CurrentSize    uint64
	Cylinders      uint16
	Heads          uint8
	SectorsPerCyl  uint8
	DiskType       uint32
	Checksum       uint32
	UniqueID       [16]byte
	SavedState     uint8
}

// vhdChecksum is the one's complement of the sum of the footer's bytes,
// the checksum field (bytes 64-67) left out.
func vhdChecksum(b []byte) uint32 {
	var sum uint32
	for i, c := range b[:VHDFooterSize] {
		if i >= 64 && i < 68 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}

// ParseVHDFooter parses and checks a footer: exactly 512 bytes with the
// cookie, the checksum, format version 1.0, the always-set feature bit, a
// known disk type and, for a fixed disk, no data offset, zero reserved
// bytes, a current size in whole sectors. Anything else is an
// error; the parser reads nothing beyond b.
func ParseVHDFooter(b []byte) (*VHDFooter, error) {
	if len(b) != VHDFooterSize {
		return nil, fmt.Errorf("vhd footer: %d bytes, want %d", len(b), VHDFooterSize)
	}
	if string(b[:8]) != vhdCookie {
		return nil, fmt.Errorf("vhd footer: cookie %q, want %q", b[:8], vhdCookie)
	}
	be := binary.BigEndian
	f := &VHDFooter{
		Features:       be.Uint32(b[8:]),
		FormatVersion:  be.Uint32(b[12:]),
		DataOffset:     be.Uint64(b[16:]),
		Timestamp:      be.Uint32(b[24:]),
		CreatorApp:     string(b[28:32]),
		CreatorVersion: be.Uint32(b[32:]),
		CreatorHostOS:  string(b[36:40]),
		OriginalSize:   be.Uint64(b[40:]),
		CurrentSize:    be.Uint64(b[48:]),
		Cylinders:      be.Uint16(b[56:]),
		Heads:          b[58],
		SectorsPerCyl:  b[59],
		DiskType:       be.Uint32(b[60:]),
		Checksum:       be.Uint32(b[64:]),
		SavedState:     b[84],
	}
	copy(f.UniqueID[:], b[68:84])
	if sum := vhdChecksum(b); sum != f.Checksum {
		return nil, fmt.Errorf("vhd footer: checksum %08x, computed %08x", f.Checksum, sum)
	}
	if f.FormatVersion != vhdVersion {
		return nil, fmt.Errorf("vhd footer: format version %08x, want %08x", f.FormatVersion, vhdVersion)
	}
	if f.Features&vhdFeatureAlways == 0 {
		return nil, errors.New("vhd footer: the reserved feature bit 0x2 is not set")
	}
	switch f.DiskType {
	case VHDFixed:
		if f.DataOffset != vhdNoDataOffset {
			return nil, fmt.Errorf("vhd footer: fixed disk with data offset %#x, want 0xffffffffffffffff", f.DataOffset)
		}
	case VHDDynamic, VHDDifferencing:
	default:
		return nil, fmt.Errorf("vhd footer: disk type %d is not fixed (2), dynamic (3) or differencing (4)", f.DiskType)
	}
	if !allZero(b[85:]) {
		return nil, errors.New("vhd footer: the reserved bytes 85-511 are not zero")
	}
	if f.CurrentSize%sector != 0 {
		return nil, fmt.Errorf("vhd footer: current size %d is not a multiple of %d", f.CurrentSize, sector)
	}
	return f, nil
}

// MarshalBinary encodes f with a correct checksum (f.Checksum is ignored).
func (f *VHDFooter) MarshalBinary() ([]byte, error) {
	if len(f.CreatorApp) > 4 || len(f.CreatorHostOS) > 4 {
		return nil, errors.New("vhd footer: creator fields are 4 bytes")
	}
	b := make([]byte, VHDFooterSize)
	be := binary.BigEndian
	copy(b, vhdCookie)
	be.PutUint32(b[8:], f.Features)
	be.PutUint32(b[12:], f.FormatVersion)
	be.PutUint64(b[16:], f.DataOffset)
	be.PutUint32(b[24:], f.Timestamp)
	copy(b[28:32], f.CreatorApp)
	be.PutUint32(b[32:], f.CreatorVersion)
	copy(b[36:40], f.CreatorHostOS)
	be.PutUint64(b[40:], f.OriginalSize)
	be.PutUint64(b[48:], f.CurrentSize)
	be.PutUint16(b[56:], f.Cylinders)
	b[58], b[59] = f.Heads, f.SectorsPerCyl
	be.PutUint32(b[60:], f.DiskType)
	copy(b[68:84], f.UniqueID[:])
	b[84] = f.SavedState
	be.PutUint32(b[64:], vhdChecksum(b))
	return b, nil
}

// VHDFile is a VHD's footer and the size of the file it ends.
type VHDFile struct {
	*VHDFooter
	FileSize int64
}

// ReadVHDFile reads the footer from the end of the VHD at path (a regular
// file, opened without following it into a FIFO or device). Only the last
// 512 bytes are read; the copy of the footer a dynamic VHD keeps at offset 0
// is not needed for a fixed one.
func ReadVHDFile(path string) (*VHDFile, error) {
	f, fi, err := imgfile.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() < VHDFooterSize {
		return nil, fmt.Errorf("vhd %s: %d bytes, shorter than a footer", path, fi.Size())
	}
	b := make([]byte, VHDFooterSize)
	if _, err := f.ReadAt(b, fi.Size()-VHDFooterSize); err != nil {
		return nil, fmt.Errorf("vhd %s: %w", path, err)
	}
	ft, err := ParseVHDFooter(b)
	if err != nil {
		return nil, fmt.Errorf("vhd %s: %w", path, err)
	}
	return &VHDFile{VHDFooter: ft, FileSize: fi.Size()}, nil
}

// CheckFixed checks what Azure requires of an uploaded VHD: fixed, current
// size size (a whole number of MiB), the data right before the footer (file
// size = current size + 512), original size equal to current size.
func (v *VHDFile) CheckFixed(size int64) error {
	switch {
	case v.DiskType != VHDFixed:
		return fmt.Errorf("vhd: disk type %d, want fixed (2)", v.DiskType)
	case int64(v.CurrentSize) != size:
		return fmt.Errorf("vhd: current size %d, want %d", v.CurrentSize, size)
	case v.CurrentSize%MiB != 0:
		return fmt.Errorf("vhd: current size %d is not a whole number of MiB (Azure refuses it)", v.CurrentSize)
	case v.OriginalSize != v.CurrentSize:
		return fmt.Errorf("vhd: original size %d differs from current size %d", v.OriginalSize, v.CurrentSize)
	case v.FileSize != int64(v.CurrentSize)+VHDFooterSize:
		return fmt.Errorf("vhd: file is %d bytes, want current size + footer = %d", v.FileSize, int64(v.CurrentSize)+VHDFooterSize)
	case zeroUUID(v.UniqueID):
		return errors.New("vhd: unique ID is zero (Hyper-V tells disks apart by it)")
	}
	return nil
}

// zeroUUID reports whether id is all zero (qemu-img fills in a random one).
func zeroUUID(id [16]byte) bool { return bytes.Equal(id[:], make([]byte, 16)) }
