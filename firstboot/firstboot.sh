#!/bin/sh
# bake first boot: the per-instance step of an appliance image.
#
# Once per instance (keyed by /etc/machine-id, stamped under
# /var/lib/bake/firstboot), before sshd and the gateway start, it reads the
# instance's seed (docs/seed.md) from the sources listed in
# /etc/bake/firstboot.conf, in order of precedence:
#   nocloud      a volume labelled cidata or CIDATA (ISO9660 or FAT), mounted
#                read-only: files bake.* and user-data's ssh_authorized_keys
#   credentials  systemd credentials bake.* ($CREDENTIALS_DIRECTORY; SMBIOS
#                type 11 or fw_cfg io.systemd.credential:bake.NAME=VALUE)
#   cloud-init   files bake.* that cloud-init's write_files put into
#                /run/bake/cloud-init-seed (cloud-init itself installs the
#                cloud's keys for the admin, its default user)
# and the image's baked values last (/etc/bake/seed.d, only when the recipe
# allowed baked secrets). It installs the admin's authorized keys, sets the
# gateway token (given, or 64 random [A-Za-z0-9] from the kernel's CSPRNG),
# writes the gateway's openclaw.json (0600, owned by the gateway's user,
# written as that user and never through a symlink) and leaves a
# Tailscale auth key for bake-tailscale-up.service, with the seed's
# control server and CA when it names another (headscale) than the image's.
#
# At every later boot it applies the image's gateway settings: openclaw.json
# is the image's (the recipe's settings) and the instance's (its token) at
# once, and lives on the state volume, so a new image on an old volume
# re-renders it from its own template with the instance's token, as long as
# the file is still what first boot rendered (see refresh_gateway).
#
# It logs what it does and where values came from, never a secret: no
# secret is ever put on a command line (other users can read those).
# SSH host keys are not made here but by bake-hostkeys.service, which
# does not depend on this script succeeding.

set -u
umask 077
export LC_ALL=C
PATH=/usr/sbin:/usr/bin:/sbin:/bin

CONF=${BAKE_FIRSTBOOT_CONF:-/etc/bake/firstboot.conf}
STATE=/var/lib/bake/firstboot
WORK=/run/bake/firstboot
MACHINE_ID_FILE=/etc/machine-id
BAKED_SEED=/etc/bake/seed.d
CLOUD_INIT_SEED=/run/bake/cloud-init-seed
SECRETS=/var/lib/bake/secrets
PLACEHOLDER=@BAKE_GATEWAY_TOKEN@
# The template openclaw.json was last rendered from, in $STATE (a state
# path: it moves with the volume, as openclaw.json does). No secret in it.
APPLIED_NAME=openclaw.json.in.applied
TS_SEED_LOGIN=/etc/bake/tailscale-login-server
TS_CA_DIR=/var/lib/tailscale/bake-ca
TS_CA_MAX=65536
NAMES="admin_ssh_keys gateway_token tailscale_authkey tailscale_login_server tailscale_ca"

# Settings from the image (firstboot.conf overrides these defaults).
ADMIN_USER=
SEEDS="nocloud credentials"
GATEWAY_CONFIG=
GATEWAY_TEMPLATE=/etc/bake/openclaw.json.in
GATEWAY_OWNER=
TAILSCALE=

failed=0
log() { echo "bake-firstboot: $*"; }
warn() { echo "bake-firstboot: warning: $*" >&2; }
# loud MESSAGE: a warning the admin must see, on the console too.
CONSOLE=/dev/console
loud() {
	warn "$*"
	if [ -w "$CONSOLE" ]; then
		echo "bake-firstboot: warning: $*" >"$CONSOLE" 2>/dev/null || true
	fi
}
err() {
	echo "bake-firstboot: error: $*" >&2
	failed=1
}

