package disk

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// PrepareTree writes what the root filesystem needs to boot from this disk,
// before Assemble turns the tree into that filesystem:
//
//   - /etc/fstab: root by filesystem UUID (with x-systemd.growfs, so the
//     filesystem follows a grown partition), the ESP at /boot/efi by
//     PARTUUID with nofail. Other entries already in the file are kept.
//   - /boot/grub/grub.cfg: serial and console terminals, timeout 1, one entry
//     for the newest kernel in /boot (Debian version order) with
//     root=UUID=<RootFSUUID> ro and Spec.KernelCmdline, and its initrd.
//   - /boot/grub/i386-pc and /boot/grub/x86_64-efi: the tree's GRUB modules,
//     copied the way grub-install copies them, so that normal mode loads
//     modules of exactly the version core.img/BOOTX64.EFI were built from.
//
// All access goes through an os.Root of the tree, so a symlink in the tree
// can never redirect a write to the build host. With Spec.SourceDateEpoch set,
// every file and directory written gets that time.
func PrepareTree(spec Spec) error {
	spec = spec.withDefaults()
	if err := spec.validate(false); err != nil {
		return err
	}
	root, err := os.OpenRoot(spec.Tree)
	if err != nil {
		return fmt.Errorf("prepare tree: %w", err)
	}
	defer root.Close()
	t := &treeWriter{root: root, epoch: spec.SourceDateEpoch}

	kver, err := newestKernel(root)
	if err != nil {
		return fmt.Errorf("prepare tree: %w", err)
	}
	hasInitrd := false
	if fi, err := root.Stat("boot/initrd.img-" + kver); err == nil && fi.Mode().IsRegular() {
		hasInitrd = true
	} else {
		fmt.Fprintf(spec.Log, "disk: warning: /boot/initrd.img-%s not found, grub.cfg boots the kernel without an initrd\n", kver)
	}

	var old []byte
	if fi, err := root.Lstat("etc/fstab"); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		// Never read (or later write) through a link that may leave the tree.
		fmt.Fprintf(spec.Log, "disk: warning: /etc/fstab in the tree is a symlink; replacing it with a file\n")
	} else if old, err = root.ReadFile("etc/fstab"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("prepare tree: %w", err)
	}
	if err := t.writeFile("etc/fstab", renderFstab(spec.Layout, old), 0o644); err != nil {
		return err
	}
	if err := t.mkdirAll("boot/efi"); err != nil {
		return err
	}

	platforms := []string{}
	if spec.BIOS {
		platforms = append(platforms, "i386-pc")
	}
	if spec.UEFI {
		platforms = append(platforms, "x86_64-efi")
	}
	for _, p := range platforms {
		if err := t.copyGrubModules(p); err != nil {
			return err
		}
	}

	cfg, err := renderGrubCfg(grubCfg{
		Modules:       []string{"part_gpt", "ext2", "all_video"},
		Title:         osName(root) + ", with Linux " + kver,
		KernelVersion: kver,
		SearchUUID:    spec.Layout.RootFSUUID,
		Dir:           "/boot",
		Args:          append([]string{"root=UUID=" + spec.Layout.RootFSUUID, "ro"}, strings.Fields(spec.KernelCmdline)...),
		Initrd:        hasInitrd,
	})
	if err != nil {
		return err
	}
	if err := t.writeFile("boot/grub/grub.cfg", cfg, 0o644); err != nil {
		return err
	}
	return t.touchParents()
}

// treeWriter writes into a tree and remembers the directories it changed,
// so that their times can be set to the epoch at the end.
type treeWriter struct {
	root    *os.Root
	epoch   int64
	touched map[string]bool
}

func (t *treeWriter) touch(name string) error {
	if t.touched == nil {
		t.touched = map[string]bool{}
	}
	for d := path.Dir(name); ; d = path.Dir(d) {
		t.touched[d] = true
		if d == "." {
			break
		}
	}
	if t.epoch == 0 {
		return nil
	}
	ts := time.Unix(t.epoch, 0)
	return t.root.Chtimes(name, ts, ts)
}

// touchParents sets the epoch on every directory a write went into.
func (t *treeWriter) touchParents() error {
	if t.epoch == 0 {
		return nil
	}
	ts := time.Unix(t.epoch, 0)
	for d := range t.touched {
		if err := t.root.Chtimes(d, ts, ts); err != nil {
			return fmt.Errorf("prepare tree: %w", err)
		}
	}
	return nil
}

func (t *treeWriter) mkdirAll(name string) error {
	// Create one level at a time so each new directory gets mode 0755
	// regardless of the umask and its time can be set.
	parts := strings.Split(name, "/")
	for i := range parts {
		d := strings.Join(parts[:i+1], "/")
		fi, err := t.root.Lstat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("prepare tree: /%s exists and is not a directory", d)
			}
			continue
		}
		if err := t.root.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("prepare tree: %w", err)
		}
		if err := t.root.Chmod(d, 0o755); err != nil {
			return fmt.Errorf("prepare tree: %w", err)
		}
		if err := t.touch(d); err != nil {
			return fmt.Errorf("prepare tree: %w", err)
		}
	}
	return nil
}

// writeFile replaces name: an existing file or symlink is removed first, so
// the new file is never written through a link.
func (t *treeWriter) writeFile(name string, data []byte, mode os.FileMode) error {
	if err := t.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	if err := t.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("prepare tree: %w", err)
	}
	f, err := t.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("prepare tree: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = t.root.Chmod(name, mode)
	}
	if err == nil {
		err = t.touch(name)
	}
	if err != nil {
		return fmt.Errorf("prepare tree: writing /%s: %w", name, err)
	}
	return nil
}

