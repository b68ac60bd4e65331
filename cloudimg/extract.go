package cloudimg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/internal/sweep"
	"golang.org/x/sys/unix"
)

// Extract copies the root filesystem of a raw base image, and a separate
// /boot filesystem into tree/boot, into tree (created if missing, and it
// must be empty) with owners (numeric, so names resolve against the tree's
// own /etc/passwd and /etc/group), modes (setuid included), symlinks, hard
// links, device nodes, sparse files, ACLs and xattrs (file capabilities such
// as ping's cap_net_raw). lost+found is not copied. Needs root.
//
// How: each partition is attached with `losetup -r -o OFFSET --sizelimit
// SIZE` (a read-only loop device: nothing can write the base image) and
// mounted `-o ro,noload` in a temporary directory (plain ro would still
// replay a dirty journal, i.e. write), the loop device is detached at once
// (the kernel then frees it when the mount goes, so even a SIGKILLed bake in
// its private mount namespace leaks no loop device), the content is copied
// with `cp -a`, and the filesystem is unmounted. The unmount runs on every
// way out, a cancelled ctx included.
//
// DESIGN.md section 1 says why not go-diskfs's ext4 reader (wrong bytes for
// sparse files) or debugfs rdump (drops setuid bits, devices, xattrs and
// hard links).
func Extract(ctx context.Context, raw string, l *Layout, tree string, opts ...Option) error {
	o := makeOptions(opts)
	if os.Geteuid() != 0 {
		return errors.New("extract: reading a cloud image's filesystems needs root (a read-only loop mount)")
	}
	if err := l.Supported(); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	if entries, err := os.ReadDir(tree); err != nil {
		return fmt.Errorf("extract: %w", err)
	} else if len(entries) > 0 {
		return fmt.Errorf("extract: %s is not empty", tree)
	}
	start := time.Now()
	root := l.RootPartition()
	fmt.Fprintf(o.log, "cloudimg: extracting root, partition %d (%s, %d MiB), into %s\n", root.Number, root.FS.Type, root.Size>>20, tree)
	if err := extractPartition(ctx, o, raw, root, tree); err != nil {
		return fmt.Errorf("extract: root partition %d: %w", root.Number, err)
	}
	if b := l.BootPartition(); b != nil {
		dst := filepath.Join(tree, "boot")
		if fi, err := os.Lstat(dst); err != nil || !fi.IsDir() {
			// /boot must be a real directory of the tree, never a link
			// that could lead the copy out of it.
			if err == nil {
				return fmt.Errorf("extract: /boot in the root filesystem is not a directory")
			}
			if err := os.Mkdir(dst, 0o755); err != nil {
				return fmt.Errorf("extract: %w", err)
			}
		}
		fmt.Fprintf(o.log, "cloudimg: extracting /boot, partition %d (%s, %d MiB), into %s\n", b.Number, b.FS.Type, b.Size>>20, dst)
		if err := extractPartition(ctx, o, raw, b, dst); err != nil {
			return fmt.Errorf("extract: /boot partition %d: %w", b.Number, err)
		}
	}
	fmt.Fprintf(o.log, "cloudimg: extracted in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// extractDirPrefix names the temp mount points of extractPartition.
const extractDirPrefix = "bake-extract-"

// extractPartition mounts one partition read-only and copies its content
// into dst; everything it attaches and mounts is undone before it returns.
func extractPartition(ctx context.Context, o options, raw string, p *Partition, dst string) (err error) {
	// Cleanup must run even when ctx is already cancelled.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	}
	// Named after its owner: a build killed while it extracts loses the
	// mount (it lived in the build's namespace) but leaves the dir, which
	// the next extraction removes (never while a mount is below it).
	sweep.Sweep{Prefix: extractDirPrefix, MaxAge: sweep.DefaultMaxAge}.Run()
	mnt, err := sweep.MkdirTemp("", extractDirPrefix)
	if err != nil {
		return err
	}
	defer func() {
		// Remove only an empty, unmounted directory (Remove fails on a
		// mount point, and never recurses).
		if rerr := os.Remove(mnt); rerr != nil && err == nil {
			err = rerr
		}
	}()

	out, err := o.runner.Output(ctx, execx.Cmd{Name: "losetup", Args: []string{
		"--read-only", "--find", "--show",
		"--offset", strconv.FormatInt(p.Offset, 10), "--sizelimit", strconv.FormatInt(p.Size, 10),
		raw,
	}})
	if err != nil {
		return fmt.Errorf("attaching a read-only loop device: %w", err)
	}
	loop := strings.TrimSpace(string(out))
	if !strings.HasPrefix(loop, "/dev/loop") {
		return fmt.Errorf("losetup printed %q, not a loop device", loop)
	}
	detached := false
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if !detached {
			if derr := o.runner.Run(cctx, execx.Cmd{Name: "losetup", Args: []string{"--detach", loop}}); derr != nil && err == nil {
				err = derr
			}
		}
		if werr := waitLoopFree(cctx, loop, raw); werr != nil && err == nil {
			err = werr
		}
	}()

	if err := o.runner.Run(ctx, execx.Cmd{Name: "mount", Args: []string{
		"-t", "ext4", "-o", "ro,noload,nosuid,nodev,noexec", loop, mnt,
	}}); err != nil {
		return fmt.Errorf("mounting partition %d read-only: %w", p.Number, err)
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if uerr := unmount(cctx, o.runner, mnt); uerr != nil && err == nil {
			err = uerr
		}
	}()
	// Detach now: the mount holds the device, the kernel frees it when the
	// mount goes (LO_FLAGS_AUTOCLEAR), however bake ends.
	if err := o.runner.Run(ctx, execx.Cmd{Name: "losetup", Args: []string{"--detach", loop}}); err != nil {
		return fmt.Errorf("detaching %s: %w", loop, err)
	}
	detached = true

	return copyTree(ctx, o, mnt, dst)
}

// copyTree copies the content of src (a mount point) into dst with cp -a,
// leaving out lost+found, and gives dst src's owner, mode and times.
func copyTree(ctx context.Context, o options, src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	args := []string{"-a", "--no-dereference", "--preserve=all", "--one-file-system", "--"}
	n := 0
	for _, e := range entries {
		if e.Name() == "lost+found" {
			continue
		}
		args = append(args, filepath.Join(src, e.Name()))
		n++
	}
	if n > 0 {
		args = append(args, dst+"/")
		// One cp for all entries, so hard links between them stay links.
		if err := o.runner.Run(ctx, execx.Cmd{Name: "cp", Args: args}); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("copying the filesystem: %w", err)
		}
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	// After chown, which clears setuid/setgid bits.
	if err := unix.Chmod(dst, uint32(fi.Mode().Perm())|uint32(st.Mode)&(unix.S_ISUID|unix.S_ISGID|unix.S_ISVTX)); err != nil {
		return err
	}
	return os.Chtimes(dst, time.Unix(st.Atim.Sec, st.Atim.Nsec), fi.ModTime())
}

// unmount unmounts mnt, retrying while it is busy, and checks in
// /proc/self/mountinfo that nothing is mounted there any more.
func unmount(ctx context.Context, r execx.Runner, mnt string) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = r.Run(ctx, execx.Cmd{Name: "umount", Args: []string{mnt}}); err == nil {
			break
		}
		if left, _ := mounts.Under(mnt); len(left) == 0 {
			err = nil
			break
		}
		select {
		case <-ctx.Done():
			i = 10
		case <-time.After(300 * time.Millisecond):
		}
	}
	if err != nil {
		// Last resort: detach it from the tree so the build can go on;
		// the kernel finishes when the last user is gone.
		if lerr := r.Run(ctx, execx.Cmd{Name: "umount", Args: []string{"--lazy", mnt}}); lerr == nil {
			return fmt.Errorf("unmounting %s: busy, detached lazily: %w", mnt, err)
		}
		return fmt.Errorf("unmounting %s: %w", mnt, err)
	}
	if left, merr := mounts.Under(mnt); merr == nil && len(left) > 0 {
		return fmt.Errorf("unmounting %s: still mounted: %s", mnt, strings.Join(left, " "))
	}
	return nil
}

// waitLoopFree waits until the kernel has released a loop device (autoclear
// after the last unmount can lag a moment behind umount).
func waitLoopFree(ctx context.Context, loop, raw string) error {
	backing := filepath.Join("/sys/block", filepath.Base(loop), "loop/backing_file")
	abs, _ := filepath.Abs(raw)
	// The kernel releases an autoclear loop device from a work queue after
	// the last close; under heavy I/O that took over 5 s here.
	for i := 0; i < 600; i++ {
		b, err := os.ReadFile(backing)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err == nil && strings.TrimSpace(string(b)) != abs {
			return nil // freed and already reused by someone else
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("loop device %s still attached: %w", loop, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("loop device %s still attached 60 s after the unmount", loop)
}
