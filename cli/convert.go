package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/convert"
)

func newConvert() *cobra.Command {
	var formats []string
	var outDir, name, firmware string
	c := &cobra.Command{
		Use:   "convert IMAGE --format F [--format F...] [-o DIR]",
		Short: "Convert an image to the formats clouds and hypervisors import, each proven",
		Long: `Convert writes IMAGE (raw or qcow2) in each format asked for, as NAME.EXT in
DIR (default: IMAGE's folder), and adds their lines to DIR/SHA256SUMS:

  raw    NAME.raw     sparse raw disk
  qcow2  NAME.qcow2   zstd-compressed qcow2 (QEMU/KVM, libvirt, Proxmox, OpenStack)
  vmdk   NAME.vmdk    streamOptimized, LSI Logic adapter (VMware, VirtualBox)
  ova    NAME.ova     OVF 1.0 + vmdk + SHA256 manifest (vSphere, Workstation)
  vhd    NAME.vhd     fixed, size rounded up to a whole MiB (Azure, Hyper-V gen 1)
  vhdx   NAME.vhdx    dynamic (Hyper-V generation 2 for UEFI images)
  gce    NAME.tar.gz  disk.raw in a GNU tar, gzip (Google Compute Engine)

Each output is made in a temporary folder in DIR and renamed into place only
after it is proven: its guest bytes equal IMAGE's (qemu-img compare with both
formats named; for ova and gce on the disk extracted from the archive), qemu-img
check passes where the format has one, and bake reads the container back (VMDK
header, VHD footer, OVF descriptor and manifest, GCE tar). An error or an
interrupt leaves nothing at the output path.

The OVA records how the image boots (--firmware; by default read from the
partition table: an EFI system partition means UEFI, else BIOS) and Secure Boot
off: bake's UEFI loader is unsigned. Archive times are SOURCE_DATE_EPOCH (or
IMAGE's modification time). Uploading and importing is the target's own
command; the README's "Formats" section lists them.

Exit status: 0 all written, 1 a conversion failed (outputs already proven
stay), 2 bad usage or an IMAGE bake cannot read (nothing written).`,
		Example: `  bake convert out/openclaw.qcow2 --format ova --format vhd
  bake convert out/openclaw.raw -f gce,vhdx -o /srv/images
  bake convert disk.raw --format ova --firmware bios --name appliance`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErr(fmt.Errorf("convert takes one IMAGE, got %d arguments (e.g. bake convert out/openclaw.qcow2 --format vhd)", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			return runConvert(ctx, cmd.OutOrStdout(), args[0], formats, outDir, name, firmware)
		},
	}
	f := c.Flags()
	f.StringSliceVarP(&formats, "format", "f", nil, "output format: "+strings.Join(convert.Names(), ", ")+" (repeatable, or comma-separated)")
	f.StringVarP(&outDir, "output", "o", "", "output directory (default: the image's folder)")
	f.StringVar(&name, "name", "", "base name of the outputs (default: IMAGE's name without .raw/.qcow2/.img)")
	f.StringVar(&firmware, "firmware", "auto", "how the image boots, recorded in the OVA: auto, bios or uefi")
	return c
}

func runConvert(ctx context.Context, stdout io.Writer, image string, names []string, outDir, name, firmware string) error {
	// Everything the command line can get wrong, before any work.
	if len(names) == 0 {
		return usageErr(fmt.Errorf("no --format given: want one or more of %s", strings.Join(convert.Names(), ", ")))
	}
	var formats []convert.Format
	for _, n := range names {
		f, err := convert.ParseFormat(strings.TrimSpace(n))
		if err != nil {
			return usageErr(fmt.Errorf("--format: %w", err))
		}
		for _, g := range formats {
			if g == f {
				return usageErr(fmt.Errorf("--format %s is given twice", f))
			}
		}
		formats = append(formats, f)
	}
	switch firmware {
	case "auto", string(convert.BIOS), string(convert.UEFI):
	default:
		return usageErr(fmt.Errorf("--firmware %q: want auto, bios or uefi", firmware))
	}
	if name == "" {
		name = filepath.Base(image)
		for _, ext := range []string{".raw", ".qcow2", ".img"} {
			name = strings.TrimSuffix(name, ext)
		}
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return usageErr(fmt.Errorf("--name %q: want a file name that does not start with a dot", name))
	}
	if outDir == "" {
		outDir = filepath.Dir(image)
	}
	img, err := cloudimg.Open(ctx, image)
	if err != nil {
		return usageErr(err)
	}
	closeImg := sync.OnceValue(img.Close)
	defer closeImg()
	imgInfo, err := os.Stat(image)
	if err != nil {
		return usageErr(err)
	}
	for _, f := range formats {
		if fi, err := os.Stat(filepath.Join(outDir, f.FileName(name))); err == nil && os.SameFile(fi, imgInfo) {
			return usageErr(fmt.Errorf("--format %s would write %s over IMAGE itself: choose another -o or --name", f, filepath.Join(outDir, f.FileName(name))))
		}
	}
	fw := convert.Firmware(firmware)
	if firmware == "auto" {
		fw = imageFirmware(img.Table)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return usageErr(err)
	}
	epoch := imgInfo.ModTime().Unix()
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		if _, err := fmt.Sscanf(v, "%d", &epoch); err != nil || epoch <= 0 {
			return usageErr(fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", v))
		}
	}

	// A qcow2 becomes a sparse raw first, in a temporary folder in DIR.
	raw := image
	if img.Format != cloudimg.FormatRaw {
		tmp, err := os.MkdirTemp(outDir, ".bake-convert-")
		if err != nil {
			return &exitError{ExitFailure, err}
		}
		defer os.RemoveAll(tmp)
		raw = filepath.Join(tmp, "disk.raw")
		if err := cloudimg.ToRaw(ctx, img, raw); err != nil {
			return &exitError{ExitFailure, err}
		}
	}
	closeImg()
	osID, osName := "", ""
	for _, f := range formats {
		if f == convert.OVA {
			// The OVF's guest type; reading it is best effort (debugfs).
			if l, err := cloudimg.Inspect(ctx, raw); err == nil {
				osID, osName = l.OS.ID, l.OS.PrettyName
			}
		}
	}
	fmt.Fprintf(stdout, "%s: firmware %s%s\n", image, fw, map[bool]string{true: " (from the partition table)", false: ""}[firmware == "auto"])
	for _, f := range formats {
		start := time.Now()
		fmt.Fprintf(stdout, "%s -> %s\n", f, filepath.Join(outDir, f.FileName(name)))
		res, err := convert.Convert(ctx, raw, f, convert.Options{
			Name: name, Dir: outDir, Firmware: fw, OS: osID, OSName: osName,
			SourceDateEpoch: epoch, Log: indentWriter{stdout},
		})
		if err != nil {
			return &exitError{ExitFailure, err}
		}
		if err := addSums(outDir, map[string]string{res.File: res.SHA256}); err != nil {
			return &exitError{ExitFailure, err}
		}
		fmt.Fprintf(stdout, "  %s: %d bytes, virtual size %d, sha256 %s (%.1fs)\n", res.File, res.Bytes, res.VirtualSize, res.SHA256, time.Since(start).Seconds())
	}
	fmt.Fprintf(stdout, "SHA256SUMS: %s\n", filepath.Join(outDir, "SHA256SUMS"))
	return nil
}

// imageFirmware is how a disk boots, from its partition table: UEFI when it
// has an EFI system partition (bake's images have both that and a BIOS boot
// partition; UEFI is what the targets prefer then), else BIOS.
func imageFirmware(t *cloudimg.Table) convert.Firmware {
	if t != nil {
		for _, p := range t.Partitions {
			if p.Type == cloudimg.TypeESP || p.Type == "0xef" {
				return convert.UEFI
			}
		}
	}
	return convert.BIOS
}

// indentWriter indents the proof lines under their format.
type indentWriter struct{ w io.Writer }

func (i indentWriter) Write(p []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if line != "" {
			io.WriteString(i.w, "  "+line)
		}
	}
	return len(p), nil
}

// addSums sets the lines of names in DIR/SHA256SUMS (sha256sum -c format),
// keeping the others, sorted by name; written to a temporary file and
// renamed, so the file is always whole.
func addSums(dir string, sums map[string]string) error {
	path := filepath.Join(dir, "SHA256SUMS")
	lines := map[string]string{}
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
		for sc.Scan() {
			sum, file, ok := strings.Cut(sc.Text(), "  ")
			if !ok || len(sum) != 64 || file == "" {
				f.Close()
				return fmt.Errorf("%s: line %q is not SHA256  FILE; not rewriting it", path, sc.Text())
			}
			lines[file] = sum
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for f, s := range sums {
		lines[f] = s
	}
	files := make([]string, 0, len(lines))
	for f := range lines {
		files = append(files, f)
	}
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		fmt.Fprintf(&b, "%s  %s\n", lines[f], f)
	}
	tmp, err := os.CreateTemp(dir, ".SHA256SUMS.tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(b.String()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
