#!/usr/bin/env bash
# The README's set-up and commands on a fresh machine: a clean Debian bookworm root that holds
# nothing but debootstrap's minbase (the Essential and Priority: required packages, and apt) and
# the host's Rust toolchain (read-only), in which the steps run as root:
#
#   deps   scripts/install-deps.sh (the README's set-up step, exactly)
#   build  cargo build --workspace --locked, then cargo test --workspace --no-run --locked
#   demo   make demo
#   test   make test
#   test-v2  make test-v2 (the cgroup v2 VM: not in the default steps)
#
#   scripts/fresh-root.sh                  # deps build demo test (what .ci/run runs)
#   scripts/fresh-root.sh deps build       # some steps, in this order
#   scripts/fresh-root.sh deps shell       # a shell in the root after the set-up (debugging)
#   scripts/fresh-root.sh deps build -- cargo test --test core_lifecycle   # then a command
#
# A step that fails stops the run (exit code of the step), and the commands and files the
# workspace needs that the root lacks are named ("missing from scripts/install-deps.sh?").
#
# The root:
#  * base: `debootstrap --variant=minbase bookworm` with a stock install's apt sources (bookworm,
#    bookworm-updates, bookworm-security) and no apt lists. Cached in $PELAGOS_FRESH_CACHE
#    (default /var/cache/pelagos-fresh-root) and built again when older than
#    $PELAGOS_FRESH_MAX_AGE_DAYS (default 7) or when this recipe changes. Every run copies the
#    base (cp -a) into a new tree, so install-deps.sh always starts from a pristine minbase.
#  * copied in from the host, as they belong to the machine's network and not to the project:
#    /etc/resolv.conf, /etc/hosts, the local CAs of /usr/local/share/ca-certificates (a
#    TLS-intercepting proxy's; they only reach the bundle when install-deps.sh installs
#    ca-certificates) and apt's proxy and Check-Valid-Until/Check-Date settings (a snapshot
#    mirror's Release files of sid and forky are past their Valid-Until).
#  * the repository: the working tree's tracked and untracked-but-not-ignored files (no target/,
#    no .work/) copied to /root/pelagos; PELAGOS_FRESH_SOURCE=head copies the HEAD commit instead.
#  * the toolchain: $RUSTUP_HOME on /root/.rustup and $CARGO_HOME/bin on /root/.cargo/bin, both
#    read-only; crates are downloaded into $PELAGOS_FRESH_CACHE/cargo-registry (mounted on
#    /root/.cargo/registry: a download cache of crates.io, never build output). The build starts
#    from an empty target directory in the tree.
#  * CRIU's cache: the host's $PELAGOS_CRIU_CACHE (default /var/cache/pelagos-criu) on the same
#    path, so scripts/install-criu.sh builds CRIU once for the root and the host alike.
#  * the steps run in new mount and pid namespaces (unshare) whose root is the tree (pivot_root,
#    not chroot: user namespaces and containers' own pivot_root need a real root), with proc
#    mounted, /sys (and its cgroup mounts) and /dev bound from the host, and tmpfs on /run and
#    /dev/shm. The environment is only HOME, PATH (~/.cargo/bin first, as rustup sets it), TERM
#    and the PELAGOS_* test knobs.
#
# Clean-up, also on failure or interruption: the namespace's init is killed, which kills every
# process started inside (containerd, shims, containers); the mounts only ever existed in that
# namespace; the tree is deleted (PELAGOS_FRESH_KEEP=1 keeps it). A run killed with SIGKILL
# leaves its tree, which the next run deletes. Not cleaned: cgroups a failing test or demo left
# behind (the cgroup hierarchy is the host's).
#
# Environment: PELAGOS_FRESH_CACHE, PELAGOS_FRESH_MAX_AGE_DAYS, PELAGOS_FRESH_MIRROR (default
# http://deb.debian.org/debian), PELAGOS_FRESH_SOURCE (worktree|head), PELAGOS_FRESH_KEEP,
# PELAGOS_FRESH_TIMEOUT (seconds for the steps, default 1800).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
self="$repo/scripts/fresh-root.sh"
cache="${PELAGOS_FRESH_CACHE:-/var/cache/pelagos-fresh-root}"
suite=bookworm
mirror="${PELAGOS_FRESH_MIRROR:-http://deb.debian.org/debian}"
max_age_days="${PELAGOS_FRESH_MAX_AGE_DAYS:-7}"
timeout_secs="${PELAGOS_FRESH_TIMEOUT:-1800}"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
criu_cache="${PELAGOS_CRIU_CACHE:-/var/cache/pelagos-criu}"

