// Package upgrade is `bake upgrade DISK NEW_IMAGE` (issue 15,
// docs/state.md): the disk of a stopped single-disk instance whose state
// is on a state partition gets NEW_IMAGE's system partitions (BIOS boot,
// ESP, root) and keeps its state partition byte for byte.
//
// The rewrite never writes DISK in place: a new disk is made beside it
// (a sparse raw file, converted to qcow2 when DISK is one), checked, and
// renamed over DISK. DISK is the old instance until the rename and the new
// one after it; an interrupted or failed run leaves DISK as it was and
// removes the new file.
package upgrade

import (
	"fmt"
	"strings"

	"github.com/bakeimg/bake/cloudimg"
)

const sector = 512

// systemTypes are the partition types an upgrade replaces: what bake
// writes (disk package) and what a cloud image base may add (/boot).
var systemTypes = map[string]bool{
	cloudimg.TypeBIOSBoot:                  true,
	cloudimg.TypeESP:                       true,
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": true, // Linux root (x86-64)
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": true, // Linux filesystem
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": true, // XBOOTLDR (/boot)
}

// Plan is what an upgrade writes: NEW's bytes from the start of the disk
// to the end of its last partition (protective MBR and boot code, the
// system partitions), DISK's state partition at the same place, and a GPT
// with NEW's entries and DISK's state entry.
type Plan struct {
	DiskSize int64 // DISK's virtual size: the new disk's
	// CopyEnd is the byte offset up to which NEW is copied.
	CopyEnd int64
	// System are NEW's partitions; State is DISK's state partition.
	System []cloudimg.Partition
	State  cloudimg.Partition
	// DiskGUID is NEW's disk GUID (the new disk's).
	DiskGUID string
	// Dropped are DISK's system partitions the rewrite replaces.
	Dropped []cloudimg.Partition
}

// BadInput is an error in what the user gave (exit 2).
type BadInput struct{ Msg string }

func (e *BadInput) Error() string { return e.Msg }

func bad(format string, a ...any) error { return &BadInput{fmt.Sprintf(format, a...)} }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// PlanRewrite plans the rewrite of disk (DISK's table, virtual size
// diskSize) with img (NEW's table). label is the state partition's GPT
// name (NEW's state.conf LABEL).
func PlanRewrite(disk *cloudimg.Table, diskSize int64, img *cloudimg.Table, label string) (Plan, error) {
	p := Plan{DiskSize: diskSize}
	if disk.Type != cloudimg.TableGPT {
		return p, bad("DISK has a %s partition table, not GPT: it is not a bake disk", disk.Type)
	}
	if img.Type != cloudimg.TableGPT {
		return p, bad("NEW_IMAGE has a %s partition table, not GPT: it is not a bake image", img.Type)
	}
	if diskSize%sector != 0 {
		return p, bad("DISK's size %d is not a whole number of sectors", diskSize)
	}
	var states []cloudimg.Partition
	for _, q := range disk.Partitions {
		if q.Name == label {
			states = append(states, q)
		}
	}
	switch len(states) {
	case 0:
		return p, bad("DISK has no partition named %q: it has no state partition (an instance of an image with state: {partition: ...} makes it at its first boot); nothing to keep, so nothing is upgraded", label)
	case 1:
	default:
		return p, bad("DISK has %d partitions named %q: which one holds the state is not clear; nothing done", len(states), label)
	}
	p.State = states[0]
	for _, q := range disk.Partitions {
		if q.Number == p.State.Number {
			continue
		}
		if q.FirstLBA > p.State.FirstLBA {
			return p, bad("DISK has partition %d (%q, %s) after its state partition: bake upgrade replaces only the system partitions before it; nothing done", q.Number, q.Name, q.TypeName())
		}
		if !systemTypes[q.Type] {
			return p, bad("DISK has partition %d (%q, %s), which is neither a system partition (BIOS boot, ESP, root, /boot) nor the state partition: it would be lost; nothing done", q.Number, q.Name, q.TypeName())
		}
		p.Dropped = append(p.Dropped, q)
	}
	if len(img.Partitions) == 0 {
		return p, bad("NEW_IMAGE has no partitions")
	}
	var end uint64
	for _, q := range img.Partitions {
		if q.Name == label {
			return p, bad("NEW_IMAGE has a partition named %q already: it is an instance's disk, not an image; give the image bake built", label)
		}
		if !systemTypes[q.Type] {
			return p, bad("NEW_IMAGE has partition %d (%q, %s), not a system partition: not a bake image", q.Number, q.Name, q.TypeName())
		}
		if q.Number == p.State.Number {
			return p, bad("NEW_IMAGE's partition %d (%q) has the number of DISK's state partition", q.Number, q.Name)
		}
		end = max(end, q.LastLBA+1)
		p.System = append(p.System, q)
	}
	// NEW's primary GPT array ends before its first partition; the new
	// disk's backup GPT takes the last 33 sectors, after the state.
	if end > p.State.FirstLBA {
		return p, bad("NEW_IMAGE does not fit: its system partitions end at sector %d (%s), DISK's state partition starts at sector %d (%s); build NEW with a smaller disk.size (its root grows at boot) or give the instance a larger disk", end, mib(int64(end)*sector), p.State.FirstLBA, mib(p.State.Offset))
	}
	if uint64(diskSize/sector)-33 <= p.State.LastLBA {
		return p, bad("DISK's state partition ends at sector %d, inside the backup GPT of a disk of %d sectors", p.State.LastLBA, diskSize/sector)
	}
	p.CopyEnd = int64(end) * sector
	p.DiskGUID = img.DiskGUID
	return p, nil
}

// String says what the plan does, one line per partition.
func (p Plan) String() string {
	var b strings.Builder
	for _, q := range p.System {
		fmt.Fprintf(&b, "  write  p%-2d %-10s %10s at %10s  from NEW_IMAGE (PARTUUID %s)\n", q.Number, q.Name, mib(q.Size), mib(q.Offset), q.GUID)
	}
	s := p.State
	fmt.Fprintf(&b, "  keep   p%-2d %-10s %10s at %10s  byte for byte (PARTUUID %s)\n", s.Number, s.Name, mib(s.Size), mib(s.Offset), s.GUID)
	if gap := s.Offset - p.CopyEnd; gap > 0 {
		fmt.Fprintf(&b, "  zero   %s between root and the state partition (root grows into it at the next boot)\n", mib(gap))
	}
	return b.String()
}
