#!/usr/bin/env bash
# Build from a cloud image, for BENCHMARKS.md: for each cloud-image fixture
# (test/vm/fixtures/make-cloud-images.sh: Debian 12 genericcloud-shaped and
# Ubuntu 24.04 cloudimg-shaped), the time of `bake build` with the
# customization of test/vm/cloud_build_test.go (package tree, an overlay with
# a unit and a 0755 script, a file 0640 root:bakeuser, a user bakeuser,
# the unit enabled), qcow2 in and out, apt cache warm; and in the same run
# the same customization by virt-customize (libguestfs-tools) on a copy of
# the fixture. Run as root: `make bench` (install-deps.sh --bench installs
# libguestfs-tools). BENCH_CLOUD_RUNS (default 2) timed runs of each.
#
# virt-customize boots its own appliance VM (supermin, LIBGUESTFS_BACKEND=
# direct; TCG without KVM) and installs packages with the image's apt from
# inside it, over QEMU's user-mode network: it needs the image's mirror to be
# reachable from the build host. When a run of it fails, the script says so
# and times the same customization without --install.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${BENCH_CLOUD_RUNS:-2}
CACHE=${BAKE_TEST_CACHE:-/var/cache/bake-test}
export LIBGUESTFS_BACKEND=direct
for tool in virt-customize guestfish qemu-img; do
  command -v "$tool" >/dev/null || { echo "bench-cloud: $tool not found (run scripts/install-deps.sh --bench)" >&2; exit 2; }
done
W=$(mktemp -d /var/tmp/bake-bench-cloud.XXXXXX)
trap 'rm -rf "$W"' EXIT

now() { date +%s.%N; }
# vc_steps LOG: from virt-customize's "[  12.3] Installing packages: tree"
# lines, how long it took to launch its appliance and inspect the guest, to
# install the packages, and to do the rest until it finished.
vc_steps() {
  sed -nE 's/^\[ *([0-9.]+)\] (.*)/\1 \2/p' "$1" | awk '
    NR == 2 { inspect = $1 }
    inst != "" && ins_end == "" { ins_end = $1 }
    /Installing packages/ { inst = $1 }
    { last = $1 }
    END {
      if (inst == "") printf "launch and inspection %.1f s, no --install, the rest %.1f s", inspect, last - inspect
      else printf "launch and inspection %.1f s, --install %.1f s, the rest %.1f s", inspect, ins_end - inst, last - inspect - (ins_end - inst)
    }'
}
secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), kvm: $(if [ -w /dev/kvm ]; then echo "device present"; else echo no; fi), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# date: $(date -u +%F)  bake: $(./bake version)  virt-customize: $(virt-customize --version 2>/dev/null | head -1)"
start=$(now)
mapfile -t fixtures < <(bash test/vm/fixtures/make-cloud-images.sh "$CACHE/cloudimg")
echo "# fixtures ready in $(secs "$start" "$(now)") s (cached by the fixture script's hash)"

cp -a test/vm/testdata/cloud/overlay "$W/overlay"
printf 'baked into a cloud image\n' >"$W/bake-cloud-test.conf"
# Warm apt cache: the one the VM tests share, filled by a first build below.
export BAKE_CACHE_DIR=${BAKE_CACHE_DIR:-$CACHE/bake}

