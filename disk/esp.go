package disk

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// espFile is one file to put on the ESP.
type espFile struct {
	path string // absolute, upper case 8.3 names need no long-name entry
	data []byte
}

// FAT32 boot sector offset of BS_VolID, the volume serial number; the boot
// sector is repeated in the backup boot sector at sector 6.
const (
	fat32VolIDOffset  = 0x43
	fat32BackupSector = 6
)

// fatEpochMu serialises writers of the process environment: go-diskfs takes
// the FAT timestamps from $SOURCE_DATE_EPOCH (util/timestamp) and offers no
// other way to set the times of "." and ".." entries or of the volume label.
var fatEpochMu sync.Mutex

// writeESP makes a FAT32 filesystem labelled "ESP" in the partition and
// writes files into it. With epoch > 0 every timestamp is epoch (FAT keeps
// local time with 2 s resolution from 1980, so earlier epochs become
// 1980-01-01) and the volume serial is volID, so the ESP is reproducible.
func writeESP(f *os.File, part PartitionInfo, volID uint32, epoch int64, files []espFile) error {
	if epoch > 0 {
		if min := time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC).Unix(); epoch < min {
			epoch = min
		}
		fatEpochMu.Lock()
		defer fatEpochMu.Unlock()
		old, had := os.LookupEnv("SOURCE_DATE_EPOCH")
		os.Setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(epoch, 10))
		defer func() {
			if had {
				os.Setenv("SOURCE_DATE_EPOCH", old)
			} else {
				os.Unsetenv("SOURCE_DATE_EPOCH")
			}
		}()
	}
	// go-diskfs's FileSystem only uses the backend through ReadAt/WriteAt
	// at start+offset, so the whole image file is the backend.
	be := file.New(f, false)
	fs, err := fat32.Create(be, part.Size, part.Offset, sectorSize, "ESP", true)
	if err != nil {
		return fmt.Errorf("making the FAT32 ESP: %w", err)
	}
	for _, ef := range files {
		if d := dirOf(ef.path); d != "/" {
			if err := fs.Mkdir(d); err != nil {
				return fmt.Errorf("ESP: mkdir %s: %w", d, err)
			}
		}
		w, err := fs.OpenFile(ef.path, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("ESP: create %s: %w", ef.path, err)
		}
		if n, err := w.Write(ef.data); err != nil || n != len(ef.data) {
			w.Close()
			return fmt.Errorf("ESP: write %s: wrote %d of %d bytes: %v", ef.path, n, len(ef.data), err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("ESP: close %s: %w", ef.path, err)
		}
	}
	// go-diskfs writes serial 0 in reproducible mode and has no setter: patch
	// BS_VolID in the boot sector and in its backup.
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], volID)
	for _, sec := range []int64{0, fat32BackupSector} {
		if _, err := f.WriteAt(b[:], part.Offset+sec*sectorSize+fat32VolIDOffset); err != nil {
			return fmt.Errorf("ESP: writing volume serial: %w", err)
		}
	}
	if err := fixFAT32(f, part.Offset); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	return nil
}

// fixFAT32 corrects two things go-diskfs v1.9.1 writes differently from
// mkfs.fat, so that fsck.fat finds nothing to repair:
//   - the ".." entry of a directory in the root directory must point to
//     cluster 0, go-diskfs points it at the root's cluster (2);
//   - the FSInfo free cluster count and next-free hint, which go-diskfs
//     leaves "unknown" (0xFFFFFFFF).
func fixFAT32(f *os.File, off int64) error {
	bs := make([]byte, sectorSize)
	if _, err := f.ReadAt(bs, off); err != nil {
		return err
	}
	le16 := func(b []byte, o int) int64 { return int64(binary.LittleEndian.Uint16(b[o:])) }
	le32 := func(b []byte, o int) int64 { return int64(binary.LittleEndian.Uint32(b[o:])) }
	bps, spc, rsvd, nfats := le16(bs, 0x0b), int64(bs[0x0d]), le16(bs, 0x0e), int64(bs[0x10])
	totSec, fatSz, rootClus, fsInfo := le32(bs, 0x20), le32(bs, 0x24), le32(bs, 0x2c), le16(bs, 0x30)
	if bps != sectorSize || spc == 0 || nfats == 0 || fatSz == 0 {
		return fmt.Errorf("unexpected FAT32 geometry: %d bytes/sector, %d sectors/cluster, %d FATs of %d sectors", bps, spc, nfats, fatSz)
	}
	clusterBytes := spc * bps
	dataStart := off + (rsvd+nfats*fatSz)*bps
	clusterAt := func(c int64) int64 { return dataStart + (c-2)*clusterBytes }
	fat := make([]byte, fatSz*bps)
	if _, err := f.ReadAt(fat, off+rsvd*bps); err != nil {
		return err
	}
	entry := func(c int64) int64 { return le32(fat, int(c*4)) & 0x0fffffff }
	nClusters := (totSec - rsvd - nfats*fatSz) / spc
	if max := int64(len(fat)/4) - 2; nClusters > max {
		nClusters = max
	}

	// The root directory's cluster chain.
	var root []byte
	for c, n := rootClus, 0; c >= 2 && c < 0x0ffffff8; c, n = entry(c), n+1 {
		if n > int(nClusters) {
			return fmt.Errorf("root directory cluster chain loops")
		}
		buf := make([]byte, clusterBytes)
		if _, err := f.ReadAt(buf, clusterAt(c)); err != nil {
			return err
		}
		root = append(root, buf...)
	}
	for i := 0; i+32 <= len(root); i += 32 {
		e := root[i : i+32]
		attr := e[11]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xe5 || attr == 0x0f || attr&0x08 != 0 || attr&0x10 == 0 || e[0] == '.' {
			continue
		}
		sub := le16(e, 20)<<16 | le16(e, 26)
		if sub < 2 {
			continue
		}
		dotdot := make([]byte, 32)
		if _, err := f.ReadAt(dotdot, clusterAt(sub)+32); err != nil {
			return err
		}
		if string(dotdot[:11]) != "..         " {
			continue
		}
		if _, err := f.WriteAt([]byte{0, 0}, clusterAt(sub)+32+20); err != nil {
			return err
		}
		if _, err := f.WriteAt([]byte{0, 0}, clusterAt(sub)+32+26); err != nil {
			return err
		}
	}

	var free, next int64 = 0, -1
	for c := int64(2); c < nClusters+2; c++ {
		if entry(c) == 0 {
			free++
			if next < 0 {
				next = c
			}
		}
	}
	if next < 0 {
		next = 0xffffffff
	}
	info := make([]byte, sectorSize)
	if _, err := f.ReadAt(info, off+fsInfo*bps); err != nil {
		return err
	}
	if le32(info, 0) != 0x41615252 || le32(info, 484) != 0x61417272 {
		return fmt.Errorf("no FSInfo sector at sector %d", fsInfo)
	}
	var v [8]byte
	binary.LittleEndian.PutUint32(v[0:], uint32(free))
	binary.LittleEndian.PutUint32(v[4:], uint32(next))
	_, err := f.WriteAt(v[:], off+fsInfo*bps+488)
	return err
}

func dirOf(p string) string {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "/"
}
