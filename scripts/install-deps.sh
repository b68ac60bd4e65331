#!/usr/bin/env bash
# Installs the Debian tools bake drives (build and verify) if they are missing.
# Idempotent: does nothing when everything is present. Run as root.
#
#   --bench   also what `make bench` compares bake with: virt-customize from
#             libguestfs-tools (large: ~110 packages with a supermin
#             appliance, so not for every user).
set -euo pipefail

bench=no
for arg in "$@"; do
  case "$arg" in
    --bench) bench=yes ;;
    *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
  esac
done

pkgs=(
  mmdebstrap          # bootstraps the root tree
  e2fsprogs           # mkfs.ext4 -d (root filesystem from the tree)
  dosfstools mtools   # fixtures: FAT without mounting
  gdisk fdisk         # sgdisk/sfdisk: inspection in tests, fixtures
  qemu-utils          # qemu-img: qcow2 output
  qemu-system-x86     # verify and VM tests
  ovmf                # UEFI firmware for verify
  grub-pc-bin grub-efi-amd64-bin grub2-common  # fixtures build their own boot chain
  nmap iproute2 dnsmasq-base  # verify: outside scan, tap/netns, DHCP+RA
  xorriso             # fixtures: ISO seeds without mounting
  gpg gpgv            # signed apt repositories
  reprepro            # local apt repositories for tests
  apt-utils           # apt-ftparchive
  zstd xz-utils
  ca-certificates curl
  openssh-client      # verify's ssh-keygen in tests
  util-linux          # losetup, partx, findmnt, unshare
  kmod
  arch-test
  bc                  # scripts/bench.sh arithmetic
  python3-yaml        # tests: seeds read back with PyYAML, as cloud-init reads them
  docker-registry     # tests: bake publish oci:// against the distribution registry
  libvirt-daemon libvirt-daemon-driver-qemu  # tests: bake publish libvirt:// against a private libvirtd (dir pool: in libvirt-daemon)
)
# npm installs the gateway image's app (the default recipe's build: block).
# A Node.js that brings its own npm (NodeSource's nodejs) counts: Debian's
# npm package would conflict with it.
if ! command -v npm >/dev/null 2>&1; then
  pkgs+=(npm)
fi
if [ "$bench" = yes ]; then
  pkgs+=(libguestfs-tools)  # virt-customize, for scripts/bench-cloud.sh
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# QEMU from bookworm-backports on Debian 12: verify and the VM tests run
# QEMU in software emulation (TCG) where there is no KVM, and QEMU 10.0's
# TCG runs the appliance's first boot with about 15% less CPU than
# bookworm's 7.2, and process creation in the guest about 5 times faster
# (BENCHMARKS.md, "QEMU 10.0 from bookworm-backports"). Backports are
# Debian's own archive, signed by Debian's archive key; only the QEMU
# packages (and the SeaBIOS they need) are taken from it.
qemu_min=1:10.0
backports=()
if [ -r /etc/os-release ] && . /etc/os-release && [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  have=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [ -z "$have" ] || dpkg --compare-versions "$have" lt "$qemu_min"; then
    backports=(qemu-system-x86 qemu-utils)
  fi
fi

export DEBIAN_FRONTEND=noninteractive
if ((${#backports[@]})); then
  # Not from bookworm first and then again from backports.
  rest=()
  for p in "${missing[@]}"; do
    case " ${backports[*]} " in *" $p "*) ;; *) rest+=("$p") ;; esac
  done
  missing=("${rest[@]}")
  src=/etc/apt/sources.list.d/bake-bookworm-backports.sources
  if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-deps: adding Debian's bookworm-backports to apt's sources ($src)"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > "$src"
  fi
fi
if ((${#missing[@]})) || ((${#backports[@]})); then
  apt-get update -qq
fi
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((${#backports[@]})); then
  echo "install-deps: installing ${backports[*]} from bookworm-backports (QEMU $qemu_min or newer)"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}"
  have=$(dpkg-query -W -f='${Version}' qemu-system-x86)
  if dpkg --compare-versions "$have" lt "$qemu_min"; then
    echo "install-deps: qemu-system-x86 is $have after the install, want $qemu_min or newer" >&2
    exit 1
  fi
fi
if ! ((${#missing[@]})) && ! ((${#backports[@]})); then
  echo "install-deps: all tools present"
fi
