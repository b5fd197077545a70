#!/usr/bin/env bash
# Install CRIU for checkpoint/restore (tests/criu_checkpoint.rs, `ctr task checkpoint`): CRIU
# 4.1.1 built from Debian trixie's source package (its upstream tarball) with bookworm's build
# dependencies. Bookworm's own criu 3.17 fails on recent kernels (kerndat_vdso_fill_symtable) and
# trixie's binary package needs a newer glibc. Only Debian's archive is used: the source comes
# through `apt-get source` with a private apt state (the machine's sources stay as they are).
#
# The built binary is cached in $PELAGOS_CRIU_CACHE (default /var/cache/pelagos-criu, bound into
# scripts/fresh-root.sh's root); a cached run installs the runtime libraries and copies it to
# /usr/local/sbin/criu in a second or two. Idempotent; needs root. Called by install-deps.sh.
#
# Environment: PELAGOS_CRIU_CACHE, PELAGOS_CRIU_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

version=4.1.1
suite=trixie
cache="${PELAGOS_CRIU_CACHE:-/var/cache/pelagos-criu}"
mirror="${PELAGOS_CRIU_MIRROR:-http://deb.debian.org/debian}"
dest=/usr/local/sbin/criu

log() { echo "install-criu: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"

# What the built criu links with (the runtime halves of the build dependencies).
runtime=(libprotobuf-c1 libnl-3-200 libnl-route-3-200 libnet1 libbsd0 libgnutls30 libnftables1
    libuuid1 libcap2 iptables)
build=(gcc make libc6-dev pkg-config xz-utils libprotobuf-c-dev protobuf-c-compiler libcap-dev
    libnl-3-dev libnl-route-3-dev libnet1-dev libbsd-dev python3-protobuf libgnutls28-dev
    libnftables-dev uuid-dev)

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    }
}

works() { "$1" --version 2>/dev/null | grep -q "Version: $version"; }

if works "$dest"; then
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
built="$cache/criu-$version"

apt_install "${runtime[@]}"
if ! works "$built"; then
    t0=$SECONDS
    apt_install "${build[@]}"
    work="$(mktemp -d "$cache/build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    # A private apt state that knows only trixie's sources.
    mkdir -p "$work/apt/lists/partial" "$work/apt/parts" "$work/src"
    echo "deb-src $mirror $suite main" >"$work/apt/sources.list"
    aptopts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/parts"
        -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
        -o APT::Sandbox::User=root)
    log "fetching criu $version's source from $suite"
    apt-get "${aptopts[@]}" update -qq >/dev/null || die "apt-get update of $suite's sources failed"
    # Only the upstream tarball is needed (and only it may be served): its URI and SHA256 come
    # from the signed Sources index, and apt's own downloader checks the hash.
    line="$(apt-get "${aptopts[@]}" source --print-uris -qq criu | grep "criu_$version.orig.tar" | head -n1)"
    [ -n "$line" ] || die "$suite's Sources index has no criu_$version.orig tarball"
    read -r uri name _ hash <<<"$line"
    uri="${uri//\'/}"
    orig="$work/src/$name"
    /usr/lib/apt/apt-helper "${aptopts[@]}" download-file "$uri" "$orig" "$hash" >/dev/null \
        || die "downloading $uri failed"
    tar -C "$work/src" -xf "$orig"
    srcdir="$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'criu*' | head -n1)"
    [ -n "$srcdir" ] || die "the tarball $orig has no criu directory"
    log "building criu $version (make criu)"
    if ! make -C "$srcdir" -j"$(nproc)" criu >"$work/build.log" 2>&1; then
        tail -n 30 "$work/build.log" >&2
        die "make criu failed"
    fi
    install -m 0755 "$srcdir/criu/criu" "$built.new"
    mv "$built.new" "$built"
    works "$built" || die "the built $built does not run"
    log "built in $((SECONDS - t0)) s, cached in $built"
fi
install -D -m 0755 "$built" "$dest"
works "$dest" || die "$dest does not run"