# supermin builds libguestfs's appliance from the host's kernel. A build
# host without one in /boot (a container, a microVM booted with a kernel of
# its own, like this project's CI machines) gets Debian's: the package
# linux-image-amd64 points to, fetched with apt-get download and extracted
# (not installed) into the cache.
if [ -z "${SUPERMIN_KERNEL:-}" ] && ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
  [ -n "$kpkg" ] || { echo "bench-cloud: no kernel in /boot and none found behind linux-image-amd64 (apt-get update?)" >&2; exit 1; }
  kdir="$CACHE/supermin-kernel/$kpkg"
  if [ ! -d "$kdir" ]; then
    mkdir -p "$W/kernel" "$CACHE/supermin-kernel"
    (cd "$W/kernel" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null)
    dpkg-deb -x "$W/kernel/$kpkg"_*.deb "$W/kernel/tree"
    depmod -b "$W/kernel/tree" "${kpkg#linux-image-}"
    mv "$W/kernel/tree" "$kdir"
  fi
  kver=${kpkg#linux-image-}
  # supermin copies /lib/modules' own attributes from the host.
  [ -d /lib/modules ] || mkdir -p /lib/modules
  export SUPERMIN_KERNEL="$kdir/boot/vmlinuz-$kver" SUPERMIN_MODULES="$kdir/lib/modules/$kver" SUPERMIN_KERNEL_VERSION="$kver"
  echo "# no kernel in /boot: libguestfs's appliance boots $kpkg (extracted into $kdir)"
fi

# The libguestfs appliance is built once per host (supermin, cached in
# /var/tmp/.guestfs-0): time it apart from the customizations.
# A /dev/kvm that cannot run guests (a nested host that refuses an MSR)
# makes libguestfs's QEMU abort: then TCG, as bake verify does.
start=$(now)
if guestfish -a /dev/null run >"$W/appliance.log" 2>&1; then
  echo "virt-customize appliance (supermin build and first boot): $(secs "$start" "$(now)") s, accel kvm:tcg"
else
  export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
  start=$(now)
  if guestfish -a /dev/null run >"$W/appliance.log" 2>&1; then
    echo "virt-customize appliance (first boot; KVM unusable here, so TCG: LIBGUESTFS_BACKEND_SETTINGS=force_tcg): $(secs "$start" "$(now)") s"
  else
    echo "virt-customize appliance does not start:"; tail -5 "$W/appliance.log"; exit 1
  fi
fi

for fx in "${fixtures[@]}"; do
  name=$(basename "$fx" .qcow2)
  sum=$(sha256sum "$fx" | cut -d' ' -f1)
  cat >"$W/$name.yaml" <<EOF
apiVersion: bake/v1
name: $name-custom
base:
  image:
    path: $fx
    sha256: $sum
apt:
  packages: [tree]
users:
  - name: bakeuser
overlays:
  - source: overlay
    modes:
      "usr/local/sbin/*": "0755"
files:
  - path: /etc/bake-cloud-test.conf
    content: "baked into a cloud image\n"
    mode: "0640"
    owner: root:bakeuser
systemd:
  enable: [bake-cloud-report.service]
outputs: [qcow2]
EOF
  # Warm-up (fills the apt cache if it lacks tree), not timed.
  ./bake build "$W/$name.yaml" -o "$W/out-$name" >"$W/$name-warmup.log" 2>&1 ||
    { echo "bake build of $name failed:"; tail -20 "$W/$name-warmup.log"; exit 1; }
  for run in $(seq "$RUNS"); do
    rm -rf "$W/out-$name"
    start=$(now)
    ./bake build "$W/$name.yaml" -o "$W/out-$name" >"$W/$name-bake.log" 2>&1 ||
      { echo "bake build of $name failed:"; tail -20 "$W/$name-bake.log"; exit 1; }
    printf '%-40s bake build            %6.1f s  ' "$name" "$(secs "$start" "$(now)")"
    grep -E '^\[[0-9]+/[0-9]+\] .* [0-9.]+s$' "$W/$name-bake.log" | sed -E 's/^\[[0-9]+\/[0-9]+\] ([a-z -]+) \.\.\. ([0-9.]+s)$/\1=\2/; s/ /_/' | tr '\n' ' '
    echo
  done
  printf '%-40s bake output: qcow2 %d MiB\n' "$name" $(($(stat -c %s "$W/out-$name/$name-custom.qcow2") >> 20))

  # The same with virt-customize, on a copy of the fixture (in place).
  vc_args=(--no-logfile
    --run-command 'useradd --create-home --shell /bin/bash bakeuser'
    --copy-in "$W/overlay/etc:/" --copy-in "$W/overlay/usr:/"
    --chmod '0755:/usr/local/sbin/bake-cloud-report'
    --upload "$W/bake-cloud-test.conf:/etc/bake-cloud-test.conf"
    --chmod '0640:/etc/bake-cloud-test.conf'
    --run-command 'chown root:bakeuser /etc/bake-cloud-test.conf'
    --run-command 'systemctl enable bake-cloud-report.service')
  install=(--install tree)
  for run in $(seq "$RUNS"); do
    start=$(now)
    cp --sparse=always "$fx" "$W/vc-$name.qcow2"
    copied=$(now)
    if virt-customize -a "$W/vc-$name.qcow2" "${install[@]}" "${vc_args[@]}" >"$W/$name-vc.log" 2>&1; then
      what="virt-customize"
      [ ${#install[@]} -eq 0 ] && what="virt-customize, no --install"
      printf '%-40s %-21s %6.1f s  (copy of the fixture %.1f s, virt-customize %.1f s: %s)\n' "$name" "$what" \
        "$(secs "$start" "$(now)")" "$(secs "$start" "$copied")" "$(secs "$copied" "$(now)")" "$(vc_steps "$W/$name-vc.log")"
    elif [ ${#install[@]} -gt 0 ]; then
      echo "$name: virt-customize --install tree failed after $(secs "$copied" "$(now)") s; the rest without --install:"
      grep -iE 'error|fail|could not|unable' "$W/$name-vc.log" | tail -5 | sed 's/^/    /'
      install=()
      start=$(now)
      cp --sparse=always "$fx" "$W/vc-$name.qcow2"
      copied=$(now)
      virt-customize -a "$W/vc-$name.qcow2" "${vc_args[@]}" >"$W/$name-vc.log" 2>&1 ||
        { echo "virt-customize of $name failed:"; tail -20 "$W/$name-vc.log"; exit 1; }
      printf '%-40s %-21s %6.1f s  (copy of the fixture %.1f s, virt-customize %.1f s)\n' "$name" "virt-customize, no --install" \
        "$(secs "$start" "$(now)")" "$(secs "$start" "$copied")" "$(secs "$copied" "$(now)")"
    else
      echo "virt-customize of $name failed:"; tail -20 "$W/$name-vc.log"; exit 1
    fi
  done
  # What virt-customize made, checked from its own appliance (not timed).
  guestfish --ro -a "$W/vc-$name.qcow2" -i <<'EOF' >"$W/$name-vc-check.log" 2>&1 || true
-sh "dpkg-query -W -f='tree ${Status}\n' tree"
-sh "stat -c '%n %a %U:%G' /etc/bake-cloud-test.conf /usr/local/sbin/bake-cloud-report"
-sh "id bakeuser"
-sh "ls /etc/systemd/system/multi-user.target.wants/bake-cloud-report.service"
EOF
  printf '%-40s virt-customize result: %s\n' "$name" "$(grep . "$W/$name-vc-check.log" | tr '\n' ';')"
  printf '%-40s virt-customize output: qcow2 %d MiB (the fixture, changed in place)\n' "$name" $(($(stat -c %s "$W/vc-$name.qcow2") >> 20))
  rm -f "$W/vc-$name.qcow2"
  rm -rf "$W/out-$name"
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
