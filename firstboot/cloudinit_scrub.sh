#!/bin/sh
# bake: remove the secrets of the instance's seed from cloud-init's stored
# copies of its user-data, once cloud-init has run, on every boot.
#
# cloud-init keeps the user-data it was given under
# /var/lib/cloud/instances/ID/ (user-data.txt, its MIME form
# user-data.txt.i, the merged cloud-config.txt, the scripts and boothooks
# made from it,
# and obj.pkl, its pickled datasource with the raw user-data), and writes
# them again at each boot while the seed is attached. bake's values in
# user-data (the gateway token, the Tailscale auth key: docs/seed.md) are
# consumed by first boot; no copy may stay on the disk. This removes the
# text copies and rewrites obj.pkl without the raw user-data and vendor
# data (the datasource and instance id stay, so cloud-init still knows the
# instance and runs no per-instance module again: its semaphores in sem/
# are kept). A copy that cannot be scrubbed fails the unit.
set -u
rc=0
for d in /var/lib/cloud/instances/*; do
	# The instance directories are cloud-init's, written by root only.
	[ -d "$d" ] && [ ! -L "$d" ] || continue
	for f in user-data.txt user-data.txt.i cloud-config.txt vendor-data.txt vendor-data.txt.i \
		vendor-data2.txt vendor-data2.txt.i vendor-cloud-config.txt vendor2-cloud-config.txt; do
		if [ -e "$d/$f" ] || [ -L "$d/$f" ]; then
			if rm -f -- "$d/$f"; then
				echo "bake-cloud-init-scrub: removed $d/$f"
			else
				echo "bake-cloud-init-scrub: cannot remove $d/$f" >&2
				rc=1
			fi
		fi
	done
	for sub in scripts boothooks; do
		[ -d "$d/$sub" ] && [ ! -L "$d/$sub" ] || continue
		for f in "$d/$sub"/part-*; do
			[ -f "$f" ] || continue
			rm -f -- "$f" && echo "bake-cloud-init-scrub: removed $f" || rc=1
		done
	done
	p=$d/obj.pkl
	if [ -f "$p" ] && [ ! -L "$p" ]; then
		if ! python3 - "$p" <<'PY'
import os, pickle, sys
p = sys.argv[1]
with open(p, "rb") as f:
    ds = pickle.load(f)
changed = False
for a in ("userdata_raw", "vendordata_raw", "vendordata2_raw"):
    if getattr(ds, a, None):
        setattr(ds, a, b"")
        changed = True
for a in ("userdata", "vendordata", "vendordata2"):
    if getattr(ds, a, None) is not None:
        setattr(ds, a, None)
        changed = True
if changed:
    tmp = p + ".bake-scrub"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(ds, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    print("bake-cloud-init-scrub: rewrote %s without the raw user-data and vendor data" % p)
PY
		then
			echo "bake-cloud-init-scrub: cannot scrub $p" >&2
			rm -f -- "$p.bake-scrub"
			rc=1
		fi
	fi
done
exit "$rc"
