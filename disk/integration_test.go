//go:build integration

package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/bakeimg/bake/internal/testcache"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	"golang.org/x/sys/unix"
)

// The test tree: a minimal bookworm with a kernel, both GRUB platforms and
// systemd, made once with mmdebstrap and cached as a tarball keyed by
// everything that went into it.
var (
	treeSuite    = "bookworm"
	treeVariant  = "minbase"
	treeIncludes = []string{"linux-image-amd64", "grub-pc-bin", "grub-efi-amd64-bin", "systemd-sysv", "udev", "initramfs-tools", "e2fsprogs"}
)

const (
	bootMarker  = "BAKE-BOOT-OK"
	bootTimeout = 240 * time.Second
	ovmfCode    = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars    = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

func requireIntegration(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the integration tier needs root (chroot, mmdebstrap, file owners in the tree): run `make test` as root")
	}
	for _, tool := range []string{"mmdebstrap", "unshare", "mkfs.ext4", "debugfs", "dumpe2fs", "e2fsck", "chroot", "sgdisk", "blkid",
		"losetup", "qemu-system-x86_64", "qemu-img", "mdir", "fsck.vfat", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/install-deps.sh", tool)
		}
	}
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s missing: run scripts/install-deps.sh (ovmf)", f)
		}
	}
}

func cacheDir(t *testing.T) string {
	if d := os.Getenv("BAKE_TESTTREES"); d != "" {
		return d
	}
	return testcache.Dir("testtrees")
}

// testTree returns a fresh copy of the cached test tree, building the cache
// with mmdebstrap when it is missing.
func testTree(t *testing.T) string {
	t.Helper()
	key := sha256.Sum256([]byte("v1\x00" + treeSuite + "\x00" + treeVariant + "\x00" + strings.Join(treeIncludes, ",")))
	dir := cacheDir(t)
	tarball := filepath.Join(dir, treeSuite+"-"+hex.EncodeToString(key[:8])+".tar")
	if _, err := os.Stat(tarball); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		partial := tarball + ".partial"
		os.Remove(partial)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		// In a private mount namespace: the mounts mmdebstrap makes in its
		// chroot (/proc, /sys, /dev) vanish with it even if it is killed.
		err := execx.Host{}.Run(ctx, execx.Cmd{Name: "unshare", Args: []string{
			"--mount", "--propagation", "private", "--",
			"mmdebstrap", "--variant=" + treeVariant, "--include=" + strings.Join(treeIncludes, ","), "--format=tar",
			treeSuite, partial,
		}, Stdin: strings.NewReader("")})
		if err != nil {
			os.Remove(partial)
			t.Fatalf("building the test tree: %v", err)
		}
		if err := os.Rename(partial, tarball); err != nil {
			t.Fatal(err)
		}
		t.Logf("built test tree %s in %s", tarball, time.Since(start).Round(time.Second))
	}
	tree := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := exec.Command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", tarball, "-C", tree).CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v\n%s", tarball, err, out)
	}
	t.Logf("extracted %s in %s", filepath.Base(tarball), time.Since(start).Round(100*time.Millisecond))
	return tree
}

