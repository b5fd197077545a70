#!/usr/bin/env bash
# Builds the release shim (what `make install` installs and `make bench` measures) and prints its
# path. It is linked statically (glibc and libgcc as well as libseccomp) and position-dependent:
# no loader, no shared library to map and relocate at each of the shim's execs (the start
# action, the daemon, every setup helper), and no private copy of libc's data in every daemon.
# That is ~90 KiB less PSS per shim daemon than the dynamic build (BENCHMARKS.md).
#
#   scripts/build-release.sh           build, print the path
#   scripts/build-release.sh --path    only print the path
#
# The flags go through --target so that cargo keeps them off build scripts and proc macros,
# which are loaded by the (dynamic) compiler; the binary is therefore under target/<host>/.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
host="$(rustc -vV | sed -n 's/^host: //p')"
[ -n "$host" ] || { echo "build-release: cannot read the host triple from rustc -vV" >&2; exit 1; }
shim="${CARGO_TARGET_DIR:-$repo/target}/$host/release/containerd-shim-pelagos-v2"

if [ "${1:-}" != "--path" ]; then
    (cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
        cargo build --release --quiet -p containerd-shim-pelagos-v2 --target "$host" >&2)
fi
echo "$shim"
