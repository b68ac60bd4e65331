#!/bin/sh
# tailscale-mirror.sh: a local, signed stand-in for Tailscale's apt repository
# (https://pkgs.tailscale.com/stable/debian), for building the default recipe
# on a machine that cannot reach pkgs.tailscale.com.
#
#   scripts/tailscale-mirror.sh [--serve[=ADDR]] OUTDIR [VERSION]
#
# It builds tailscale and tailscaled from the tailscale.com Go module at
# VERSION (default: aptrepo.DefaultTailscaleVersion) through the Go module
# proxy, packages them like Tailscale's .deb (same files, systemd unit and
# maintainer scripts; an unofficial build), and writes a repository signed
# with a key of its own:
#
#   OUTDIR/debian/        the repository: the apt URI (dists/bookworm/InRelease, pool/, ...)
#   OUTDIR/tailscale.gpg  its key as a binary keyring: the recipe's `key:` (Signed-By)
#   OUTDIR/key/           the private key, reused on later runs (keep it, don't share it)
#
# The build is cached in ${BAKE_CACHE:-.cache}/tailscale keyed by the version
# and the Go version: the first run takes a few minutes, later runs seconds.
#
# --serve (ADDR defaults to 127.0.0.1:0, a free port; loopback only) then
# serves OUTDIR/debian in the background and prints the URI to put in the
# recipe; OUTDIR/serve.url and OUTDIR/serve.pid tell where and who. Stop it
# with: kill "$(cat OUTDIR/serve.pid)". A running server from an earlier
# --serve of the same OUTDIR is stopped first.
#
# Then, for example:
#   apt:
#     repositories:
#       - {name: tailscale, uri: <serve.url>, suite: bookworm, components: [main], key: OUTDIR/tailscale.gpg}
set -eu

usage() { echo "usage: $0 [--serve[=ADDR]] OUTDIR [VERSION]" >&2; exit 2; }

serve=""
case "${1:-}" in
--serve) serve=127.0.0.1:0; shift ;;
--serve=*) serve=${1#--serve=}; shift ;;
-*) usage ;;
esac
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
version=${2:-}

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${BAKE_CACHE:-$root/.cache}
mkdir -p "$out" "$cache/bin"
out=$(cd "$out" && pwd)

mkrepo=$cache/bin/mkrepo
(cd "$root" && go build -o "$mkrepo" ./aptrepo/cmd/mkrepo)

set -- -out "$out" -cache "$cache/tailscale"
[ -n "$version" ] && set -- "$@" -tailscale "$version"
"$mkrepo" "$@"

[ -n "$serve" ] || exit 0

# Stop our own earlier server of this OUTDIR (only if that PID is mkrepo).
if [ -f "$out/serve.pid" ]; then
	old=$(cat "$out/serve.pid")
	if [ -n "$old" ] && grep -q mkrepo "/proc/$old/cmdline" 2>/dev/null; then
		kill "$old" && sleep 1
	fi
	rm -f "$out/serve.pid" "$out/serve.url"
fi
nohup "$mkrepo" -out "$out" -serve "$serve" -serve-only >"$out/serve.log" 2>&1 </dev/null &
i=0
while [ ! -s "$out/serve.url" ]; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 $! 2>/dev/null; then
		echo "$0: the server did not start:" >&2
		cat "$out/serve.log" >&2
		exit 1
	fi
	sleep 0.1
done
url=$(cat "$out/serve.url")
echo "serving $out/debian at $url (pid $(cat "$out/serve.pid"); stop: kill \$(cat $out/serve.pid))"
cat <<EOT
recipe:
  apt:
    repositories:
      - name: tailscale
        uri: $url
        suite: bookworm
        components: [main]
        key: $out/tailscale.gpg
EOT