log() { echo "fresh-root: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Stage 2: pid 1 of the new pid namespace, in the new mount namespace. Mount, then make the tree
# the namespace's root with pivot_root: under a mere chroot the kernel refuses user namespaces
# (EPERM, user_namespaces(7)), which the core's tests create.
if [ "${1:-}" = --inner ]; then
    shift
    tree="$1"
    shift
    mount --bind "$tree" "$tree"
    mount -t proc -o nosuid,nodev,noexec proc "$tree/proc"
    mount --rbind /sys "$tree/sys"
    mount --rbind /dev "$tree/dev"
    # Its own /dev/shm, as a machine has (podman keeps its lock table there).
    mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$tree/dev/shm"
    mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs "$tree/run"
    mkdir -p "$tree/run/lock"
    mount --bind "$rustup_home" "$tree/root/.rustup"
    mount -o remount,bind,ro "$tree/root/.rustup"
    mount --bind "$cargo_home/bin" "$tree/root/.cargo/bin"
    mount -o remount,bind,ro "$tree/root/.cargo/bin"
    mount --bind "$cache/cargo-registry" "$tree/root/.cargo/registry"
    mount --bind "$criu_cache" "$tree/var/cache/pelagos-criu"
    env=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash "TERM=${TERM:-dumb}"
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    while IFS='=' read -r -d '' k v; do
        case "$k" in
            PELAGOS_FRESH_*|PELAGOS_CRIU_CACHE) ;;
            PELAGOS_*) env+=("$k=$v") ;;
        esac
    done < <(env -0)
    cd "$tree"
    # The host's root lands on top of the tree; detaching it leaves the tree as "/".
    pivot_root . .
    /usr/bin/umount -l .
    cd /
    # bash as pid 1 reaps the orphans it adopts (shim daemons) while it waits for a step.
    exec /usr/bin/env -i "${env[@]}" /bin/bash /root/fresh-steps.sh "$@"
fi

# ---------------------------------------------------------------------------------------------
# Stage 1: the host side.
steps=()
cmd=()
while [ $# -gt 0 ]; do
    case "$1" in
        deps|build|demo|test|test-v2|shell) steps+=("$1"); shift ;;
        --) shift; cmd=("$@"); break ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed -e '/^set -e/d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown step '$1' (deps, build, demo, test, test-v2, shell; -- COMMAND)" ;;
    esac
done
[ ${#steps[@]} -gt 0 ] || [ ${#cmd[@]} -gt 0 ] || steps=(deps build demo test)
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mounts, containerd)"
[ -x "$cargo_home/bin/cargo" ] || die "no Rust toolchain: $cargo_home/bin/cargo is missing"
[ -d "$rustup_home/toolchains" ] || die "no rustup toolchains in $rustup_home"
case "$timeout_secs" in ''|*[!0-9]*) die "PELAGOS_FRESH_TIMEOUT='$timeout_secs' is not a number" ;; esac

# The host's own tool for making the root (not something the workspace needs).
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
        || die "cannot install debootstrap"
fi

t_start=$SECONDS
mkdir -p "$cache/cargo-registry" "$criu_cache"
exec 8>"$cache/.lock"

