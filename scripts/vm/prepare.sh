#!/usr/bin/env bash
# Prepare what the cgroup v2 test VM boots: qemu, a Debian kernel and a tiny initramfs.
#
#   scripts/vm/prepare.sh            # prints KVER=, KERNEL=, INITRD=, MODULES= lines
#
# The kernel is the versioned package that bookworm's linux-image-amd64 depends on. It is only
# downloaded and unpacked under <cache>/kernel/<package>/ (never installed on this host); its
# modules tree gets a modules.dep from busybox depmod so the guest can load modules on demand.
# The initramfs holds busybox-static, the modules needed to reach the root filesystem (virtio,
# 9p, overlay, virtio-blk) and scripts/vm/initramfs-init as /init. Both are rebuilt only when
# the kernel package or the init script changes. <cache> is $PELAGOS_VM_CACHE or <repo>/.work/vm.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${PELAGOS_VM_CACHE:-$repo/.work/vm}"

log() { echo "vm-prepare: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get)"

apt_install() {
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
        || die "apt-get install $* failed"
}

# Host tools: qemu with KVM, busybox-static for the initramfs, gzip for the archive.
command -v qemu-system-x86_64 >/dev/null || apt_install qemu-system-x86
/bin/busybox --list 2>/dev/null | grep -x cpio >/dev/null || apt_install busybox-static
command -v gzip >/dev/null || apt_install gzip

# One preparation at a time: a second run waits instead of unpacking over the first one's tree.
mkdir -p "$cache"
exec 9>"$cache/.prepare.lock"
flock 9

# The versioned kernel package linux-image-amd64 points at (its Depends: on this apt's candidate).
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1
}
pkg="$(kernel_package)"
if [ -z "$pkg" ]; then
    log "apt lists have no linux-image-amd64; running apt-get update"
    apt-get update >&2 || die "apt-get update failed"
    pkg="$(kernel_package)"
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-amd64 to a versioned kernel package"
kver="${pkg#linux-image-}"

mkdir -p "$cache/kernel"
kdir="$cache/kernel/$pkg"
vmlinuz="$kdir/boot/vmlinuz-$kver"
moddir="$kdir/lib/modules/$kver"
if [ ! -f "$kdir/.complete" ]; then
    log "fetching $pkg"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dl="$(mktemp -d "$cache/dl.XXXXXX")"
    # apt-get download warns when _apt cannot write the directory; it still downloads as root.
    (cd "$dl" && apt-get download "$pkg" >&2 2>/dev/null) || { rm -rf "$dl"; die "apt-get download $pkg failed"; }
    dpkg-deb -x "$dl"/"$pkg"_*.deb "$kdir" || { rm -rf "$dl"; die "dpkg-deb -x of $pkg failed"; }
    rm -rf "$dl"
    [ -f "$vmlinuz" ] || die "$pkg has no $vmlinuz"
    [ -d "$moddir" ] || die "$pkg has no $moddir"
    /bin/busybox depmod -b "$kdir" "$kver" || die "depmod of $moddir failed"
    touch "$kdir/.complete"
    # A kernel security update replaces the package: drop the trees of older ones.
    for old in "$cache"/kernel/*; do
        [ "$old" = "$kdir" ] || rm -rf "$old"
    done
fi

# Modules the initramfs loads before it can mount the root: the virtio PCI transport, the 9p
# share of the host's root, the overlay that makes it writable, and virtio-blk for the scratch
# disk (io.* accounting needs a real block device).
early_modules="virtio_pci virtio_blk 9pnet_virtio 9p overlay"

init_src="$repo/scripts/vm/initramfs-init"
stamp="$(cat "$init_src" /bin/busybox "$0" | sha256sum | cut -c1-16)"
initrd="$cache/initramfs-$kver-$stamp.cpio.gz"
if [ ! -f "$initrd" ]; then
    log "building $(basename "$initrd")"
    stage="$(mktemp -d "$cache/initramfs.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,dev,proc,sys,mnt/host,mnt/rw,newroot,lib/modules/"$kver"}
    cp /bin/busybox "$stage/bin/busybox"
    cp "$init_src" "$stage/init"
    chmod 755 "$stage/init" "$stage/bin/busybox"
    # The kernel opens /dev/console for init's stdio before anything can mount devtmpfs.
    mknod -m 600 "$stage/dev/console" c 5 1
    : >"$stage/lib/modules/$kver/modules.dep"
    declare -A seen=()
    for m in $early_modules; do
        line="$(grep -E "(^|/)$m\.ko:" "$moddir/modules.dep")" || die "module $m is not in $moddir/modules.dep"
        for rel in $(echo "$line" | tr -d ':'); do
            [ -n "${seen[$rel]:-}" ] && continue
            seen[$rel]=1
            mkdir -p "$stage/lib/modules/$kver/$(dirname "$rel")"
            cp "$moddir/$rel" "$stage/lib/modules/$kver/$rel"
            grep -E "^$rel:" "$moddir/modules.dep" >>"$stage/lib/modules/$kver/modules.dep"
        done
    done
    echo "$early_modules" >"$stage/modules"
    (cd "$stage" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    for old in "$cache"/initramfs-*.cpio.gz; do
        [ "$old" = "$initrd" ] || rm -f "$old"
    done
fi

echo "KVER=$kver"
echo "KERNEL=$vmlinuz"
echo "INITRD=$initrd"
echo "MODULES=$moddir"
