// Package rootfs owns the tree stages of the pipeline: everything between
// "there is a recipe" and "there is a root tree ready to become a disk".
//
//	Bootstrap        mmdebstrap a Debian tree (host's apt sources, a mirror or
//	                 a build-only mirror; a .deb cache shared by builds)
//	Open / Chroot    run the tree's own programs: proc, ro sysfs, a tmpfs
//	                 /dev with a few nodes (never the host's /dev), devpts,
//	                 /dev/shm, /run; DNS; no daemon may start; clean env
//	InstallPackages  apt-get in the chroot, failures fatal, cache bound in
//	AddAptRepository deb822 source with its own Signed-By keyring
//	AddGroup/AddUser the tree's groupadd/useradd; sudoers drop-in; SSH keys
//	CopyOverlay      host directory into the tree, never leaving the tree
//	WriteFile        one file into the tree, never leaving the tree
//	Systemd          enable/disable/mask offline with the tree's systemctl
//	BaseSystem       networking on any NIC, DNS, time, root grows at boot
//	Sysprep          remove per-instance identity and build traces
//
// Every write into a tree goes through package internal/safepath, which
// resolves paths with openat2(RESOLVE_IN_ROOT): a symlink inside the tree
// means what it means when the tree is "/", and never leads onto the build
// host. Nothing here removes a directory across a mount point
// (mounts.RemoveAllSafe, safepath.RemoveAll), and Chroot.Close checks
// /proc/self/mountinfo (internal/mounts) that nothing is left mounted below
// the tree.
//
// What other stages share with it lives in internal packages: the host's
// apt sources and proxies (internal/apt), the installed package list
// (internal/dpkg), the mount table and RemoveAllSafe (internal/mounts).
//
// The package takes plain option structs; the builder maps a recipe onto
// them. Root is needed for Bootstrap, Chroot and the steps that run in it;
// the file steps and their unit tests work on any directory.
package rootfs
