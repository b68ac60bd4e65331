package vm

import (
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// SeedLabel is the volume label cloud-init's NoCloud datasource looks for
// on an ISO9660 seed; SeedLabelFAT the one a FAT seed carries (FAT labels
// are upper case; cloud-init and bake's first boot look for both).
const (
	SeedLabel    = "cidata"
	SeedLabelFAT = "CIDATA"
)

// seedFiles are a NoCloud seed's files by name: meta-data, user-data and
// the extra ones, each a plain file name.
func seedFiles(metaData, userData []byte, extra map[string][]byte) (map[string][]byte, []string, error) {
	files := map[string][]byte{"meta-data": metaData, "user-data": userData}
	for name, data := range extra {
		if name == "" || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." {
			return nil, nil, fmt.Errorf("vm: seed file name %q: want a plain file name", name)
		}
		if _, dup := files[name]; dup {
			return nil, nil, fmt.Errorf("vm: seed file %q given twice", name)
		}
		files[name] = data
	}
	return files, slices.Sorted(maps.Keys(files)), nil
}

// writeAtomic makes path with write: a temp file beside it (mode 0600,
// removed on any error) that write fills, synced and renamed over path.
// A seed holds secrets: path is never partly written, never readable by
// others.
func writeAtomic(path, pattern string, write func(tmp *os.File) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), pattern)
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if err := write(tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	ok = true
	return nil
}

// WriteNoCloudSeed writes a NoCloud seed to path: an ISO9660 volume
// labelled "cidata" with Rock Ridge names, holding meta-data, user-data and
// any extra files (e.g. "network-config", "vendor-data"). Nothing is
// mounted. The file appears atomically (written beside path, then
// renamed), mode 0600.
//
// go-diskfs v1.9.1 writes no Joliet tree; Linux (the only reader that
// matters for cloud-init) uses the Rock Ridge names.
func WriteNoCloudSeed(path string, metaData, userData []byte, extra map[string][]byte) error {
	files, names, err := seedFiles(metaData, userData, extra)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Dir(path), ".seed-work-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	return writeAtomic(path, ".seed-*.iso", func(tmp *os.File) error {
		fsys, err := iso9660.Create(file.New(tmp, false), 0, 0, 2048, work)
		if err != nil {
			return fmt.Errorf("vm: seed: %w", err)
		}
		for _, n := range names {
			if err := writeSeedFile(fsys, n, files[n]); err != nil {
				return err
			}
		}
		if err := fsys.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: SeedLabel}); err != nil {
			return fmt.Errorf("vm: seed: %w", err)
		}
		if err := tidyPVD(tmp); err != nil {
			return fmt.Errorf("vm: seed: %w", err)
		}
		// Pad with 150 zero sectors as mkisofs -pad and xorriso do: readers
		// that probe a fixed-size window (busybox findfs wants 68 KiB) or read
		// ahead (CD-ROM drivers) must not hit the end of a tiny image.
		st, err := tmp.Stat()
		if err != nil {
			return err
		}
		return tmp.Truncate(st.Size() + 150*2048)
	})
}

func writeSeedFile(fsys filesystem.FileSystem, name string, data []byte) error {
	f, err := fsys.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("vm: seed %s: %w", name, err)
	}
	if n, err := f.Write(data); err != nil || n != len(data) {
		f.Close()
		return fmt.Errorf("vm: seed %s: wrote %d of %d bytes: %v", name, n, len(data), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("vm: seed %s: %w", name, err)
	}
	return nil
}

// fatSeedMin is the smallest FAT seed: FAT16 wants 4085 clusters at least
// (1 KiB each up to 32 MiB), mkfs.fat's choice for a small volume.
const fatSeedMin = 8 << 20

// WriteNoCloudFAT writes a NoCloud seed to path as a FAT16 volume labelled
// "CIDATA" (long file names), holding meta-data, user-data and any extra
// files: the seed for a hypervisor or firmware that attaches disks but no
// CD-ROM. Pure Go (go-diskfs), nothing mounted; 8 MiB, or larger when the
// files need it. The file appears atomically, mode 0600.
func WriteNoCloudFAT(path string, metaData, userData []byte, extra map[string][]byte) error {
	files, names, err := seedFiles(metaData, userData, extra)
	if err != nil {
		return err
	}
	// Each file takes whole clusters (at most 16 KiB for FAT16 up to
	// 1 GiB); twice that leaves room for directory entries and the FATs.
	size := int64(0)
	for _, n := range names {
		size += (int64(len(files[n]))/(16<<10) + 1) * (16 << 10)
	}
	size = max(fatSeedMin, (2*size+(1<<20)-1)/(1<<20)*(1<<20))
	if size > 1<<30 {
		return fmt.Errorf("vm: seed: %d bytes of files do not fit a FAT16 seed", size/2)
	}
	return writeAtomic(path, ".seed-*.img", func(tmp *os.File) error {
		if err := tmp.Truncate(size); err != nil {
			return err
		}
		fsys, err := fat16.Create(file.New(tmp, false), size, 0, 512, SeedLabelFAT, false)
		if err != nil {
			return fmt.Errorf("vm: seed: %w", err)
		}
		for _, n := range names {
			if err := writeSeedFile(fsys, n, files[n]); err != nil {
				return err
			}
		}
		if err := uniqueShortNames(tmp); err != nil {
			return err
		}
		return freeCluster2(tmp)
	})
}

