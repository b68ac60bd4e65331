package cloudimg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/imgfile"
)

// Layout is what Inspect finds on a base image: the partition table with
// each partition's filesystem identity, which partition plays which role,
// and what the root filesystem holds.
type Layout struct {
	Path  string // the image inspected
	Size  int64  // virtual disk size in bytes
	Table Table
	// Partition numbers by role; 0 when the disk has no such partition.
	Root, Boot, ESP, BIOSBoot int
	RootFoundBy               string // "GPT type", "label cloudimg-rootfs", "/etc/os-release", "only Linux partition"
	// Read from the root (and /boot) filesystem without mounting (debugfs).
	OS       OSRelease
	Kernels  []string // versions of /boot/vmlinuz-*, oldest first
	Packages int      // dpkg packages in state "install ok installed"
	// Notes say what could not be read and why.
	Notes []string
}

// OSRelease is the part of os-release(5) bake reports.
type OSRelease struct {
	ID              string
	VersionID       string
	VersionCodename string
	PrettyName      string
}

// part returns the partition with number n, or nil for 0.
func (l *Layout) part(n int) *Partition {
	if n == 0 {
		return nil
	}
	return l.Table.Partition(n)
}

// RootPartition is the root partition (never nil on a Layout from Inspect).
func (l *Layout) RootPartition() *Partition { return l.part(l.Root) }

// BootPartition is the separate /boot partition, or nil.
func (l *Layout) BootPartition() *Partition { return l.part(l.Boot) }

// ESPPartition is the EFI system partition, or nil.
func (l *Layout) ESPPartition() *Partition { return l.part(l.ESP) }

// BIOSBootPartition is the BIOS boot partition (GRUB's core.img), or nil.
func (l *Layout) BIOSBootPartition() *Partition { return l.part(l.BIOSBoot) }

// Supported says whether bake can extract this layout into a tree and build
// it again: root and /boot must be ext2/3/4.
func (l *Layout) Supported() error {
	check := func(role string, p *Partition) error {
		if p == nil || p.FS.IsExt() {
			return nil
		}
		switch p.FS.Type {
		case "":
			return fmt.Errorf("%s partition %d (%s): no filesystem bake recognises", role, p.Number, p.TypeName())
		default:
			return fmt.Errorf("%s partition %d: %s is not supported yet: bake rebuilds %s as ext4 with mkfs.ext4 -d and only reads ext2/3/4 bases", role, p.Number, p.FS.Type, role)
		}
	}
	if l.RootPartition() == nil {
		return fmt.Errorf("%s: no root partition", l.Path)
	}
	if err := check("root", l.RootPartition()); err != nil {
		return err
	}
	return check("/boot", l.BootPartition())
}

// Option configures Inspect and Extract.
type Option func(*options)

type options struct {
	runner execx.Runner
	log    io.Writer
}

// WithRunner runs external commands (debugfs, losetup, mount, cp) through r.
func WithRunner(r execx.Runner) Option { return func(o *options) { o.runner = r } }

// WithLog sends progress lines to w.
func WithLog(w io.Writer) Option { return func(o *options) { o.log = w } }

func makeOptions(opts []Option) options {
	o := options{runner: execx.Default, log: io.Discard}
	for _, f := range opts {
		f(&o)
	}
	if o.runner == nil {
		o.runner = execx.Default
	}
	if o.log == nil {
		o.log = io.Discard
	}
	return o
}

// Inspect finds the layout of a base image (raw or qcow2; a qcow2 is
// converted to a temporary raw file first, as debugfs reads only raw):
// the partition table, each filesystem's type, UUID and label (read from
// its superblock), the root partition (by GPT root type, else the label
// cloudimg-rootfs, else the partition holding /etc/os-release, else the
// only Linux partition), a separate /boot (XBOOTLDR type, label BOOT, or a
// filesystem with /grub or /vmlinuz-* at its top), the ESP and the BIOS
// boot partition, and from the root filesystem the OS release, kernel
// versions and installed package count, read with debugfs without mounting.
// Needs no root. The image is only read.
func Inspect(ctx context.Context, path string, opts ...Option) (*Layout, error) {
	o := makeOptions(opts)
	img, err := Open(ctx, path)
	if err != nil {
		return nil, err
	}
	raw := path
	if img.Format != FormatRaw {
		tmp, err := os.CreateTemp("", "bake-inspect-*.raw")
		if err != nil {
			img.Close()
			return nil, err
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		if err := ToRaw(ctx, img, tmp.Name()); err != nil {
			img.Close()
			return nil, err
		}
		raw = tmp.Name()
	}
	img.Close()
	l, err := inspectRaw(ctx, raw, o)
	if err != nil {
		return nil, err
	}
	l.Path = path
	return l, nil
}

// openTable opens the raw disk image raw (a regular file) and reads its
// partition table (an error reading it starts with "what raw:"); the
// caller closes the file.
func openTable(ctx context.Context, what, raw string) (*os.File, *Table, error) {
	f, fi, err := imgfile.OpenRegular(raw)
	if err != nil {
		return nil, nil, err
	}
	t, err := readTable(ctx, f, fi.Size())
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s %s: %w", what, raw, err)
	}
	return f, t, nil
}

