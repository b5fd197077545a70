#!/usr/bin/env bash
# Install what building, testing and demoing Pelagos needs on Debian bookworm. Idempotent and
# quiet: apt runs only when a package is missing. Needs root. The Rust toolchain is expected to
# be there already (this script never downloads rustup).
#
#   containerd, runc      the daemon and the control runtime (its runc shim ships with containerd)
#   busybox-static        the test/demo image (scripts/build-image.sh)
#   libseccomp-dev, pkg-config, gcc   the libseccomp crate links libseccomp
#   python3-grpcio        scripts/task-update.py (ctr has no `task update`)
#   iproute2, util-linux, tar, coreutils   ip/mount/tar/sha256sum used by tests and scripts
set -euo pipefail

packages=(containerd runc busybox-static libseccomp-dev pkg-config gcc libc6-dev python3 python3-grpcio
    iproute2 util-linux tar coreutils ca-certificates)

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run as root" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [ -x "$d/cargo" ] && { echo "install-deps: cargo is in $d but not on PATH" >&2; break; }
    done
    echo "install-deps: cargo not found; install a Rust toolchain first" >&2
    exit 1
fi
