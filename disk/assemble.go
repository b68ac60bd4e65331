package disk

import (
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
	"sync"
	"syscall"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// Spec says what disk to make from which tree.
type Spec struct {
	Tree   string // root tree; must have been through PrepareTree with the same Spec
	Output string // raw image to create (replaced if it exists, removed on failure)
	// Size is the whole disk in bytes, a multiple of 1 MiB. 0 means: the
	// tree's size * 1.25 + 1 GiB for the root partition, plus the fixed
	// partitions and GPT, rounded up to 1 MiB.
	Size    int64
	BIOS    bool  // install GRUB for BIOS (core.img in p14, boot.img in the MBR)
	UEFI    bool  // install GRUB as EFI/BOOT/BOOTX64.EFI on the ESP
	ESPSize int64 // bytes, multiple of 1 MiB; 0 means DefaultESPSize; at least MinESPSize
	Layout  Layout
	// KernelCmdline is appended to "root=UUID=<RootFSUUID> ro", e.g.
	// "console=tty0 console=ttyS0,115200n8". GRUB script characters
	// (quotes, $, ;, {, }, ...) are refused.
	KernelCmdline string
	// SourceDateEpoch, when non-zero, makes the image reproducible: it is
	// the time of ext4 metadata (E2FSPROGS_FAKE_TIME), of FAT entries and of
	// the files PrepareTree writes, and in the root filesystem every
	// inode's atime and ctime become it and mtimes later than it are
	// clamped to it (a debugfs pass after mkfs). 0 means "now".
	SourceDateEpoch int64
	Runner          execx.Runner // default execx.Default
	Log             io.Writer    // progress and warnings; default io.Discard
}

// Result describes the assembled disk.
type Result struct {
	Output     string
	Size       int64 // bytes of the raw image
	Layout     Layout
	Partitions []PartitionInfo // in disk order: bios (14), esp (15), root (1)
	TreeBytes  int64           // estimated space the tree needs in ext4
	RootBlocks int64           // 4 KiB blocks of the root filesystem
	CoreImg    int             // bytes of core.img (0 without BIOS)
	EFIImage   int             // bytes of BOOTX64.EFI (0 without UEFI)
}

func (s Spec) withDefaults() Spec {
	if s.Runner == nil {
		s.Runner = execx.Default
	}
	if s.Log == nil {
		s.Log = io.Discard
	}
	if s.ESPSize == 0 {
		s.ESPSize = DefaultESPSize
	}
	return s
}

func (s Spec) validate(needOutput bool) error {
	var errs []error
	if s.Tree == "" {
		errs = append(errs, errors.New("spec.Tree is empty"))
	} else if fi, err := os.Stat(s.Tree); err != nil {
		errs = append(errs, fmt.Errorf("spec.Tree: %w", err))
	} else if !fi.IsDir() {
		errs = append(errs, fmt.Errorf("spec.Tree: %s is not a directory", s.Tree))
	}
	if needOutput && s.Output == "" {
		errs = append(errs, errors.New("spec.Output is empty"))
	} else if needOutput && s.Tree != "" {
		// mkfs -d would copy the half-written image into itself.
		if rel, err := filepath.Rel(s.Tree, s.Output); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			errs = append(errs, fmt.Errorf("spec.Output %s is inside spec.Tree", s.Output))
		}
	}
	if !s.BIOS && !s.UEFI {
		errs = append(errs, errors.New("spec: neither BIOS nor UEFI is enabled, the disk would not boot"))
	}
	if s.Size < 0 || s.Size%mib != 0 {
		errs = append(errs, fmt.Errorf("spec.Size %d is not a non-negative multiple of 1 MiB", s.Size))
	}
	if s.ESPSize%mib != 0 || s.ESPSize < MinESPSize {
		errs = append(errs, fmt.Errorf("spec.ESPSize %d must be a multiple of 1 MiB and at least %d MiB (the FAT32 minimum)", s.ESPSize, MinESPSize/mib))
	}
	if err := s.Layout.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := kernelArgSafe(s.KernelCmdline); err != nil {
		errs = append(errs, fmt.Errorf("spec.KernelCmdline: %w", err))
	}
	return errors.Join(errs...)
}

