package disk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/internal/execx"
)

// ReassembleSpec says how to build a disk from a cloud image's tree while
// keeping the base image's boot chain (DESIGN.md section 1, "Cloud images
// keep their boot chain").
type ReassembleSpec struct {
	Base   string           // the base image as raw (cloudimg.ToRaw, or a raw base itself); only read
	Layout *cloudimg.Layout // cloudimg.Inspect of Base
	Tree   string           // the customised tree (cloudimg.Extract, then the recipe's steps)
	Output string           // raw image to create (replaced; removed on failure)
	// Size of the whole disk in bytes, a multiple of 1 MiB, at least the
	// base's size. 0: the base's size, or more when the tree needs it
	// (root = tree * 1.25 + 1 GiB). The root partition grows to the end of
	// the disk when it is the last partition (as on Debian and Ubuntu).
	Size int64
	// RebuildBoot: the recipe changed the boot loader (cloudimg.BootChain
	// Changes says loader): core.img in the BIOS boot partition, boot.img
	// in the MBR and EFI/BOOT/BOOTX64.EFI on the ESP are made anew from the
	// tree's own grub-mkimage, and the tree's GRUB modules are copied to
	// /boot/grub. Partition and filesystem identifiers are kept either way.
	RebuildBoot     bool
	SourceDateEpoch int64
	Runner          execx.Runner // default execx.Default
	Log             io.Writer    // default io.Discard
}

// ReassembleResult describes the disk Reassemble made.
type ReassembleResult struct {
	Output      string
	Size        int64
	Partitions  []cloudimg.Partition // the new table, in entry order
	RootBytes   int64                // the tree's estimated size in ext4 (without /boot when separate)
	BootBytes   int64                // the tree's /boot when it is a partition of its own
	BootRebuilt bool
	CoreImg     int // bytes of the rebuilt core.img
	EFIImage    int // bytes of the rebuilt BOOTX64.EFI
}

func (s *ReassembleSpec) defaults() {
	if s.Runner == nil {
		s.Runner = execx.Default
	}
	if s.Log == nil {
		s.Log = io.Discard
	}
}

