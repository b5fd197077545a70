#!/bin/sh
# Stage 2 of the cgroup v2 test VM: PID 1 on the overlay of the host's root (see initramfs-init).
#
# Sets up a pure cgroup v2 host the way systemd would leave it (cgroup2 at /sys/fs/cgroup with
# nsdelegate and every controller enabled at the root, this process in /init.scope), gives the
# guest its own /run, /tmp and containerd/test state on tmpfs, then runs the test executables the
# host listed in the job directory (9p tag "results") and writes their exit code there. Output goes
# through a pipe (like CI's) to the second serial port, which the host streams to its stdout.
#
# Job files written by scripts/vm/run-tests.sh: job.env (REPO, MODULES, DEADLINE_SECS,
# SUITE_TIMEOUT, exported PELAGOS_*/RUST_* variables), tests.list (lines "<executable> <manifest
# dir>"), args (one test argument per line), bin/ and binds (snapshots of the executables).
# Results: rc, dmesg.log, summary.
#
# PELAGOS_VM_SYSTEMD=1 (set by scripts/vm/systemd-init.sh): not PID 1 but a service of systemd,
# which has mounted /proc, /sys, /dev, /run and the cgroup2 tree and owns the cgroup tree; those
# steps are skipped and the cgroup tree left as systemd made it.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME
umask 022

started="$(date +%s)"
results=/run/vm/results

say() { echo "vm: $*"; }

halt_now() {
    sync
    umount "$results" 2>/dev/null
    /bin/busybox poweroff -f
    /bin/busybox reboot -f
}

systemd="${PELAGOS_VM_SYSTEMD:-}"
if [ -z "$systemd" ]; then
    mount -t proc -o nosuid,nodev,noexec proc /proc
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
    mkdir -p /dev/pts /dev/shm /dev/mqueue
    mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
fi
mkdir -p /dev/mqueue
mountpoint -q /dev/mqueue || mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
# What systemd makes in /dev on a real host and devtmpfs lacks: bash's process substitution
# opens /dev/fd/N (scripts/build-image.sh, when no earlier run left the test image built).
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
# The root as it is before the tmpfs mounts below: a checkout under /tmp (or /run, /var/...)
# is hidden by them and bound back from here once the job names it.
mkdir -p /mnt/vm-root
mount --bind / /mnt/vm-root
# Private: under systemd / is shared, and the tmpfs mounts below would propagate into this
# copy and hide the checkout there too.
mount --make-private /mnt/vm-root
[ -n "$systemd" ] || mount -t tmpfs -o nosuid,nodev,mode=0755 run /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmp /tmp
mount -t tmpfs -o nosuid,nodev,mode=1777 vartmp /var/tmp
# containerd's overlay snapshotter cannot put its upper layers on the overlay root (overlayfs is
# no upper filesystem): every state root the tests use lives under /var/lib, which gets a tmpfs
# (hiding the host's package databases, which nothing here needs), replaced below by the ext4
# disk the host attached once modules can load.
mount -t tmpfs -o nosuid,nodev,mode=0755 varlib /var/lib

mkdir -p "$results"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose results "$results"; then
    echo "vm: cannot mount the results share" >/dev/console
    halt_now
fi
# The job names REPO, MODULES, DEADLINE_SECS and SUITE_TIMEOUT.
. "$results/job.env"
if [ ! -e "$REPO/Cargo.toml" ] && [ -e "/mnt/vm-root$REPO/Cargo.toml" ]; then
    mkdir -p "$REPO" && mount --bind "/mnt/vm-root$REPO" "$REPO" ||
        echo "vm: cannot bind the checkout back over $REPO" >/dev/console
fi
# The host's snapshots of the executables, over their paths (see run-tests.sh).
while read -r snap path; do
    mount --bind "$results/bin/$snap" "$path" || echo "vm: cannot bind $snap over $path" >/dev/console
done <"$results/binds"

# Test output: a raw serial line (no CR insertion) that the host copies to its stdout.
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec </dev/null >/dev/ttyS1 2>&1

hostname pelagos-v2-vm
ip link set lo up 2>/dev/null || /bin/busybox ip link set lo up

# Modules on demand (overlay, veth, loop…) from the kernel package unpacked on the host. The
# kernel runs the helper as "<path> -q -- <module>": busybox picks the applet by argv[0].
mkdir -p /lib/modules /run/vm/bin
ln -sfn "$MODULES" "/lib/modules/$(uname -r)"
ln -sf /bin/busybox /run/vm/bin/modprobe
echo /run/vm/bin/modprobe >/proc/sys/kernel/modprobe
for m in loop veth bridge; do /run/vm/bin/modprobe -q "$m" 2>/dev/null; done
# /var/lib on the host's ext4 disk (serial pelagos-varlib, see run-tests.sh): filesystems that
# can be idmapped on this kernel, as a node's /var/lib/containerd.
varlib_dev=
for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = pelagos-varlib ] && varlib_dev="/dev/${d##*/}"
done
if [ -n "$varlib_dev" ]; then
    /run/vm/bin/modprobe -q ext4 2>/dev/null
    mount -t ext4 -o nosuid,nodev "$varlib_dev" /var/lib || say "cannot mount $varlib_dev on /var/lib"
fi

# The unified hierarchy, mounted as systemd does, with every controller delegated from the root
# (under systemd: as systemd left it, which enables a controller as its units need it).
if [ -z "$systemd" ]; then
    mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
    for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
        echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || say "cannot enable controller $c"
    done
    mkdir -p /sys/fs/cgroup/init.scope
    echo $$ >/sys/fs/cgroup/init.scope/cgroup.procs
