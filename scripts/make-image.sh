#!/usr/bin/env bash
# The README's first command (`make image`): bake the default recipe.
#
# The default recipe installs tailscale from Tailscale's signed apt
# repository. On a build network that cannot reach it, this script builds a
# local stand-in from the tailscale.com Go module (scripts/tailscale-mirror.sh,
# a real, signed repository served on 127.0.0.1) and passes it to bake as the
# recipe's build-only mirror: the image itself still names Tailscale's
# repository and trusts Tailscale's key (recipes/keys/tailscale.asc).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-recipes/openclaw.yaml}
OUT=${OUT:-out}
BAKE=${BAKE:-./bake}
args=(build "$RECIPE" -o "$OUT")

if [ "$RECIPE" = recipes/openclaw.yaml ] &&
   ! curl -fsS --max-time 15 -o /dev/null https://pkgs.tailscale.com/stable/debian/bookworm.noarmor.gpg 2>/dev/null; then
  echo "make-image: Tailscale's repository is unreachable from here; using a local mirror built from the tailscale.com Go module"
  # TAILSCALE_MIRROR: where the mirror lives, relative to the repository
  # root (the recipe's context); the VM test uses its own.
  mirror=${TAILSCALE_MIRROR:-.cache/tailscale-mirror}
  scripts/tailscale-mirror.sh --serve "$mirror"
  # Stop the server and wait (up to 5 s) until it is gone.
  trap 'p=$(cat "$mirror/serve.pid" 2>/dev/null) && kill "$p" 2>/dev/null &&
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; true' EXIT
  # Paths in the recipe are relative to recipes/ (its context is the repo root).
  args+=(--set "tailscale_build_uri=$(cat "$mirror/serve.url")" --set "tailscale_build_key=../$mirror/tailscale.gpg")
fi
"$BAKE" "${args[@]}"