# collect SOURCE DIR: takes bake.NAME files from DIR. Keys from every
# source are kept; for the other values the first source (highest
# precedence) wins.
collect() {
	src=$1 dir=$2
	for name in $NAMES; do
		f=$dir/bake.$name
		[ -f "$f" ] || continue
		if [ "$name" = admin_ssh_keys ]; then
			cat "$f" >>"$WORK/keys.$src"
			echo >>"$WORK/keys.$src"
			log "seed $src: bake.$name"
		elif [ -s "$WORK/value.$name" ]; then
			log "seed $src: bake.$name ignored (already given by $(cat "$WORK/from.$name"))"
		elif [ -s "$f" ]; then
			cat "$f" >"$WORK/value.$name"
			echo "$src" >"$WORK/from.$name"
			log "seed $src: bake.$name"
		fi
	done
}

# user_data_keys FILE: the items of the top-level ssh_authorized_keys list of
# a #cloud-config document (block or flow style, plain or quoted). A seed
# written for cloud-init thus works on images without it.
user_data_keys() {
	awk '
	NR == 1 && $0 !~ /^#cloud-config/ { exit }
	function unquote(s) {
		sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
		if (s ~ /^".*"$/) { s = substr(s, 2, length(s) - 2); gsub(/\\"/, "\"", s) }
		else if (s ~ /^'\''.*'\''$/) { s = substr(s, 2, length(s) - 2); gsub(/'\'\''/, "'\''", s) }
		return s
	}
	/^ssh_authorized_keys:/ {
		rest = substr($0, index($0, ":") + 1)
		if (rest ~ /^[ \t]*\[/) {
			sub(/^[ \t]*\[/, "", rest); sub(/\][ \t]*$/, "", rest)
			n = split(rest, items, ",")
			for (i = 1; i <= n; i++) { k = unquote(items[i]); if (k != "") print k }
			next
		}
		inlist = 1; next
	}
	inlist && /^[ \t]*-[ \t]/ { item = $0; sub(/^[ \t]*-[ \t]+/, "", item); print unquote(item); next }
	inlist && /^[ \t]*(#.*)?$/ { next }
	inlist { inlist = 0 }
	' "$1"
}

seed_nocloud() {
	if command -v udevadm >/dev/null 2>&1; then
		udevadm settle --timeout=10 2>/dev/null || true
	fi
	dev=
	for label in cidata CIDATA; do
		[ -n "$dev" ] || dev=$(blkid -c /dev/null -o device -t "LABEL=$label" 2>/dev/null | head -n 1)
	done
	if [ -z "$dev" ]; then
		log "seed nocloud: no volume labelled cidata or CIDATA"
		return 0
	fi
	mnt=$WORK/nocloud
	mkdir -p "$mnt"
	if ! mount -o ro,nosuid,nodev,noexec "$dev" "$mnt"; then
		err "seed nocloud: cannot mount $dev read-only"
		return 0
	fi
	log "seed nocloud: reading $dev"
	collect nocloud "$mnt"
	if [ -f "$mnt/user-data" ]; then
		user_data_keys "$mnt/user-data" >>"$WORK/keys.nocloud-user-data"
	fi
	umount "$mnt" || warn "seed nocloud: cannot unmount $mnt"
}

seed_credentials() {
	dir=${CREDENTIALS_DIRECTORY:-}
	if [ -z "$dir" ] || [ ! -d "$dir" ]; then
		log "seed credentials: none passed"
		return 0
	fi
	collect credentials "$dir"
}

seed_cloud_init() {
	if [ ! -d "$CLOUD_INIT_SEED" ]; then
		log "seed cloud-init: no bake values in user-data (keys from cloud-init go to the admin directly)"
		return 0
	fi
	collect cloud-init "$CLOUD_INIT_SEED"
	rm -rf "$CLOUD_INIT_SEED"
}

# valid_keys: public keys from stdin, one per line, that ssh-keygen accepts;
# anything else is dropped with a warning (never echoed: it might be a
# secret pasted by mistake).
valid_keys() {
	while IFS= read -r line || [ -n "$line" ]; do
		line=$(printf '%s' "$line" | tr -d '\r')
		case $line in
		'' | '#'*) continue ;;
		*PRIVATE\ KEY*)
			warn "ignored private key material in the seed"
			continue
			;;
		esac
		if printf '%s\n' "$line" | ssh-keygen -l -f /dev/stdin >/dev/null 2>&1; then
			printf '%s\n' "$line"
		else
			warn "ignored a line that is not an SSH public key"
		fi
	done
}