// Reassemble makes spec.Output from the base image and the tree:
//
//   - the base's GPT, byte for byte (disk GUID, partition GUIDs, types,
//     names, attributes, entry numbering), with only the root partition's
//     end, the last usable LBA and the backup GPT moved to the new disk end;
//   - the MBR (boot code, disk signature, protective entry resized), the
//     BIOS boot partition, the ESP and every other partition that is not
//     root or /boot copied as they are (unless RebuildBoot);
//   - root (and a separate /boot, from tree/boot) made by mkfs.ext4 -d from
//     the tree at the partition's offset with the base filesystem's UUID,
//     label, hash seed, block and inode size, so fstab entries, the kernel
//     command line and the boot loader's searches still find them.
//
// No loop device, no mount. With a new kernel in the tree, run
// PrepareCloudBoot first so grub.cfg boots it.
func Reassemble(ctx context.Context, spec ReassembleSpec) (res *ReassembleResult, err error) {
	spec.defaults()
	start := time.Now()
	l := spec.Layout
	if l == nil {
		return nil, errors.New("reassemble: no Layout (run cloudimg.Inspect on the base)")
	}
	if l.Table.Type != cloudimg.TableGPT {
		return nil, fmt.Errorf("reassemble: %s has an MBR partition table: only GPT base images can be reassembled yet", spec.Base)
	}
	if err := l.Supported(); err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}
	if fi, err := os.Stat(spec.Tree); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("reassemble: tree %s is not a directory", spec.Tree)
	}
	if spec.Output == "" {
		return nil, errors.New("reassemble: no Output")
	}
	if spec.Size < 0 || spec.Size%mib != 0 {
		return nil, fmt.Errorf("reassemble: size %d is not a multiple of 1 MiB", spec.Size)
	}
	base, err := os.Open(spec.Base)
	if err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}
	defer base.Close()
	if fi, err := base.Stat(); err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	} else if fi.Size() != l.Size {
		return nil, fmt.Errorf("reassemble: base %s is %d bytes but its Layout says %d: inspect the same raw file", spec.Base, fi.Size(), l.Size)
	}
	root, boot := l.RootPartition(), l.BootPartition()
	bios, esp := l.BIOSBootPartition(), l.ESPPartition()

	// What the tree needs.
	treeBytes, err := treeSize(spec.Tree)
	if err != nil {
		return nil, fmt.Errorf("reassemble: measuring the tree: %w", err)
	}
	res = &ReassembleResult{Output: spec.Output, RootBytes: treeBytes}
	if boot != nil {
		if res.BootBytes, err = treeSize(filepath.Join(spec.Tree, "boot")); err != nil {
			return nil, fmt.Errorf("reassemble: measuring the tree's /boot: %w", err)
		}
		res.RootBytes -= res.BootBytes
		if res.BootBytes > boot.Size {
			return nil, fmt.Errorf("reassemble: the tree's /boot (%d MiB) does not fit the base's /boot partition %d (%d MiB)", res.BootBytes/mib, boot.Number, boot.Size/mib)
		}
	}

	// The new geometry: the same table, root to the new end.
	gh, err := readBaseGPT(base, l)
	if err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}
	rootIsLast := true
	for _, p := range l.Table.Partitions {
		if p.LastLBA > root.LastLBA {
			rootIsLast = false
		}
	}
	size := spec.Size
	if size == 0 {
		size = l.Size
		if rootIsLast {
			need := root.Offset + res.RootBytes + res.RootBytes/4 + gib + int64(1+gh.arraySectors)*sectorSize
			size = max(size, need)
		}
		size = (size + mib - 1) / mib * mib
	}
	if size < l.Size {
		return nil, fmt.Errorf("reassemble: disk size %d MiB is smaller than the base image's %d MiB (partitions are kept where they are, only root grows)", size/mib, l.Size/mib)
	}
	sectors := uint64(size / sectorSize)
	newLastUsable := sectors - 2 - gh.arraySectors
	rootLast := root.LastLBA
	if rootIsLast {
		rootLast = newLastUsable
	}
	rootSize := int64(rootLast-root.FirstLBA+1) * sectorSize
	if rootSize < res.RootBytes {
		return nil, fmt.Errorf("reassemble: root partition %d of %d MiB is smaller than the tree (%d MiB); raise the disk size", root.Number, rootSize>>20, res.RootBytes>>20)
	}
	res.Size = size
	for _, p := range l.Table.Partitions {
		if p.Number == root.Number {
			p.LastLBA, p.Size = rootLast, rootSize
		}
		res.Partitions = append(res.Partitions, p)
	}

	// Boot images first: they come from the tree and fail fast.
	var core, efi []byte
	if spec.RebuildBoot {
		grubFS := root.FS.UUID
		if boot != nil {
			grubFS = boot.FS.UUID
		}
		if err := copyCloudGrubModules(spec, bios != nil, esp != nil); err != nil {
			return nil, fmt.Errorf("reassemble: %w", err)
		}
		if bios != nil {
			fmt.Fprintf(spec.Log, "disk: rebuilding core.img with the tree's grub-mkimage\n")
			if core, err = mkimage(ctx, spec.Runner, spec.Tree, "i386-pc", grubFS, biosModules); err != nil {
				return nil, fmt.Errorf("reassemble: %w", err)
			}
			if int64(len(core)) > bios.Size {
				return nil, fmt.Errorf("reassemble: core.img is %d bytes, larger than the %d-byte BIOS boot partition", len(core), bios.Size)
			}
			res.CoreImg = len(core)
		}
		if esp != nil {
			fmt.Fprintf(spec.Log, "disk: rebuilding BOOTX64.EFI with the tree's grub-mkimage\n")
			if efi, err = mkimage(ctx, spec.Runner, spec.Tree, "x86_64-efi", grubFS, efiModules); err != nil {
				return nil, fmt.Errorf("reassemble: %w", err)
			}
			res.EFIImage = len(efi)
		}
		res.BootRebuilt = true
	}

	out, err := os.OpenFile(spec.Output, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("reassemble: %w", cerr)
		}
		if err != nil {
			os.Remove(spec.Output)
			res = nil
		}
	}()
	if err := out.Truncate(size); err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}

	// Everything that is not rebuilt, as it is.
	for _, p := range l.Table.Partitions {
		if p.Number == root.Number || (boot != nil && p.Number == boot.Number) {
			continue
		}
		if err := copyRange(ctx, out, base, p.Offset, p.Size); err != nil {
			return nil, fmt.Errorf("reassemble: copying partition %d: %w", p.Number, err)
		}
	}

	// The filesystems, from the tree. /boot moves out of the tree while
	// root is made, so root gets an empty /boot mount point.
	rootSrc, bootSrc := spec.Tree, ""
	if boot != nil {
		var restore func() error
		bootSrc, restore, err = stageBoot(spec.Tree, spec.RebuildBoot)
		if err != nil {
			return nil, fmt.Errorf("reassemble: %w", err)
		}
		defer func() {
			if rerr := restore(); rerr != nil && err == nil {
				err = fmt.Errorf("reassemble: putting /boot back into the tree: %w", rerr)
			}
		}()
	}
	fmt.Fprintf(spec.Log, "disk: making ext4 root filesystem %s (%d MiB) in partition %d from %s\n", root.FS.UUID, rootSize/mib, root.Number, spec.Tree)
	if err := mkfsKept(ctx, spec, root.FS, root.Offset, rootSize, rootSrc); err != nil {
		return nil, fmt.Errorf("reassemble: root filesystem: %w", err)
	}
	if boot != nil {
		fmt.Fprintf(spec.Log, "disk: making ext4 /boot filesystem %s (%d MiB) in partition %d\n", boot.FS.UUID, boot.Size/mib, boot.Number)
		if err := mkfsKept(ctx, spec, boot.FS, boot.Offset, boot.Size, bootSrc); err != nil {
			return nil, fmt.Errorf("reassemble: /boot filesystem: %w", err)
		}
	}

	// The table last, so nothing written near a partition can damage it.
	if err := writeKeptGPT(out, gh, root.Number, rootLast, sectors); err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}
	if spec.RebuildBoot {
		if bios != nil {
			if err := copyRange(ctx, out, zeroReader{}, bios.Offset, bios.Size); err != nil {
				return nil, err
			}
			fmt.Fprintf(spec.Log, "disk: installing the rebuilt core.img (%d bytes) at LBA %d\n", len(core), bios.FirstLBA)
			pi := PartitionInfo{Number: bios.Number, FirstLBA: bios.FirstLBA, LastLBA: bios.LastLBA, Offset: bios.Offset, Size: bios.Size}
			if err := installBIOS(out, spec.Tree, core, pi); err != nil {
				return nil, fmt.Errorf("reassemble: %w", err)
			}
		}
		if esp != nil {
			if err := out.Sync(); err != nil {
				return nil, err
			}
			if err := replaceEFIBinary(ctx, spec, esp.Offset, efi); err != nil {
				return nil, fmt.Errorf("reassemble: %w", err)
			}
		}
	}
	if err := out.Sync(); err != nil {
		return nil, fmt.Errorf("reassemble: %w", err)
	}
	fmt.Fprintf(spec.Log, "disk: reassembled %s (%d MiB, root %d MiB) in %s\n", spec.Output, size/mib, rootSize/mib, time.Since(start).Round(time.Millisecond))
	return res, nil
}