// fat16Root returns the offset and size of a FAT16 volume's root directory.
func fat16Root(f *os.File) (int64, int64, error) {
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, 0); err != nil {
		return 0, 0, err
	}
	le16 := func(b []byte, o int) int64 { return int64(binary.LittleEndian.Uint16(b[o:])) }
	bps, rsvd, nfats, rootEnts, fatSz := le16(bs, 0x0b), le16(bs, 0x0e), int64(bs[0x10]), le16(bs, 0x11), le16(bs, 0x16)
	if bps != 512 || nfats == 0 || rootEnts == 0 || fatSz == 0 {
		return 0, 0, fmt.Errorf("vm: seed: not the FAT16 layout expected (%d bytes/sector, %d FATs, %d root entries, %d sectors/FAT)", bps, nfats, rootEnts, fatSz)
	}
	return (rsvd + nfats*fatSz) * bps, rootEnts * 32, nil
}

// uniqueShortNames gives every root directory entry a short (8.3) name
// of its own: go-diskfs v1.9.1 derives it from the long name without
// numbering, so bake.tailscale_authkey and bake.tailscale_ca both become
// BAKE.TAI (fsck.fat: "Duplicate directory entry"). A repeated one gets
// BAKE~N.TAI, as Windows and Linux number them, and its long-name entries
// the new name's checksum.
func uniqueShortNames(f *os.File) error {
	off, size, err := fat16Root(f)
	if err != nil {
		return err
	}
	root := make([]byte, size)
	if _, err := f.ReadAt(root, off); err != nil {
		return err
	}
	seen := map[string]bool{}
	changed := false
	for i := 0; i+32 <= len(root) && root[i] != 0; i += 32 {
		e := root[i : i+32]
		if e[0] == 0xe5 || e[11] == 0x0f || e[11]&0x08 != 0 { // deleted, long name, volume label
			continue
		}
		name := string(e[:11])
		if !seen[name] {
			seen[name] = true
			continue
		}
		base := strings.TrimRight(name[:8], " ")
		if j := strings.IndexByte(base, '~'); j >= 0 {
			base = base[:j]
		}
		found := false
		for n := 1; n < 1000000 && !found; n++ {
			tail := fmt.Sprintf("~%d", n)
			b := base
			if len(b)+len(tail) > 8 {
				b = b[:8-len(tail)]
			}
			cand := fmt.Sprintf("%-8s", b+tail) + name[8:]
			if !seen[cand] {
				copy(e[:11], cand)
				seen[cand], found = true, true
			}
		}
		if !found {
			return fmt.Errorf("vm: seed: no short name left for %q", name)
		}
		var sum byte
		for _, c := range e[:11] {
			sum = (sum&1)<<7 + sum>>1 + c
		}
		for j := i - 32; j >= 0 && root[j+11] == 0x0f && root[j] != 0xe5; j -= 32 {
			root[j+13] = sum
			if root[j]&0x40 != 0 { // the last (first stored) long-name entry
				break
			}
		}
		changed = true
	}
	if !changed {
		return nil
	}
	_, err = f.WriteAt(root, off)
	return err
}

// freeCluster2 frees the FAT16 cluster go-diskfs v1.9.1 marks as the end
// of a chain for a root directory that FAT16 keeps outside the clusters
// (fsck.fat would reclaim it). It is left alone when a root directory
// entry starts there.
func freeCluster2(f *os.File) error {
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, 0); err != nil {
		return err
	}
	le16 := func(b []byte, o int) int64 { return int64(binary.LittleEndian.Uint16(b[o:])) }
	bps, rsvd, nfats, rootEnts, fatSz := le16(bs, 0x0b), le16(bs, 0x0e), int64(bs[0x10]), le16(bs, 0x11), le16(bs, 0x16)
	if bps != 512 || nfats == 0 || rootEnts == 0 || fatSz == 0 {
		return fmt.Errorf("vm: seed: not the FAT16 layout expected (%d bytes/sector, %d FATs, %d root entries, %d sectors/FAT)", bps, nfats, rootEnts, fatSz)
	}
	root := make([]byte, rootEnts*32)
	if _, err := f.ReadAt(root, (rsvd+nfats*fatSz)*bps); err != nil {
		return err
	}
	for i := 0; i+32 <= len(root) && root[i] != 0; i += 32 {
		if e := root[i : i+32]; e[0] != 0xe5 && e[11] != 0x0f && le16(e, 26) == 2 {
			return nil
		}
	}
	for n := range nfats {
		at := (rsvd+n*fatSz)*bps + 2*2
		var b [2]byte
		if _, err := f.ReadAt(b[:], at); err != nil {
			return err
		}
		if binary.LittleEndian.Uint16(b[:]) < 0xfff8 {
			continue
		}
		if _, err := f.WriteAt([]byte{0, 0}, at); err != nil {
			return err
		}
	}
	return nil
}

// tidyPVD makes go-diskfs's primary volume descriptor look like the ones
// genisoimage/xorriso write: identifier fields padded with spaces rather than
// NULs (ECMA-119 8.4), and no expiration date (go-diskfs writes "now", i.e. a
// volume that expires at once).
func tidyPVD(f *os.File) error {
	const pvd = 16 * 2048
	b := make([]byte, 2048)
	if _, err := f.ReadAt(b, pvd); err != nil {
		return err
	}
	if b[0] != 1 || string(b[1:6]) != "CD001" {
		return fmt.Errorf("no primary volume descriptor at sector 16")
	}
	for _, r := range [][2]int{{8, 40}, {40, 72}, {190, 813}} {
		for i := r[0]; i < r[1]; i++ {
			if b[i] == 0 {
				b[i] = ' '
			}
		}
	}
	copy(b[847:864], "0000000000000000\x00")
	_, err := f.WriteAt(b, pvd)
	return err
}
