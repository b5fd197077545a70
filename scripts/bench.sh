#!/usr/bin/env bash
# make bench: build the release containerd-shim-pelagos-v2 (scripts/build-release.sh), start one
# private containerd with both runtimes (pelagos and runc), measure them interleaved, print the
# table, write bench/results.json.
#
#   scripts/bench.sh [bench.py options]     e.g. --full, --rounds 50, --only run,exec
#
# PELAGOS_CONTAINERD=1.7|2.1 benches against that containerd (fetched by fetch-containerd.sh);
# BENCH_NO_BUILD=1 uses the release binary as it is. Needs root, containerd, ctr, runc,
# containerd-shim-runc-v2, busybox-static and python3 (scripts/install-deps.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

die() { echo "bench: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it starts containerd and containers)"
for tool in containerd ctr runc containerd-shim-runc-v2 python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing: install busybox-static"

if [ -z "${BENCH_NO_BUILD:-}" ]; then
    echo "bench: scripts/build-release.sh (the static release shim)" >&2
    shim="$(bash scripts/build-release.sh)"
else
    shim="$(bash scripts/build-release.sh --path)"
fi
[ -x "$shim" ] || die "$shim is missing"

args=(--shim "$shim")
if [ -n "${PELAGOS_CONTAINERD:-}" ]; then
    args+=(--containerd-dir "$(bash scripts/fetch-containerd.sh "$PELAGOS_CONTAINERD")")
fi
exec python3 "$repo/bench/bench.py" "${args[@]}" "$@"