// baseGPT is the base image's MBR sector and primary GPT.
type baseGPT struct {
	mbr, header, entries []byte
	headerSize           uint32
	entrySize            uint32
	arraySectors         uint64
}

func readBaseGPT(f *os.File, l *cloudimg.Layout) (*baseGPT, error) {
	g := &baseGPT{mbr: make([]byte, sectorSize), header: make([]byte, sectorSize), entrySize: l.Table.EntrySize}
	if _, err := f.ReadAt(g.mbr, 0); err != nil {
		return nil, fmt.Errorf("reading the base's MBR: %w", err)
	}
	if _, err := f.ReadAt(g.header, sectorSize); err != nil {
		return nil, fmt.Errorf("reading the base's GPT header: %w", err)
	}
	if string(g.header[:8]) != "EFI PART" {
		return nil, errors.New("the base has no primary GPT header")
	}
	g.headerSize = binary.LittleEndian.Uint32(g.header[12:16])
	n := int(l.Table.NumEntries) * int(l.Table.EntrySize)
	g.entries = make([]byte, n)
	if _, err := f.ReadAt(g.entries, int64(l.Table.EntriesLBA)*sectorSize); err != nil {
		return nil, fmt.Errorf("reading the base's GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(g.entries) != binary.LittleEndian.Uint32(g.header[88:92]) {
		return nil, errors.New("the base's GPT entries do not match their CRC")
	}
	g.arraySectors = (uint64(n) + sectorSize - 1) / sectorSize
	return g, nil
}

// writeKeptGPT writes the base's GPT with the root partition ending at
// rootLast on a disk of sectors sectors: primary and backup headers and
// arrays, CRCs recomputed, and the protective MBR entry resized. Every
// other byte is the base's.
func writeKeptGPT(f *os.File, g *baseGPT, rootNum int, rootLast, sectors uint64) error {
	entries := append([]byte(nil), g.entries...)
	binary.LittleEndian.PutUint64(entries[(rootNum-1)*int(g.entrySize)+40:], rootLast)
	entriesCRC := crc32.ChecksumIEEE(entries)
	alt := sectors - 1
	backupArray := alt - g.arraySectors
	primaryArray := binary.LittleEndian.Uint64(g.header[72:80])
	hdr := func(current, other, array uint64) []byte {
		h := append([]byte(nil), g.header...)
		binary.LittleEndian.PutUint64(h[24:], current)
		binary.LittleEndian.PutUint64(h[32:], other)
		binary.LittleEndian.PutUint64(h[48:], backupArray-1) // last usable LBA
		binary.LittleEndian.PutUint64(h[72:], array)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		clear(h[16:20])
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:g.headerSize]))
		return h
	}
	mbr := append([]byte(nil), g.mbr...)
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*(i+1)]
		if e[4] == 0xee {
			binary.LittleEndian.PutUint32(e[12:], uint32(min(sectors-1, 0xffffffff)))
		}
	}
	writes := []struct {
		b   []byte
		lba uint64
	}{
		{mbr, 0},
		{hdr(1, alt, primaryArray), 1},
		{entries, primaryArray},
		{entries, backupArray},
		{hdr(alt, 1, backupArray), alt},
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.b, int64(w.lba)*sectorSize); err != nil {
			return fmt.Errorf("writing the GPT: %w", err)
		}
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

