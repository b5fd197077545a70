#!/usr/bin/env bash
# make demo: run one container with the pelagos shim through a private containerd and ctr.
#
# Starts containerd (PELAGOS_CONTAINERD=1.6|1.7|2.1, default 1.6) with its own root, state and
# sockets, imports a busybox image built locally, runs
#   ctr run --rm --runtime io.containerd.pelagos.v2 ... echo hello from pelagos
# prints what the container printed, and tears everything down again.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
version="${PELAGOS_CONTAINERD:-1.6}"
runtime="${PELAGOS_RUNTIME:-io.containerd.pelagos.v2}"
shim="${PELAGOS_SHIM:-$repo/target/debug/containerd-shim-pelagos-v2}"
image_ref="localhost/pelagos-test/busybox:latest"

say() { echo "demo: $*" >&2; }

[ "$(id -u)" = 0 ] || { say "run as root (containerd needs it)"; exit 1; }
[ -x "$shim" ] || { say "$shim is missing: run 'make build' (or set PELAGOS_SHIM)"; exit 1; }
bindir="$("$repo/scripts/fetch-containerd.sh" "$version")"

tag="demo-$$"
base="/run/pelagos-demo/$tag"
root="/var/lib/pelagos-demo/$tag"
ns="pelagos-demo-$$"
sock="$base/containerd.sock"
mkdir -p "$base/bin" "$base/fifo" "$root"
ln -s "$shim" "$base/bin/containerd-shim-pelagos-v2"

ctr() { "$bindir/ctr" --address "$sock" --namespace "$ns" "$@"; }

cpid=""
cleanup() {
    set +e
    if [ -n "$cpid" ]; then
        ctr task rm -f demo >/dev/null 2>&1
        ctr containers rm demo >/dev/null 2>&1
        kill -TERM "$cpid" 2>/dev/null
        wait "$cpid" 2>/dev/null
    fi
    # Mounts and cgroups only exist if something went wrong above; clean them all the same.
    grep -o " ${base}[^ ]*\| ${root}[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [ -d "$h$ns" ] && find "$h$ns" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -rf "$base" "$root" "/run/pelagos/$ns"
    rmdir /run/pelagos-demo /var/lib/pelagos-demo 2>/dev/null
}
trap cleanup EXIT

if [ "${version%%.*}" -ge 2 ]; then
    cfg_version=3
    disabled='"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri"'
else
    cfg_version=2
    disabled='"io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"'
fi
cat >"$base/config.toml" <<CFG
version = $cfg_version
root = "$root"
state = "$base/state"
disabled_plugins = [$disabled]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
CFG

say "starting containerd $("$bindir/containerd" --version | awk '{print $3}') (private: $base)"
PATH="$base/bin:$bindir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "$bindir/containerd" --config "$base/config.toml" 2>"$base/containerd.log" &
cpid=$!
for _ in $(seq 300); do
    grep -q "successfully booted" "$base/containerd.log" 2>/dev/null && break
    kill -0 "$cpid" 2>/dev/null || { say "containerd exited:"; tail -20 "$base/containerd.log" >&2; exit 1; }
    sleep 0.1
done

say "importing a busybox image built locally"
"$repo/scripts/build-image.sh" "$base/busybox-oci.tar" "$image_ref"
import_flags=()
[ "${version%%.*}" -ge 2 ] && import_flags=(--local)
ctr images import "${import_flags[@]}" --platform "linux/$(dpkg --print-architecture)" "$base/busybox-oci.tar" >/dev/null

say "ctr run --rm --runtime $runtime $image_ref demo echo hello from pelagos"
start=$(date +%s%N)
out="$(ctr run --rm --runtime "$runtime" --fifo-dir "$base/fifo" "$image_ref" demo echo hello from pelagos)" || {
    rc=$?
    say "ctr run failed (exit $rc); containerd log:"
    tail -30 "$base/containerd.log" >&2
    exit "$rc"
}
end=$(date +%s%N)
echo "$out"
say "container ran and was deleted in $(((end - start) / 1000000)) ms"
