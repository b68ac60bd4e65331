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
//
// How the builder runs it (stages of a recipe with base.image; everything
// runs inside bake's private mount namespace, as the Debian path does):
//
//	// [base image] fetch + verify: before anything else, refused on mismatch
//	// FetchOpen = Fetch (digest, hashed while downloading, size limit) +
//	// Open (refusals with reasons) on the one file descriptor that was hashed
//	img, err := cloudimg.FetchOpen(ctx, cloudimg.Source{Path: im.Path, URL: im.URL,
//		SHA256: im.SHA256, SHA512: im.SHA512}, filepath.Join(cacheDir, "images"), stdout)
//	raw := filepath.Join(workDir, "base.raw")
//	err = cloudimg.ToRaw(ctx, img, raw); img.Close()
//	layout, err := cloudimg.Inspect(ctx, raw, cloudimg.WithRunner(runner))
//	err = layout.Supported()                     // xfs/btrfs root: "not supported yet"
//
//	// [extract] root (and /boot) into the tree; needs root
//	err = cloudimg.Extract(ctx, raw, layout, tree, cloudimg.WithRunner(runner), cloudimg.WithLog(log))
//	before, err := cloudimg.ReadBootChain(tree)
//	// chroot stages as for a Debian base; call rootfs.DivertBootHooks before
//	// the first apt step (the base has GRUB and kernel hooks installed).
//
//	// [assemble] instead of disk.PrepareTree + disk.Assemble (PrepareTree
//	// would rewrite fstab and grub.cfg for bake's own layout):
//	after, err := cloudimg.ReadBootChain(tree)
//	kernel, loader := before.Changes(after)
//	if kernel || loader {
//		k := ""                                  // newest
//		if nk := before.NewKernels(after); len(nk) == 1 {
//			k = nk[0]                            // the flavour the recipe installed
//		}
//		err = disk.PrepareCloudBoot(disk.CloudBootSpec{Tree: tree, Layout: layout,
//			Kernel: k, KernelCmdline: extra, SourceDateEpoch: epoch, Log: log})
//	}
//	err = sourcedate.ClampTimes(tree, time.Unix(epoch, 0))
//	res, err := disk.Reassemble(ctx, disk.ReassembleSpec{Base: raw, Layout: layout,
//		Tree: tree, Output: out, Size: size, RebuildBoot: loader,
//		SourceDateEpoch: epoch, Runner: runner, Log: log})
//
// The manifest's base entry: the Source's algorithm and digest, and from the
// Layout the OS release, kernels and partition identifiers.
package cloudimg