// decorateTree adds the boot marker unit and files whose metadata mkfs -d
// must keep.
func decorateTree(t *testing.T, tree string) {
	t.Helper()
	w := func(name, data string, mode os.FileMode) {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	// The marker says which firmware booted and what is mounted where.
	w("etc/systemd/system/bake-boot-ok.service", `[Unit]
Description=bake integration test boot marker
After=local-fs.target boot-efi.mount

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'fw=bios; [ -d /sys/firmware/efi ] && fw=efi; echo "`+bootMarker+` fw=$fw root=$(findmnt -no SOURCE /) efi=$(findmnt -no FSTYPE /boot/efi)" > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
`, 0o644)
	if err := os.MkdirAll(filepath.Join(tree, "etc/systemd/system/multi-user.target.wants"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/systemd/system/bake-boot-ok.service", filepath.Join(tree, "etc/systemd/system/multi-user.target.wants/bake-boot-ok.service")); err != nil {
		t.Fatal(err)
	}

	w("usr/local/bin/bake-setuid", "#!/bin/sh\n", 0o755)
	if err := os.Chmod(filepath.Join(tree, "usr/local/bin/bake-setuid"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	w("usr/local/bin/bake-cap", "#!/bin/sh\n", 0o755)
	// vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (13):
	// what `setcap cap_net_raw+ep` writes.
	capData := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := unix.Lsetxattr(filepath.Join(tree, "usr/local/bin/bake-cap"), "security.capability", capData, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(tree, "usr/local/bin/bake-cap"), "user.bake", []byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	w("usr/local/share/bake-hl1", "hard link\n", 0o644)
	if err := os.Link(filepath.Join(tree, "usr/local/share/bake-hl1"), filepath.Join(tree, "usr/local/share/bake-hl2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("bake-setuid", filepath.Join(tree, "usr/local/bin/bake-sym")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(tree, "usr/local/share/bake-null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(tree, "usr/local/share/bake-fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	w("usr/local/share/odd \"name\" with\ttab", "clamped\n", 0o644)
	w("usr/local/share/bake-owned", "owned\n", 0o640)
	if err := os.Lchown(filepath.Join(tree, "usr/local/share/bake-owned"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestIntegrationAssembleAndBoot(t *testing.T) {
	requireIntegration(t)
	tree := testTree(t)
	decorateTree(t, tree)
	work := filepath.Dir(tree)
	loopsBefore := run(t, "losetup", "-a")

	var cmdLog bytes.Buffer
	spec := Spec{
		Tree:            tree,
		Output:          filepath.Join(work, "disk.raw"),
		BIOS:            true,
		UEFI:            true,
		Layout:          DeriveLayout("integration-test"),
		KernelCmdline:   "console=tty0 console=ttyS0,115200n8",
		SourceDateEpoch: testEpoch,
		Runner:          execx.Host{Log: &cmdLog},
		Log:             testWriter{t},
	}
	if err := PrepareTree(spec); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := Assemble(context.Background(), spec)
	if err != nil {
		t.Fatalf("%v\ncommands:\n%s", err, cmdLog.String())
	}
	t.Logf("assembled in %s: %d MiB, tree %d MiB, core.img %d bytes, BOOTX64.EFI %d bytes",
		time.Since(start).Round(100*time.Millisecond), res.Size/mib, res.TreeBytes/mib, res.CoreImg, res.EFIImage)
	root := res.Partitions[2]

	t.Run("no loop devices or mounts", func(t *testing.T) {
		if out := run(t, "losetup", "-j", spec.Output); strings.TrimSpace(out) != "" {
			t.Errorf("loop device on the image: %s", out)
		}
		loopsAfter := run(t, "losetup", "-a")
		if strings.Contains(loopsAfter, work) {
			t.Errorf("loop devices under the work dir:\n%s", loopsAfter)
		}
		if loopsAfter != loopsBefore {
			t.Logf("losetup -a changed during the test (another process?):\nbefore:\n%s\nafter:\n%s", loopsBefore, loopsAfter)
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mounts), work) {
			t.Errorf("mount under the work dir:\n%s", mounts)
		}
		for _, l := range strings.Split(cmdLog.String(), "\n") {
			if cmd, ok := strings.CutPrefix(l, "+ "); ok {
				name := strings.Fields(cmd)[0]
				if name != "chroot" && name != "mkfs.ext4" && name != "debugfs" {
					t.Errorf("the stage ran %s", cmd)
				}
			}
		}
		if n := strings.Count(cmdLog.String(), "\n"); n > 40 {
			t.Errorf("build log has %d lines:\n%s", n, cmdLog.String())
		}
	})

	t.Run("GPT", func(t *testing.T) {
		out := run(t, "sgdisk", "-p", spec.Output)
		t.Logf("sgdisk -p:\n%s", out)
		if !strings.Contains(out, "Disk identifier (GUID): "+strings.ToUpper(spec.Layout.DiskGUID)) {
			t.Errorf("disk GUID %s not in sgdisk -p", spec.Layout.DiskGUID)
		}
		for _, re := range []string{
			`(?m)^\s+1\s+` + strconv.FormatUint(root.FirstLBA, 10) + `\s+` + strconv.FormatUint(root.LastLBA, 10) + `\s+.*8304\s+root$`,
			`(?m)^\s+14\s+2048\s+4095\s+1024\.0 KiB\s+EF02\s+bios$`,
			`(?m)^\s+15\s+4096\s+135167\s+64\.0 MiB\s+EF00\s+esp$`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("sgdisk -p does not match %s", re)
			}
		}
		if v := run(t, "sgdisk", "-v", spec.Output); !strings.Contains(v, "No problems found") {
			t.Errorf("sgdisk -v:\n%s", v)
		}
		for _, p := range res.Partitions {
			info := run(t, "sgdisk", "-i", strconv.Itoa(p.Number), spec.Output)
			if !strings.Contains(info, "Partition unique GUID: "+strings.ToUpper(p.GUID)) ||
				!strings.Contains(info, "Partition GUID code: "+p.Type) {
				t.Errorf("partition %d:\n%s\nwant GUID %s type %s", p.Number, info, p.GUID, p.Type)
			}
		}
	})

	dev := fmt.Sprintf("%s?offset=%d", spec.Output, root.Offset)
	t.Run("root filesystem", func(t *testing.T) {
		if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn: %v\n%s", err, out)
		}
		hdr := run(t, "dumpe2fs", "-h", dev)
		for _, want := range []string{
			"Filesystem UUID:          " + spec.Layout.RootFSUUID,
			"Directory Hash Seed:      " + spec.Layout.RootFSUUID,
			"Filesystem volume name:   root",
			"Block size:               4096",
			"Block count:              " + strconv.FormatInt(res.RootBlocks, 10),
			"Filesystem created:       " + time.Unix(testEpoch, 0).Format("Mon Jan _2 15:04:05 2006"),
		} {
			if !strings.Contains(hdr, want) {
				t.Errorf("dumpe2fs -h lacks %q", want)
			}
		}
		for _, bad := range []string{"orphan_file", "metadata_csum_seed", "large_dir"} {
			if regexp.MustCompile(`Filesystem features:.*\b` + bad + `\b`).MatchString(hdr) {
				t.Errorf("feature %s enabled (GRUB 2.06 / older kernels cannot read it)", bad)
			}
		}
		blk := run(t, "blkid", "-p", "-O", strconv.FormatInt(root.Offset, 10), "-o", "export", spec.Output)
		if !strings.Contains(blk, "UUID="+spec.Layout.RootFSUUID) || !strings.Contains(blk, "TYPE=ext4") {
			t.Errorf("blkid root:\n%s", blk)
		}

		stat := func(p string) string { return run(t, "debugfs", "-R", "stat "+p, dev) }
		if s := stat("/usr/local/bin/bake-setuid"); !strings.Contains(s, "Mode:  04755") || !strings.Contains(s, "User:     0   Group:     0") {
			t.Errorf("setuid file:\n%s", s)
		}
		if s := run(t, "debugfs", "-R", "ea_list /usr/local/bin/bake-cap", dev); !strings.Contains(s, "security.capability (20)") || !strings.Contains(s, `user.bake (5) = "hello"`) {
			t.Errorf("xattrs:\n%s", s)
		}
		ino := regexp.MustCompile(`Inode: (\d+)`)
		s1, s2 := stat("/usr/local/share/bake-hl1"), stat("/usr/local/share/bake-hl2")
		if ino.FindString(s1) != ino.FindString(s2) || !strings.Contains(s1, "Links: 2") {
			t.Errorf("hard links not kept:\n%s\n%s", s1, s2)
		}
		if s := stat("/usr/local/share/bake-null"); !strings.Contains(s, "Type: character special") || !strings.Contains(s, "Device major/minor number: 01:03") {
			t.Errorf("device node:\n%s", s)
		}
		if s := stat("/usr/local/share/bake-fifo"); !strings.Contains(s, "Type: FIFO") {
			t.Errorf("fifo:\n%s", s)
		}
		if s := stat("/usr/local/bin/bake-sym"); !strings.Contains(s, `Fast link dest: "bake-setuid"`) {
			t.Errorf("symlink:\n%s", s)
		}
		if s := stat("/usr/local/share/bake-owned"); !strings.Contains(s, "User:  1234   Group:  5678") || !strings.Contains(s, "Mode:  0640") {
			t.Errorf("owner:\n%s", s)
		}
		epochHex := fmt.Sprintf("0x%08x:00000000", testEpoch)
		for _, p := range []string{"/etc/passwd", "/", "/usr/lib", "/boot/grub/grub.cfg", "/usr/local/bin/bake-sym", `"/usr/local/share/odd ""name"" with` + "\t" + `tab"`} {
			s := stat(p)
			for _, field := range []string{" ctime: ", " atime: "} {
				if !strings.Contains(s, field+epochHex) {
					t.Errorf("%s%s not SOURCE_DATE_EPOCH:\n%s", p, field, s)
				}
			}
		}
		if s := stat("/"); !strings.Contains(s, "Mode:  0755") || !strings.Contains(s, "User:     0   Group:     0") {
			t.Errorf("root directory:\n%s", s)
		}
		if s := run(t, "debugfs", "-R", "cat /boot/grub/grub.cfg", dev); !strings.Contains(s, "root=UUID="+spec.Layout.RootFSUUID) {
			t.Errorf("grub.cfg in the image:\n%s", s)
		}
		if s := run(t, "debugfs", "-R", "ls /", dev); strings.Contains(s, ".bake-grub") {
			t.Errorf("temporary GRUB config left in the image:\n%s", s)
		}
	})

	t.Run("ESP", func(t *testing.T) {
		esp := res.Partitions[1]
		img := fmt.Sprintf("%s@@%d", spec.Output, esp.Offset)
		out := run(t, "mdir", "-i", img, "::/EFI/BOOT")
		if !strings.Contains(out, "BOOTX64  EFI") || !strings.Contains(out, "Volume Serial Number is "+spec.Layout.ESPSerial()) || !strings.Contains(out, "is ESP") {
			t.Errorf("mdir:\n%s", out)
		}
		blk := run(t, "blkid", "-p", "-O", strconv.FormatInt(esp.Offset, 10), "-o", "export", spec.Output)
		if !strings.Contains(blk, "UUID="+spec.Layout.ESPSerial()) || !strings.Contains(blk, "LABEL=ESP") || !strings.Contains(blk, "VERSION=FAT32") {
			t.Errorf("blkid ESP:\n%s", blk)
		}
		part := filepath.Join(t.TempDir(), "esp.raw")
		run(t, "dd", "if="+spec.Output, "of="+part, "bs=1M", fmt.Sprintf("skip=%d", esp.Offset/mib), fmt.Sprintf("count=%d", esp.Size/mib), "status=none")
		if out, err := exec.Command("fsck.vfat", "-n", part).CombinedOutput(); err != nil {
			t.Errorf("fsck.vfat -n: %v\n%s", err, out)
		}
	})

	t.Run("MBR and core.img", func(t *testing.T) {
		f, err := os.Open(spec.Output)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		boot, _ := os.ReadFile(filepath.Join(tree, "usr/lib/grub/i386-pc/boot.img"))
		mbr := make([]byte, 512)
		f.ReadAt(mbr, 0)
		if !bytes.Equal(mbr[:0x5c], boot[:0x5c]) || !bytes.Equal(mbr[0x68:440], boot[0x68:440]) {
			t.Error("MBR boot code is not the tree's boot.img")
		}
		if mbr[450] != 0xee {
			t.Error("protective MBR entry lost")
		}
	})

	t.Run("deterministic", func(t *testing.T) {
		again := spec
		again.Output = filepath.Join(work, "disk2.raw")
		again.Log = io.Discard
		again.Runner = execx.Host{}
		if _, err := Assemble(context.Background(), again); err != nil {
			t.Fatal(err)
		}
		a, b := fileSum(t, spec.Output), fileSum(t, again.Output)
		if a != b {
			t.Errorf("two assemblies of one tree differ: %s vs %s", a, b)
		} else {
			t.Logf("two assemblies are identical: sha256 %s", a)
		}
		os.Remove(again.Output)
	})

	t.Run("qcow2", func(t *testing.T) {
		q := filepath.Join(work, "disk.qcow2")
		start := time.Now()
		if err := ConvertQcow2(context.Background(), execx.Host{}, spec.Output, q); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(q)
		t.Logf("qcow2 %d MiB in %s", fi.Size()/mib, time.Since(start).Round(100*time.Millisecond))
		if info := run(t, "qemu-img", "info", q); !strings.Contains(info, "compression type: zstd") {
			t.Errorf("qemu-img info:\n%s", info)
		}
		run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", spec.Output, q)
		os.Remove(q)
	})

	for _, fw := range []string{"bios", "efi"} {
		t.Run("boot "+fw, func(t *testing.T) {
			line, d := bootImage(t, spec.Output, fw == "efi")
			t.Logf("%s boot: %q after %s", fw, line, d.Round(100*time.Millisecond))
			for _, want := range []string{"fw=" + fw, "root=/dev/vda1", "efi=vfat"} {
				if !strings.Contains(line, want) {
					t.Errorf("marker %q lacks %q", line, want)
				}
			}
		})
	}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// bootImage boots img in QEMU (software emulation unless BAKE_TEST_KVM=1)
// with SeaBIOS or OVMF, waits for the marker on the serial console and
// returns its line and the time it took. QEMU is killed by PID on every
// path; the disk is opened with snapshot=on so boots leave it unchanged.
func bootImage(t *testing.T, img string, uefi bool) (string, time.Duration) {
	t.Helper()
	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	args := []string{
		"-machine", "q35", "-m", "1024", "-smp", "1",
		"-display", "none", "-monitor", "none", "-serial", "file:" + serial,
		"-drive", "file=" + img + ",format=raw,if=virtio,snapshot=on",
		"-nic", "none", "-no-reboot",
	}
	// Software emulation unless asked: on this CI machine /dev/kvm exists
	// but a KVM guest never gets as far as GRUB (nested virtualisation).
	if os.Getenv("BAKE_TEST_KVM") == "1" {
		args = append(args, "-accel", "kvm")
	} else {
		args = append(args, "-accel", "tcg")
	}
	if uefi {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		data, err := os.ReadFile(ovmfVars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vars, data, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	// If the test binary dies without running its cleanups (go test
	// -timeout panics), the kernel kills QEMU too.
	// (execx.StartPinned sets Pdeathsig and keeps the forking thread.)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	start := time.Now()
	child, err := execx.StartPinned(cmd)
	if err != nil {
		t.Fatal(err)
	}
	exited := child.Done()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill() // this PID only
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Errorf("qemu pid %d did not exit after SIGKILL", cmd.Process.Pid)
			}
		})
	}
	t.Cleanup(stop)
	tail := func() string {
		b, _ := os.ReadFile(serial)
		lines := strings.Split(string(b), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		return strings.Join(lines, "\n")
	}
	deadline := time.After(bootTimeout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			t.Fatalf("qemu exited before the marker (%v) after %s\nqemu: %s\nserial:\n%s", child.Wait(), time.Since(start).Round(time.Second), qout.String(), tail())
		case <-deadline:
			t.Fatalf("no %s on the serial console within %s\nserial:\n%s", bootMarker, bootTimeout, tail())
		case <-tick.C:
			b, _ := os.ReadFile(serial)
			if i := bytes.Index(b, []byte(bootMarker)); i >= 0 {
				if j := bytes.IndexByte(b[i:], '\n'); j > 0 {
					d := time.Since(start)
					if g := bytes.Index(b, []byte("Loading Linux")); g >= 0 {
						t.Logf("GRUB reached the kernel; serial log %d bytes", len(b))
					} else {
						t.Errorf("no GRUB 'Loading Linux' line on the serial console")
					}
					stop()
					return strings.TrimSpace(string(b[i : i+j])), d
				}
			}
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