func inspectRaw(ctx context.Context, raw string, o options) (*Layout, error) {
	f, t, err := openTable(ctx, "inspect", raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	l := &Layout{Path: raw, Size: fi.Size(), Table: *t}
	for i := range l.Table.Partitions {
		p := &l.Table.Partitions[i]
		fs, err := probeFS(f, p.Offset, p.Size)
		if err != nil {
			return nil, fmt.Errorf("inspect %s: partition %d: %w", raw, p.Number, err)
		}
		p.FS = fs
	}
	rd := &debugfsReader{ctx: ctx, run: o.runner, raw: raw}

	// Roles by type first: they are unambiguous.
	for _, p := range l.Table.Partitions {
		switch {
		case (p.Type == TypeESP || p.Type == "0xef") && l.ESP == 0:
			l.ESP = p.Number
		case p.Type == TypeBIOSBoot && l.BIOSBoot == 0:
			l.BIOSBoot = p.Number
		}
	}
	var linux []*Partition
	for i := range l.Table.Partitions {
		p := &l.Table.Partitions[i]
		if p.FS.Type != "" && p.FS.Type != "vfat" && (linuxType(p.Type) || l.Table.Type == TableDOS) {
			linux = append(linux, p)
		}
	}
	pick := func(by string, match func(p *Partition) bool) bool {
		for _, p := range linux {
			if match(p) {
				l.Root, l.RootFoundBy = p.Number, by
				return true
			}
		}
		return false
	}
	found := pick("GPT type", func(p *Partition) bool {
		return p.Type == TypeRootX8664 || p.Type == TypeRootX86 || p.Type == TypeRootARM64
	}) || pick("label cloudimg-rootfs", func(p *Partition) bool { return p.FS.Label == "cloudimg-rootfs" }) ||
		pick("/etc/os-release", func(p *Partition) bool {
			if !p.FS.IsExt() || p.Type == TypeXBOOTLDR {
				return false
			}
			_, err := rd.osRelease(p)
			return err == nil
		}) ||
		(len(linux) == 1 && pick("only Linux partition", func(*Partition) bool { return true }))
	if !found {
		return nil, fmt.Errorf("inspect %s: no Linux root partition found (no GPT root type, no filesystem labelled cloudimg-rootfs, no /etc/os-release in an ext2/3/4 filesystem); partitions: %s",
			raw, l.Table.describe())
	}
	for _, p := range linux {
		if p.Number == l.Root {
			continue
		}
		if p.Type == TypeXBOOTLDR || strings.EqualFold(p.FS.Label, "boot") || (p.FS.IsExt() && rd.looksLikeBoot(p)) {
			l.Boot = p.Number
			break
		}
	}

	root := l.RootPartition()
	if !root.FS.IsExt() {
		l.Notes = append(l.Notes, fmt.Sprintf("root filesystem is %s: OS release, kernels and packages not read", orUnknown(root.FS.Type)))
		return l, nil
	}
	if rel, err := rd.osRelease(root); err == nil {
		l.OS = rel
	} else {
		l.Notes = append(l.Notes, "os-release: "+err.Error())
	}
	bootPart, bootDir := root, "/boot"
	if b := l.BootPartition(); b != nil && b.FS.IsExt() {
		bootPart, bootDir = b, "/"
	}
	if names, err := rd.ls(bootPart, bootDir); err == nil {
		l.Kernels = kernelVersions(names)
	} else {
		l.Notes = append(l.Notes, "kernels: "+err.Error())
	}
	if status, err := rd.cat(root, "/var/lib/dpkg/status"); err == nil {
		l.Packages = countInstalled(status)
	} else {
		l.Notes = append(l.Notes, "packages: "+err.Error())
	}
	return l, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// debugfsReader reads small files of an ext2/3/4 filesystem inside a raw
// disk image without mounting it: e2fsprogs opens "image?offset=N" at the
// partition's offset, and -c opens it read-only without the bitmaps.
// (debugfs is fine for reading a file's bytes; it is not used to extract a
// tree, see DESIGN.md section 1.)
type debugfsReader struct {
	ctx context.Context
	run execx.Runner
	raw string
}

func (d *debugfsReader) request(p *Partition, cmd string) ([]byte, error) {
	return d.requestMode(p, cmd, true)
}

// requestMode is request with the bitmaps read too (catastrophic false:
// debugfs -c skips them, which testb needs).
func (d *debugfsReader) requestMode(p *Partition, cmd string, catastrophic bool) ([]byte, error) {
	// The image may be hostile: what debugfs prints is bounded (a
	// file or listing over maxDebugfsOutput is an error, not memory).
	out := &cappedBuffer{max: maxDebugfsOutput}
	args := []string{"-R", cmd, d.raw + "?offset=" + strconv.FormatInt(p.Offset, 10)}
	if catastrophic {
		args = append([]string{"-c"}, args...)
	}
	err := d.run.Run(d.ctx, execx.Cmd{Name: "debugfs", Args: args, Env: []string{"LC_ALL=C"}, Stdout: out})
	if out.over {
		return nil, fmt.Errorf("partition %d: debugfs %s: more than %d MiB of output", p.Number, cmd, maxDebugfsOutput>>20)
	}
	if err != nil {
		return nil, fmt.Errorf("partition %d: %w", p.Number, err)
	}
	return out.b.Bytes(), nil
}

// maxDebugfsOutput bounds one debugfs request: dpkg's status file of a
// real image is a few MiB.
const maxDebugfsOutput = 64 << 20

// cappedBuffer keeps up to max bytes; a write beyond fails (the command's
// output pipe then breaks and it stops).
type cappedBuffer struct {
	b    bytes.Buffer
	max  int
	over bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if c.b.Len()+len(p) > c.max {
		c.over = true
		return 0, errors.New("output over its limit")
	}
	return c.b.Write(p)
}

// ReadRootFile reads the regular file name (absolute, no symlink as its
// last component) of at most max bytes from the root filesystem of the raw
// disk image raw, found as Inspect finds it, with debugfs and without
// mounting. A missing file is an error wrapping fs.ErrNotExist.
func ReadRootFile(ctx context.Context, raw, name string, max int64, opts ...Option) ([]byte, error) {
	if !path.IsAbs(name) || path.Clean(name) != name || strings.ContainsAny(name, " \t\n\"") {
		return nil, fmt.Errorf("read %s: want a clean absolute path without spaces or quotes", name)
	}
	o := makeOptions(opts)
	l, err := inspectRaw(ctx, raw, o)
	if err != nil {
		return nil, err
	}
	root := l.RootPartition()
	if !root.FS.IsExt() {
		return nil, fmt.Errorf("read %s: the root filesystem is %s, not ext2/3/4", name, orUnknown(root.FS.Type))
	}
	rd := &debugfsReader{ctx: ctx, run: o.runner, raw: raw}
	out, err := rd.request(root, "ls -p "+path.Dir(name))
	if err != nil {
		return nil, err
	}
	// ls -p: /ino/mode/uid/gid/name/size/
	base := path.Base(name)
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "/")
		if len(f) < 7 || f[5] != base {
			continue
		}
		mode, err := strconv.ParseUint(f[2], 8, 32)
		if err != nil {
			return nil, fmt.Errorf("read %s: cannot read debugfs's listing %q", name, line)
		}
		if mode&0o170000 != 0o100000 {
			return nil, fmt.Errorf("read %s: not a regular file (mode %o)", name, mode)
		}
		size, err := strconv.ParseInt(f[6], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("read %s: cannot read debugfs's listing %q", name, line)
		}
		if size > max {
			return nil, fmt.Errorf("read %s: %d bytes, over the limit of %d", name, size, max)
		}
		b, err := rd.request(root, "cat "+name)
		if err != nil {
			return nil, err
		}
		if int64(len(b)) != size {
			return nil, fmt.Errorf("read %s: got %d bytes, its inode says %d", name, len(b), size)
		}
		return b, nil
	}
	return nil, fmt.Errorf("read %s: %w", name, fs.ErrNotExist)
}

