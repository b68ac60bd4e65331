// Package convert owns the formats of the outputs stage: it turns the raw
// disk image the assemble stage made into each format the common targets
// import, and proves each one before it appears at its output path.
//
//	raw    sparse copy                      any hypervisor, dd to a disk
//	qcow2  zstd-compressed qcow2            QEMU/KVM, libvirt, Proxmox, OpenStack
//	vmdk   streamOptimized, lsilogic        VMware (vSphere, Workstation), VirtualBox
//	ova    OVF 1.0 + that vmdk + SHA256 .mf VMware vSphere/Workstation, VirtualBox
//	vhd    fixed, size in whole MiB         Azure, Hyper-V generation 1
//	vhdx   dynamic, 1 MiB blocks            Hyper-V generation 2 (UEFI images)
//	gce    disk.raw in a GNU tar, gzip      Google Compute Engine image import
//
// The container formats are made by qemu-img with the format and its
// options always named (-f raw -O FMT -o ...); OVA and GCE archives are
// written by bake itself with archive/tar and compress/gzip, deterministic
// (SOURCE_DATE_EPOCH for every time, uid/gid 0, a fixed member order).
//
// Nothing is trusted because a command exited 0. Before an output is renamed
// into place (it is made in a temporary directory beside it, so an error or
// an interrupt leaves nothing at the output path) it is proven:
//
//   - its guest bytes equal the raw image's: qemu-img compare with both
//     formats named (-f raw -F vpc: a fixed VHD is otherwise probed as raw
//     and compared with its footer); for ova and gce, on the disk extracted
//     from the archive;
//   - qemu-img check where the format has one (qcow2, vmdk, vhdx);
//   - the container read back by bake's own bounded parsers: the VMDK sparse
//     header and descriptor (streamOptimized, capacity, adapter type), the
//     VHD footer (cookie conectix, fixed, current size, checksum), the OVA
//     (descriptor first, manifest digests, OVF parsed with encoding/xml:
//     disk capacity and controller against the vmdk, firmware, Secure Boot
//     off) and the GCE tar (one GNU-format member disk.raw, a whole number of
//     GiB).
//
// Secure Boot: bake's UEFI path is GRUB's BOOTX64.EFI made by grub-mkimage,
// unsigned, and a cloud base keeps its own (often a signed shim). The OVF
// records Secure Boot off for UEFI images; the README says where to turn it
// off on Hyper-V, Azure and GCE, which keep it outside the disk.
package convert
