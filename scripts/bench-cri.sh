#!/usr/bin/env bash
# make bench, CRI part: build the release shim (scripts/build-release.sh) and the CRI bench
# (bench/cri, a bench target of the root package built with the tests' debug dependencies),
# then run it: pods through containerd's CRI with handlers runc and pelagos in one private
# containerd per version (1.6 and 2.1 by default), interleaved; a table and bench/cri-results.json.
#
#   scripts/bench-cri.sh [options]    e.g. --rounds 40, --only exec,log, --containerd 2.1
#   scripts/bench-cri.sh --strict --smoke --containerd 1.6    (CI: fails on failures or leftovers)
#
# BENCH_NO_BUILD=1 uses the release shim as it is; PELAGOS_SHIM=/path benches another shim.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

die() { echo "bench-cri: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it starts containerd and pods)"
for tool in containerd ctr runc containerd-shim-runc-v2 cargo nsenter ip; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done

if [ -z "${PELAGOS_SHIM:-}" ]; then
    if [ -z "${BENCH_NO_BUILD:-}" ]; then
        echo "bench-cri: scripts/build-release.sh (the static release shim)" >&2
        PELAGOS_SHIM="$(bash scripts/build-release.sh)"
    else
        PELAGOS_SHIM="$(bash scripts/build-release.sh --path)"
    fi
fi
[ -x "$PELAGOS_SHIM" ] || die "$PELAGOS_SHIM is missing"
export PELAGOS_SHIM

echo "bench-cri: cargo build --bench cri" >&2
bench="$(cargo build --quiet --bench cri --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/cri-[0-9a-f]*\)".*/\1/p' | tail -n 1)"
[ -x "$bench" ] || die "cargo build --bench cri did not name its executable"
exec "$bench" "$@"
