package cloudimg

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/bakeimg/bake/internal/dpkg"
)

// BootChain is the part of a tree that the kept boot chain depends on: the
// kernels in /boot and the installed versions of the boot loader and kernel
// packages.
type BootChain struct {
	Kernels  []string          // versions of /boot/vmlinuz-*
	Loader   map[string]string // grub*, shim*, efibootmgr: package -> version
	KernelPk map[string]string // linux-image-*: package -> version
}

// ReadBootChain reads a tree's BootChain. Call it once after Extract and
// once after the recipe's steps, and compare with Changes.
func ReadBootChain(tree string) (BootChain, error) {
	bc := BootChain{Loader: map[string]string{}, KernelPk: map[string]string{}}
	entries, err := os.ReadDir(filepath.Join(tree, "boot"))
	if err != nil {
		return bc, fmt.Errorf("boot chain: %w", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	bc.Kernels = kernelVersions(names)
	pkgs, err := dpkg.InstalledPackages(tree)
	if err != nil {
		return bc, fmt.Errorf("boot chain: %w", err)
	}
	for _, p := range pkgs {
		switch {
		case strings.HasPrefix(p.Name, "grub"), strings.HasPrefix(p.Name, "shim"), p.Name == "efibootmgr":
			bc.Loader[p.Name] = p.Version
		case strings.HasPrefix(p.Name, "linux-image-"):
			bc.KernelPk[p.Name] = p.Version
		}
	}
	return bc, nil
}

// Changes says what differs between a tree's boot chain before (b) and
// after (a) the recipe's steps: kernel (a kernel was added, removed or
// upgraded: grub.cfg must be written anew, see disk.PrepareCloudBoot) and
// loader (GRUB or shim packages changed: core.img, boot.img and
// BOOTX64.EFI must be rebuilt from the tree, disk.ReassembleSpec.RebuildBoot).
func (b BootChain) Changes(a BootChain) (kernel, loader bool) {
	kernel = !slices.Equal(b.Kernels, a.Kernels) || !mapsEqual(b.KernelPk, a.KernelPk)
	loader = !mapsEqual(b.Loader, a.Loader)
	return kernel, loader
}

// NewKernels lists the kernel versions in a (after the steps) that b (the
// base) did not have: what disk.CloudBootSpec.Kernel should boot when there
// is exactly one.
func (b BootChain) NewKernels(a BootChain) []string {
	var n []string
	for _, k := range a.Kernels {
		if !slices.Contains(b.Kernels, k) {
			n = append(n, k)
		}
	}
	return n
}

func mapsEqual(x, y map[string]string) bool {
	if len(x) != len(y) {
		return false
	}
	keys := make([]string, 0, len(x))
	for k := range x {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v, ok := y[k]; !ok || v != x[k] {
			return false
		}
	}
	return true
}