# The recipe of the base; a change of it (or of this version tag) builds a new base.
recipe="debootstrap --variant=minbase $suite $mirror; sources: $suite $suite-updates $suite-security; v2"
key="$(sha256sum <<<"$recipe" | cut -c1-12)"
base="$cache/base-$suite-$key"

flock 8
# Trees of runs that were killed before their clean-up: their lock is free (a live run takes it
# while it holds the base lock, which this waited for).
for old in "$cache"/run.*/; do
    [ -d "$old" ] || continue
    old="${old%/}"
    if flock -n "$old.lock" true 2>/dev/null; then
        # Mounts only ever existed in the dead run's namespace: this removes plain files.
        log "removing the tree of an earlier run: $old"
        rm -rf --one-file-system "$old" "$old.lock"
    fi
done
if [ ! -f "$base.complete" ] || [ -n "$(find "$base.complete" -mtime "+$max_age_days")" ]; then
    log "debootstrap --variant=minbase $suite into $base (cached for $max_age_days days)"
    t0=$SECONDS
    new="$(mktemp -d "$cache/base-new.XXXXXX")"
    if ! debootstrap --variant=minbase "$suite" "$new" "$mirror" >"$new.log" 2>&1; then
        tail -n 30 "$new.log" >&2
        rm -rf --one-file-system "$new" "$new.log"
        die "debootstrap failed"
    fi
    rm -f "$new.log"
    # What a stock bookworm install has and debootstrap does not: the updates and security
    # suites in apt's sources. No apt lists: install-deps.sh has to update them itself.
    cat >"$new/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
    find "$new/var/lib/apt/lists" "$new/var/cache/apt" "$new/var/cache/apt/archives" -maxdepth 1 -type f -delete
    chmod 755 "$new"
    rm -rf --one-file-system "$base" "$base.complete"
    mv "$new" "$base"
    date -u +%FT%TZ >"$base.complete"
    # Bases of older recipes.
    for old in "$cache"/base-*.complete; do
        [ "$old" = "$base.complete" ] || rm -rf --one-file-system "${old%.complete}" "$old"
    done
    log "base ready in $((SECONDS - t0)) s ($(du -sh "$base" | cut -f1))"
else
    log "base from $(cat "$base.complete") (cached)"
fi
# Other runs may copy the base meanwhile; a rebuild waits for them.
flock -s 8

t0=$SECONDS
tree="$(mktemp -d "$cache/run.XXXXXX")"
chmod 755 "$tree"
exec 7>"$tree.lock"
flock 7
unshare_pid=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    if [ -n "$unshare_pid" ]; then
        # unshare --kill-child takes the namespace's init with it, and so everything inside.
        kill -TERM "$unshare_pid" 2>/dev/null
        wait "$unshare_pid" 2>/dev/null
    fi
    if [ -n "${PELAGOS_FRESH_KEEP:-}" ]; then
        log "tree kept in $tree"
    elif grep -q " ${tree}[/ ]" /proc/self/mountinfo; then
        log "mounts left under $tree; not deleting it"
    else
        rm -rf --one-file-system "$tree"
    fi
    rm -f "$tree.lock"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp -a "$base/." "$tree/"
flock -u 8
cp -L /etc/resolv.conf "$tree/etc/resolv.conf"
cp -L /etc/hosts "$tree/etc/hosts"
acquire="$(apt-config dump --no-empty --format '%f "%v";%n' 2>/dev/null \
    | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy)' || true)"
