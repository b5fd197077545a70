#!/usr/bin/env bash
# Install what building, testing and demoing Pelagos needs on Debian bookworm: the README's
# set-up step. Idempotent and quiet: apt runs only when a package is missing. Needs root. The
# Rust toolchain is expected to be there already (this script never downloads rustup).
# scripts/fresh-root.sh (run by .ci/run) proves this list on a bare debootstrap minbase root.
#
#   make                  the README's commands themselves (make demo, make test)
#   gcc, libc6-dev        the C compiler and libc the Rust toolchain links with (and libc.a for
#                         the static helper of tests/rel_escape.rs)
#   libseccomp-dev        libseccomp.a, linked into the core and the shim (libseccomp-sys)
#   pkg-config            the libseccomp crate's build script asks it for libseccomp's version
#   ca-certificates       cargo's downloads from crates.io (TLS)
#   containerd, runc      the daemon and the control runtime (its runc shim ships with containerd)
#   busybox-static        the test/demo image (scripts/build-image.sh)
#   python3-grpcio        scripts/task-update.py (ctr has no `task update`)
#   procps                ps, which `pelagos ps` runs as runc does (tests/cli_lifecycle.rs)
#   podman, conmon, catatonit   podman as a client of the pelagos CLI (tests/cli_podman.rs)
#   iproute2, util-linux, tar, coreutils   ip/mount/nsenter/tar/sha256sum used by tests and scripts
#   dbus-daemon           a private bus for the D-Bus client's test (src/dbus.rs)
#   criu                  checkpoint/restore (tests/criu_checkpoint.rs): CRIU 4.1.1 built from
#                         Debian's source archive by scripts/install-criu.sh, cached
#
# No protoc: the CRI client of the tests is generated with a vendored one (cri-api/).
set -euo pipefail

packages=(make gcc libc6-dev libseccomp-dev pkg-config ca-certificates containerd runc busybox-static
    python3 python3-grpcio procps podman conmon catatonit iproute2 util-linux tar coreutils dbus-daemon)

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

bash "$(dirname "$0")/install-criu.sh"

if ! command -v cargo >/dev/null; then
    for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [ -x "$d/cargo" ] && { echo "install-deps: cargo is in $d but not on PATH" >&2; break; }
    done
    echo "install-deps: cargo not found; install a Rust toolchain first" >&2
    exit 1
fi
