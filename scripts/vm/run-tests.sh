#!/usr/bin/env bash
# Run the integration suites on a pure cgroup v2 host: a virtual machine booting Debian's kernel
# on the host's own root filesystem (shared read-only over 9p, writable through a tmpfs overlay in
# the guest), with only the unified hierarchy, every controller enabled (see scripts/vm/README.md).
#
#   scripts/vm/run-tests.sh [SUITE...] [-- TEST-ARGS...]
#
# SUITE is a test target name or glob (default: core_* cli_* shim_* cri_* v2_* rel_storm; the cri_*
# suites take about 4 minutes of it under TCG); TEST-ARGS go to every test executable (a name
# filter, --nocapture, --include-ignored, ...). The test executables are built here and only run
# in the VM. The guest's output is streamed to stdout; the exit code is the
# guest's (0 when every suite passed), or 1 when the VM did not report (crash or time-out).
#
# Environment:
#   PELAGOS_VM_ACCEL          kvm or tcg (default: kvm where /dev/kvm can run a stock kernel)
#   PELAGOS_VM_TIMEOUT        seconds for the whole VM run (default 1800)
#   PELAGOS_VM_SUITE_TIMEOUT  seconds for one test executable (default 420)
#   PELAGOS_VM_MEM, _CPUS     guest memory and cpus (default 4G, 2)
#   PELAGOS_VM_CACHE          kernel, initramfs and run directories (default <repo>/.work/vm)
#   PELAGOS_VM_KEEP=1         keep the run directory (console log, dmesg, test log) on success
#   PELAGOS_VM_INIT=systemd   boot the host's systemd as PID 1 (scripts/vm/systemd-init.sh)
#   PELAGOS_VM_CGROUP=hybrid|v1  with PELAGOS_VM_INIT=systemd: v1 controllers and systemd's
#                             cgroup2 mount (hybrid), or v1 alone, instead of pure v2
# Other PELAGOS_* and RUST_* variables are passed to the tests in the guest; on cgroup v2
# PELAGOS_REQUIRE_V2=1 is set for them (tests that would skip for want of a v2 feature or a
# block device fail instead) unless the environment sets it.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${PELAGOS_VM_CACHE:-$repo/.work/vm}"
vm_timeout="${PELAGOS_VM_TIMEOUT:-1800}"
vm_mem="${PELAGOS_VM_MEM:-4G}"
vm_cpus="${PELAGOS_VM_CPUS:-2}"
suite_timeout="${PELAGOS_VM_SUITE_TIMEOUT:-420}"
# Time the guest keeps for itself to boot and to report after its deadline.
boot_margin=30

log() { echo "vm: $*" >&2; }
die() { log "$*"; exit 1; }

suites=()
test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; test_args=("$@"); break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '/^set -e/d' -e 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (test arguments go after --)" ;;
        *) suites+=("$1"); shift ;;
    esac
done
[ ${#suites[@]} -gt 0 ] || suites=('core_*' 'cli_*' 'shim_*' 'cri_*' 'v2_*' 'rel_storm')

[ "$(id -u)" = 0 ] || die "must run as root"
case "$vm_timeout" in ''|*[!0-9]*) die "PELAGOS_VM_TIMEOUT='$vm_timeout' is not a number of seconds" ;; esac
case "$suite_timeout" in ''|*[!0-9]*|0) die "PELAGOS_VM_SUITE_TIMEOUT='$suite_timeout' is not a number of seconds" ;; esac
[ "$vm_timeout" -gt $((boot_margin + 30)) ] || die "PELAGOS_VM_TIMEOUT=$vm_timeout is too short"

# KVM when it can run a stock kernel. Under a PVM host (kvm_pvm: KVM for nested guests without
# hardware virtualization, as on this project's machines) /dev/kvm only runs PVM-enabled guest
# kernels: Debian's kernel dies there with "KVM internal error ... emulation failure", so the VM
# falls back to qemu's multi-threaded TCG.
accel="${PELAGOS_VM_ACCEL:-}"
if [ -z "$accel" ]; then
    if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; else accel=tcg; fi