[ -z "$acquire" ] || echo "$acquire" >"$tree/etc/apt/apt.conf.d/99host-network"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$tree/usr/local/share/ca-certificates"
    cp -L /usr/local/share/ca-certificates/*.crt "$tree/usr/local/share/ca-certificates/"
fi
mkdir -p "$tree/root/.rustup" "$tree/root/.cargo/bin" "$tree/root/.cargo/registry" "$tree/root/pelagos" \
    "$tree/var/cache/pelagos-criu"

# The repository, without build output or fetched containerd builds.
if [ "${PELAGOS_FRESH_SOURCE:-worktree}" = head ]; then
    git -C "$repo" archive --format=tar HEAD | tar -C "$tree/root/pelagos" -xf -
elif git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard --deduplicate) \
        | while IFS= read -r -d '' f; do
            if [ -e "$repo/$f" ] || [ -L "$repo/$f" ]; then printf '%s\0' "$f"; fi
        done \
        | tar -C "$repo" --null --no-recursion -T - -cf - | tar -C "$tree/root/pelagos" -xf -
else
    tar -C "$repo" --exclude=./target --exclude=./.work -cf - . | tar -C "$tree/root/pelagos" -xf -
fi

cat >"$tree/root/fresh-steps.sh" <<'STEPS'
#!/bin/bash
# Runs in the fresh root (written by scripts/fresh-root.sh).
set -uo pipefail
cd /root/pelagos

# What the workspace's build, tests and demo use, for the message after a failed step.
missing_tools() {
    local miss=() c
    for c in make cc gcc pkg-config containerd ctr containerd-shim-runc-v2 runc podman conmon \
        python3 ip nsenter unshare ps mount tar sha256sum flock dpkg-deb criu; do
        command -v "$c" >/dev/null || miss+=("$c")
    done
    [ -x /bin/busybox ] || miss+=("/bin/busybox (busybox-static)")
    compgen -G "/usr/lib/*/libseccomp.a" >/dev/null || miss+=("libseccomp.a (libseccomp-dev)")
    [ -e /usr/include/stdio.h ] || miss+=("C headers (libc6-dev)")
    [ -s /etc/ssl/certs/ca-certificates.crt ] || miss+=("/etc/ssl/certs/ca-certificates.crt (ca-certificates)")
    python3 -c 'import grpc' 2>/dev/null || miss+=("python3's grpc module (python3-grpcio)")
    if [ ${#miss[@]} -gt 0 ]; then
        echo "fresh-root: not in this root (missing from scripts/install-deps.sh?): ${miss[*]}" >&2
    fi
}

step() {
    local name="$1" t0=$SECONDS rc=0
    shift
    echo "fresh-root: == $name: $*" >&2
    "$@" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "fresh-root: FAILED: $name ('$*' exited $rc after $((SECONDS - t0)) s)" >&2
        missing_tools
        exit "$rc"
    fi
    echo "fresh-root: ok: $name ($((SECONDS - t0)) s)" >&2
}

while [ $# -gt 0 ]; do
    s="$1"
    shift
    case "$s" in
        --) step command "$@"; break ;;
        deps) step deps scripts/install-deps.sh ;;
        build)
            step build cargo build --workspace --locked
            step build-tests cargo test --workspace --no-run --locked
            ;;
        demo) step demo make demo ;;
        test) step test make test ;;
        test-v2) step test-v2 make test-v2 ;;
        shell) bash -i </dev/tty >/dev/tty 2>&1 ;;
    esac
done
STEPS
[ ${#cmd[@]} -eq 0 ] || steps+=(-- "${cmd[@]}")
log "tree $tree ready in $((SECONDS - t0)) s; steps: ${steps[*]}"

t0=$SECONDS
rc=0
stdin=/dev/null
case " ${steps[*]} " in *" shell "*) stdin=/dev/tty ;; esac
timeout -k 30 "$timeout_secs" unshare --mount --pid --fork --propagation private --kill-child \
    -- bash "$self" --inner "$tree" "${steps[@]}" <"$stdin" &
unshare_pid=$!
wait "$unshare_pid" || rc=$?
unshare_pid=
if [ "$rc" = 124 ]; then
    log "FAILED: the steps did not finish within ${timeout_secs} s (PELAGOS_FRESH_TIMEOUT)"
fi
if [ "$rc" = 0 ]; then
    log "passed: ${steps[*]} in $((SECONDS - t0)) s (whole run $((SECONDS - t_start)) s)"
else
    log "FAILED (exit $rc) after $((SECONDS - t0)) s; see the step above"
fi
exit "$rc"
