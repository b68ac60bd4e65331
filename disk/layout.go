package disk

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

// Layout holds every identifier the disk is made with. The same Layout always
// gives the same GPT, ESP and root filesystem identity, so two builds of one
// recipe agree, and fstab and grub.cfg can be written before the disk exists.
type Layout struct {
	DiskGUID     string // GPT disk GUID
	BIOSPartUUID string // PARTUUID of p14, the BIOS boot partition
	ESPPartUUID  string // PARTUUID of p15, the EFI system partition (fstab mounts it by this)
	RootPartUUID string // PARTUUID of p1, the root partition
	RootFSUUID   string // ext4 UUID of the root filesystem (also its htree hash seed)
	ESPVolumeID  uint32 // FAT volume serial of the ESP (blkid shows it as XXXX-XXXX)
}

// layoutNamespace is the UUIDv5 namespace of bake's disk identifiers: UUIDv5
// of the URL namespace and "https://github.com/bakeimg/bake/disk".
var layoutNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://github.com/bakeimg/bake/disk"))

// DeriveLayout derives a Layout from seed (normally the recipe digest) as
// name-based UUIDv5s, one per role, so identical seeds give identical disks
// and different seeds never share an identifier.
func DeriveLayout(seed string) Layout {
	id := func(role string) string {
		return uuid.NewSHA1(layoutNamespace, []byte(role+"\x00"+seed)).String()
	}
	sum := sha256.Sum256([]byte("esp-volume-id\x00" + seed))
	return Layout{
		DiskGUID:     id("disk"),
		BIOSPartUUID: id("bios-partition"),
		ESPPartUUID:  id("esp-partition"),
		RootPartUUID: id("root-partition"),
		RootFSUUID:   id("root-filesystem"),
		ESPVolumeID:  binary.LittleEndian.Uint32(sum[:4]),
	}
}

// ESPSerial is the ESP's volume serial as blkid and fstab spell it (UUID=XXXX-XXXX).
func (l Layout) ESPSerial() string {
	return fmt.Sprintf("%04X-%04X", l.ESPVolumeID>>16, l.ESPVolumeID&0xffff)
}

