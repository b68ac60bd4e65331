package disk

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
)

// Offsets in GRUB's i386-pc boot.img and diskboot.img (the first sector of
// core.img), from grub's include/grub/i386/pc/boot.h. The BIOS install below
// follows osbuild's org.osbuild.grub2.inst stage and grub's own setup.c.
const (
	bootImgSize         = 512
	bootCodeSize        = 440  // boot.img bytes that go into the MBR; 440-511 are the disk signature and partition table
	bootKernelSector    = 0x5c // uint64 LE: LBA of core.img's first sector
	bootDriveCheck      = 0x66 // 2-byte jmp that skips the "buggy BIOS" boot drive workaround
	blocklistSize       = 12   // {start uint64, len uint16, segment uint16}
	firstBlocklist      = sectorSize - blocklistSize
	coreLoadSegment     = 0x820 // GRUB_BOOT_I386_PC_KERNEL_SEG + (512 >> 4): where sector 2.. of core.img go
	maxBlocklistSectors = 0xffff
)

// Modules built into core.img and BOOTX64.EFI: what is needed to find the
// root filesystem by UUID, read grub.cfg and load Linux, plus serial and
// terminal so GRUB talks on a serial console. Everything else (gzio,
// all_video, ...) is loaded on demand by normal mode from
// /boot/grub/<platform>, which PrepareTree fills from the same tree.
// core.img comes to about 144 KiB with these (Debian 12's GRUB 2.06),
// BOOTX64.EFI to about 644 KiB.
var (
	biosModules = []string{
		"biosdisk", "part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid",
		"normal", "configfile", "linux", "echo", "test", "serial", "terminal",
	}
	efiModules = []string{
		"part_gpt", "part_msdos", "fat", "ext2", "search", "search_fs_uuid",
		"normal", "configfile", "linux", "echo", "test", "serial", "terminal",
		"efi_gop", "all_video",
	}
)

// earlyConfig is embedded into core.img and BOOTX64.EFI. It runs in GRUB's
// rescue parser (plain commands only, no if/||), exactly like the load.cfg
// grub-install embeds: find the root filesystem, point the prefix at its
// /boot/grub, and let GRUB enter normal mode, which reads $prefix/grub.cfg.
func earlyConfig(rootFSUUID string) string {
	return fmt.Sprintf("search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n", rootFSUUID)
}

// mkimage builds a GRUB image for format (i386-pc or x86_64-efi) with the
// tree's own grub-mkimage, in a chroot of the tree, and returns the image.
//
// grub-mkimage only reads the module directory and the -c file and writes
// the image, so the chroot needs no /dev, /proc or /sys. Both files have to
// be inside the chroot (the image cannot go to stdout: grub-mkimage fsyncs
// its output, which fails on a pipe): they live in a temporary directory at
// the top of the tree that is removed again, and the tree root's times are
// restored so the root filesystem does not remember it.
func mkimage(ctx context.Context, r execx.Runner, tree, format, rootFSUUID string, modules []string) ([]byte, error) {
	for _, p := range []string{"usr/bin/grub-mkimage", "usr/lib/grub/" + format + "/kernel.img"} {
		if _, err := os.Stat(filepath.Join(tree, p)); err != nil {
			return nil, fmt.Errorf("building GRUB %s image: the tree has no /%s (install grub-common and the %s binaries in the tree): %w", format, p, format, err)
		}
	}
	rootInfo, err := os.Stat(tree)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(tree, ".bake-grub-")
	if err != nil {
		return nil, fmt.Errorf("building GRUB %s image: %w", format, err)
	}
	defer func() {
		os.RemoveAll(tmp)
		restoreTimes(tree, rootInfo)
	}()
	cfg := filepath.Join(tmp, "early.cfg")
	if err := os.WriteFile(cfg, []byte(earlyConfig(rootFSUUID)), 0o644); err != nil {
		return nil, err
	}
	inChroot := "/" + filepath.Base(tmp)
	args := []string{tree, "/usr/bin/grub-mkimage",
		"--format", format,
		"--directory", "/usr/lib/grub/" + format,
		"--prefix", "/boot/grub",
		"--config", inChroot + "/early.cfg",
		"--output", inChroot + "/image",
	}
	args = append(args, modules...)
	// LC_ALL=C: the tree may lack the host's locale; grub-mkimage would warn.
	if err := r.Run(ctx, execx.Cmd{Name: "chroot", Args: args, Env: []string{"LC_ALL=C"}}); err != nil {
		return nil, fmt.Errorf("building GRUB %s image: %w", format, err)
	}
	img, err := os.ReadFile(filepath.Join(tmp, "image"))
	if err != nil {
		return nil, fmt.Errorf("building GRUB %s image: %w", format, err)
	}
	if len(img) < bootImgSize {
		return nil, fmt.Errorf("building GRUB %s image: grub-mkimage wrote only %d bytes", format, len(img))
	}
	return img, nil
}

