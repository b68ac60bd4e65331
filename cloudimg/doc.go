// Package cloudimg is bake's base-image stage: it starts a build from a
// Debian or Ubuntu cloud image instead of mmdebstrap.
//
//	Fetch    pinned image (path or URL + sha256/sha512) -> local file, digest
//	         checked before anything else reads it; URLs are downloaded
//	         (resumable) into a cache keyed by the digest
//	Open     qcow2 or raw, refusing backing files, encryption, truncation,
//	         disks without a partition table or without a Linux partition
//	ToRaw    qcow2 -> sparse raw (go-qcow2reader, zlib and zstd clusters)
//	Inspect  partition table, filesystem identities (superblocks), roles
//	         (root, /boot, ESP, BIOS boot), OS release, kernels, packages
//	Extract  root (and /boot) filesystem -> root tree, everything kept
//	         (read-only loop mount, cp -a), needs root
//
// The base image file is never written: it is opened read-only, loop devices
// are read-only, mounts are ro,noload.
//
// After the recipe's steps, disk.Reassemble builds the disk again around the
// kept boot chain (partition table, BIOS boot partition, ESP, MBR boot code)
// with filesystems made from the tree; ReadBootChain tells whether the
// steps changed the kernel or the boot loader, i.e. whether grub.cfg (and the
// boot loader images) must be made anew.
package cloudimg
