package convert

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
)

// The qemu-img command lines, as pure functions of their inputs so that
// tests can check them. Every path is absolute (Convert makes it so) and
// every format is named: qemu-img never probes.

// VMDKAdapter is the vmdk's ddb.adapterType, the controller the OVF puts the
// disk on: LSI Logic parallel SCSI. qemu-img knows ide, buslogic, lsilogic
// and legacyESX; of these lsilogic is the one VMware pairs with a SCSI
// controller for 64-bit Linux, and Debian's kernel drives it (mptspi,
// CONFIG_FUSION_SPI=m, in the initramfs with MODULES=most). VMware's
// paravirtual SCSI (pvscsi) has no adapter type of its own in a vmdk
// (VMware writes lsilogic for those disks too), so naming lsilogic in both
// places is the one pairing that can be checked.
const VMDKAdapter = "lsilogic"

func qemuConvert(src, dstFormat, opts, dst string) execx.Cmd {
	args := []string{"convert", "-f", "raw", "-O", dstFormat}
	if dstFormat == "qcow2" {
		args = append(args, "-c")
	}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	return execx.Cmd{Name: "qemu-img", Args: append(args, src, dst)}
}

// convertCmds are the commands that write format f of a raw image of size
// bytes at src to dst.
func convertCmds(f Format, src string, size int64, dst string) []execx.Cmd {
	switch f {
	case Raw:
		return []execx.Cmd{qemuConvert(src, "raw", "", dst)}
	case Qcow2:
		// As disk.ConvertQcow2 (the qcow2 a build writes).
		return []execx.Cmd{qemuConvert(src, "qcow2", "compression_type=zstd", dst)}
	case VMDK, OVA:
		return []execx.Cmd{qemuConvert(src, "vmdk", "subformat=streamOptimized,adapter_type="+VMDKAdapter, dst)}
	case VHD:
		// force_size=on: the footer's current size is the size asked for,
		// not one rounded to a CHS geometry (Azure refuses those). Azure
		// wants a whole number of MiB: a raw image of another size gets a
		// VHD created at the size rounded up, filled with convert -n (its
		// tail stays zero; --target-is-zero keeps a fixed VHD sparse).
		opts := "subformat=fixed,force_size=on"
		if size%MiB == 0 {
			return []execx.Cmd{qemuConvert(src, "vpc", opts, dst)}
		}
		return []execx.Cmd{
			{Name: "qemu-img", Args: []string{"create", "-f", "vpc", "-o", opts, dst, strconv.FormatInt(roundUp(size, MiB), 10)}},
			{Name: "qemu-img", Args: []string{"convert", "-n", "--target-is-zero", "-f", "raw", "-O", "vpc", src, dst}},
		}
	case VHDX:
		// 1 MiB blocks, as Microsoft recommends for Linux guests on ext4
		// (Hyper-V's 32 MiB default wastes space on a growing disk).
		return []execx.Cmd{qemuConvert(src, "vhdx", "subformat=dynamic,block_size=1M", dst)}
	}
	return nil
}

func compareCmd(raw, format, img string) execx.Cmd {
	return execx.Cmd{Name: "qemu-img", Args: []string{"compare", "-f", "raw", "-F", format, raw, img}}
}

func checkCmd(format, img string) execx.Cmd {
	return execx.Cmd{Name: "qemu-img", Args: []string{"check", "-f", format, img}}
}

func infoCmd(format, img string) execx.Cmd {
	return execx.Cmd{Name: "qemu-img", Args: []string{"info", "-f", format, "--output=json", img}}
}