func (d *debugfsReader) cat(p *Partition, file string) ([]byte, error) {
	out, err := d.request(p, "cat "+file)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("partition %d: %s not found or empty", p.Number, file)
	}
	return out, nil
}

// ls lists a directory's entry names (debugfs ls -p: /ino/mode/uid/gid/name/size/).
func (d *debugfsReader) ls(p *Partition, dir string) ([]string, error) {
	out, err := d.request(p, "ls -p "+dir)
	if err != nil {
		return nil, err
	}
	names := lsNames(out)
	if len(names) == 0 {
		return nil, fmt.Errorf("partition %d: %s not found or empty", p.Number, dir)
	}
	return names, nil
}

// lsNames reads the entry names of debugfs's `ls -p` output
// (/ino/mode/uid/gid/name/size/), except . and ..
func lsNames(out []byte) []string {
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "/")
		if len(f) >= 7 && f[5] != "." && f[5] != ".." {
			names = append(names, f[5])
		}
	}
	return names
}

// osRelease reads /etc/os-release, or /usr/lib/os-release when the former is
// a symlink (debugfs does not follow the last component).
func (d *debugfsReader) osRelease(p *Partition) (OSRelease, error) {
	for _, f := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		b, err := d.cat(p, f)
		if err != nil {
			continue
		}
		if r := parseOSRelease(b); r.ID != "" || r.PrettyName != "" {
			return r, nil
		}
	}
	return OSRelease{}, fmt.Errorf("partition %d holds no /etc/os-release", p.Number)
}