// isGrubRuntimeFile says whether grub-install copies a file of
// /usr/lib/grub/<platform> into /boot/grub/<platform>: the modules, the
// module/command lists normal mode uses to autoload, and efiemu.
func isGrubRuntimeFile(name string) bool {
	switch {
	case strings.HasSuffix(name, ".mod"), strings.HasSuffix(name, ".lst"):
		return true
	case name == "efiemu32.o", name == "efiemu64.o", name == "modinfo.sh":
		return true
	}
	return false
}

// copyGrubModules replaces /boot/grub/<platform> with the runtime files of
// the tree's /usr/lib/grub/<platform>, so no module of another GRUB version
// stays behind.
func (t *treeWriter) copyGrubModules(platform string) error {
	src := "usr/lib/grub/" + platform
	dst := "boot/grub/" + platform
	entries, err := fs.ReadDir(t.root.FS(), src)
	if err != nil {
		return fmt.Errorf("prepare tree: GRUB %s modules: %w (install the %s GRUB binaries in the tree)", platform, err, platform)
	}
	if err := t.root.RemoveAll(dst); err != nil {
		return fmt.Errorf("prepare tree: %w", err)
	}
	if err := t.mkdirAll(dst); err != nil {
		return err
	}
	n := 0
	for _, e := range entries {
		if !e.Type().IsRegular() || !isGrubRuntimeFile(e.Name()) {
			continue
		}
		data, err := t.root.ReadFile(src + "/" + e.Name())
		if err != nil {
			return fmt.Errorf("prepare tree: %w", err)
		}
		if err := t.writeFile(dst+"/"+e.Name(), data, 0o644); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("prepare tree: /%s holds no GRUB modules", src)
	}
	return nil
}

// newestKernel returns the version of the newest /boot/vmlinuz-<version>,
// newest by Debian version comparison (6.1.0-26-amd64 > 6.1.0-9-amd64).
func newestKernel(root *os.Root) (string, error) {
	entries, err := fs.ReadDir(root.FS(), "boot")
	if err != nil {
		return "", fmt.Errorf("looking for a kernel: %w", err)
	}
	var versions []string
	for _, e := range entries {
		v, ok := strings.CutPrefix(e.Name(), "vmlinuz-")
		if !ok || v == "" || e.IsDir() || strings.HasSuffix(v, ".dpkg-tmp") || strings.HasSuffix(v, ".dpkg-new") {
			continue
		}
		if kernelArgSafe(v) != nil || strings.ContainsAny(v, " /") {
			continue
		}
		versions = append(versions, v)
	}
	if len(versions) == 0 {
		return "", fmt.Errorf("no kernel /boot/vmlinuz-* in the tree (install a linux-image package)")
	}
	sort.Slice(versions, func(i, j int) bool { return compareVersions(versions[i], versions[j]) < 0 })
	return versions[len(versions)-1], nil
}

// osName is PRETTY_NAME from the tree's os-release, for the menu entry.
func osName(root *os.Root) string {
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		data, err := root.ReadFile(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME=")
			if !ok {
				continue
			}
			v = strings.Trim(v, `"'`)
			v = strings.Map(func(r rune) rune {
				if r < ' ' || strings.ContainsRune(`"'\$`, r) {
					return -1
				}
				return r
			}, v)
			if v != "" {
				return v
			}
		}
	}
	return "Linux"
}

// renderFstab writes the root and ESP entries and keeps every other entry
// of the old fstab (comments and entries for / and /boot/efi are dropped).
func renderFstab(l Layout, old []byte) []byte {
	var b bytes.Buffer
	b.WriteString("# /etc/fstab written by bake: filesystems are found by UUID, never by device name.\n")
	b.WriteString("# <file system> <mount point> <type> <options> <dump> <pass>\n")
	fmt.Fprintf(&b, "UUID=%s / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1\n", l.RootFSUUID)
	fmt.Fprintf(&b, "PARTUUID=%s /boot/efi vfat umask=0077,nofail 0 0\n", strings.ToLower(l.ESPPartUUID))
	sc := bufio.NewScanner(bytes.NewReader(old))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if f := strings.Fields(line); len(f) >= 2 && (path.Clean(f[1]) == "/" || path.Clean(f[1]) == "/boot/efi") {
			continue
		}
		b.WriteString(line + "\n")
	}
	return b.Bytes()
}

// compareVersions compares two version strings the way dpkg compares the
// upstream part of a version (lib/dpkg/version.c verrevcmp): digits
// numerically, letters before other characters, '~' before everything.
func compareVersions(a, b string) int {
	order := func(s string, i int) int {
		if i >= len(s) {
			return 0
		}
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			return 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
			return int(c)
		case c == '~':
			return -1
		default:
			return int(c) + 256
		}
	}
	digit := func(s string, i int) bool { return i < len(s) && s[i] >= '0' && s[i] <= '9' }
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		for (i < len(a) && !digit(a, i)) || (j < len(b) && !digit(b, j)) {
			ac, bc := order(a, i), order(b, j)
			if ac != bc {
				return ac - bc
			}
			i++
			j++
		}
		for i < len(a) && a[i] == '0' {
			i++
		}
		for j < len(b) && b[j] == '0' {
			j++
		}
		first := 0
		for digit(a, i) && digit(b, j) {
			if first == 0 {
				first = int(a[i]) - int(b[j])
			}
			i++
			j++
		}
		if digit(a, i) {
			return 1
		}
		if digit(b, j) {
			return -1
		}
		if first != 0 {
			return first
		}
	}
	return 0
}