// produce runs the commands that make the output.
func (j *job) produce(f Format, dst string) error {
	for _, c := range convertCmds(f, j.raw, j.size, dst) {
		if err := j.run.Run(j.ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// compare proves img (of qemu-img format) holds the raw image's guest
// bytes. A larger img (VHD and GCE round the size up) must be zero past
// the raw's end: qemu-img compare without -s checks that.
func (j *job) compare(format, img string) error {
	out, err := j.run.Output(j.ctx, compareCmd(j.raw, format, img))
	if err != nil {
		return fmt.Errorf("guest bytes differ from the raw image's: %w", err)
	}
	if !strings.Contains(string(out), "Images are identical") {
		return fmt.Errorf("qemu-img compare -f raw -F %s: unexpected answer %q", format, strings.TrimSpace(string(out)))
	}
	j.prove("guest bytes equal the raw image's (qemu-img compare -f raw -F %s)", format)
	return nil
}

// check runs qemu-img check on img.
func (j *job) check(format, img string) error {
	if _, err := j.run.Output(j.ctx, checkCmd(format, img)); err != nil {
		return fmt.Errorf("qemu-img check: %w", err)
	}
	j.prove("qemu-img check -f %s: no errors, no leaks", format)
	return nil
}

// virtualSize is what qemu-img info says the guest sees.
func (j *job) virtualSize(format, img string) (int64, error) {
	out, err := j.run.Output(j.ctx, infoCmd(format, img))
	if err != nil {
		return 0, err
	}
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info: %w", err)
	}
	if info.Format != format {
		return 0, fmt.Errorf("qemu-img info: format %q, want %q", info.Format, format)
	}
	return info.VirtualSize, nil
}

// proveDisk is the proof every qemu-img format gets: check (where there is
// one), the virtual size, and the guest bytes.
func (j *job) proveDisk(f Format, img string, wantSize int64) error {
	format, checkable := f.qemu()
	if checkable {
		if err := j.check(format, img); err != nil {
			return err
		}
	}
	vs, err := j.virtualSize(format, img)
	if err != nil {
		return err
	}
	if vs != wantSize {
		return fmt.Errorf("virtual size %d, want %d", vs, wantSize)
	}
	j.prove("virtual size %d bytes (qemu-img info -f %s)", vs, format)
	return j.compare(format, img)
}

func (j *job) convertRaw() error {
	if err := j.produce(Raw, j.out); err != nil {
		return err
	}
	return j.proveDisk(Raw, j.out, j.size)
}

func (j *job) convertQcow2() error {
	if err := j.produce(Qcow2, j.out); err != nil {
		return err
	}
	return j.proveDisk(Qcow2, j.out, j.size)
}

func (j *job) convertVHDX() error {
	if err := j.produce(VHDX, j.out); err != nil {
		return err
	}
	if err := j.proveDisk(VHDX, j.out, j.size); err != nil {
		return err
	}
	if j.o.Firmware == BIOS {
		fmt.Fprintf(j.o.Log, "vhdx: the image boots BIOS only: a Hyper-V generation 1 VM (generation 2 is UEFI only)\n")
	}
	return nil
}

func (j *job) convertVHD() error {
	if err := j.produce(VHD, j.out); err != nil {
		return err
	}
	want := roundUp(j.size, MiB)
	j.res.VirtualSize = want
	ft, err := ReadVHDFile(j.out)
	if err != nil {
		return err
	}
	if err := ft.CheckFixed(want); err != nil {
		return err
	}
	j.prove("VHD footer read back: cookie conectix, checksum %08x valid, disk type fixed, current size %d (%d MiB)", ft.Checksum, ft.CurrentSize, ft.CurrentSize/MiB)
	return j.proveDisk(VHD, j.out, want)
}

func (j *job) convertVMDK() error {
	if err := j.produce(VMDK, j.out); err != nil {
		return err
	}
	if _, err := j.proveVMDK(j.out); err != nil {
		return err
	}
	return j.proveDisk(VMDK, j.out, j.size)
}

// proveVMDK reads the vmdk's header and descriptor back.
func (j *job) proveVMDK(path string) (*VMDKInfo, error) {
	v, err := ReadVMDKFile(path)
	if err != nil {
		return nil, err
	}
	if err := v.CheckStream(j.size, VMDKAdapter); err != nil {
		return nil, err
	}
	j.prove("VMDK header read back: streamOptimized, deflate grains, capacity %d sectors, adapter %s", v.Capacity/sector, v.Adapter)
	return v, nil
}