func (d *debugfsReader) looksLikeBoot(p *Partition) bool {
	names, err := d.ls(p, "/")
	if err != nil {
		return false
	}
	hasEtc := false
	boot := false
	for _, n := range names {
		switch {
		case n == "etc":
			hasEtc = true
		case n == "grub" || n == "grub2" || strings.HasPrefix(n, "vmlinuz-"):
			boot = true
		}
	}
	return boot && !hasEtc
}

func parseOSRelease(b []byte) OSRelease {
	var r OSRelease
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		} else {
			v = strings.Trim(v, `"'`)
		}
		switch k {
		case "ID":
			r.ID = v
		case "VERSION_ID":
			r.VersionID = v
		case "VERSION_CODENAME":
			r.VersionCodename = v
		case "PRETTY_NAME":
			r.PrettyName = v
		}
	}
	return r
}

// kernelVersions returns the versions of vmlinuz-* names, sorted.
func kernelVersions(names []string) []string {
	var v []string
	for _, n := range names {
		if k, ok := strings.CutPrefix(n, "vmlinuz-"); ok && k != "" && !strings.HasSuffix(k, ".dpkg-tmp") && !strings.HasSuffix(k, ".dpkg-new") {
			v = append(v, k)
		}
	}
	sort.Strings(v)
	return v
}

// countInstalled counts packages in state "install ok installed" in a dpkg
// status file.
func countInstalled(status []byte) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(status))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "Status: install ok installed" {
			n++
		}
	}
	return n
}

// Print writes the layout for people (bake inspect).
func (l *Layout) Print(w io.Writer) {
	fmt.Fprintf(w, "image %s\n", l.Path)
	fmt.Fprintf(w, "disk %d bytes (%.1f GiB), %s partition table, disk identifier %s\n", l.Size, float64(l.Size)/(1<<30), l.Table.Type, l.Table.DiskGUID)
	for _, p := range l.Table.Partitions {
		role := ""
		switch p.Number {
		case l.Root:
			role = "root (found by " + l.RootFoundBy + ")"
		case l.Boot:
			role = "/boot"
		case l.ESP:
			role = "EFI system partition"
		case l.BIOSBoot:
			role = "BIOS boot (GRUB core.img)"
		}
		fmt.Fprintf(w, "  p%-2d  sectors %d-%d (%.1f MiB)  %s  partuuid %s", p.Number, p.FirstLBA, p.LastLBA, float64(p.Size)/(1<<20), p.TypeName(), p.GUID)
		if p.Name != "" {
			fmt.Fprintf(w, "  name %q", p.Name)
		}
		fmt.Fprintln(w)
		if p.FS.Type != "" {
			fmt.Fprintf(w, "        %s uuid %s", p.FS.Type, p.FS.UUID)
			if p.FS.Label != "" {
				fmt.Fprintf(w, " label %q", p.FS.Label)
			}
			fmt.Fprintln(w)
		}
		if role != "" {
			fmt.Fprintf(w, "        %s\n", role)
		}
	}
	if l.OS.PrettyName != "" {
		fmt.Fprintf(w, "os %s (%s %s)\n", shown(l.OS.PrettyName), shown(l.OS.ID), shown(l.OS.VersionID))
	}
	if len(l.Kernels) > 0 {
		ks := make([]string, len(l.Kernels))
		for i, k := range l.Kernels {
			ks[i] = shown(k)
		}
		fmt.Fprintf(w, "kernels %s\n", strings.Join(ks, " "))
	}
	if l.Packages > 0 {
		fmt.Fprintf(w, "packages %d installed\n", l.Packages)
	}
	for _, n := range l.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// shown is a string read from the image (os-release, a file name) as Print
// writes it: as it is when it is valid UTF-8 of printable characters, and
// quoted (Go syntax, escapes visible) otherwise, so that an image cannot put
// a terminal escape sequence, a carriage return or another line into the
// output of bake inspect or a build's log.
func shown(s string) string {
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