// copyRange copies n bytes at off from r to w, leaving holes for zeros.
func copyRange(ctx context.Context, w io.WriterAt, r io.ReaderAt, off, n int64) error {
	const block = 1 << 20
	buf := make([]byte, block)
	zero := make([]byte, block)
	_, isZero := r.(zeroReader)
	for done := int64(0); done < n; done += block {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := int(min(block, n-done))
		if _, err := r.ReadAt(buf[:k], off+done); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if !isZero && bytes.Equal(buf[:k], zero[:k]) {
			continue
		}
		if _, err := w.WriteAt(buf[:k], off+done); err != nil {
			return err
		}
	}
	return nil
}

// mkfsKept makes an ext4 filesystem from dir at offset in spec.Output with
// the identity of the base's filesystem fs.
func mkfsKept(ctx context.Context, spec ReassembleSpec, fsys cloudimg.Filesystem, offset, size int64, dir string) error {
	conf, err := os.CreateTemp("", "bake-mke2fs-*.conf")
	if err != nil {
		return err
	}
	defer os.Remove(conf.Name())
	if _, err := conf.WriteString(mke2fsConf); err != nil {
		conf.Close()
		return err
	}
	if err := conf.Close(); err != nil {
		return err
	}
	args, env := keptMkfsArgs(spec, fsys, offset, size, dir, conf.Name())
	return spec.Runner.Run(ctx, execx.Cmd{Name: "mkfs.ext4", Args: args, Env: env})
}