# install_keys USER: merges the seed's keys into USER's authorized_keys
# (keys already there, from the recipe or cloud-init, stay).
install_keys() {
	user=$1
	home=$(getent passwd "$user" | cut -d: -f6)
	if [ -z "$home" ] || [ ! -d "$home" ]; then
		err "admin user $user has no home directory"
		return 0
	fi
	group=$(id -gn "$user")
	ak=$home/.ssh/authorized_keys
	cat "$WORK"/keys.* 2>/dev/null | valid_keys >"$WORK/seed_keys"
	{
		[ -f "$ak" ] && cat "$ak"
		cat "$WORK/seed_keys"
	} | awk 'NF && !seen[$0]++' >"$WORK/authorized_keys"
	n=$(grep -c . "$WORK/seed_keys" || true)
	if [ ! -s "$WORK/authorized_keys" ]; then
		warn "no SSH key for $user: nobody can log in over SSH (give bake.admin_ssh_keys or user-data ssh_authorized_keys in the seed)"
		return 0
	fi
	mkdir -p "$home/.ssh"
	chown "$user:$group" "$home/.ssh"
	chmod 0700 "$home/.ssh"
	chown "$user:$group" "$WORK/authorized_keys"
	chmod 0600 "$WORK/authorized_keys"
	mv -f "$WORK/authorized_keys" "$ak"
	log "installed $n key(s) from the seed for $user; $ak now holds:"
	ssh-keygen -l -f "$ak" 2>/dev/null | while IFS= read -r fp; do log "  $fp"; done
}

# gen_token: 64 characters [A-Za-z0-9] from the kernel's CSPRNG.
gen_token() {
	tr -dc 'A-Za-z0-9' </dev/urandom | head -c 64
}

# render_config TEMPLATE TOKEN OUT: the template with the token in place,
# written with shell builtins only, so the token is on no command line.
render_config() {
	tpl=$(cat "$1") || return 1
	case $tpl in
	*"$PLACEHOLDER"*) ;;
	*) return 1 ;;
	esac
	printf '%s%s%s\n' "${tpl%%"$PLACEHOLDER"*}" "$2" "${tpl#*"$PLACEHOLDER"}" >"$3"
}

# owner_of PATH: the uid that owns PATH itself (a symlink is not followed).
owner_of() {
	stat -c %u -- "$1"
}

# The gateway's own files (its state dir, openclaw.json) live where the
# gateway's uid can write: a compromised gateway may have planted symlinks
# there, or swap one in while first boot runs. So first boot, as root,
# only looks (lstat: no symlink anywhere from the user's home down to the
# target, everything owned as expected, else it refuses and fails), and
# does every write, chmod and rename there as the gateway's uid
# (setpriv, no capabilities, no new privileges): a link swapped in after
# the check then gets the gateway nothing it could not do itself. The file
# is made by mktemp in the state dir and renamed over openclaw.json
# (mv -T: rename(2) replaces a name, never follows it or moves into it).

