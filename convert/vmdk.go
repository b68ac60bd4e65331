package convert

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/internal/imgfile"
)

// The hosted sparse extent header and the embedded descriptor of a
// monolithic sparse VMDK (VMware's Virtual Disk Format 1.1, "Hosted Sparse
// Extent Header"), little-endian. A streamOptimized vmdk is one: the header
// sits at offset 0 and the descriptor a few sectors in.

const (
	vmdkMagic           = 0x564d444b // "KDMV"
	vmdkHeaderSize      = 512
	vmdkMaxDescriptor   = 64 << 10 // bytes: a descriptor is a few hundred
	vmdkFlagNewlineTest = 1 << 0
	vmdkFlagCompressed  = 1 << 16
	vmdkFlagMarkers     = 1 << 17
	vmdkDeflate         = 1
)

// VMDKInfo is what bake reads back from a vmdk.
type VMDKInfo struct {
	Version    uint32
	Flags      uint32
	Capacity   int64 // bytes (the header counts sectors)
	GrainSize  int64 // sectors
	Compress   uint16
	CreateType string // descriptor createType
	Adapter    string // descriptor ddb.adapterType
	HWVersion  string // descriptor ddb.virtualHWVersion
	// Extents are the descriptor's extent lines: sectors and type.
	Extents []VMDKExtent
}

// VMDKExtent is one extent line of a descriptor.
type VMDKExtent struct {
	Access  string // RW, RDONLY, NOACCESS
	Sectors int64
	Type    string // SPARSE, FLAT, ...
	File    string
}

// ParseVMDKHeader parses the 512-byte sparse extent header: magic, version
// 1 to 3, the newline-detection characters when the flag says they are
// there, and a capacity and descriptor that fit in fileSize.
func ParseVMDKHeader(b []byte, fileSize int64) (info *VMDKInfo, descOff, descLen int64, err error) {
	if len(b) < vmdkHeaderSize {
		return nil, 0, 0, fmt.Errorf("vmdk header: %d bytes, want %d", len(b), vmdkHeaderSize)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != vmdkMagic {
		return nil, 0, 0, fmt.Errorf("vmdk header: magic %#x, want KDMV (a hosted sparse extent)", m)
	}
	info = &VMDKInfo{Version: le.Uint32(b[4:]), Flags: le.Uint32(b[8:]), Compress: le.Uint16(b[77:])}
	if info.Version < 1 || info.Version > 3 {
		return nil, 0, 0, fmt.Errorf("vmdk header: version %d, want 1 to 3", info.Version)
	}
	capSectors, grain := le.Uint64(b[12:]), le.Uint64(b[20:])
	dOff, dLen := le.Uint64(b[28:]), le.Uint64(b[36:])
	if capSectors == 0 || capSectors > MaxSize/sector {
		return nil, 0, 0, fmt.Errorf("vmdk header: capacity %d sectors out of range", capSectors)
	}
	if grain == 0 || grain > 1<<20 || grain&(grain-1) != 0 {
		return nil, 0, 0, fmt.Errorf("vmdk header: grain size %d sectors is not a power of two up to 2^20", grain)
	}
	if info.Flags&vmdkFlagNewlineTest != 0 && string(b[73:77]) != "\n \r\n" {
		return nil, 0, 0, errors.New("vmdk header: newline detection characters damaged (the file went through a text-mode transfer)")
	}
	if dOff == 0 || dLen == 0 || dLen > vmdkMaxDescriptor/sector || dOff > uint64(fileSize)/sector ||
		(dOff+dLen)*sector > uint64(fileSize) {
		return nil, 0, 0, fmt.Errorf("vmdk header: embedded descriptor at sector %d, %d sectors, not inside the %d-byte file", dOff, dLen, fileSize)
	}
	info.Capacity, info.GrainSize = int64(capSectors)*sector, int64(grain)
	return info, int64(dOff) * sector, int64(dLen) * sector, nil
}

// ParseVMDKDescriptor reads the descriptor text into info: createType,
// ddb.adapterType, ddb.virtualHWVersion and the extent lines. Text ends at
// the first NUL; at most vmdkMaxDescriptor bytes are looked at.
func ParseVMDKDescriptor(text []byte, info *VMDKInfo) error {
	if len(text) > vmdkMaxDescriptor {
		text = text[:vmdkMaxDescriptor]
	}
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	if !bytes.HasPrefix(bytes.TrimSpace(text), []byte("# Disk DescriptorFile")) {
		return errors.New("vmdk descriptor: does not start with \"# Disk DescriptorFile\"")
	}
	for _, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.ContainsAny(k, "\"") {
			k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), "\"")
			switch k {
			case "createType":
				info.CreateType = v
			case "ddb.adapterType":
				info.Adapter = v
			case "ddb.virtualHWVersion":
				info.HWVersion = v
			}
			continue
		}
		// RW 131072 SPARSE "name.vmdk"
		f := strings.Fields(line)
		if len(f) < 3 {
			return fmt.Errorf("vmdk descriptor: line %q is neither key=value nor an extent", line)
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("vmdk descriptor: extent %q: bad sector count", line)
		}
		e := VMDKExtent{Access: f[0], Sectors: n, Type: f[2]}
		if len(f) > 3 {
			e.File = strings.Trim(strings.Join(f[3:], " "), "\"")
		}
		if len(info.Extents) >= 64 {
			return errors.New("vmdk descriptor: more than 64 extents")
		}
		info.Extents = append(info.Extents, e)
	}
	return nil
}

