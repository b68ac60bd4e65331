#!/bin/sh
# bake state: the instance's state volume (docs/state.md).
#
# At every boot, before anything that reads instance state starts (sshd and
# its host keys, networkd, cloud-init, Docker, tailscaled, the gateway,
# first boot: bake-state.service's Before= list), it
#   1. finds the state disk: /dev/disk/by-id/virtio-$SERIAL when the recipe
#      gives a serial, else the file system labelled $LABEL;
#   2. formats it (ext4, label $LABEL) only when it was found by serial and
#      carries nothing at all: no partition table, no signature (wipefs -n
#      and blkid -p say nothing). A disk with any other content is never
#      touched: the unit fails and the state services do not start;
#   3. refuses a volume whose state format is newer than this image's
#      ($FORMAT): the unit fails, so the units that require it (Docker,
#      tailscaled, the gateway) do not start, and says why on the console;
#   4. copies each path's current contents from the image onto the volume
#      the first time the volume lacks it, then bind-mounts the volume's
#      copy over the root disk's (instance state wins over the image);
#      /etc/machine-id is copied back into the root disk instead (systemd
#      reads it before any unit runs);
#   5. records the image that last wrote the volume and the format.
# No volume: the instance runs from the root disk, said loudly; its state
# is then lost when the image is replaced. With a state partition
# ($PARTITION_SIZE set: bake-state-partition makes it at first boot) the
# volume is that partition, found by its label; none is a failure.

set -u
umask 022
export LC_ALL=C
PATH=/usr/sbin:/usr/bin:/sbin:/bin

CONF=${BAKE_STATE_CONF:-/etc/bake/state.conf}
# ROOT prefixes every state path (tests); MNT is where the volume is.
ROOT=${BAKE_STATE_ROOT:-}
MNT=${BAKE_STATE_MNT:-/run/bake/state}
STATUS=${BAKE_STATE_STATUS:-/run/bake/state.status}
BIND=${BAKE_STATE_BIND:-bind_mount}
WAIT=${BAKE_STATE_WAIT:-20}

LABEL=bake-state
SERIAL=
PARTITION_SIZE=
PATHS=
FORMAT=1
IMAGE_NAME=
IMAGE_VERSION=
IMAGE_DIGEST=

failed=0
log() { echo "bake-state: $*"; }
err() {
	echo "bake-state: error: $*" >&2
	failed=1
}
status() { mkdir -p "${STATUS%/*}" && echo "$*" >"$STATUS"; }

bind_mount() { mount --bind -- "$1" "$2"; }

# find_dev: the state disk's device, or nothing.
find_dev() {
	if [ -n "$SERIAL" ]; then
		i=0
		while [ ! -b "/dev/disk/by-id/virtio-$SERIAL" ] && [ "$i" -lt "$WAIT" ]; do
			sleep 1
			i=$((i + 1))
		done
		[ -b "/dev/disk/by-id/virtio-$SERIAL" ] && readlink -f "/dev/disk/by-id/virtio-$SERIAL"
		return 0
	fi
	blkid -c /dev/null -o device -t "LABEL=$LABEL" 2>/dev/null | head -n 1
}

# classify DEV: "ours" (ext4 labelled $LABEL), "blank" (no partition
# table, no partition, no signature at all) or "foreign".
classify() {
	typ=$(blkid -p -c /dev/null -o value -s TYPE -- "$1" 2>/dev/null)
	lbl=$(blkid -p -c /dev/null -o value -s LABEL -- "$1" 2>/dev/null)
	if [ "$typ" = ext4 ] && [ "$lbl" = "$LABEL" ]; then
		echo ours
		return 0
	fi
	sigs=$(wipefs -n -- "$1" 2>&1)
	probe=$(blkid -p -c /dev/null -- "$1" 2>/dev/null)
	parts=$(lsblk -n -o NAME -- "$1" 2>/dev/null | wc -l)
	if [ -z "$sigs" ] && [ -z "$probe" ] && [ "$parts" -le 1 ]; then
		echo blank
	else
		echo foreign
	fi
}