# gateway_ids: sets gw_uid, gw_gid and gw_home from GATEWAY_OWNER (a user
# name, or UID:GID).
gateway_ids() {
	owner=$GATEWAY_OWNER
	case $owner in
	*:*) ouser=${owner%%:*} ogroup=${owner#*:} ;;
	*) ouser=$owner ogroup= ;;
	esac
	case $ouser in
	'' | *[!0-9]*) gw_uid=$(id -u "$ouser" 2>/dev/null) || gw_uid= ;;
	*) gw_uid=$ouser ;;
	esac
	case $ogroup in
	'') gw_gid=$(id -g "$ouser" 2>/dev/null) || gw_gid= ;;
	*[!0-9]*) gw_gid=$(getent group "$ogroup" | cut -d: -f3) ;;
	*) gw_gid=$ogroup ;;
	esac
	case $gw_uid:$gw_gid in
	*[!0-9:]* | :* | *:)
		err "gateway user $owner does not exist"
		return 1
		;;
	esac
	if [ "$gw_uid" -eq 0 ]; then
		err "the gateway's user $owner is root; refusing to write its files"
		return 1
	fi
	gw_home=$(getent passwd "$ouser" | cut -d: -f6)
	return 0
}

# as_gateway CMD...: runs CMD as the gateway's uid and gid, without
# supplementary groups, capabilities or a way to regain them.
as_gateway() {
	setpriv --reuid="$gw_uid" --regid="$gw_gid" --clear-groups --inh-caps=-all --no-new-privs -- "$@"
}

