#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md: cold and warm builds, image sizes, time from
# QEMU start to the login prompt under TCG. Run as root: `make bench`.
# Each recipe gets its own cache dir: "cold" starts empty, "warm" reuses
# the .debs the cold build fetched, "tree" also the bootstrap tree.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPES=${RECIPES:-"recipes/minimal.yaml recipes/openclaw.yaml"}
W=$(mktemp -d /var/tmp/bake-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), kvm: $(if [ -w /dev/kvm ]; then echo "device present (bake probes it; TCG when guests hang)"; else echo no; fi)"
echo "# date: $(date -u +%F)  bake: $(./bake version)"
for r in $RECIPES; do
  name=$(basename "$r" .yaml)
  cache="$W/cache-$name"
  # cold: empty caches; warm: the .debs cached, mmdebstrap runs again (the
  # cold run stored no tree) and stores its tree; tree: the bootstrap tree
  # copied from the cache (same inputs, same archive state).
  for kind in cold warm tree; do
    flags=()
    [ "$kind" = cold ] && flags=(--no-bootstrap-cache)
    start=$(date +%s.%N)
    BAKE_CACHE_DIR=$cache ./bake build "${flags[@]}" "$r" -o "$W/out-$name" --set disk_size=4GiB >"$W/$name-$kind.log" 2>&1 \
      || { echo "build of $r failed:"; tail -20 "$W/$name-$kind.log"; exit 1; }
    end=$(date +%s.%N)
    printf '%-10s %-5s build %6.1f s   ' "$name" "$kind" "$(echo "$end - $start" | bc)"
    grep -E '^\[[0-9]+/[0-9]+\] .* [0-9.]+s$' "$W/$name-$kind.log" | sed -E 's/^\[[0-9]+\/[0-9]+\] ([a-z-]+) \.\.\. ([0-9.]+s)$/\1=\2/' | tr '\n' ' '
    echo
  done
  q="$W/out-$name/$name.qcow2"
  qemu-img convert -O raw "$q" "$W/$name.raw"
  printf '%-10s size: qcow2 %d MiB, raw virtual %d MiB, raw allocated %d MiB\n' "$name" \
    $(( $(stat -c %s "$q") >> 20 )) $(( $(stat -c %s "$W/$name.raw") >> 20 )) $(( $(du -B1 "$W/$name.raw" | cut -f1) >> 20 ))
  rm -f "$W/$name.raw"
  # Boot to the login prompt (SeaBIOS, TCG unless KVM is usable).
  serial="$W/$name.serial"
  start=$(date +%s.%N)
  qemu-system-x86_64 -machine q35 -m 1024 -nographic -display none -monitor none \
    -serial "file:$serial" -drive "file=$q,if=virtio,snapshot=on" -nic user,restrict=on,model=virtio-net-pci &
  qpid=$!
  ok=no
  for _ in $(seq 1 600); do
    if grep -q 'login:' "$serial" 2>/dev/null; then ok=yes; break; fi
    sleep 0.5
  done
  end=$(date +%s.%N)
  kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null || true
  printf '%-10s boot to login prompt (BIOS, TCG): %s %.1f s\n' "$name" "$ok" "$(echo "$end - $start" | bc)"
done