func keptMkfsArgs(spec ReassembleSpec, fsys cloudimg.Filesystem, offset, size int64, dir, conf string) (args, env []string) {
	bs := int64(fsys.BlockSize)
	if bs != 1024 && bs != 2048 && bs != 4096 {
		bs = 4096
	}
	seed := fsys.HashSeed
	if seed == "" {
		seed = fsys.UUID
	}
	args = []string{"-F", "-q", "-t", "ext4", "-T", "default", "-b", strconv.FormatInt(bs, 10)}
	if fsys.InodeSize >= 128 {
		args = append(args, "-I", strconv.Itoa(fsys.InodeSize))
	}
	if fsys.Label != "" {
		args = append(args, "-L", fsys.Label)
	}
	args = append(args,
		"-U", fsys.UUID,
		"-E", fmt.Sprintf("hash_seed=%s,offset=%d,root_owner=0:0", seed, offset),
		"-d", dir,
		spec.Output, strconv.FormatInt(size/bs, 10),
	)
	env = []string{"MKE2FS_CONFIG=" + conf, "LC_ALL=C"}
	if spec.SourceDateEpoch != 0 {
		env = append(env, "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(spec.SourceDateEpoch, 10))
	}
	return args, env
}

// stageBoot moves tree/boot out of the tree (beside it, same filesystem)
// and leaves an empty directory with the same owner, mode and times as the
// root filesystem's mount point. restore puts it back. With grubLink, the
// staged /boot gets a "boot -> ." symlink while the /boot filesystem is
// made: the GRUB images bake builds search $root/boot/grub, which on a
// separate /boot filesystem is then its /grub (the convention openSUSE
// ships); restore removes the link again.
func stageBoot(tree string, grubLink bool) (src string, restore func() error, err error) {
	bootDir := filepath.Join(tree, "boot")
	fi, err := os.Lstat(bootDir)
	if err != nil || !fi.IsDir() {
		return "", nil, fmt.Errorf("the tree's /boot is not a directory (%v)", err)
	}
	stage, err := os.MkdirTemp(filepath.Dir(filepath.Clean(tree)), ".bake-boot-")
	if err != nil {
		return "", nil, err
	}
	src = filepath.Join(stage, "boot")
	if err := os.Rename(bootDir, src); err != nil {
		os.Remove(stage)
		return "", nil, fmt.Errorf("moving /boot out of the tree: %w", err)
	}
	link := ""
	restore = func() error {
		if link != "" {
			os.Remove(link)
		}
		if err := os.Remove(bootDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Rename(src, bootDir); err != nil {
			return err
		}
		return os.Remove(stage)
	}
	st := fi.Sys().(*syscall.Stat_t)
	err = os.Mkdir(bootDir, 0o700)
	if err == nil {
		err = os.Lchown(bootDir, int(st.Uid), int(st.Gid))
	}
	if err == nil {
		err = os.Chmod(bootDir, fi.Mode().Perm())
	}
	if err == nil {
		err = os.Chtimes(bootDir, time.Unix(st.Atim.Sec, st.Atim.Nsec), fi.ModTime())
	}
	if err == nil && grubLink {
		if _, lerr := os.Lstat(filepath.Join(src, "boot")); errors.Is(lerr, fs.ErrNotExist) {
			link = filepath.Join(src, "boot")
			err = os.Symlink(".", link)
		}
	}
	if err != nil {
		if rerr := restore(); rerr != nil {
			return "", nil, fmt.Errorf("%v; restoring /boot: %v (it is in %s)", err, rerr, src)
		}
		return "", nil, err
	}
	// The parent directory's times must not change: the tree is clamped.
	return src, restore, nil
}

// copyCloudGrubModules puts the tree's GRUB modules into /boot/grub so the
// rebuilt core.img and BOOTX64.EFI load modules of their own version.
func copyCloudGrubModules(spec ReassembleSpec, bios, uefi bool) error {
	r, err := os.OpenRoot(spec.Tree)
	if err != nil {
		return err
	}
	defer r.Close()
	t := &treeWriter{root: r, epoch: spec.SourceDateEpoch}
	if bios {
		if err := t.copyGrubModules("i386-pc"); err != nil {
			return err
		}
	}
	if uefi {
		if err := t.copyGrubModules("x86_64-efi"); err != nil {
			return err
		}
	}
	return t.touchParents()
}

// replaceEFIBinary writes efi as EFI/BOOT/BOOTX64.EFI into the ESP at
// offset, in place, with mtools: the ESP keeps its filesystem, volume ID,
// label and every other file (the kernel of the build host has no vfat and
// go-diskfs writes only FAT32, while a cloud image's ESP may be FAT16).
func replaceEFIBinary(ctx context.Context, spec ReassembleSpec, offset int64, efi []byte) error {
	tmp, err := os.CreateTemp("", "bake-bootx64-*.efi")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(efi); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if spec.SourceDateEpoch != 0 {
		t := time.Unix(spec.SourceDateEpoch, 0)
		os.Chtimes(tmp.Name(), t, t)
	}
	img := fmt.Sprintf("%s@@%d", spec.Output, offset)
	env := []string{"MTOOLS_SKIP_CHECK=1", "TZ=UTC", "LC_ALL=C"}
	for _, dir := range []string{"::/EFI", "::/EFI/BOOT"} {
		// mmd fails on an existing directory: make only missing ones.
		if _, err := spec.Runner.Output(ctx, execx.Cmd{Name: "mdir", Args: []string{"-b", "-i", img, dir}, Env: env}); err == nil {
			continue
		}
		if err := spec.Runner.Run(ctx, execx.Cmd{Name: "mmd", Args: []string{"-i", img, dir}, Env: env}); err != nil {
			return fmt.Errorf("ESP: %w", err)
		}
	}
	fmt.Fprintf(spec.Log, "disk: writing the rebuilt EFI/BOOT/BOOTX64.EFI (%d bytes) into the ESP\n", len(efi))
	if err := spec.Runner.Run(ctx, execx.Cmd{Name: "mcopy", Args: []string{"-o", "-m", "-i", img, tmp.Name(), "::/EFI/BOOT/BOOTX64.EFI"}, Env: env}); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	return nil
}

// CloudBootSpec says how to write grub.cfg into a tree extracted from a
// cloud image whose kernel or boot loader the recipe changed.
type CloudBootSpec struct {
	Tree   string
	Layout *cloudimg.Layout
	// KernelCmdline is appended to the arguments the base's grub.cfg gave
	// its kernel (root=..., console=...); an argument already there is not
	// repeated.
	KernelCmdline string
	// Kernel is the version to boot (/boot/vmlinuz-<Kernel>); empty means
	// the newest in the tree. A recipe that installs another flavour next
	// to the base's kernel wants that one even when it sorts lower
	// (6.1.0-28-amd64 < 6.1.0-28-cloud-amd64): cloudimg.BootChain's
	// NewKernels names it.
	Kernel          string
	SourceDateEpoch int64
	Log             io.Writer
}

// PrepareCloudBoot rewrites the tree's /boot/grub/grub.cfg to boot the
// newest kernel in the tree, with the kernel arguments of the base's own
// grub.cfg (so root=PARTUUID=... or root=LABEL=cloudimg-rootfs stay as the
// image had them: Reassemble keeps every identifier) plus KernelCmdline. It
// finds its filesystem by UUID: root's, or /boot's when /boot is separate
// (then the kernel paths are relative to /boot). The base's GRUB (kept
// core.img, shim and signed GRUB on the ESP) reads this same file, so this
// is all a kernel change needs; a boot loader change also needs
// ReassembleSpec.RebuildBoot.
//
// Call it after the recipe's steps (the kernel hooks that would run
// update-grub are diverted in the chroot) and before the tree's times are
// clamped.
func PrepareCloudBoot(spec CloudBootSpec) error {
	if spec.Log == nil {
		spec.Log = io.Discard
	}
	l := spec.Layout
	if l == nil || l.RootPartition() == nil {
		return errors.New("prepare cloud boot: no Layout with a root partition")
	}
	if err := kernelArgSafe(spec.KernelCmdline); err != nil {
		return fmt.Errorf("prepare cloud boot: %w", err)
	}
	r, err := os.OpenRoot(spec.Tree)
	if err != nil {
		return fmt.Errorf("prepare cloud boot: %w", err)
	}
	defer r.Close()
	kver := spec.Kernel
	if kver == "" {
		if kver, err = newestKernel(r); err != nil {
			return fmt.Errorf("prepare cloud boot: %w", err)
		}
	} else if kernelArgSafe(kver) != nil || strings.ContainsAny(kver, " /") {
		return fmt.Errorf("prepare cloud boot: %q is not a kernel version", kver)
	} else if fi, err := r.Stat("boot/vmlinuz-" + kver); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("prepare cloud boot: the tree has no /boot/vmlinuz-%s", kver)
	}
	old, err := r.ReadFile("boot/grub/grub.cfg")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("prepare cloud boot: %w", err)
	}
	args := baseKernelArgs(old)
	if len(args) == 0 {
		fmt.Fprintf(spec.Log, "disk: warning: no linux line in the base's grub.cfg; booting root=UUID=%s ro\n", l.RootPartition().FS.UUID)
	}
	if !hasArg(args, "root") {
		args = append([]string{"root=UUID=" + l.RootPartition().FS.UUID}, args...)
	}
	if !hasArg(args, "ro") && !hasArg(args, "rw") {
		args = append(args, "ro")
	}
	for _, a := range strings.Fields(spec.KernelCmdline) {
		if !containsString(args, a) {
			args = append(args, a)
		}
	}
	c := grubCfg{
		Note:          " for a cloud image base",
		Modules:       []string{"part_gpt", "ext2"},
		EntryModules:  []string{"gzio"},
		Title:         osName(r) + ", with Linux " + kver,
		KernelVersion: kver,
		SearchUUID:    l.RootPartition().FS.UUID,
		Dir:           "/boot",
		Args:          args,
	}
	if b := l.BootPartition(); b != nil {
		c.SearchUUID, c.Dir = b.FS.UUID, ""
	}
	if fi, err := r.Stat("boot/initrd.img-" + kver); err == nil && fi.Mode().IsRegular() {
		c.Initrd = true
	} else {
		fmt.Fprintf(spec.Log, "disk: warning: /boot/initrd.img-%s not found, grub.cfg boots the kernel without an initrd\n", kver)
	}
	cfg, err := renderGrubCfg(c)
	if err != nil {
		return fmt.Errorf("prepare cloud boot: %w", err)
	}
	t := &treeWriter{root: r, epoch: spec.SourceDateEpoch}
	if err := t.writeFile("boot/grub/grub.cfg", cfg, 0o644); err != nil {
		return err
	}
	return t.touchParents()
}

// baseKernelArgs returns the arguments of the first linux line of a
// grub.cfg, without BOOT_IMAGE= (GRUB adds it) and without anything GRUB
// would expand or interpret ($vt_handoff on Ubuntu, quotes).
func baseKernelArgs(cfg []byte) []string {
	sc := bufio.NewScanner(bytes.NewReader(cfg))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || (f[0] != "linux" && f[0] != "linuxefi" && f[0] != "linux16") {
			continue
		}
		var args []string
		for _, a := range f[2:] {
			if strings.HasPrefix(a, "BOOT_IMAGE=") || kernelArgSafe(a) != nil {
				continue
			}
			args = append(args, a)
		}
		return args
	}
	return nil
}

func hasArg(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
