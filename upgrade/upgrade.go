package upgrade

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/internal/execx"
)

// Options are one upgrade's inputs.
type Options struct {
	Disk  string // the stopped instance's disk (raw or qcow2), replaced
	Image string // NEW_IMAGE (raw or qcow2), only read
	Log   io.Writer
	// Runner runs qemu-img (qcow2 disks) and debugfs; execx.Default when nil.
	Runner execx.Runner
}

// Result is what an upgrade did.
type Result struct {
	Plan        Plan
	Format      string // DISK's format, kept
	StateSHA256 string // of the state partition, the same before and after
}

// Run upgrades o.Disk to o.Image (see the package documentation). A
// *BadInput error means nothing was done because of what was given.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Runner == nil {
		o.Runner = execx.Default
	}
	if o.Disk, err = filepath.Abs(o.Disk); err != nil {
		return nil, err
	}
	if o.Image, err = filepath.Abs(o.Image); err != nil {
		return nil, err
	}
	fi, err := os.Stat(o.Disk)
	if err != nil {
		return nil, bad("DISK: %v", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, bad("DISK %s is not a regular file (a disk image of a stopped instance: raw or qcow2)", o.Disk)
	}
	if ni, err := os.Stat(o.Image); err == nil && os.SameFile(fi, ni) {
		return nil, bad("DISK and NEW_IMAGE are the same file")
	}
	if users := InUse(o.Disk); len(users) > 0 {
		return nil, bad("DISK %s is in use (%s): stop the instance first; nothing done", o.Disk, strings.Join(users, "; "))
	}
	dimg, err := cloudimg.Open(ctx, o.Disk)
	if err != nil {
		return nil, bad("DISK: %v", err)
	}
	defer dimg.Close()
	nimg, err := cloudimg.Open(ctx, o.Image)
	if err != nil {
		return nil, bad("NEW_IMAGE: %v", err)
	}
	defer nimg.Close()

	// The work is done beside DISK, so the last step is a rename.
	work, err := os.MkdirTemp(filepath.Dir(o.Disk), ".bake-upgrade-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	newRaw := o.Image
	if nimg.Format != cloudimg.FormatRaw {
		newRaw = filepath.Join(work, "new.raw")
		fmt.Fprintf(o.Log, "reading NEW_IMAGE (%s) into a sparse raw copy\n", nimg.Format)
		if err := cloudimg.ToRaw(ctx, nimg, newRaw); err != nil {
			return nil, err
		}
	}
	label, err := imageStateLabel(ctx, newRaw)
	if err != nil {
		return nil, err
	}
	p, err := PlanRewrite(dimg.Table, dimg.Size, nimg.Table, label)
	if err != nil {
		return nil, err
	}
	fs, err := cloudimg.ProbeFS(dimg, p.State.Offset, p.State.Size)
	if err != nil {
		return nil, fmt.Errorf("DISK's state partition: %w", err)
	}
	if !fs.IsExt() || fs.Label != label {
		return nil, bad("DISK's partition %d named %q holds %s (label %q), not the state file system (ext4 labelled %q); nothing done", p.State.Number, label, orNone(fs.Type), fs.Label, label)
	}
	fmt.Fprintf(o.Log, "DISK %s (%s, %s), NEW_IMAGE %s:\n%s", o.Disk, dimg.Format, mib(dimg.Size), o.Image, p)

	out := filepath.Join(work, "disk.raw")
	sum, err := write(ctx, out, p, newRaw, dimg)
	if err != nil {
		return nil, err
	}
	if err := check(ctx, out, p, nimg, sum); err != nil {
		return nil, fmt.Errorf("the new disk failed its check (DISK unchanged): %w", err)
	}
	final := out
	if dimg.Format == cloudimg.FormatQcow2 {
		final = filepath.Join(work, "disk.qcow2")
		fmt.Fprintln(o.Log, "converting to qcow2 and comparing (qemu-img convert, qemu-img compare)")
		if err := o.Runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: []string{"convert", "-f", "raw", "-O", "qcow2", out, final}}); err != nil {
			return nil, err
		}
		if err := o.Runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: []string{"compare", "-q", "-f", "raw", "-F", "qcow2", out, final}}); err != nil {
			return nil, fmt.Errorf("the qcow2 differs from the raw disk it was made from (DISK unchanged): %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The instance may have been started meanwhile.
	if users := InUse(o.Disk); len(users) > 0 {
		return nil, bad("DISK %s came into use while it was upgraded (%s): not replaced", o.Disk, strings.Join(users, "; "))
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := os.Chown(final, int(st.Uid), int(st.Gid)); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(final, fi.Mode().Perm()); err != nil {
		return nil, err
	}
	if err := syncFile(final); err != nil {
		return nil, err
	}
	if err := os.Rename(final, o.Disk); err != nil {
		return nil, fmt.Errorf("replacing DISK (unchanged): %w", err)
	}
	if err := syncFile(filepath.Dir(o.Disk)); err != nil {
		fmt.Fprintf(o.Log, "warning: DISK was replaced, but syncing its folder failed (%v): run sync before a power cut\n", err)
	}
	return &Result{Plan: p, Format: dimg.Format, StateSHA256: sum}, nil
}

func orNone(s string) string {
	if s == "" {
		return "no known file system"
	}
	return s
}

// imageStateLabel reads NEW's /etc/bake/state.conf: it must keep its state
// on a partition; its label is the partition's name.
func imageStateLabel(ctx context.Context, raw string) (string, error) {
	b, err := cloudimg.ReadRootFile(ctx, raw, firstboot.StateConfigPath, 64<<10)
	if errors.Is(err, os.ErrNotExist) {
		return "", bad("NEW_IMAGE has no %s: it was built without a state: section, so it would not find the instance's state; build it with state: {partition: {size: ...}}", firstboot.StateConfigPath)
	}
	if err != nil {
		return "", bad("NEW_IMAGE: reading %s: %v", firstboot.StateConfigPath, err)
	}
	conf, err := firstboot.ParseStateConfig(b)
	if err != nil {
		return "", bad("NEW_IMAGE: %v", err)
	}
	if n, err := strconv.ParseInt(conf["PARTITION_SIZE"], 10, 64); err != nil || n <= 0 {
		return "", bad("NEW_IMAGE keeps its state on a volume (state: {volume: ...}, label %q), not on a partition of its disk: it would not use the instance's state partition; build it with state: {partition: {size: ...}}", conf["LABEL"])
	}
	return conf["LABEL"], nil
}

// write makes the new disk at out and returns the state partition's
// sha256 (as read from DISK).
func write(ctx context.Context, out string, p Plan, newRaw string, disk io.ReaderAt) (string, error) {
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := f.Truncate(p.DiskSize); err != nil {
		return "", err
	}
	nf, err := os.Open(newRaw)
	if err != nil {
		return "", err
	}
	defer nf.Close()
	if _, err := copyRange(ctx, f, nf, 0, p.CopyEnd, nil); err != nil {
		return "", fmt.Errorf("copying NEW_IMAGE's system partitions: %w", err)
	}
	h := sha256.New()
	if _, err := copyRange(ctx, f, disk, p.State.Offset, p.State.Size, h); err != nil {
		return "", fmt.Errorf("copying the state partition: %w", err)
	}
	if err := writeGPT(f, p); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), f.Close()
}

// copyRange copies n bytes at off from r to the same offset of w, in 1 MiB
// reads, leaving all-zero blocks as holes (w is a new sparse file) and
// hashing every byte into h when given.
func copyRange(ctx context.Context, w io.WriterAt, r io.ReaderAt, off, n int64, h io.Writer) (int64, error) {
	const block = 1 << 20
	buf := make([]byte, block)
	zero := make([]byte, block)
	var done int64
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		k := int(min(block, n-done))
		if _, err := r.ReadAt(buf[:k], off+done); err != nil && !(errors.Is(err, io.EOF)) {
			return done, err
		}
		if h != nil {
			h.Write(buf[:k])
		}
		if !bytes.Equal(buf[:k], zero[:k]) {
			if _, err := w.WriteAt(buf[:k], off+done); err != nil {
				return done, err
			}
		}
		done += int64(k)
	}
	return done, nil
}

