#!/usr/bin/env bash
# tskvm developer entry point. On a fresh Debian/Ubuntu machine (as root, or with sudo):
#   ./dev.sh run    set everything up, then boot the default guest with `tskvm run`
#   ./dev.sh test   set everything up, then run the whole test suite (`pnpm test`)
#   ./dev.sh setup  only set up: system packages, pnpm, dependencies, build
set -euo pipefail
cd "$(dirname "$0")"

PNPM_VERSION=10.34.9

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup_system() {
  local need=()
  command -v cc >/dev/null || need+=(build-essential)
  command -v make >/dev/null || need+=(make)
  command -v python3 >/dev/null || need+=(python3)
  [ -e /usr/include/linux/kvm.h ] || need+=(linux-libc-dev)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v qemu-img >/dev/null || need+=(qemu-utils)
  command -v xz >/dev/null || need+=(xz-utils)
  command -v e2fsck >/dev/null || need+=(e2fsprogs)
  if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
      echo "dev.sh: installing ${need[*]}" >&2
      as_root apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "dev.sh: please install: ${need[*]} (no apt-get here)" >&2
      exit 1
    fi
  fi
}

setup_node() {
  if ! command -v pnpm >/dev/null || [ "$(pnpm --version)" != "$PNPM_VERSION" ]; then
    echo "dev.sh: installing pnpm $PNPM_VERSION" >&2
    npm install -g "pnpm@$PNPM_VERSION" >/dev/null
  fi
  pnpm install --frozen-lockfile
  pnpm build
}

case "${1:-}" in
  setup) setup_system; setup_node ;;
  test) setup_system; setup_node; pnpm test ;;
  run)
    setup_system; setup_node; shift
    # Where this host's KVM cannot boot Linux (none, or emulated as with PVM), say so and
    # boot the guest in the nested-KVM sandbox instead.
    if node scripts/kvm-can-boot-linux.mjs; then
      pnpm --silent tskvm run "$@"
    else
      node scripts/run-in-sandbox.mjs "$@"
    fi ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
