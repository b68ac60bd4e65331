package cloudimg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// SectorSize is the only logical sector size bake reads: every x86 cloud
// image (Debian, Ubuntu, Fedora, the clouds' own) uses 512-byte sectors.
const SectorSize = 512

// Partition table types.
const (
	TableGPT = "gpt"
	TableDOS = "dos" // MBR
)

// GPT partition type GUIDs bake knows by role (upper case, as in sgdisk).
const (
	TypeBIOSBoot      = "21686148-6449-6E6F-744E-656564454649"
	TypeESP           = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeLinuxData     = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	TypeRootX8664     = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	TypeRootX86       = "44479540-F297-41B2-9AF7-D131D5F0458A"
	TypeRootARM64     = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
	TypeXBOOTLDR      = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
	TypeLinuxSwap     = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
	TypeLinuxHome     = "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"
	TypeLinuxLVM      = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
	TypeMicrosoftData = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
)

// typeNames are the roles shown by Inspect and in error messages.
var typeNames = map[string]string{
	TypeBIOSBoot:      "BIOS boot",
	TypeESP:           "EFI system",
	TypeLinuxData:     "Linux filesystem",
	TypeRootX8664:     "Linux root (x86-64)",
	TypeRootX86:       "Linux root (x86)",
	TypeRootARM64:     "Linux root (ARM64)",
	TypeXBOOTLDR:      "Linux extended boot",
	TypeLinuxSwap:     "Linux swap",
	TypeLinuxHome:     "Linux /home",
	TypeLinuxLVM:      "Linux LVM",
	TypeMicrosoftData: "Microsoft basic data",
	"0x83":            "Linux",
	"0x82":            "Linux swap",
	"0x8e":            "Linux LVM",
	"0xef":            "EFI system",
	"0x0c":            "W95 FAT32 (LBA)",
	"0x07":            "HPFS/NTFS/exFAT",
}

// Table is a disk's partition table as read from the image.
type Table struct {
	Type string // TableGPT or TableDOS
	// DiskGUID is the GPT disk GUID; for an MBR, the disk signature as
	// 8 hex digits (what blkid calls PTUUID).
	DiskGUID string
	// GPT only: the usable LBA range and where the backup header is.
	FirstUsableLBA, LastUsableLBA, AlternateLBA uint64
	// EntriesLBA, NumEntries and EntrySize describe the primary entry array.
	EntriesLBA uint64
	NumEntries uint32
	EntrySize  uint32
	Partitions []Partition // in entry order (ascending Number)
}

// Partition is one entry of the partition table.
type Partition struct {
	Number     int    // 1-based entry number, as in /dev/vdaN
	Type       string // GPT type GUID (upper case) or MBR type as "0x83"
	GUID       string // GPT PARTUUID (lower case); MBR: "<disk signature>-NN"
	Name       string // GPT partition name
	Attributes uint64 // GPT attribute bits
	FirstLBA   uint64
	LastLBA    uint64
	Offset     int64 // bytes
	Size       int64 // bytes
	FS         Filesystem
}

// TypeName is the partition type in words ("Linux root (x86-64)").
func (p Partition) TypeName() string {
	if n, ok := typeNames[p.Type]; ok {
		return n
	}
	return p.Type
}

// linuxType says whether a partition type can hold a Linux root or /boot.
func linuxType(t string) bool {
	switch t {
	case TypeLinuxData, TypeRootX8664, TypeRootX86, TypeRootARM64, TypeXBOOTLDR, "0x83":
		return true
	}
	return false
}

// gptGUID decodes a GUID in GPT's mixed-endian layout.
func gptGUID(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]), binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

// ErrNoPartitionTable is returned for an image with neither a GPT nor an MBR.
var ErrNoPartitionTable = errors.New("no partition table")

// gptHeader is the decoded primary GPT header.
type gptHeader struct {
	raw            []byte
	currentLBA     uint64
	alternateLBA   uint64
	firstUsable    uint64
	lastUsable     uint64
	diskGUID       string
	entriesLBA     uint64
	numEntries     uint32
	entrySize      uint32
	entriesCRC     uint32
	headerSize     uint32
	headerCRCValid bool
}