# check_gateway_path DIR TARGET: refuses (an error, status 1) unless every
# component of DIR from the gateway's home down (every component, when
# DIR is not below the home) is a directory and no symlink, owned by root
# or the gateway, DIR itself owned by the gateway, and TARGET, if it
# exists, a regular file owned by the gateway and no symlink. A missing
# DIR passes when its parent is the gateway's: the writer makes it.
check_gateway_path() {
	d=$1 target=$2
	gwh=${gw_home%/} base=
	case $d/ in
	"$gwh"/*) base=${gwh%/*} ;;
	esac
	p=$base
	rest=${d#"$base"}
	while [ -n "$rest" ]; do
		rest=${rest#/}
		comp=${rest%%/*}
		rest=${rest#"$comp"}
		[ -n "$comp" ] || continue
		p=$p/$comp
		if [ -L "$p" ]; then
			err "$p is a symlink (planted where the gateway can write?): refusing to write through it; the gateway is not configured"
			return 1
		fi
		if [ ! -e "$p" ]; then
			if [ -n "${rest#/}" ] || [ "$(owner_of "${p%/*}")" != "$gw_uid" ]; then
				err "$p is missing, and the gateway's user cannot make it; the gateway is not configured"
				return 1
			fi
			return 0
		fi
		if [ ! -d "$p" ]; then
			err "$p is not a directory; the gateway is not configured"
			return 1
		fi
		o=$(owner_of "$p")
		want="root or the gateway's user ($gw_uid)"
		ok=
		if [ "$p" = "$d" ]; then
			want="the gateway's user ($gw_uid)"
			[ "$o" = "$gw_uid" ] && ok=1
		elif [ "$o" = 0 ] || [ "$o" = "$gw_uid" ]; then
			ok=1
		fi
		if [ -z "$ok" ]; then
			err "$p is owned by uid $o, not by $want; the gateway is not configured"
			return 1
		fi
	done
	if [ -L "$target" ]; then
		err "$target is a symlink (planted where the gateway can write?): refusing to write through it; the gateway is not configured"
		return 1
	fi
	if [ -e "$target" ]; then
		if [ ! -f "$target" ]; then
			err "$target is not a regular file; the gateway is not configured"
			return 1
		fi
		o=$(owner_of "$target")
		if [ "$o" != "$gw_uid" ]; then
			err "$target is owned by uid $o, not by the gateway's user ($gw_uid); the gateway is not configured"
			return 1
		fi
	fi
	return 0
}

# The writer, run as the gateway's uid: makes the state dir if missing,
# keeps it private, writes stdin into a new mktemp file beside the target
# and renames it over the target.
GATEWAY_WRITER='set -eu
umask 077
[ -d "$1" ] || mkdir -m 0700 -- "$1"
chmod 0700 -- "$1"
tmp=$(mktemp -- "$1/.openclaw.json.XXXXXXXXXX")
if cat >"$tmp" && chmod 0600 -- "$tmp" && mv -fT -- "$tmp" "$2"; then
	exit 0
fi
rm -f -- "$tmp"
exit 1'

setup_gateway() {
	[ -n "$GATEWAY_CONFIG" ] || return 0
	if [ -s "$WORK/value.gateway_token" ]; then
		token=$(head -n 1 "$WORK/value.gateway_token" | tr -d '\r\n')
		from="the seed ($(cat "$WORK/from.gateway_token"))"
		case $token in
		'' | *[!A-Za-z0-9._~+/=-]*)
			err "the seed's bake.gateway_token may hold only A-Z a-z 0-9 . _ ~ + / = -; the gateway is not configured"
			return 0
			;;
		esac
		if [ ${#token} -lt 16 ]; then
			err "the seed's bake.gateway_token is shorter than 16 characters; the gateway is not configured"
			return 0
		fi
	else
		token=$(gen_token)
		from="generated from /dev/urandom"
		if [ ${#token} -ne 64 ]; then
			err "could not generate a gateway token"
			return 0
		fi
	fi
	gateway_ids || return 0
	dir=${GATEWAY_CONFIG%/*}
	check_gateway_path "$dir" "$GATEWAY_CONFIG" || return 0
	# Rendered in first boot's own private dir (root's), handed to the
	# gateway's writer on stdin: the token is on no command line.
	if ! render_config "$GATEWAY_TEMPLATE" "$token" "$WORK/openclaw.json"; then
		err "cannot render $GATEWAY_TEMPLATE"
		return 0
	fi
	if ! as_gateway sh -c "$GATEWAY_WRITER" bake-firstboot-gateway "$dir" "$GATEWAY_CONFIG" <"$WORK/openclaw.json"; then
		rm -f "$WORK/openclaw.json"
		err "cannot write $GATEWAY_CONFIG as the gateway's user ($GATEWAY_OWNER, uid $gw_uid); the gateway is not configured"
		return 0
	fi
	rm -f "$WORK/openclaw.json"
	if ! record_template; then
		warn "cannot record the template openclaw.json was rendered from in $STATE/$APPLIED_NAME: a later image cannot apply its gateway settings"
	fi
	log "gateway token: ${#token} characters, $from"
	log "wrote $GATEWAY_CONFIG (0600, $GATEWAY_OWNER, written as uid $gw_uid); read the token with: sudo grep -o '\"token\": *\"[^\"]*\"' $GATEWAY_CONFIG"
}

# record_template: keeps the template openclaw.json was just rendered from
# (no secret in it: the placeholder stands for the token) beside first
# boot's stamps, root's, private.
record_template() {
	mkdir -p "$STATE" &&
		cp -- "$GATEWAY_TEMPLATE" "$STATE/$APPLIED_NAME.tmp" &&
		chmod 0600 "$STATE/$APPLIED_NAME.tmp" &&
		mv -f -- "$STATE/$APPLIED_NAME.tmp" "$STATE/$APPLIED_NAME"
}

# recover_token TEMPLATE FILE: sets token to the instance's token when FILE
# is exactly TEMPLATE rendered (render_config) with some token: FILE starts
# with the text before the placeholder and ends with the text after it,
# what is between is a token first boot accepts, and the template rendered
# with it is FILE byte for byte. Anything else (a key added, a value or
# the spacing changed, a comment) fails (status 1, token empty). Shell
# builtins only: the token is on no command line and in no file but
# openclaw.json (the check's render is in the private work dir, removed).
recover_token() {
	token=
	rt_tpl=$(cat -- "$1") || return 1
	rt_cur=$(cat -- "$2") || return 1
	case $rt_tpl in
	*"$PLACEHOLDER"*) ;;
	*) return 1 ;;
	esac
	rt_pre=${rt_tpl%%"$PLACEHOLDER"*}
	rt_suf=${rt_tpl#*"$PLACEHOLDER"}
	case $rt_cur in
	"$rt_pre"*"$rt_suf") ;;
	*) return 1 ;;
	esac
	rt_tok=${rt_cur#"$rt_pre"}
	rt_tok=${rt_tok%"$rt_suf"}
	rt_tpl= rt_cur=
	case $rt_tok in
	'' | *[!A-Za-z0-9._~+/=-]*) return 1 ;;
	esac
	[ ${#rt_tok} -ge 16 ] || return 1
	render_config "$1" "$rt_tok" "$WORK/recovered" || return 1
	if ! cmp -s -- "$WORK/recovered" "$2"; then
		rm -f "$WORK/recovered"
		return 1
	fi
	rm -f "$WORK/recovered"
	token=$rt_tok
	rt_tok=
	return 0
}

# refresh_gateway: at every boot of an instance already set up, applies the
# image's gateway settings. openclaw.json holds the recipe's settings (the
# image's: its template, /etc/bake/openclaw.json.in) and the token (the
# instance's); it lives in the gateway's state directory, on the state
# volume, so a new image boots with the old image's file. The rule:
#   - the image's template is the one recorded as applied: nothing to do;
#   - openclaw.json is exactly the image's template rendered with a token:
#     it is this image's already; the template is recorded as applied;
#   - openclaw.json is exactly the applied template rendered with a token
#     (nobody changed it): it is rendered again from the image's template
#     with that token (as the gateway's uid, through the checks and the
#     writer of first boot), and the image's template recorded as applied;
#     a key the old template had and this one lacks is gone;
#   - else (changed on the instance: by an admin, or by OpenClaw's own
#     config writers; or no template recorded: set up by an earlier bake)
#     the file is left as it is and a warning says the image's settings
#     were not applied and what to do.
# A refused path (a symlink, a wrong owner) or a failed write is an error:
# the unit fails (the gateway still starts, with the old file).
refresh_gateway() {
	[ -n "$GATEWAY_CONFIG" ] || return 0
	applied=$STATE/$APPLIED_NAME
	if [ ! -f "$GATEWAY_TEMPLATE" ]; then
		err "this image has no $GATEWAY_TEMPLATE: its gateway settings cannot be applied"
		return 0
	fi
	if [ -f "$applied" ] && cmp -s -- "$GATEWAY_TEMPLATE" "$applied"; then
		log "openclaw.json: this image's gateway settings are the ones applied"
		return 0
	fi
	gateway_ids || return 0
	dir=${GATEWAY_CONFIG%/*}
	check_gateway_path "$dir" "$GATEWAY_CONFIG" || return 0
	if [ ! -e "$GATEWAY_CONFIG" ]; then
		warn "$GATEWAY_CONFIG is missing (the instance's token with it): this image's gateway settings were NOT applied; the gateway has no config"
		return 0
	fi
	rm -rf "$WORK"
	mkdir -p "$WORK"
	chmod 0700 "$WORK"
	# Read as the gateway's uid: a link swapped in after the checks gets
	# root to read nothing the gateway could not.
	if ! as_gateway cat -- "$GATEWAY_CONFIG" >"$WORK/current"; then
		err "cannot read $GATEWAY_CONFIG as the gateway's user ($GATEWAY_OWNER, uid $gw_uid)"
		rm -rf "$WORK"
		return 0
	fi
	keep="to take this image's settings, make $GATEWAY_CONFIG exactly $GATEWAY_TEMPLATE with the instance's token in place of $PLACEHOLDER (the next boot records it); to keep the file as it is and stop this warning: sudo install -m 0600 $GATEWAY_TEMPLATE $applied"
	if recover_token "$GATEWAY_TEMPLATE" "$WORK/current"; then
		token=
		if record_template; then
			log "openclaw.json is this image's template rendered with the instance's token already; recorded the template as applied"
		else
			err "cannot record the template openclaw.json was rendered from in $applied"
		fi
	elif [ ! -f "$applied" ]; then
		loud "openclaw.json: no record of the template $GATEWAY_CONFIG was rendered from ($applied; an instance set up by a bake before it kept one), and it is not this image's template rendered with a token: cannot tell the image's settings from the instance's, so the file is left as it is and this image's gateway settings were NOT applied; $keep"
	elif ! recover_token "$applied" "$WORK/current"; then
		loud "openclaw.json was changed on this instance (by an admin, or by OpenClaw's own config writers: openclaw config set, doctor --fix): it is not the render of the template it was written from ($applied), so the file is left as it is and this image's gateway settings ($GATEWAY_TEMPLATE) were NOT applied; $keep"
	elif ! render_config "$GATEWAY_TEMPLATE" "$token" "$WORK/openclaw.json"; then
		token=
		err "cannot render $GATEWAY_TEMPLATE; openclaw.json is left as it was"
	elif ! as_gateway sh -c "$GATEWAY_WRITER" bake-firstboot-gateway "$dir" "$GATEWAY_CONFIG" <"$WORK/openclaw.json"; then
		token=
		err "cannot write $GATEWAY_CONFIG as the gateway's user ($GATEWAY_OWNER, uid $gw_uid); openclaw.json is left as it was"
	elif ! record_template; then
		token=
		err "openclaw.json was re-rendered from the new image's template, but the template could not be recorded as applied in $applied (the next boot will take the file for changed)"
	else
		token=
		log "openclaw.json re-rendered from the new image's template ($GATEWAY_TEMPLATE); token kept"
		if [ -w "$CONSOLE" ]; then
			echo "bake-firstboot: openclaw.json re-rendered from the new image's template; token kept" >"$CONSOLE" 2>/dev/null || true
		fi
	fi
	rm -rf "$WORK"
}

# setup_tailscale_server: the seed's control server (overrides the
# recipe's tailscale.login_server) and CA bundle (trusted by tailscaled
# besides the system's roots and the recipe's CA: its drop-in names
# TS_CA_DIR in SSL_CERT_DIR; under /var/lib/tailscale, a state path, so
# the CA stays with the node across an image upgrade). Neither is a secret. A value that is not
# one is an error and not used (the join then goes to the image's server).
setup_tailscale_server() {
	rm -f "$TS_SEED_LOGIN" "$TS_CA_DIR/seed.pem"
	if [ -s "$WORK/value.tailscale_login_server" ]; then
		url=$(head -n 1 "$WORK/value.tailscale_login_server" | tr -d '\r')
		ok=1
		case $url in
		https://?*) ;;
		*) ok= ;;
		esac
		case ${url#https://} in
		*[!]A-Za-z0-9._~:/%[-]*) ok= ;;
		esac
		[ ${#url} -le 512 ] || ok=
		if [ -z "$ok" ]; then
			err "the seed's bake.tailscale_login_server is not an https URL of at most 512 characters A-Z a-z 0-9 . - _ ~ : / [ ] %; not used"
		else
			printf '%s\n' "$url" >"$TS_SEED_LOGIN.tmp" && chmod 0644 "$TS_SEED_LOGIN.tmp" && mv -f "$TS_SEED_LOGIN.tmp" "$TS_SEED_LOGIN"
			log "tailscale login server from the seed ($(cat "$WORK/from.tailscale_login_server")): $url"
		fi
	fi
	if [ -s "$WORK/value.tailscale_ca" ]; then
		f=$WORK/tailscale_ca.pem
		tr -d '\r' <"$WORK/value.tailscale_ca" >"$f"
		size=$(wc -c <"$f")
		begins=$(grep -c -- '-----BEGIN ' "$f" || true)
		certs=$(grep -c -x -- '-----BEGIN CERTIFICATE-----' "$f" || true)
		if [ "$size" -gt "$TS_CA_MAX" ]; then
			err "the seed's bake.tailscale_ca is $size bytes, more than $TS_CA_MAX; not used"
		elif [ "$certs" -eq 0 ] || [ "$begins" -ne "$certs" ]; then
			err "the seed's bake.tailscale_ca must hold PEM CERTIFICATE blocks and nothing else PEM (it has $certs certificate(s) among $begins block(s)); not used"
		else
			mkdir -p "$TS_CA_DIR"
			chmod 0755 "$TS_CA_DIR"
			cp "$f" "$TS_CA_DIR/seed.pem.tmp" && chmod 0644 "$TS_CA_DIR/seed.pem.tmp" && mv -f "$TS_CA_DIR/seed.pem.tmp" "$TS_CA_DIR/seed.pem"
			log "tailscale CA from the seed ($(cat "$WORK/from.tailscale_ca")): $certs certificate(s) in $TS_CA_DIR/seed.pem"
		fi
	fi
}

setup_tailscale() {
	if [ -z "$TAILSCALE" ]; then
		for name in tailscale_authkey tailscale_login_server tailscale_ca; do
			[ -s "$WORK/value.$name" ] && warn "the seed has bake.$name, but this image has no Tailscale; ignored"
		done
		return 0
	fi
	setup_tailscale_server
	[ -s "$WORK/value.tailscale_authkey" ] || return 0
	mkdir -p "$SECRETS"
	chmod 0700 "$SECRETS"
	tr -d ' \t\r\n' <"$WORK/value.tailscale_authkey" >"$SECRETS/tailscale_authkey"
	chmod 0600 "$SECRETS/tailscale_authkey"
	log "tailscale auth key from the seed ($(cat "$WORK/from.tailscale_authkey")): bake-tailscale-up.service joins once the network is online"
}

main() {
	if [ -r "$CONF" ]; then
		. "$CONF"
	else
		warn "$CONF missing; using defaults"
	fi
	mid=$(cat "$MACHINE_ID_FILE" 2>/dev/null || true)
	case $mid in
	'' | *[!0-9a-f]*)
		echo "bake-firstboot: error: $MACHINE_ID_FILE holds no machine ID ('$mid'); systemd sets it up at boot" >&2
		exit 1
		;;
	esac
	if [ ${#mid} -ne 32 ]; then
		echo "bake-firstboot: error: $MACHINE_ID_FILE holds no valid machine ID" >&2
		exit 1
	fi
	stamp=$STATE/$mid.done
	if [ -e "$stamp" ]; then
		log "instance $mid was set up on $(cat "$stamp"); nothing to do"
		refresh_gateway
		if [ "$failed" -ne 0 ]; then
			echo "bake-firstboot: error: this image's gateway settings could not be applied" >&2
			exit 1
		fi
		exit 0
	fi
	log "first boot of instance $mid; seed sources: $SEEDS"
	rm -rf "$WORK"
	mkdir -p "$WORK"
	chmod 0700 "$WORK"
	for src in $SEEDS; do
		case $src in
		nocloud) seed_nocloud ;;
		credentials) seed_credentials ;;
		cloud-init) seed_cloud_init ;;
		*) warn "unknown seed source $src" ;;
		esac
	done
	if [ -d "$BAKED_SEED" ]; then
		collect baked "$BAKED_SEED"
	fi
	if [ -n "$ADMIN_USER" ]; then
		install_keys "$ADMIN_USER"
	fi
	setup_gateway
	setup_tailscale
	rm -rf "$WORK"
	if [ "$failed" -ne 0 ]; then
		echo "bake-firstboot: error: first boot is incomplete; it runs again at the next boot" >&2
		exit 1
	fi
	mkdir -p "$STATE"
	date -u +%Y-%m-%dT%H:%M:%SZ >"$stamp"
	log "done for instance $mid"
}

# Tests source this file with BAKE_FIRSTBOOT_LIB=1 to call its functions.
if [ "${BAKE_FIRSTBOOT_LIB:-}" != 1 ]; then
	main "$@"
fi
