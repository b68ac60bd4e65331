package cloudimg

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzProbeFS feeds a partition's bytes to the superblock probe that
// Inspect runs on every partition of a base image (ext2/3/4, XFS, FAT,
// btrfs). Nothing may panic, and what it reports is a known type.
//
//	go test -run '^$' -fuzz '^FuzzProbeFS$' -fuzztime 1m ./cloudimg/
func FuzzProbeFS(f *testing.F) {
	ext := make([]byte, 2048)
	sb := ext[1024:]
	binary.LittleEndian.PutUint16(sb[0x38:], 0xEF53)
	binary.LittleEndian.PutUint32(sb[0x04:], 262144)
	binary.LittleEndian.PutUint32(sb[0x18:], 2) // 4 KiB blocks
	binary.LittleEndian.PutUint16(sb[0x58:], 256)
	binary.LittleEndian.PutUint32(sb[0x5c:], 0x4|0x20)      // has_journal, dir_index
	binary.LittleEndian.PutUint32(sb[0x60:], 0x2|0x40|0x80) // filetype, extent, 64bit
	copy(sb[0x68:], "0123456789abcdef")
	copy(sb[0x78:], "cloudimg-rootfs")
	f.Add(ext)
	fat := make([]byte, 512)
	binary.LittleEndian.PutUint16(fat[11:], 512)
	fat[13] = 4
	fat[0x42] = 0x29
	copy(fat[0x47:], "UEFI       ")
	fat[510], fat[511] = 0x55, 0xaa
	f.Add(fat)
	fat16 := bytes.Clone(fat)
	fat16[0x42] = 0
	binary.LittleEndian.PutUint16(fat16[22:], 32)
	fat16[0x26] = 0x29
	copy(fat16[0x36:], "FAT12   ")
	f.Add(fat16)
	xfs := make([]byte, 512)
	copy(xfs, "XFSB")
	binary.BigEndian.PutUint32(xfs[4:], 4096)
	copy(xfs[108:], "root")
	f.Add(xfs)
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := probeFS(bytes.NewReader(b), 0, int64(len(b)))
		if err != nil {
			return
		}
		switch fs.Type {
		case "", "ext2", "ext3", "ext4", "vfat", "xfs", "btrfs":
		default:
			t.Fatalf("type %q", fs.Type)
		}
	})
}

// FuzzInspectText feeds what Inspect reads from a base image's root
// filesystem through debugfs (/etc/os-release, `ls -p` of /boot,
// /var/lib/dpkg/status) to its parsers, and prints the layout as `bake
// inspect` and a build's log do. Nothing may panic, and the text of the
// image cannot add lines to the output or put control characters (a
// terminal escape sequence, a carriage return) on the terminal of the
// person running bake.
//
//	go test -run '^$' -fuzz '^FuzzInspectText$' -fuzztime 1m ./cloudimg/
func FuzzInspectText(f *testing.F) {
	osRelease := []byte("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n")
	ls := []byte("/2/040755/0/0/./0/\n/2/040755/0/0/../0/\n/12/100644/0/0/vmlinuz-6.1.0-28-cloud-amd64/8115904/\n/13/100644/0/0/initrd.img-6.1.0-28-cloud-amd64/30000000/\n/14/040755/0/0/grub/0/\n")
	status := []byte("Package: base-files\nStatus: install ok installed\n\nPackage: gone\nStatus: deinstall ok config-files\n\nPackage: bash\nStatus: install ok installed\n")
	f.Add(osRelease, ls, status)
	f.Add([]byte("ID=ubuntu\nPRETTY_NAME='Ubuntu 24.04 LTS'\nVERSION_ID=24.04\n"), []byte("/12/100644/0/0/vmlinuz-6.8.0-generic.dpkg-new/1/\n"), []byte("Status: install ok installed"))
	f.Add([]byte("PRETTY_NAME=\"Fedora Linux 41 (Cloud Edition)\"\n"), []byte("/1/2/3/4/vmlinuz-6.11/5/\n"), []byte{})
	// Terminal escapes from the image (an OSC title sequence through
	// os-release's quoting, a raw CSI in a file name): printed quoted.
	f.Add([]byte("PRETTY_NAME=\"\\x1b]0;owned\\a\"\nID=x\rY\n"), []byte("/1/2/3/4/vmlinuz-\x1b[2J\x9b/5/\n"), []byte{})
	f.Fuzz(func(t *testing.T, osRelease, ls, status []byte) {
		names := lsNames(ls)
		for _, n := range names {
			if strings.Contains(n, "/") {
				t.Fatalf("name %q", n)
			}
		}
		l := &Layout{Path: "base.img", OS: parseOSRelease(osRelease), Kernels: kernelVersions(names), Packages: countInstalled(status)}
		if l.Packages > bytes.Count(status, []byte("\n"))+1 {
			t.Fatalf("%d packages in %d lines", l.Packages, bytes.Count(status, []byte("\n"))+1)
		}
		var out strings.Builder
		l.Print(&out)
		want := 2 // image, disk
		for _, has := range []bool{l.OS.PrettyName != "", len(l.Kernels) > 0, l.Packages > 0} {
			if has {
				want++
			}
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != want {
			t.Fatalf("%d lines printed, want %d:\n%s", len(lines), want, out.String())
		}
		for _, line := range lines {
			if !utf8.ValidString(line) {
				t.Fatalf("printed %q: not UTF-8", line)
			}
			for _, r := range line {
				if !unicode.IsPrint(r) && r != ' ' {
					t.Fatalf("printed %q: it holds %U", line, r)
				}
			}
		}
	})
}