fi
case "${PELAGOS_VM_INIT:-}" in
    '') init_arg= ;;
    systemd) init_arg=" pelagos.init=systemd"
        # The guest boots this host's own systemd and system bus (shared root).
        for f in /lib/systemd/systemd /usr/bin/dbus-daemon; do
            [ -x "$f" ] || die "PELAGOS_VM_INIT=systemd needs $f on this host (apt-get install systemd dbus-daemon)"
        done ;;
    *) die "PELAGOS_VM_INIT='$PELAGOS_VM_INIT' is not systemd" ;;
esac
case "${PELAGOS_VM_CGROUP:-v2}" in
    v2) cgroup_args="cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1" ;;
    hybrid|v1) [ "${PELAGOS_VM_INIT:-}" = systemd ] \
                || die "PELAGOS_VM_CGROUP=$PELAGOS_VM_CGROUP needs PELAGOS_VM_INIT=systemd (systemd mounts the hierarchies)"
            cgroup_args="systemd.unified_cgroup_hierarchy=0"
            [ "$PELAGOS_VM_CGROUP" = hybrid ] || cgroup_args="$cgroup_args systemd.legacy_systemd_cgroup_controller=1" ;;
    *) die "PELAGOS_VM_CGROUP='$PELAGOS_VM_CGROUP' is not v2, hybrid or v1" ;;
esac
case "$accel" in
    kvm) [ -c /dev/kvm ] || die "PELAGOS_VM_ACCEL=kvm but /dev/kvm is missing"
         qemu_accel=(-accel kvm -cpu host) ;;
    tcg) qemu_accel=(-accel tcg,thread=multi -cpu max) ;;
    *) die "PELAGOS_VM_ACCEL='$accel' is neither kvm nor tcg" ;;
esac

mkdir -p "$cache"
prep="$("$repo/scripts/vm/prepare.sh")" || die "scripts/vm/prepare.sh failed"
kernel="$(sed -n 's/^KERNEL=//p' <<<"$prep")"
initrd="$(sed -n 's/^INITRD=//p' <<<"$prep")"
modules="$(sed -n 's/^MODULES=//p' <<<"$prep")"

# The guest has no network: the containerd 2.1 some suites start (shim_configs, shim_info) is
# fetched into .work/ here, as `make test` does; test-v2 may be the first to need it.
"$repo/scripts/fetch-containerd.sh" 2.1 >/dev/null || die "scripts/fetch-containerd.sh 2.1 failed"

command -v cargo >/dev/null || die "cargo is not in PATH"
log "building the workspace and its test executables"
built="$(cd "$repo" && cargo build --workspace --message-format=json-render-diagnostics)" \
    || die "cargo build --workspace failed"
artifacts="$(cd "$repo" && cargo test --workspace --no-run --message-format=json-render-diagnostics)" \
    || die "cargo test --workspace --no-run failed"
# The workspace's binaries (the shim, the pelagos helper the tests name by path).
bins="$(grep '"reason":"compiler-artifact"' <<<"$built" | grep '"kind":\["bin"\]' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')"