// ReadVMDK reads a vmdk's header and descriptor from r (fileSize bytes).
func ReadVMDK(r io.ReaderAt, fileSize int64) (*VMDKInfo, error) {
	h := make([]byte, vmdkHeaderSize)
	if _, err := r.ReadAt(h, 0); err != nil {
		return nil, fmt.Errorf("vmdk header: %w", err)
	}
	info, off, n, err := ParseVMDKHeader(h, fileSize)
	if err != nil {
		return nil, err
	}
	d := make([]byte, n)
	if _, err := r.ReadAt(d, off); err != nil {
		return nil, fmt.Errorf("vmdk descriptor: %w", err)
	}
	if err := ParseVMDKDescriptor(d, info); err != nil {
		return nil, err
	}
	return info, nil
}

// ReadVMDKFile is ReadVMDK of the regular file at path.
func ReadVMDKFile(path string) (*VMDKInfo, error) {
	f, fi, err := imgfile.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := ReadVMDK(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// CheckStream checks what an OVA's importer expects of its disk: a
// streamOptimized vmdk (version 3, compressed grains with markers, deflate)
// of capacity size, with one sparse extent of that size and the adapter
// type adapter.
func (v *VMDKInfo) CheckStream(size int64, adapter string) error {
	switch {
	case v.CreateType != "streamOptimized":
		return fmt.Errorf("vmdk: createType %q, want streamOptimized", v.CreateType)
	case v.Version != 3:
		return fmt.Errorf("vmdk: version %d, want 3 (streamOptimized)", v.Version)
	case v.Flags&(vmdkFlagCompressed|vmdkFlagMarkers) != vmdkFlagCompressed|vmdkFlagMarkers:
		return fmt.Errorf("vmdk: flags %#x lack compressed grains and markers", v.Flags)
	case v.Compress != vmdkDeflate:
		return fmt.Errorf("vmdk: compression %d, want deflate (1)", v.Compress)
	case v.Capacity != size:
		return fmt.Errorf("vmdk: capacity %d bytes, want %d", v.Capacity, size)
	case len(v.Extents) != 1 || v.Extents[0].Type != "SPARSE" || v.Extents[0].Sectors*sector != size:
		return fmt.Errorf("vmdk: extents %+v, want one SPARSE extent of %d sectors", v.Extents, size/sector)
	case v.Adapter != adapter:
		return fmt.Errorf("vmdk: ddb.adapterType %q, want %q", v.Adapter, adapter)
	}
	return nil
}