func parseGPTHeader(b []byte) (*gptHeader, bool) {
	if len(b) < 92 || string(b[0:8]) != "EFI PART" {
		return nil, false
	}
	h := &gptHeader{raw: b}
	h.headerSize = binary.LittleEndian.Uint32(b[12:16])
	if h.headerSize < 92 || int(h.headerSize) > len(b) {
		return h, true
	}
	crc := binary.LittleEndian.Uint32(b[16:20])
	tmp := append([]byte(nil), b[:h.headerSize]...)
	clear(tmp[16:20])
	h.headerCRCValid = crc32.ChecksumIEEE(tmp) == crc
	h.currentLBA = binary.LittleEndian.Uint64(b[24:32])
	h.alternateLBA = binary.LittleEndian.Uint64(b[32:40])
	h.firstUsable = binary.LittleEndian.Uint64(b[40:48])
	h.lastUsable = binary.LittleEndian.Uint64(b[48:56])
	h.diskGUID = gptGUID(b[56:72])
	h.entriesLBA = binary.LittleEndian.Uint64(b[72:80])
	h.numEntries = binary.LittleEndian.Uint32(b[80:84])
	h.entrySize = binary.LittleEndian.Uint32(b[84:88])
	h.entriesCRC = binary.LittleEndian.Uint32(b[88:92])
	return h, true
}

// readTable reads the partition table of a disk of diskSize bytes. It
// checks the GPT's CRCs and that every partition and the backup GPT lie
// inside the disk: a disk image cut short (an interrupted download or copy)
// fails here with "truncated" instead of later inside a filesystem.
func readTable(ctx context.Context, r io.ReaderAt, diskSize int64) (*Table, error) {
	sectors := uint64(diskSize / SectorSize)
	if sectors < 2 {
		return nil, fmt.Errorf("%w: the disk is only %d bytes", ErrNoPartitionTable, diskSize)
	}
	mbr := make([]byte, SectorSize)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("reading the MBR: %w", err)
	}
	lba1 := make([]byte, SectorSize)
	if _, err := r.ReadAt(lba1, SectorSize); err != nil {
		return nil, fmt.Errorf("reading the GPT header: %w", err)
	}
	if h, ok := parseGPTHeader(lba1); ok {
		return readGPT(ctx, r, h, sectors)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return nil, fmt.Errorf("%w: neither a GPT nor an MBR at the start of the disk (is this a filesystem image rather than a disk image?)", ErrNoPartitionTable)
	}
	for i := 0; i < 4; i++ {
		if mbr[446+16*i+4] == 0xee {
			return nil, fmt.Errorf("the MBR is a GPT protective MBR but LBA 1 holds no GPT header: the GPT is damaged")
		}
	}
	return readMBR(mbr, sectors)
}

// Limits of a GPT entry array bake reads. The UEFI specification allows
// entries of 128 * 2^n bytes; every partitioning tool writes 128 entries of
// 128 bytes (16 KiB). 1 MiB is 8192 entries of 128 bytes.
const (
	maxGPTEntrySize  = 4096
	maxGPTArrayBytes = 1 << 20
	// maxPartitions is the most used entries bake reads: Inspect probes
	// every partition's superblock and may run debugfs on each Linux one.
	// A GPT has 128 entries by default; cloud images use 1 to 15.
	maxPartitions = 128
)