# "<executable> <manifest dir>" of every integration test target whose name matches a SUITE.
tests_list="$(
    grep '"reason":"compiler-artifact"' <<<"$artifacts" | grep '"kind":\["test"\]' \
        | while IFS= read -r line; do
            exe="$(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' <<<"$line")"
            name="$(sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*/\1/p' <<<"$line")"
            manifest="$(sed -n 's/.*"manifest_path":"\([^"]*\)".*/\1/p' <<<"$line")"
            [ -n "$exe" ] && [ -n "$name" ] || continue
            for s in "${suites[@]}"; do
                # shellcheck disable=SC2053 # SUITE is a glob on purpose
                if [[ "$name" == $s ]]; then
                    echo "$name $exe $(dirname "$manifest")"
                    break
                fi
            done
        done | sort | cut -d' ' -f2-
)"
[ -n "$tests_list" ] || die "no integration test target matches: ${suites[*]}"

run="$(mktemp -d "$cache/run.XXXXXX")"
keep="${PELAGOS_VM_KEEP:-}"
qemu_pid=
cleanup() {
    [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
    if [ -z "$keep" ]; then rm -rf "$run"; else log "run files kept in $run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "$tests_list" >"$run/tests.list"
# Snapshot every executable the guest runs: in a shared tree another build may relink them while
# the VM runs, and the guest would see a half-written file through the 9p share. Hard links keep
# the inodes the linker replaces (it unlinks before writing); the guest bind-mounts each snapshot
# over its original path ("binds": "<name in bin/> <path>").
mkdir "$run/bin"
: >"$run/binds"
i=0
while read -r path; do
    [ -n "$path" ] || continue
    i=$((i + 1))
    snap="$i-$(basename "$path")"
    ln "$path" "$run/bin/$snap" 2>/dev/null || cp "$path" "$run/bin/$snap" \
        || die "cannot snapshot $path"
    echo "$snap $path" >>"$run/binds"
done < <(cut -d' ' -f1 <<<"$tests_list"; echo "$bins")
: >"$run/args"
for a in "${test_args[@]}"; do
    case "$a" in *$'\n'*) die "test argument with a newline: '$a'" ;; esac
    printf '%s\n' "$a" >>"$run/args"
done
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
    echo "REPO=$(quote "$repo")"
    echo "MODULES=$(quote "$modules")"
    echo "DEADLINE_SECS=$((vm_timeout - boot_margin))"
    echo "SUITE_TIMEOUT=$suite_timeout"
    # A pure v2 guest has what the v2 tests need: their skips fail there (tests/common/v2.rs).
    # The environment's own value, written after, wins.
    [ "${PELAGOS_VM_CGROUP:-v2}" != v2 ] || echo "export PELAGOS_REQUIRE_V2=1"
    while IFS='=' read -r -d '' k v; do
        case "$k" in
            PELAGOS_VM_*) ;;
            PELAGOS_*|RUST_*) echo "export $k=$(quote "$v")" ;;
        esac
    done < <(env -0)
} >"$run/job.env"
# A real block device for io.max and io.stat (the root is 9p, which has none).
truncate -s 64M "$run/scratch.img"
# /var/lib of the guest on ext4 (sparse): containerd's layers and the tests' volumes on a disk
# filesystem, which the kernel can idmap (user-namespaced pods); tmpfs can only from Linux 6.3.
truncate -s 4G "$run/varlib.img"
mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$run/varlib.img" \
    || die "mkfs.ext4 of the guest's /var/lib failed"

log "booting $(basename "$kernel") ($accel) with $vm_cpus cpus and $vm_mem: $(wc -l <"$run/tests.list") test executables"
# Serial port 0 is the kernel console (kept in console.log), port 1 the tests' output.
# In the background so that an interrupted run stops qemu too (timeout passes the signal on).
timeout -k 10 "$vm_timeout" qemu-system-x86_64 \
    -nodefaults -no-user-config -machine pc "${qemu_accel[@]}" -smp "$vm_cpus" -m "$vm_mem" \
    -display none -no-reboot \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 $cgroup_args pelagos.repo=$repo$init_arg" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=results,path="$run",security_model=none,multidevs=remap \
    -device virtio-9p-pci,fsdev=results,mount_tag=results \
    -drive if=none,id=scratch,file="$run/scratch.img",format=raw \
    -device virtio-blk-pci,drive=scratch \
    -drive if=none,id=varlib,file="$run/varlib.img",format=raw \
    -device virtio-blk-pci,drive=varlib,serial=pelagos-varlib \
    -serial file:"$run/console.log" -serial stdio \
    </dev/null > >(tee "$run/test.log") 2>&1 &
qemu_pid=$!
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=
# The tee of the process substitution.
wait

if [ ! -f "$run/rc" ]; then
    keep=1
    if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
        log "FAIL: the VM did not report within ${vm_timeout}s (PELAGOS_VM_TIMEOUT)"
    else
        log "FAIL: the VM stopped without reporting (qemu exit $qemu_rc)"
    fi
    log "last lines of the kernel console ($run/console.log):"
    tail -n 40 "$run/console.log" >&2 2>/dev/null || true
    exit 1
fi
rc="$(cat "$run/rc")"
case "$rc" in ''|*[!0-9]*) keep=1; die "the VM reported a malformed exit code '$rc'" ;; esac
[ "$rc" = 0 ] || keep=1
exit "$rc"
