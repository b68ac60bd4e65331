// Package disk is bake's assemble stage: it turns a finished root tree into a
// bootable raw GPT disk image, without loop devices and without mounting
// anything.
//
// The disk is laid out like Debian's genericcloud images, so that tools which
// grow the last partition at first boot (growroot, growpart, systemd-repart)
// work unchanged:
//
//	LBA 0          protective MBR + the first 440 bytes of GRUB's boot.img
//	1 MiB          p14 "bios"  BIOS boot partition (GRUB core.img), 1 MiB
//	2 MiB          p15 "esp"   EFI system partition, FAT32, label "ESP"
//	2 MiB + ESP    p1  "root"  Linux root (x86-64), ext4, up to the end
//
// How each piece is made:
//
//   - The GPT and the FAT32 ESP are written natively with go-diskfs.
//   - The root filesystem is made from the tree by mkfs.ext4 -d directly at
//     the partition's byte offset inside the image file (-E offset=), so no
//     loop device and no mount are ever needed; owners, modes, symlinks, hard
//     links, device nodes and xattrs (file capabilities) are copied by mke2fs.
//   - GRUB's core.img (i386-pc) and BOOTX64.EFI (x86_64-efi) are built by the
//     tree's own grub-mkimage, run in a chroot of the tree, so that the
//     images always match the GRUB modules the tree ships. The BIOS install
//     is done the way osbuild's org.osbuild.grub2.inst stage does it: boot.img
//     into the MBR, core.img into the BIOS boot partition, and the two sector
//     pointers patched in Go.
//
// PrepareTree must run on the tree before Assemble: it writes /etc/fstab and
// /boot/grub/grub.cfg and copies the GRUB modules to /boot/grub, all of which
// must be inside the root filesystem that Assemble makes.
package disk
