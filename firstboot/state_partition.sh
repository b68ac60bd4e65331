#!/bin/sh
# bake state partition (docs/state.md): the state of a single-disk
# instance lives on a partition of its root disk, named and labelled
# $LABEL. At every boot, before the root partition grows
# (bake-growroot.service) and before bake-state.service looks for it:
#   - the root disk has a partition named $LABEL holding ext4 labelled
#     $LABEL: nothing to do;
#   - it has one with nothing on it (a boot stopped between making and
#     formatting it): it is formatted;
#   - it has one holding anything else: refused, never touched;
#   - it has none: one of $PARTITION_SIZE bytes is made at the END of the
#     disk, in free space after the last partition only (no existing
#     partition is moved or changed), then formatted; root then grows into
#     the space between. No room (the disk is not larger than the image
#     by the partition's size): refused, said on the console.
# A refusal fails the unit; bake-state.service then finds no state and
# fails too, so the services that keep state do not start.

set -u
umask 022
export LC_ALL=C
PATH=/usr/sbin:/usr/bin:/sbin:/bin

CONF=${BAKE_STATE_CONF:-/etc/bake/state.conf}
# DISK: the disk to work on (tests); default: the one / is on.
DISK=${BAKE_STATE_DISK:-}
LABEL=bake-state
PARTITION_SIZE=

log() { echo "bake-state-partition: $*"; }
fail() {
	echo "bake-state-partition: error: $*" >&2
	[ -z "${BAKE_STATE_DISK:-}" ] && [ -w /dev/console ] && echo "bake-state-partition: error: $*" >/dev/console 2>/dev/null
	exit 1
}

# root_disk: the disk whose partition / is on.
root_disk() {
	majmin=$(findmnt -n -o MAJ:MIN -M / | tr -d ' ')
	sys=$(readlink -f "/sys/dev/block/$majmin" 2>/dev/null || true)
	if [ -z "$sys" ] || [ ! -e "$sys/partition" ]; then
		return 1
	fi
	echo "/dev/$(basename "$(dirname "$sys")")"
}

# find_part: the node of the partition named $LABEL on $DISK, or nothing.
find_part() {
	sfdisk -d -- "$DISK" 2>/dev/null | sed -n "s|^\([^ ]*\) : .*name=\"$LABEL\".*|\1|p" | head -n 1
}

# format NODE: ext4 labelled $LABEL on NODE, which must be empty.
format() {
	if [ ! -b "$DISK" ]; then
		log "$DISK is a file (tests): $1 not formatted"
		return 0
	fi
	# A partition's blkid -p output always has its entry (PART_ENTRY_*):
	# only a file system TYPE or a wipefs signature counts.
	sigs=$(wipefs -n -- "$1" 2>&1) || fail "wipefs -n $1 failed: $sigs"
	typ=$(blkid -p -c /dev/null -o value -s TYPE -- "$1" 2>/dev/null)
	if [ -n "$sigs" ] || [ -n "$typ" ]; then
		fail "$1 (partition $LABEL) holds something that is not a bake state file system (ext4 labelled $LABEL): not touched, not used (${typ:-$sigs})"
	fi
	log "formatting $1 as ext4, label $LABEL"
	mkfs.ext4 -q -L "$LABEL" -- "$1" || fail "mkfs.ext4 $1 failed"
}

main() {
	[ -r "$CONF" ] || fail "no $CONF"
	# shellcheck disable=SC1090
	. "$CONF"
	if [ -z "$PARTITION_SIZE" ]; then
		log "no state partition in $CONF: nothing to do"
		exit 0
	fi
	if [ -z "$DISK" ]; then
		DISK=$(root_disk) || fail "/ is not on a disk partition: no state partition can be made beside it"
	fi
	node=$(find_part)
	if [ -n "$node" ]; then
		typ=$(blkid -p -c /dev/null -o value -s TYPE -- "$node" 2>/dev/null)
		lbl=$(blkid -p -c /dev/null -o value -s LABEL -- "$node" 2>/dev/null)
		if [ "$typ" = ext4 ] && [ "$lbl" = "$LABEL" ] || [ ! -b "$DISK" ]; then
			log "state partition $node (label $LABEL)"
			exit 0
		fi
		format "$node"
		exit 0
	fi
	dump=$(sfdisk -d -- "$DISK" 2>/dev/null) || fail "cannot read the partition table of $DISK"
	echo "$dump" | grep -q '^label: gpt' || fail "$DISK has no GPT: no state partition made"
	want=$((PARTITION_SIZE / 512))
	if [ -b "$DISK" ]; then
		sectors=$(blockdev --getsz "$DISK") || fail "cannot read the size of $DISK"
	else
		sectors=$(($(stat -c %s -- "$DISK") / 512)) # a disk image (tests)
	fi
	# The last usable sector once the backup GPT is at the disk's end.
	last=$((sectors - 34))
	end=$(echo "$dump" | sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\),.*/\1 \2/p' |
		while read -r s n; do echo $((s + n)); done | sort -n | tail -n 1)
	start=$(((last + 1 - want) / 2048 * 2048))
	if [ "$start" -lt "${end:-0}" ]; then
		fail "NO ROOM for the state partition on $DISK: it is $((sectors / 2048)) MiB and its partitions end at $((${end:-0} / 2048)) MiB; a state partition of $((want / 2048)) MiB needs a disk of at least $(((end + want + 2048 + 34) / 2048 + 1)) MiB. Enlarge the disk (qemu-img resize, a larger cloud volume) and reboot. The services that keep state do not start."
	fi
	# A disk larger than the image: the backup GPT moves to its end first.
	if [ "$(echo "$dump" | sed -n 's/^last-lba: *//p')" -lt "$last" ]; then
		sfdisk -q --relocate gpt-bak-std -- "$DISK" >/dev/null 2>&1 || fail "cannot move the backup GPT of $DISK to its end"
	fi
	log "making partition $LABEL on $DISK: $((want / 2048)) MiB at sector $start (after the last partition, which ends at sector $end)"
	echo "start=$start, size=$want, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"$LABEL\"" |
		sfdisk -q --append --no-reread --no-tell-kernel -- "$DISK" >/dev/null || fail "sfdisk could not add the state partition to $DISK"
	node=$(find_part)
	[ -n "$node" ] || fail "the state partition is not in $DISK's table after sfdisk"
	if [ -b "$DISK" ]; then
		nr=${node##*[!0-9]}
		partx -a -n "$nr:$nr" -- "$DISK" || fail "the kernel did not take partition $nr of $DISK (partx -a)"
		udevadm settle --timeout=10 2>/dev/null || true
	fi
	format "$node"
	log "state partition $node made and formatted"
}

[ "${BAKE_STATE_LIB:-}" = 1 ] || main