// writeGPT writes both GPT copies with NEW's entries and DISK's state
// entry, and the protective MBR's partition entry (bytes 446-511: NEW's
// boot code before it is kept).
func writeGPT(f *os.File, p Plan) error {
	t := &gpt.Table{LogicalSectorSize: sector, PhysicalSectorSize: sector, ProtectiveMBR: true, GUID: p.DiskGUID}
	for _, q := range append(append([]cloudimg.Partition{}, p.System...), p.State) {
		t.Partitions = append(t.Partitions, &gpt.Partition{
			Index: q.Number, Start: q.FirstLBA, End: q.LastLBA, Size: uint64(q.Size),
			Type: gpt.Type(q.Type), Name: q.Name, GUID: q.GUID, Attributes: q.Attributes,
		})
	}
	// go-diskfs writes the MBR's boot code area too: keep NEW's.
	var boot [446]byte
	if _, err := f.ReadAt(boot[:], 0); err != nil {
		return err
	}
	if err := t.Write(f, p.DiskSize); err != nil {
		return fmt.Errorf("writing the GPT: %w", err)
	}
	if _, err := f.WriteAt(boot[:440], 0); err != nil {
		return err
	}
	if sectors := uint64(p.DiskSize / sector); sectors-1 > 0xffffffff {
		if _, err := f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff}, 446+12); err != nil {
			return err
		}
	}
	return nil
}