// Assemble makes the raw disk image spec.Output from spec.Tree:
// GPT (go-diskfs), FAT32 ESP (go-diskfs) with BOOTX64.EFI, ext4 root made by
// mkfs.ext4 -d at the root partition's offset, and GRUB for BIOS in the MBR
// and the BIOS boot partition. No loop device, no mount. On failure the
// output file is removed.
func Assemble(ctx context.Context, spec Spec) (res *Result, err error) {
	spec = spec.withDefaults()
	if err := spec.validate(true); err != nil {
		return nil, err
	}
	start := time.Now()
	// grub.cfg must already name this root filesystem, or the disk would
	// boot into a GRUB prompt.
	if cfg, err := os.ReadFile(filepath.Join(spec.Tree, "boot/grub/grub.cfg")); err != nil || !bytes.Contains(cfg, []byte("root=UUID="+spec.Layout.RootFSUUID)) {
		return nil, fmt.Errorf("assemble: /boot/grub/grub.cfg in the tree does not boot root filesystem %s: run PrepareTree with the same Spec first", spec.Layout.RootFSUUID)
	}

	treeBytes, entries, err := walkTree(spec.Tree)
	if err != nil {
		return nil, fmt.Errorf("assemble: measuring the tree: %w", err)
	}
	size := spec.Size
	if size == 0 {
		size = autoSize(treeBytes, spec.ESPSize)
	}
	p, err := planDisk(spec.Layout, size, spec.ESPSize)
	if err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	if p.root.Size < treeBytes {
		return nil, fmt.Errorf("assemble: root partition of %d MiB is smaller than the tree (%d MiB); raise the disk size", p.root.Size/mib, treeBytes/mib)
	}
	res = &Result{Output: spec.Output, Size: size, Layout: spec.Layout, Partitions: p.partitions(), TreeBytes: treeBytes}

	// Boot images first: they come from the tree and fail fast when the tree
	// lacks GRUB, before minutes of mkfs.
	var core, efi []byte
	if spec.BIOS {
		if _, err := os.Stat(filepath.Join(spec.Tree, "usr/lib/grub/i386-pc/boot.img")); err != nil {
			return nil, fmt.Errorf("assemble: BIOS boot needs the tree's /usr/lib/grub/i386-pc/boot.img (grub-pc-bin): %w", err)
		}
		fmt.Fprintf(spec.Log, "disk: building core.img with the tree's grub-mkimage\n")
		if core, err = mkimage(ctx, spec.Runner, spec.Tree, "i386-pc", spec.Layout.RootFSUUID, biosModules); err != nil {
			return nil, fmt.Errorf("assemble: %w", err)
		}
		if int64(len(core)) > p.bios.Size {
			return nil, fmt.Errorf("assemble: core.img is %d bytes, larger than the %d-byte BIOS boot partition", len(core), p.bios.Size)
		}
		res.CoreImg = len(core)
	}
	if spec.UEFI {
		fmt.Fprintf(spec.Log, "disk: building BOOTX64.EFI with the tree's grub-mkimage\n")
		if efi, err = mkimage(ctx, spec.Runner, spec.Tree, "x86_64-efi", spec.Layout.RootFSUUID, efiModules); err != nil {
			return nil, fmt.Errorf("assemble: %w", err)
		}
		if int64(len(efi)) > p.esp.Size/2 {
			return nil, fmt.Errorf("assemble: BOOTX64.EFI is %d bytes, too large for a %d MiB ESP", len(efi), p.esp.Size/mib)
		}
		res.EFIImage = len(efi)
	}

	f, err := os.OpenFile(spec.Output, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("assemble: %w", cerr)
		}
		if err != nil {
			os.Remove(spec.Output)
			res = nil
		}
	}()
	// A sparse file of the full size: mkfs and go-diskfs only write what
	// they use, qemu-img convert skips the holes.
	if err := f.Truncate(size); err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}

	fmt.Fprintf(spec.Log, "disk: making ext4 root filesystem (%d MiB) from %s\n", p.root.Size/mib, spec.Tree)
	if res.RootBlocks, err = mkfsRoot(ctx, spec, p.root); err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	if spec.SourceDateEpoch != 0 {
		fmt.Fprintf(spec.Log, "disk: clamping times of %d inodes to %d\n", len(entries), spec.SourceDateEpoch)
		if err := clampTimes(ctx, spec, p.root, entries); err != nil {
			return nil, fmt.Errorf("assemble: %w", err)
		}
		if err := setSuperblockWriteTime(f, p.root.Offset, spec.SourceDateEpoch); err != nil {
			return nil, fmt.Errorf("assemble: %w", err)
		}
	}

	espFiles := []espFile{}
	if spec.UEFI {
		espFiles = append(espFiles,
			espFile{path: "/EFI/BOOT/BOOTX64.EFI", data: efi},
			// Not read by our BOOTX64.EFI (its config is built in), but a
			// GRUB that looks next to itself, e.g. a signed one put there
			// later, finds the same root.
			espFile{path: "/EFI/BOOT/grub.cfg", data: []byte(earlyConfig(spec.Layout.RootFSUUID) + "configfile $prefix/grub.cfg\n")},
		)
	}
	fmt.Fprintf(spec.Log, "disk: writing FAT32 ESP (%d MiB)\n", p.esp.Size/mib)
	if err := writeESP(f, p.esp, spec.Layout.ESPVolumeID, spec.SourceDateEpoch, espFiles); err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	// The GPT goes after mkfs so nothing mkfs does near the partition can
	// damage it; boot.img goes last as it fills the MBR around it.
	if err := writeGPT(f, spec.Layout, p); err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	if spec.BIOS {
		fmt.Fprintf(spec.Log, "disk: installing GRUB for BIOS (core.img %d bytes at LBA %d)\n", len(core), p.bios.FirstLBA)
		if err := installBIOS(f, spec.Tree, core, p.bios); err != nil {
			return nil, fmt.Errorf("assemble: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("assemble: %w", err)
	}
	fmt.Fprintf(spec.Log, "disk: assembled %s (%d MiB) in %s\n", spec.Output, size/mib, time.Since(start).Round(time.Millisecond))
	return res, nil
}

// mke2fsConf pins the ext4 feature set, so the filesystem does not depend
// on the build host's /etc/mke2fs.conf (a newer host would add features such
// as orphan_file or metadata_csum_seed that older kernels or GRUB 2.06
// cannot read). These are Debian 12's defaults.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// mkfsRoot makes the root filesystem from the tree directly inside the image
// file at the partition's offset. mke2fs copies owners, modes, symlinks,
// hard links, device nodes and xattrs from the tree.
func mkfsRoot(ctx context.Context, spec Spec, root PartitionInfo) (int64, error) {
	blocks := root.Size / 4096
	conf, err := os.CreateTemp("", "bake-mke2fs-*.conf")
	if err != nil {
		return 0, err
	}
	defer os.Remove(conf.Name())
	if _, err := conf.WriteString(mke2fsConf); err != nil {
		conf.Close()
		return 0, err
	}
	if err := conf.Close(); err != nil {
		return 0, err
	}
	args, env := mkfsArgs(spec, root, conf.Name())
	if err := spec.Runner.Run(ctx, execx.Cmd{Name: "mkfs.ext4", Args: args, Env: env}); err != nil {
		return 0, fmt.Errorf("making the root filesystem: %w", err)
	}
	return blocks, nil
}

func mkfsArgs(spec Spec, root PartitionInfo, conf string) (args, env []string) {
	blocks := root.Size / 4096
	args = []string{
		"-F", "-q",
		"-t", "ext4",
		"-T", "default",
		"-b", "4096",
		"-L", "root",
		"-U", spec.Layout.RootFSUUID,
		"-E", fmt.Sprintf("hash_seed=%s,offset=%d,root_owner=0:0", spec.Layout.RootFSUUID, root.Offset),
		"-d", spec.Tree,
		spec.Output, strconv.FormatInt(blocks, 10),
	}
	env = []string{"MKE2FS_CONFIG=" + conf, "LC_ALL=C"}
	if spec.SourceDateEpoch != 0 {
		env = append(env, "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(spec.SourceDateEpoch, 10))
	}
	return args, env
}

// treeEntry is a path in the tree (relative, "." for the top) and its mtime.
type treeEntry struct {
	rel   string
	mtime time.Time
}

// walkTree lists the tree and estimates the bytes it takes in ext4 with
// 4 KiB blocks: every regular file rounded up to whole blocks (hard links
// once), a block per directory and per long symlink, and an inode each.
func walkTree(tree string) (int64, []treeEntry, error) {
	const block = 4096
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	var total int64
	var entries []treeEntry
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}
		entries = append(entries, treeEntry{rel: rel, mtime: fi.ModTime()})
		total += 256 // inode
		switch {
		case fi.Mode().IsRegular():
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				k := key{uint64(st.Dev), st.Ino}
				if seen[k] {
					return nil
				}
				seen[k] = true
			}
			total += (fi.Size() + block - 1) / block * block
		case fi.IsDir():
			total += block
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			total += block
		}
		return nil
	})
	return total, entries, err
}