# check_format DIR: may this image use the state in DIR (a mounted
# volume)? Fails, saying why, for a format newer than $FORMAT or one that
# is not a number.
check_format() {
	f=$1/bake-state/format
	[ -e "$f" ] || return 0
	v=$(head -c 32 "$f" | tr -d ' \n')
	case $v in
	'' | *[!0-9]*)
		err "state volume format '$v' ($f) is not a number; not used"
		return 1
		;;
	esac
	if [ "$v" -gt "$FORMAT" ]; then
		by=$(sed -n 's/^\(NAME\|VERSION\|DIGEST\)=//p' "$1/bake-state/image" 2>/dev/null | tr '\n' ' ')
		err "state volume format $v is newer than this image understands ($FORMAT); it was last written by: ${by:-an unknown image}"
		err "refusing to use it: the services that keep state (Docker, tailscaled, the gateway) do not start; boot the image that wrote it, or a newer one"
		return 1
	fi
	return 0
}

# record DIR: the image that last wrote the volume, and the format.
record() {
	mkdir -p "$1/bake-state" || return 1
	printf '%s\n' "$FORMAT" >"$1/bake-state/format.new" && mv -f "$1/bake-state/format.new" "$1/bake-state/format"
	{
		echo "NAME=$IMAGE_NAME"
		echo "VERSION=$IMAGE_VERSION"
		echo "DIGEST=$IMAGE_DIGEST"
		echo "WRITTEN=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	} >"$1/bake-state/image.new" && mv -f "$1/bake-state/image.new" "$1/bake-state/image"
}

# copy_in SRC DST: SRC's contents (a directory, a file, or nothing: an
# empty directory) onto the volume at DST, atomically by rename.
copy_in() {
	rm -rf -- "$2.new"
	mkdir -p -- "${2%/*}" || return 1
	if [ -L "$1" ]; then
		err "$1 is a symbolic link; not kept on the state volume"
		return 1
	elif [ -d "$1" ] || [ -f "$1" ]; then
		cp -a -- "$1" "$2.new" || return 1
	elif [ -e "$1" ]; then
		err "$1 is neither a file nor a directory; not kept on the state volume"
		return 1
	else
		mkdir -- "$2.new" || return 1
	fi
	mv -- "$2.new" "$2"
}

# bind_one SRC TARGET: SRC (on the volume) over TARGET (made when missing).
bind_one() {
	if [ -L "$1" ] || [ -L "$2" ]; then
		err "$1 or $2 is a symbolic link; not bound"
		return 1
	fi
	if [ -d "$1" ]; then
		[ -d "$2" ] || mkdir -p -- "$2" || return 1
	elif [ ! -e "$2" ]; then
		mkdir -p -- "${2%/*}" && : >"$2" || return 1
	fi
	$BIND "$1" "$2"
}

# keep_machine_id: the volume's machine ID becomes the root disk's.
keep_machine_id() {
	vf=$MNT/data/etc/machine-id rf=$ROOT/etc/machine-id
	cur=$(head -c 64 "$rf" 2>/dev/null | tr -d '\n')
	if [ ! -e "$vf" ]; then
		case $cur in
		[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
		*)
			err "$rf holds no machine ID ('$cur'); not kept"
			return 1
			;;
		esac
		mkdir -p "$MNT/data/etc" && printf '%s\n' "$cur" >"$vf.new" && mv -f "$vf.new" "$vf" || return 1
		log "machine ID $cur kept on the state volume (first use)"
		return 0
	fi
	id=$(head -c 64 "$vf" | tr -d '\n')
	case $id in
	[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
	*)
		err "the state volume's machine ID ('$id') is not one; the root disk's ($cur) is used"
		return 1
		;;
	esac
	[ "$id" = "$cur" ] && return 0
	# systemd made a transient one (mounted over the file) at this boot.
	if [ -z "$ROOT" ] && mountpoint -q /etc/machine-id; then
		umount /etc/machine-id || return 1
	fi
	printf '%s\n' "$id" >"$rf.new" && mv -f "$rf.new" "$rf" || return 1
	log "machine ID $id from the state volume (this boot's earliest services, PID 1 and journald, started with $cur)"
	# journald files this boot's entries by the machine ID it read at its
	# start: restarted, it files the rest under the instance's (the
	# entries before this, under $cur, show with journalctl -m).
	if [ -z "$ROOT" ]; then
		systemctl --no-block restart systemd-journald.service || true
	fi
}

# keep PATH: one state path onto the volume and bound over the root disk.
keep() {
	p=$1
	case $p in
	/etc/machine-id)
		keep_machine_id
		return
		;;
	*\**)
		dir=${p%/*} pat=${p##*/}
		vdir=$MNT/data$dir
		mkdir -p -- "$vdir" || return 1
		# shellcheck disable=SC2086
		set -- $(cd "$vdir" && ls -d -- $pat 2>/dev/null)
		if [ $# -eq 0 ]; then
			for f in "$ROOT$dir"/$pat; do
				[ -f "$f" ] && [ ! -L "$f" ] && cp -a -- "$f" "$vdir/"
			done
			if [ "$p" = "/etc/ssh/ssh_host_*" ]; then
				for t in ed25519 ecdsa; do
					k=$vdir/ssh_host_${t}_key
					[ -s "$k" ] && continue
					rm -f "$k" "$k.pub"
					ssh-keygen -q -t "$t" -N "" -C "" -f "$k" >/dev/null || err "ssh-keygen -t $t failed"
				done
			fi
			log "$p: copied onto the state volume (first use)"
			# shellcheck disable=SC2086
			set -- $(cd "$vdir" && ls -d -- $pat 2>/dev/null)
		fi
		for f in "$@"; do
			[ -f "$vdir/$f" ] || continue
			bind_one "$vdir/$f" "$ROOT$dir/$f" || err "cannot bind $dir/$f"
		done
		log "$p: $# file(s) from the state volume"
		return 0
		;;
	esac
	d=$MNT/data$p
	if [ ! -e "$d" ] && [ ! -L "$d" ]; then
		copy_in "$ROOT$p" "$d" || {
			err "cannot copy $p onto the state volume"
			return 1
		}
		log "$p: copied onto the state volume (first use)"
	fi
	bind_one "$d" "$ROOT$p" || {
		err "cannot bind $p from the state volume"
		return 1
	}
	log "$p: from the state volume"
}

