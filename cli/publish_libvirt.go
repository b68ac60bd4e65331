package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/cloudimg"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/publish"
	"github.com/bakeimg/bake/verify"
	"github.com/bakeimg/bake/vm"
)

// publishLibvirtOptions are bake publish's flags for libvirt://.
type publishLibvirtOptions struct {
	connect    string
	virtType   string
	firmware   string
	memory     int
	cpus       int
	network    string
	sshForward int
	start      bool
	seed       string
	adminKeys  []string
	hostname   string
}

// kvmUsable is bake's KVM probe (vm.KVMUsable), replaced in tests.
var kvmUsable = vm.KVMUsable

// planPublishLibvirt decides what bake publish --to libvirt:// does
// before anything is made: firmware from the image's partition table (as
// bake run boots it), the domain type from bake's KVM probe, the seed
// (made with bake seed's writer into work, or --seed). Errors are usage
// errors: nothing was made.
func planPublishLibvirt(ctx context.Context, image string, o *publishLibvirtOptions, work func() (string, error), lo *publish.Libvirt, note func(string, ...any)) error {
	lo.URI = o.connect
	u, err := url.Parse(o.connect)
	if err != nil || u.Scheme == "" {
		return usageErr(fmt.Errorf("--connect %q: not a libvirt URI (e.g. qemu:///system, qemu+ssh://root@host/system)", o.connect))
	}
	switch o.virtType {
	case "auto":
		switch {
		case u.Host != "" || strings.Contains(u.Scheme, "+"):
			lo.VirtType, lo.VirtWhy = "kvm", "a remote libvirt host: --virt-type auto assumes it has KVM (give --virt-type qemu if not)"
		case kvmUsable():
			lo.VirtType, lo.VirtWhy = "kvm", "bake's KVM probe: KVM runs guests here"
		default:
			lo.VirtType, lo.VirtWhy = "qemu", "bake's KVM probe: no usable KVM here, so software emulation (TCG)"
		}
	case "kvm", "qemu":
		lo.VirtType, lo.VirtWhy = o.virtType, "--virt-type"
	default:
		return usageErr(fmt.Errorf("--virt-type %q: want auto, kvm or qemu", o.virtType))
	}
	switch o.firmware {
	case "auto":
		img, err := cloudimg.Open(ctx, image)
		if err != nil {
			return usageErr(fmt.Errorf("image %s: %s", image, strings.TrimPrefix(err.Error(), "base image: ")))
		}
		table := img.Table
		img.Close()
		lo.Firmware, lo.FirmwareWhy = bootFirmware(table)
	case vm.BIOS, vm.UEFI:
		lo.Firmware, lo.FirmwareWhy = o.firmware, "--firmware"
	default:
		return usageErr(fmt.Errorf("--firmware %q: want auto, bios or uefi", o.firmware))
	}
	lo.MemoryMiB, lo.Network, lo.SSHForward, lo.Start = o.memory, o.network, o.sshForward, o.start
	lo.CPUs = o.cpus
	if lo.CPUs == 0 {
		lo.CPUs = 2
	}
	lo.SSHPort = verify.DefaultSSHPort
	if admin, port, _ := adminFromManifest(image); admin != "" && port != 0 {
		lo.SSHPort = port
	}
	if o.sshForward < 0 || o.sshForward > 65535 {
		return usageErr(fmt.Errorf("--ssh-forward %d: want a TCP port", o.sshForward))
	}

	// The seed: the user's, or one made here by bake seed's writer.
	switch {
	case o.seed != "" && (len(o.adminKeys) > 0 || o.hostname != ""):
		return usageErr(errors.New("--seed and --admin-key/--hostname: give one (a seed you made holds its keys; bake publish makes one from --admin-key)"))
	case o.seed != "":
		kind, err := seedKind(o.seed)
		if err != nil {
			return usageErr(fmt.Errorf("--seed %s: %w", o.seed, err))
		}
		lo.Seed, lo.SeedKind = o.seed, kind
		return nil
	case len(o.adminKeys) == 0 && o.hostname == "":
		note("no --admin-key or --seed: the domain gets no seed (nobody can log in over SSH unless the image gives the admin a key)")
		return nil
	}
	var probs problems
	so := &seedOptions{}
	s := firstboot.Seed{Hostname: o.hostname}
	s.AdminKeys = so.readAdminKeys(&probs, "--admin-key", o.adminKeys)
	if o.hostname != "" {
		if err := firstboot.CheckHostname(o.hostname); err != nil {
			probs.add("--hostname: %v", err)
		}
	}
	id := make([]byte, 8)
	rand.Read(id)
	s.InstanceID = "iid-" + hex.EncodeToString(id)
	if len(probs) == 0 {
		if err := s.Check(); err != nil {
			probs.add("%v", err)
		}
	}
	if len(probs) > 0 {
		return usageErr(fmt.Errorf("%s", strings.Join(probs, "; ")))
	}
	dir, err := work()
	if err != nil {
		return &exitError{ExitFailure, err}
	}
	lo.Seed, lo.SeedKind = filepath.Join(dir, "seed.iso"), seedISO
	if err := writeNoCloud(seedISO, lo.Seed, s); err != nil {
		return &exitError{ExitFailure, fmt.Errorf("seed: %w", err)}
	}
	note("seed: a NoCloud ISO with %d admin key(s), instance id %s", len(s.AdminKeys), s.InstanceID)
	return nil
}

// libvirtFlagsUsed says which libvirt-only flags were given.
func libvirtFlagsUsed(changed func(string) bool) []string {
	var out []string
	for _, f := range []string{"connect", "virt-type", "firmware", "memory", "cpus", "network", "ssh-forward", "start", "seed", "admin-key", "hostname"} {
		if changed(f) {
			out = append(out, "--"+f)
		}
	}
	return out
}

func mkPublishWork() (string, error) { return os.MkdirTemp("", "bake-publish-") }