// treeSize is walkTree's size estimate alone.
func treeSize(tree string) (int64, error) {
	n, _, err := walkTree(tree)
	return n, err
}

// clampScript is a debugfs script that sets atime and ctime of every
// entry to epoch and clamps mtime to it.
//
// mke2fs -d copies atime, mtime and ctime from the tree. ctime cannot be set
// from user space at all, and mke2fs's own reads update atime (relatime
// updates when atime <= ctime, which a tree just clamped always has), so
// without this pass no two builds give the same filesystem. Paths are
// double-quoted, with " doubled, as debugfs's parser expects; a name with a
// newline cannot be written in the script and is reported back.
func clampScript(entries []treeEntry, epoch int64) (script []byte, skipped []string) {
	var b bytes.Buffer
	for _, e := range entries {
		p := "/" + filepath.ToSlash(e.rel)
		if e.rel == "." {
			p = "/"
		}
		if strings.ContainsAny(p, "\n\r") {
			skipped = append(skipped, p)
			continue
		}
		q := `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
		fmt.Fprintf(&b, "sif %s atime @%d\nsif %s ctime @%d\n", q, epoch, q, epoch)
		if e.mtime.After(time.Unix(epoch, 0)) {
			fmt.Fprintf(&b, "sif %s mtime @%d\n", q, epoch)
		}
	}
	return b.Bytes(), skipped
}

// setSuperblockWriteTime sets the ext4 superblock's last write time, which
// debugfs sets to the wall clock when it closes the filesystem (unlike
// mke2fs it ignores E2FSPROGS_FAKE_TIME), and updates the superblock
// checksum. Only the primary superblock is touched, as debugfs only
// rewrote that one.
func setSuperblockWriteTime(f *os.File, fsOffset, epoch int64) error {
	const (
		sbOffset     = 1024
		sWtime       = 0x30
		sRoCompat    = 0x64
		sMagic       = 0x38
		sWtimeHi     = 0x274
		sChecksum    = 0x3fc
		metadataCsum = 0x400
	)
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, fsOffset+sbOffset); err != nil {
		return fmt.Errorf("reading the ext4 superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(sb[sMagic:]) != 0xef53 {
		return fmt.Errorf("no ext4 superblock at byte %d", fsOffset+sbOffset)
	}
	binary.LittleEndian.PutUint32(sb[sWtime:], uint32(epoch))
	sb[sWtimeHi] = byte(epoch >> 32)
	if binary.LittleEndian.Uint32(sb[sRoCompat:])&metadataCsum != 0 {
		// crc32c seeded with ~0 and not inverted at the end, as ext4 does.
		binary.LittleEndian.PutUint32(sb[sChecksum:], ^crc32.Checksum(sb[:sChecksum], crc32.MakeTable(crc32.Castagnoli)))
	}
	if _, err := f.WriteAt(sb, fsOffset+sbOffset); err != nil {
		return fmt.Errorf("writing the ext4 superblock: %w", err)
	}
	return nil
}

// clampTimes runs the clampScript on the root filesystem inside the image.
func clampTimes(ctx context.Context, spec Spec, root PartitionInfo, entries []treeEntry) error {
	script, skipped := clampScript(entries, spec.SourceDateEpoch)
	for _, p := range skipped {
		fmt.Fprintf(spec.Log, "disk: warning: %q has a newline in its name; its times are not clamped\n", p)
	}
	f, err := os.CreateTemp("", "bake-clamp-*.debugfs")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(script); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// debugfs reports a failed command on stderr and still exits 0: any
	// stderr line but its version banner is an error.
	var stderr bytes.Buffer
	dev := fmt.Sprintf("%s?offset=%d", spec.Output, root.Offset)
	err = quietDebugfs(spec.Runner).Run(ctx, execx.Cmd{Name: "debugfs", Args: []string{"-w", "-f", f.Name(), dev},
		Env: []string{"LC_ALL=C"}, Stdout: io.Discard, Stderr: &stderr})
	if err != nil {
		return fmt.Errorf("clamping file times: %w", err)
	}
	var problems []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "debugfs ") {
			problems = append(problems, l)
		}
	}
	if len(problems) > 0 {
		if len(problems) > 10 {
			problems = append(problems[:10], "...")
		}
		return fmt.Errorf("clamping file times with debugfs:\n  %s", strings.Join(problems, "\n  "))
	}
	return nil
}

// autoSize is the default disk size for a tree: root = tree * 1.25 + 1 GiB,
// plus the 1 MiB before p14, p14, the ESP and 1 MiB for the backup GPT,
// rounded up to 1 MiB.
func autoSize(treeBytes, espSize int64) int64 {
	root := treeBytes + treeBytes/4 + gib
	total := mib + biosPartSize + espSize + root + mib
	return (total + mib - 1) / mib * mib
}

// quietDebugfs keeps debugfs's echo of every script line ("debugfs: sif
// ...", two or three per file) out of the build log of a Host runner; the
// command line and any error still go there.
func quietDebugfs(r execx.Runner) execx.Runner {
	switch h := r.(type) {
	case execx.Host:
		if h.Log != nil {
			h.Log = &dropLines{w: h.Log, prefix: "debugfs: "}
		}
		return h
	case *execx.Host:
		if h != nil && h.Log != nil {
			return execx.Host{Log: &dropLines{w: h.Log, prefix: "debugfs: "}}
		}
	}
	return r
}

// dropLines passes whole lines to w, except those starting with prefix.
type dropLines struct {
	w      io.Writer
	prefix string
	buf    []byte
	mu     sync.Mutex
}

func (d *dropLines) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.buf = append(d.buf, p...)
	for {
		i := bytes.IndexByte(d.buf, '\n')
		if i < 0 {
			break
		}
		line := d.buf[:i+1]
		if !bytes.HasPrefix(line, []byte(d.prefix)) {
			if _, err := d.w.Write(line); err != nil {
				return len(p), err
			}
		}
		d.buf = d.buf[i+1:]
	}
	return len(p), nil
}

// statAtime returns a file's access time.
func statAtime(fi os.FileInfo) (time.Time, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(st.Atim.Sec, st.Atim.Nsec), true
}

// ConvertQcow2 writes a zstd-compressed qcow2 of a raw image with qemu-img
// (qemu-img 5.1 and later know compression_type=zstd). It writes straight to
// qcow2: writing to a temporary name and renaming is the caller's job.
func ConvertQcow2(ctx context.Context, runner execx.Runner, raw, qcow2 string) error {
	if runner == nil {
		runner = execx.Default
	}
	err := runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: []string{
		"convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd", raw, qcow2,
	}})
	if err != nil {
		return fmt.Errorf("converting %s to qcow2: %w", raw, err)
	}
	return nil
}