// check reads the new disk back: its table has exactly the planned
// entries, the state partition's bytes hash as DISK's did, and each of
// NEW's file systems (the UUIDs grub.cfg, fstab and the kernel command
// line name) is where NEW has it.
func check(ctx context.Context, out string, p Plan, nimg *cloudimg.Image, sum string) error {
	img, err := cloudimg.Open(ctx, out)
	if err != nil {
		return err
	}
	defer img.Close()
	t := img.Table
	if len(t.Partitions) != len(p.System)+1 || t.DiskGUID != strings.ToLower(p.DiskGUID) && t.DiskGUID != p.DiskGUID {
		return fmt.Errorf("the table has %d partitions (disk GUID %s), want %d (%s)", len(t.Partitions), t.DiskGUID, len(p.System)+1, p.DiskGUID)
	}
	for _, q := range append(append([]cloudimg.Partition{}, p.System...), p.State) {
		g := t.Partition(q.Number)
		if g == nil || g.GUID != q.GUID || g.FirstLBA != q.FirstLBA || g.LastLBA != q.LastLBA || g.Type != q.Type || g.Name != q.Name {
			return fmt.Errorf("partition %d is %+v, want %+v", q.Number, g, q)
		}
	}
	for _, q := range p.System {
		want, err := cloudimg.ProbeFS(nimg, q.Offset, q.Size)
		if err != nil {
			return err
		}
		got, err := cloudimg.ProbeFS(img, q.Offset, q.Size)
		if err != nil {
			return err
		}
		if got.Type != want.Type || got.UUID != want.UUID || got.Label != want.Label {
			return fmt.Errorf("partition %d holds %s %s, NEW_IMAGE's has %s %s", q.Number, got.Type, got.UUID, want.Type, want.UUID)
		}
	}
	h := sha256.New()
	if _, err := copyRange(ctx, discard{}, img, p.State.Offset, p.State.Size, h); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("the state partition's sha256 is %s, DISK's was %s", got, sum)
	}
	return nil
}

type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// InUse says who holds path: processes with it open (QEMU, a hypervisor)
// and loop devices backed by it (a mount). Empty: nobody this host can
// see. Needs root to see other users' processes.
func InUse(path string) []string {
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	var users []string
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	seen := map[string]bool{}
	for _, fd := range procs {
		if ni, err := os.Stat(fd); err == nil && os.SameFile(fi, ni) {
			pid := strings.Split(fd, "/")[2]
			if seen[pid] || pid == strconv.Itoa(os.Getpid()) {
				continue
			}
			seen[pid] = true
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			users = append(users, fmt.Sprintf("process %s (%s) has it open", pid, strings.TrimSpace(string(comm))))
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		if ni, err := os.Stat(strings.TrimSpace(string(b))); err == nil && os.SameFile(fi, ni) {
			users = append(users, "/dev/"+strings.Split(l, "/")[3]+" is a loop device on it")
		}
	}
	return users
}