fi

fs_type="$(stat -f -c %T /sys/fs/cgroup)"
enabled="$(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"
say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)" MiB"}' /proc/meminfo)"
say "/sys/fs/cgroup is $fs_type; controllers enabled at the root: $enabled"
# systemd enables a controller at the root once a unit needs it: what matters is that it can.
[ -z "$systemd" ] || enabled="$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
[ -z "$systemd" ] || say "systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') is PID 1"
missing=
for c in cpu cpuset io memory pids hugetlb; do
    case " $enabled " in *" $c "*) ;; *) missing="$missing $c" ;; esac
done
v1_lines="$(grep -cv '^0::' /proc/self/cgroup)"
if [ -n "$systemd" ] && grep -qw 'systemd.unified_cgroup_hierarchy=0' /proc/cmdline; then
    # PELAGOS_VM_CGROUP=hybrid|v1: v1 controllers, and for hybrid systemd's cgroup2 at
    # /sys/fs/cgroup/unified.
    unified_fs="$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)"
    if grep -qw 'systemd.legacy_systemd_cgroup_controller=1' /proc/cmdline; then
        want=v1 && [ -z "$unified_fs" ]
    else
        want=hybrid && [ "$unified_fs" = cgroup2fs ]
    fi || { say "FAIL: not a $want host (cgroup2 at /sys/fs/cgroup/unified: ${unified_fs:-none})"; echo 2 >"$results/rc"; halt_now; }
    [ -d /sys/fs/cgroup/memory ] || { say "FAIL: no v1 memory controller"; echo 2 >"$results/rc"; halt_now; }
    say "$want host: $v1_lines v1 hierarchies, cgroup2 at /sys/fs/cgroup/unified: ${unified_fs:-none}"
elif [ "$fs_type" != cgroup2fs ] || [ -n "$missing" ] || [ "$v1_lines" != 0 ]; then
    say "FAIL: not a pure cgroup v2 host (fs $fs_type, missing controllers:${missing:- none}, v1 hierarchies: $v1_lines)"
    echo 2 >"$results/rc"
    halt_now
fi

deadline=$((started + DEADLINE_SECS))
awk '{print $2}' /proc/self/mounts | sort >/run/vm/mounts.before
find /sys/fs/cgroup -mindepth 1 -type d | sort >/run/vm/cgroups.before
set --
while IFS= read -r a; do set -- "$@" "$a"; done <"$results/args"

run_suites() {
    total_pass=0
    total_fail=0
    rc=0
    while read -r exe dir; do
        [ -n "$exe" ] || continue
        name="$(basename "$exe" | sed 's/-[0-9a-f]*$//')"
        left=$((deadline - $(date +%s)))
        if [ "$left" -le 5 ]; then
            say "FAIL: $name not run: the VM's time is up"
            echo "$name not run (time)" >>/run/vm/failed
            total_fail=$((total_fail + 1))
            rc=1
            continue
        fi
        limit="$left"
        [ "$SUITE_TIMEOUT" -ge "$limit" ] || limit="$SUITE_TIMEOUT"
        say "==> $name"
        rm -f /run/vm/suite.rc
        { (cd "$dir" && CARGO_MANIFEST_DIR="$dir" timeout -k 10 "$limit" "$exe" "$@"); echo $? >/run/vm/suite.rc; } 2>&1 \
            | tee /run/vm/suite.log
        suite_rc="$(cat /run/vm/suite.rc 2>/dev/null || echo 255)"
        pass="$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' /run/vm/suite.log | tail -n1)"
        fail="$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' /run/vm/suite.log | tail -n1)"
        total_pass=$((total_pass + ${pass:-0}))
        total_fail=$((total_fail + ${fail:-0}))
        if [ "$suite_rc" != 0 ]; then
            rc=1
            if [ "$suite_rc" = 124 ] || [ "$suite_rc" = 137 ]; then
                why="timed out"
            elif [ -z "$fail" ]; then
                why="exit $suite_rc with no test result"
            else
                why="$fail failed"
            fi
            # A suite that died without a result line still counts as one failure.
            [ -n "$fail" ] && [ "$fail" != 0 ] || total_fail=$((total_fail + 1))
            echo "$name: $why" >>/run/vm/failed
        fi
    done <"$results/tests.list"

    # What the suites left behind on this otherwise idle host (the harness's own leak checks
    # decide; this only makes a leak visible).
    left_cgroups="$(find /sys/fs/cgroup -mindepth 1 -type d 2>/dev/null | sort | comm -13 /run/vm/cgroups.before -)"
    [ -z "$left_cgroups" ] || say "warning: cgroups left behind: $(echo $left_cgroups)"
    left_mounts="$(awk '{print $2}' /proc/self/mounts | sort | comm -13 /run/vm/mounts.before -)"
    [ -z "$left_mounts" ] || say "warning: mounts left behind: $(echo $left_mounts)"

    say "suites took $(($(date +%s) - started))s in the VM"
    if [ -s /run/vm/failed ]; then
        say "failed suites:"
        sed 's/^/vm:   /' /run/vm/failed
    fi
    echo "v2-vm: $total_pass passed, $total_fail failed"
    echo "$total_pass passed, $total_fail failed" >"$results/summary"
    echo "$rc" >/run/vm/rc
}

run_suites "$@"
dmesg >"$results/dmesg.log" 2>/dev/null
cp /run/vm/rc "$results/rc" 2>/dev/null || echo 1 >"$results/rc"
halt_now
