#!/usr/bin/env bash
# Fetch a containerd build for the integration tests and print its bin dir.
#
#   scripts/fetch-containerd.sh 1.6|1.7|2.1
#
# 1.6 is bookworm's own package (installed by install-deps.sh). 1.7 comes from trixie and 2.1 from forky
# (or sid): those suites are added to apt with Pin-Priority 1 so nothing on the machine is ever upgraded
# from them, and the package is only downloaded and unpacked into <repo>/.work/containerd-<ver>/.
set -euo pipefail

ver="${1:-1.6}"
repo="$(cd "$(dirname "$0")/.." && pwd)"

log() { echo "fetch-containerd: $*" >&2; }

if [ "$ver" = "1.6" ]; then
    if ! command -v containerd >/dev/null; then
        log "containerd is not installed; run scripts/install-deps.sh"
        exit 1
    fi
    dirname "$(command -v containerd)"
    exit 0
fi

case "$ver" in
    1.7) suites="trixie" ;;
    2.1) suites="forky sid" ;;
    *) log "unknown containerd version '$ver' (want 1.6, 1.7 or 2.1)"; exit 2 ;;
esac

dest="$repo/.work/containerd-$ver"
bindir="$dest/usr/bin"

version_ok() { [ -x "$bindir/containerd" ] && "$bindir/containerd" --version 2>/dev/null | grep -q " v\?${ver%%.*}\."; }

if version_ok; then
    echo "$bindir"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "must run as root (apt sources)"; exit 1; }

sources=/etc/apt/sources.list.d/pelagos-newer.sources
pin=/etc/apt/preferences.d/pelagos-newer
if [ ! -f "$sources" ] || [ ! -f "$pin" ]; then
    log "adding trixie, forky and sid to apt sources with Pin-Priority 1"
    cat >"$sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie forky sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat >"$pin" <<PIN
# Added by pelagos scripts/fetch-containerd.sh: these suites are only for 'apt-get download'.
Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: *
Pin: release n=forky
Pin-Priority: 1

Package: *
Pin: release n=sid
Pin-Priority: 1
PIN
    rm -f /var/lib/apt/pelagos-newer.updated
fi
stamp=/var/lib/apt/pelagos-newer.updated
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +720)" ]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    touch "$stamp"
fi

tmp="$(mktemp -d)"
chmod 755 "$tmp"
chown _apt "$tmp" 2>/dev/null || true
trap 'rm -rf "$tmp"' EXIT
# The exact minor version when a suite has it; otherwise (the archive moved on) the same major
# version, with a warning, so the config-version and API coverage stays.
pick() { # PREFIX -> "suite version" of the first suite offering PREFIX*
    local suite cand
    for suite in $suites; do
        cand="$(apt-cache madison containerd | awk -v s="$suite" '$0 ~ " " s "/" {print $3; exit}')"
        case "$cand" in "$1"*) echo "$suite $cand"; return 0 ;; esac
    done
    return 1
}
if ! found="$(pick "$ver.")"; then
    found="$(pick "${ver%%.*}.")" || { log "no suite ($suites) offers containerd $ver.x"; exit 1; }
    log "warning: no containerd $ver.x in $suites; using ${found#* }"
fi
suite="${found%% *}"
log "downloading containerd ${found#* } from $suite"
(cd "$tmp" && apt-get download -qq "containerd/$suite" >/dev/null)

rm -rf "$dest"
mkdir -p "$dest"
dpkg-deb -x "$tmp"/containerd_*.deb "$dest"
if ! version_ok; then
    log "$bindir/containerd does not run here or is not ${ver%%.*}.x:"
    "$bindir/containerd" --version >&2 || true
    exit 1
fi
log "$("$bindir/containerd" --version)"
echo "$bindir"
