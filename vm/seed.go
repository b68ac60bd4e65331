package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// SeedLabel is the volume label cloud-init's NoCloud datasource looks for.
const SeedLabel = "cidata"

// WriteNoCloudSeed writes a NoCloud seed to path: an ISO9660 volume
// labelled "cidata" with Rock Ridge names, holding meta-data, user-data and
// any extra files (e.g. "network-config", "vendor-data"). Nothing is
// mounted. The file appears atomically (written beside path, then renamed).
//
// go-diskfs v1.9.1 writes no Joliet tree; Linux (the only reader that
// matters for cloud-init) uses the Rock Ridge names.
func WriteNoCloudSeed(path string, metaData, userData []byte, extra map[string][]byte) error {
	files := map[string][]byte{"meta-data": metaData, "user-data": userData}
	for name, data := range extra {
		if name == "" || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." {
			return fmt.Errorf("vm: seed file name %q: want a plain file name", name)
		}
		if _, dup := files[name]; dup {
			return fmt.Errorf("vm: seed file %q given twice", name)
		}
		files[name] = data
	}

	dir := filepath.Dir(path)
	work, err := os.MkdirTemp(dir, ".seed-work-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tmp, err := os.CreateTemp(dir, ".seed-*.iso")
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

	fsys, err := iso9660.Create(file.New(tmp, false), 0, 0, 2048, work)
	if err != nil {
		return fmt.Errorf("vm: seed: %w", err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f, err := fsys.OpenFile("/"+n, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("vm: seed %s: %w", n, err)
		}
		if _, err := f.Write(files[n]); err != nil {
			f.Close()
			return fmt.Errorf("vm: seed %s: %w", n, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("vm: seed %s: %w", n, err)
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
	if st, err := tmp.Stat(); err != nil {
		return err
	} else if err := tmp.Truncate(st.Size() + 150*2048); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmpName, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	ok = true
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