func readGPT(ctx context.Context, r io.ReaderAt, h *gptHeader, sectors uint64) (*Table, error) {
	if !h.headerCRCValid {
		return nil, errors.New("the primary GPT header's CRC does not match: the partition table is damaged")
	}
	if h.currentLBA != 1 {
		return nil, fmt.Errorf("the primary GPT header says it is at LBA %d, not 1: the partition table is damaged", h.currentLBA)
	}
	if h.entrySize < 128 || h.entrySize > maxGPTEntrySize || h.entrySize&(h.entrySize-1) != 0 {
		return nil, fmt.Errorf("GPT header: a partition entry size of %d bytes is not valid (128, 256, ... up to %d)", h.entrySize, maxGPTEntrySize)
	}
	arrBytes := uint64(h.numEntries) * uint64(h.entrySize)
	if h.numEntries == 0 || arrBytes > maxGPTArrayBytes {
		return nil, fmt.Errorf("GPT header: %d entries of %d bytes is not a valid entry array (at most %d bytes)", h.numEntries, h.entrySize, maxGPTArrayBytes)
	}
	arrSectors := (arrBytes + SectorSize - 1) / SectorSize
	if h.entriesLBA < 2 || h.entriesLBA >= sectors || arrSectors > sectors-h.entriesLBA {
		return nil, fmt.Errorf("GPT header: the partition entry array at LBA %d (%d sectors) does not lie inside the disk of %d sectors after the header", h.entriesLBA, arrSectors, sectors)
	}
	// Truncation: the header describes the whole disk, the file must hold it.
	if h.alternateLBA >= sectors || h.lastUsable >= sectors {
		return nil, fmt.Errorf("truncated image: its GPT describes a disk of at least %d sectors (backup GPT header at LBA %d, last usable LBA %d) but the image has only %d sectors (%d bytes)",
			max(h.alternateLBA, h.lastUsable)+1, h.alternateLBA, h.lastUsable, sectors, sectors*SectorSize)
	}
	arr := make([]byte, int(h.numEntries)*int(h.entrySize))
	if _, err := r.ReadAt(arr, int64(h.entriesLBA)*SectorSize); err != nil {
		return nil, fmt.Errorf("reading the GPT partition entries: %w", err)
	}
	if crc32.ChecksumIEEE(arr) != h.entriesCRC {
		return nil, errors.New("the GPT partition entry array's CRC does not match the header: the partition table is damaged")
	}
	t := &Table{
		Type: TableGPT, DiskGUID: strings.ToLower(h.diskGUID),
		FirstUsableLBA: h.firstUsable, LastUsableLBA: h.lastUsable, AlternateLBA: h.alternateLBA,
		EntriesLBA: h.entriesLBA, NumEntries: h.numEntries, EntrySize: h.entrySize,
	}
	var zero [16]byte
	for i := 0; i < int(h.numEntries); i++ {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		e := arr[i*int(h.entrySize) : (i+1)*int(h.entrySize)]
		if bytes.Equal(e[0:16], zero[:]) {
			continue
		}
		first := binary.LittleEndian.Uint64(e[32:40])
		last := binary.LittleEndian.Uint64(e[40:48])
		p := Partition{
			Number:     i + 1,
			Type:       gptGUID(e[0:16]),
			GUID:       strings.ToLower(gptGUID(e[16:32])),
			FirstLBA:   first,
			LastLBA:    last,
			Attributes: binary.LittleEndian.Uint64(e[48:56]),
			Name:       utf16Name(e[56:128]),
		}
		if last < first {
			return nil, fmt.Errorf("GPT partition %d ends (LBA %d) before it starts (LBA %d)", p.Number, last, first)
		}
		if last >= sectors {
			return nil, fmt.Errorf("truncated image: partition %d ends at LBA %d but the image has only %d sectors (%d bytes)", p.Number, last, sectors, sectors*SectorSize)
		}
		p.Offset = int64(first) * SectorSize
		p.Size = int64(last-first+1) * SectorSize
		if len(t.Partitions) == maxPartitions {
			return nil, fmt.Errorf("the GPT has more than %d partitions, more than bake reads", maxPartitions)
		}
		t.Partitions = append(t.Partitions, p)
	}
	return t, nil
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func readMBR(mbr []byte, sectors uint64) (*Table, error) {
	sig := binary.LittleEndian.Uint32(mbr[440:444])
	t := &Table{Type: TableDOS, DiskGUID: fmt.Sprintf("%08x", sig)}
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*(i+1)]
		typ := e[4]
		start := uint64(binary.LittleEndian.Uint32(e[8:12]))
		n := uint64(binary.LittleEndian.Uint32(e[12:16]))
		if typ == 0 || n == 0 {
			continue
		}
		if typ == 0x05 || typ == 0x0f || typ == 0x85 {
			// Logical partitions: no cloud image uses them; say so rather
			// than guess.
			return nil, fmt.Errorf("MBR partition %d is an extended partition: logical partitions are not supported", i+1)
		}
		last := start + n - 1
		if last >= sectors {
			return nil, fmt.Errorf("truncated image: MBR partition %d ends at LBA %d but the image has only %d sectors (%d bytes)", i+1, last, sectors, sectors*SectorSize)
		}
		t.Partitions = append(t.Partitions, Partition{
			Number:   i + 1,
			Type:     fmt.Sprintf("0x%02x", typ),
			GUID:     fmt.Sprintf("%08x-%02d", sig, i+1),
			FirstLBA: start,
			LastLBA:  last,
			Offset:   int64(start) * SectorSize,
			Size:     int64(n) * SectorSize,
		})
	}
	if len(t.Partitions) == 0 {
		return nil, fmt.Errorf("%w: the MBR has a boot signature but no partitions", ErrNoPartitionTable)
	}
	return t, nil
}

// describe lists partitions for error messages: "1 Linux filesystem, 15 EFI system".
func (t *Table) describe() string {
	var s []string
	for _, p := range t.Partitions {
		s = append(s, fmt.Sprintf("%d %s", p.Number, p.TypeName()))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// Partition returns the partition with entry number n, or nil.
func (t *Table) Partition(n int) *Partition {
	for i := range t.Partitions {
		if t.Partitions[i].Number == n {
			return &t.Partitions[i]
		}
	}
	return nil
}

// hasLinux says whether any partition has a Linux type.
func (t *Table) hasLinux() bool {
	for _, p := range t.Partitions {
		if linuxType(p.Type) {
			return true
		}
	}
	return false
}