// Validate checks that every identifier is a UUID and that they are distinct.
func (l Layout) Validate() error {
	fields := []struct{ name, v string }{
		{"DiskGUID", l.DiskGUID}, {"BIOSPartUUID", l.BIOSPartUUID}, {"ESPPartUUID", l.ESPPartUUID},
		{"RootPartUUID", l.RootPartUUID}, {"RootFSUUID", l.RootFSUUID},
	}
	var errs []string
	seen := map[string]string{}
	for _, f := range fields {
		u, err := uuid.Parse(f.v)
		if err != nil || len(f.v) != 36 {
			errs = append(errs, fmt.Sprintf("layout.%s: %q is not a UUID", f.name, f.v))
			continue
		}
		if u == uuid.Nil {
			errs = append(errs, fmt.Sprintf("layout.%s: the nil UUID is not allowed", f.name))
			continue
		}
		if other, ok := seen[u.String()]; ok {
			errs = append(errs, fmt.Sprintf("layout.%s: same UUID as layout.%s", f.name, other))
		}
		seen[u.String()] = f.name
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// GPT partition type GUIDs.
const (
	TypeBIOSBoot  = "21686148-6449-6E6F-744E-656564454649"
	TypeESP       = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeRootX8664 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
)

// Partition numbers, as on Debian's genericcloud images.
const (
	PartRoot = 1
	PartBIOS = 14
	PartESP  = 15
)

const (
	sectorSize = 512
	mib        = int64(1) << 20
	gib        = int64(1) << 30

	// gptSectors is what one copy of the GPT partition array takes:
	// 128 entries of 128 bytes.
	gptArraySectors = 128 * 128 / sectorSize

	biosPartSize = 1 * mib
	// DefaultESPSize is the ESP size when Spec.ESPSize is 0.
	DefaultESPSize = 64 * mib
	// MinESPSize is the smallest ESP that is still FAT32: the FAT type is
	// decided by the cluster count alone (at least 65525 clusters), and
	// go-diskfs uses one 512-byte sector per cluster up to 260 MB, so
	// anything below about 32.5 MiB would be read as FAT16 by firmware.
	MinESPSize = 33 * mib
)

// PartitionInfo describes one partition of the assembled disk.
type PartitionInfo struct {
	Number   int    // GPT entry number (1-based), as in /dev/vdaN
	Name     string // GPT partition name
	Type     string // GPT type GUID
	GUID     string // PARTUUID
	FirstLBA uint64
	LastLBA  uint64
	Offset   int64 // bytes from the start of the disk
	Size     int64 // bytes
}

// plan is the partition table of a disk of a given size, in disk order.
type plan struct {
	size              int64
	bios, esp, root   PartitionInfo
	firstUsable, last uint64
}

// planDisk computes the partition table for a disk of size bytes with an
// ESP of espSize bytes. Both must be whole MiB.
func planDisk(l Layout, size, espSize int64) (plan, error) {
	if size%mib != 0 {
		return plan{}, fmt.Errorf("disk size %d is not a whole number of MiB", size)
	}
	if espSize%mib != 0 {
		return plan{}, fmt.Errorf("ESP size %d is not a whole number of MiB", espSize)
	}
	if espSize < MinESPSize {
		return plan{}, fmt.Errorf("ESP size %d MiB is below the FAT32 minimum of %d MiB", espSize/mib, MinESPSize/mib)
	}
	sectors := uint64(size / sectorSize)
	p := plan{
		size:        size,
		firstUsable: 2 + gptArraySectors,
		// The backup header takes the last sector, its array the ones before.
		last: sectors - 1 - gptArraySectors - 1,
	}
	mk := func(num int, name, typ, guid string, first uint64, bytes int64) PartitionInfo {
		return PartitionInfo{
			Number: num, Name: name, Type: typ, GUID: guid,
			FirstLBA: first, LastLBA: first + uint64(bytes/sectorSize) - 1,
			Offset: int64(first) * sectorSize, Size: bytes,
		}
	}
	p.bios = mk(PartBIOS, "bios", TypeBIOSBoot, l.BIOSPartUUID, uint64(mib/sectorSize), biosPartSize)
	p.esp = mk(PartESP, "esp", TypeESP, l.ESPPartUUID, p.bios.LastLBA+1, espSize)
	rootFirst := p.esp.LastLBA + 1
	if p.last < rootFirst+uint64(64*mib/sectorSize) {
		return plan{}, fmt.Errorf("disk size %d MiB leaves no room for a root partition after the ESP", size/mib)
	}
	// The root partition runs to the last usable sector, like Debian's: a
	// later growpart/sgdisk -e moves the backup GPT and extends it.
	p.root = mk(PartRoot, "root", TypeRootX8664, l.RootPartUUID, rootFirst, int64(p.last-rootFirst+1)*sectorSize)
	return p, nil
}

// partitions returns the partitions in disk order.
func (p plan) partitions() []PartitionInfo { return []PartitionInfo{p.bios, p.esp, p.root} }

// writeGPT writes the protective MBR partition entry (bytes 446-511 only, the
// boot code area is left alone) and both GPT copies.
func writeGPT(f *os.File, l Layout, p plan) error {
	t := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               l.DiskGUID,
	}
	// Entries in the array are placed by Index, not by slice order.
	for _, pi := range []PartitionInfo{p.root, p.bios, p.esp} {
		t.Partitions = append(t.Partitions, &gpt.Partition{
			Index: pi.Number,
			Start: pi.FirstLBA,
			End:   pi.LastLBA,
			Size:  uint64(pi.Size),
			Type:  gpt.Type(pi.Type),
			Name:  pi.Name,
			GUID:  pi.GUID,
		})
	}
	if err := t.Write(f, p.size); err != nil {
		return fmt.Errorf("writing GPT: %w", err)
	}
	// go-diskfs truncates the protective partition's size to 32 bits; the
	// UEFI spec says it must then be 0xFFFFFFFF (disks over 2 TiB).
	if sectors := uint64(p.size / sectorSize); sectors-1 > 0xffffffff {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], 0xffffffff)
		if _, err := f.WriteAt(b[:], 446+12); err != nil {
			return fmt.Errorf("writing protective MBR: %w", err)
		}
	}
	return nil
}