main() {
	if [ ! -r "$CONF" ]; then
		err "no $CONF"
		exit 1
	fi
	# shellcheck disable=SC1090
	. "$CONF"
	if mountpoint -q "$MNT"; then
		log "the state volume is already set up at $MNT"
		exit 0
	fi
	udevadm settle --timeout=30 2>/dev/null || true
	dev=$(find_dev)
	if [ -z "$dev" ] && [ -n "$PARTITION_SIZE" ]; then
		msg="NO STATE PARTITION: no file system labelled $LABEL (bake-state-partition.service makes it at first boot; journalctl -u bake-state-partition says why it did not). Not running from the root disk instead: the services that keep state do not start."
		err "$msg"
		[ -w /dev/console ] && echo "bake-state: error: $msg" >/dev/console 2>/dev/null
		status missing
		exit 1
	fi
	if [ -z "$dev" ]; then
		what="labelled $LABEL"
		[ -n "$SERIAL" ] && what="with serial $SERIAL (/dev/disk/by-id/virtio-$SERIAL)"
		msg="NO STATE VOLUME: no disk $what. This instance runs from its root disk: its state (host keys, tokens, identities) will be LOST when the image is replaced. Attach the state volume and reboot to keep it."
		echo "bake-state: warning: $msg" >&2
		[ -w /dev/console ] && echo "bake-state: warning: $msg" >/dev/console 2>/dev/null
		status missing
		exit 0
	fi
	kind=$(classify "$dev")
	case $kind in
	ours) log "state volume $dev (label $LABEL)" ;;
	blank)
		if [ -z "$SERIAL" ]; then
			err "$dev is blank but was not found by serial; not formatted"
			status foreign
			exit 1
		fi
		log "formatting the blank disk $dev (serial $SERIAL) as ext4, label $LABEL"
		if ! mkfs.ext4 -q -L "$LABEL" -- "$dev"; then
			err "mkfs.ext4 $dev failed"
			status failed
			exit 1
		fi
		udevadm settle --timeout=10 2>/dev/null || true
		;;
	*)
		err "$dev (serial $SERIAL) holds something that is not a bake state volume (label $LABEL): not touched, not used; the services that keep state do not start"
		status foreign
		exit 1
		;;
	esac
	mkdir -p "$MNT" && chmod 0700 "$MNT"
	if ! mount -t ext4 -o nodev,nosuid -- "$dev" "$MNT"; then
		err "cannot mount $dev"
		status failed
		exit 1
	fi
	if ! check_format "$MNT"; then
		umount "$MNT"
		status newer
		exit 1
	fi
	setup
}

# setup: every path, then the record (MNT is the mounted volume).
setup() {
	n=0
	set -f # a path's * is for keep, not for the shell
	for p in $PATHS; do
		set +f
		keep "$p"
		n=$((n + 1))
		set -f
	done
	set +f
	record "$MNT" || err "cannot record the image on the state volume"
	if [ "$failed" -ne 0 ]; then
		status failed
		exit 1
	fi
	status ok
	log "state volume ready: $n path(s) bound"
}

[ "${BAKE_STATE_LIB:-}" = 1 ] || main