// restoreTimes puts back a directory's access and modification times.
func restoreTimes(path string, fi os.FileInfo) {
	atime := fi.ModTime()
	if st, ok := statAtime(fi); ok {
		atime = st
	}
	_ = os.Chtimes(path, atime, fi.ModTime())
}

// patchBootImage returns the 440 bytes of boot code for the MBR: boot.img
// with the LBA of core.img patched in at 0x5c, and the boot drive check
// turned into NOPs the way grub-install does for hard disks (buggy BIOSes
// pass 0x00/0x01 in DL even when booting from 0x80).
func patchBootImage(bootImg []byte, coreLBA uint64) ([]byte, error) {
	if len(bootImg) != bootImgSize {
		return nil, fmt.Errorf("boot.img is %d bytes, want %d", len(bootImg), bootImgSize)
	}
	if bootImg[510] != 0x55 || bootImg[511] != 0xaa {
		return nil, fmt.Errorf("boot.img has no 0x55AA boot signature")
	}
	code := make([]byte, bootCodeSize)
	copy(code, bootImg[:bootCodeSize])
	binary.LittleEndian.PutUint64(code[bootKernelSector:], coreLBA)
	code[bootDriveCheck] = 0x90
	code[bootDriveCheck+1] = 0x90
	return code, nil
}

// patchCoreImage prepares core.img to be written at coreLBA: its first sector
// (diskboot.img) loads the rest of it through a blocklist at the end of that
// sector. core.img is contiguous in the BIOS boot partition, so the list is
// one entry: the sector after the first, for all remaining sectors; the
// entries below it (the list grows downwards) are cleared, the first
// all-zero entry terminates it. The image is padded to whole sectors.
func patchCoreImage(core []byte, coreLBA uint64, partSize int64) ([]byte, error) {
	sectors := (int64(len(core)) + sectorSize - 1) / sectorSize
	if sectors*sectorSize > partSize {
		return nil, fmt.Errorf("core.img is %d bytes, larger than the %d-byte BIOS boot partition", len(core), partSize)
	}
	if sectors < 2 {
		return nil, fmt.Errorf("core.img is only %d bytes", len(core))
	}
	if sectors-1 > maxBlocklistSectors {
		return nil, fmt.Errorf("core.img has %d sectors, more than one blocklist entry can load", sectors)
	}
	out := make([]byte, sectors*sectorSize)
	copy(out, core)
	// grub-mkimage leaves a non-zero length in the first entry; walk down
	// while entries are in use and clear them, as grub's setup.c does.
	for off := firstBlocklist; off >= 0; off -= blocklistSize {
		e := out[off : off+blocklistSize]
		if binary.LittleEndian.Uint16(e[8:10]) == 0 {
			break
		}
		if off-blocklistSize < 0 {
			return nil, fmt.Errorf("core.img: no blocklist terminator in the first sector")
		}
		clear(e)
	}
	e := out[firstBlocklist : firstBlocklist+blocklistSize]
	binary.LittleEndian.PutUint64(e[0:8], coreLBA+1)
	binary.LittleEndian.PutUint16(e[8:10], uint16(sectors-1))
	binary.LittleEndian.PutUint16(e[10:12], coreLoadSegment)
	return out, nil
}

// installBIOS writes core.img into the BIOS boot partition and boot.img's
// code into the MBR. The partition table at 446-511 is not touched.
func installBIOS(f *os.File, tree string, core []byte, bios PartitionInfo) error {
	bootImg, err := os.ReadFile(filepath.Join(tree, "usr/lib/grub/i386-pc/boot.img"))
	if err != nil {
		return fmt.Errorf("installing GRUB for BIOS: %w", err)
	}
	coreImg, err := patchCoreImage(core, bios.FirstLBA, bios.Size)
	if err != nil {
		return fmt.Errorf("installing GRUB for BIOS: %w", err)
	}
	code, err := patchBootImage(bootImg, bios.FirstLBA)
	if err != nil {
		return fmt.Errorf("installing GRUB for BIOS: tree's %w", err)
	}
	if _, err := f.WriteAt(coreImg, bios.Offset); err != nil {
		return fmt.Errorf("writing core.img: %w", err)
	}
	if _, err := f.WriteAt(code, 0); err != nil {
		return fmt.Errorf("writing boot.img to the MBR: %w", err)
	}
	return nil
}

// kernelArgSafe rejects characters that GRUB's script parser would
// interpret on a linux line, so the command line reaches the kernel as given.
func kernelArgSafe(cmdline string) error {
	if i := strings.IndexAny(cmdline, "\"'\\$;{}|&<>`#\n\r\t"); i >= 0 {
		return fmt.Errorf("kernel command line %q: character %q is not allowed (it would be interpreted by GRUB)", cmdline, cmdline[i])
	}
	return nil
}
