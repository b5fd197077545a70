#!/usr/bin/env bash
# Build a small OCI image archive from busybox-static, with no registry:
#
#   scripts/build-image.sh OUT.tar [IMAGE_REF]
#
# One uncompressed layer with /bin/busybox, applet symlinks, /etc/passwd and /etc/group; the
# config, manifest, index.json (naming the image IMAGE_REF, default
# localhost/pelagos-test/busybox:latest) and oci-layout. `ctr images import OUT.tar` takes it.
# The output is reproducible (fixed mtimes, owners and order). Used by `make demo` and by the
# shim tests (tests/common/image.rs).
set -euo pipefail

out="${1:?usage: build-image.sh OUT.tar [IMAGE_REF]}"
ref="${2:-localhost/pelagos-test/busybox:latest}"
busybox=/bin/busybox
applets=(sh ash echo cat sleep true false id ls head dd stty wc hostname kill ps mount umount grep
    env pwd yes sha256sum tail tty readlink mkdir rm touch test '[' printf seq tr cut sed awk date
    uname whoami nproc stat find xargs timeout mkfifo ln cp mv chmod top free df du basename
    dirname sort uniq od hexdump tee usleep nsenter unshare setsid)

[ -x "$busybox" ] || { echo "build-image: $busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch="$(uname -m)" ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs" "$rootfs"/{bin,etc,dev,proc,sys,tmp,root,run,var,home}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
cp "$busybox" "$rootfs/bin/busybox"
for a in "${applets[@]}"; do ln -s busybox "$rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

reproducible_tar() { # DIR OUT
    tar --create --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
        --pax-option=delete=atime,delete=ctime --file "$2" -C "$1" .
}

# add_blob FILE -> prints "sha256:<hex> <size>" and moves FILE into the blob store
add_blob() {
    local hex size
    hex="$(sha256sum "$1" | cut -d' ' -f1)"
    size="$(stat -c %s "$1")"
    mv "$1" "$blobs/$hex"
    echo "sha256:$hex $size"
}

reproducible_tar "$rootfs" "$work/layer.tar"
read -r layer_digest layer_size < <(add_blob "$work/layer.tar")

printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"pelagos scripts/build-image.sh"}],"created":"1970-01-01T00:00:00Z"}' \
    "$arch" "$layer_digest" >"$work/config.json"
read -r config_digest config_size < <(add_blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(add_blob "$work/manifest.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$arch" "$ref" "${ref##*:}" >"$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"

mkdir -p "$(dirname "$out")"
reproducible_tar "$work/layout" "$work/image.tar"
mv "$work/image.tar" "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
