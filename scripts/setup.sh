#!/usr/bin/env bash
# Installs what the build and the testbed need, unattended and idempotently.
#
# On an x86-64 host: Debian's aarch64 cross toolchain, QEMU, mke2fs and depmod, and arm64
# artefacts (a Debian arm64 kernel with a modules.dep, a static busybox, rtcwake and a static
# e2fsck) unpacked into a cache outside git. On a native arm64 host with /dev/kvm only the
# artefacts and the image tools are needed, and no QEMU.
#
# Prints the cache directory's variables for `source`-ing callers on its last line.
set -euo pipefail

CACHE_DIR=${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-testbed}
ARTEFACTS="$CACHE_DIR/artefacts"
mkdir -p "$ARTEFACTS"

log() { printf 'setup: %s\n' "$*" >&2; }

NATIVE=0
if [[ "$(uname -m)" == aarch64 && -e /dev/kvm ]]; then NATIVE=1; fi

if [[ $NATIVE == 1 ]]; then
    HOST_PKGS=(cpio e2fsprogs kmod)
else
    HOST_PKGS=(qemu-system-arm rustc-web cargo-web libstd-rust-web-dev:arm64 rust-web-clippy
               gcc-aarch64-linux-gnu libc6-dev-arm64-cross cpio e2fsprogs kmod)
fi

SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi

apt_updated=0
apt_update() {
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        apt_updated=1
    fi
}

if [[ $NATIVE == 0 ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding the arm64 dpkg architecture"
    $SUDO dpkg --add-architecture arm64
fi

missing=()
for pkg in "${HOST_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    apt_update
    log "installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
fi

# Downloads an arm64 package into the cache and unpacks it next to it, once.
fetch_unpack() {
    local pkg=$1 dest=$2
    if [[ -f "$dest/.unpacked" ]]; then return; fi
    apt_update
    local tmp
    tmp=$(mktemp -d)
    chmod 1777 "$tmp"  # apt downloads as the _apt user
    log "downloading $pkg"
    (cd "$tmp" && apt-get download -qq "$pkg" >&2)
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg-deb -x "$tmp"/*.deb "$dest"
    rm -rf "$tmp"
    touch "$dest/.unpacked"
}

# The newest arm64 kernel that the archive offers now: the version the `linux-image-arm64`
# metapackage points at, in its unsigned flavour (a plain arm64 Image plus modules).
kernel_pkg_file="$ARTEFACTS/kernel-package"
if [[ ! -s "$kernel_pkg_file" || -n "${VMM_REFRESH_KERNEL:-}" ]]; then
    apt_update
    if [[ $NATIVE == 1 ]]; then meta=linux-image-arm64; else meta=linux-image-arm64:arm64; fi
    signed=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1)
    if [[ -z "$signed" ]]; then
        log "apt-cache offers no arm64 kernel"
        exit 1
    fi
    echo "${signed}-unsigned" >"$kernel_pkg_file"
fi
kernel_pkg=$(cat "$kernel_pkg_file")
kernel_dir="$ARTEFACTS/$kernel_pkg"
if [[ $NATIVE == 1 ]]; then fetch_unpack "$kernel_pkg" "$kernel_dir"; else fetch_unpack "$kernel_pkg:arm64" "$kernel_dir"; fi

busybox_dir="$ARTEFACTS/busybox-static"
if [[ $NATIVE == 1 ]]; then fetch_unpack busybox-static "$busybox_dir"; else fetch_unpack busybox-static:arm64 "$busybox_dir"; fi

# util-linux's rtcwake for the nested guest (busybox-static has none), with the arm64 glibc
# it links against: from the cross toolchain here, from the system on an arm64 host.
util_linux_dir="$ARTEFACTS/util-linux"
if [[ $NATIVE == 1 ]]; then fetch_unpack util-linux "$util_linux_dir"; else fetch_unpack util-linux:arm64 "$util_linux_dir"; fi
if [[ $NATIVE == 1 ]]; then libc_dir=/lib/aarch64-linux-gnu; loader=/lib/ld-linux-aarch64.so.1
else libc_dir=/usr/aarch64-linux-gnu/lib; loader=$libc_dir/ld-linux-aarch64.so.1; fi
mkdir -p "$ARTEFACTS/lib"
ln -sfn "$(readlink -f "$libc_dir/libc.so.6")" "$ARTEFACTS/lib/libc.so.6"
ln -sfn "$(readlink -f "$loader")" "$ARTEFACTS/lib/ld-linux-aarch64.so.1"
ln -sfn "$util_linux_dir/usr/sbin/rtcwake" "$ARTEFACTS/rtcwake"

# A static e2fsck that runs in the emulated host's bare initramfs, to check the ext4 images
# the nested guests wrote.
e2fsck_dir="$ARTEFACTS/e2fsck-static"
if [[ $NATIVE == 1 ]]; then fetch_unpack e2fsck-static "$e2fsck_dir"; else fetch_unpack e2fsck-static:arm64 "$e2fsck_dir"; fi
ln -sfn "$e2fsck_dir/sbin/e2fsck.static" "$ARTEFACTS/e2fsck.static"

kernel_image=$(ls "$kernel_dir"/boot/vmlinuz-* | head -1)
modules_dir=$(ls -d "$kernel_dir"/lib/modules/* | head -1)
# The package ships no modules.dep (dpkg's postinst runs depmod); the testbed resolves the
# nested guest's modules and their dependencies from it. depmod reads arm64 modules on any host.
if [[ ! -s "$modules_dir/modules.dep" ]]; then
    log "depmod for ${modules_dir##*/}"
    PATH="$PATH:/usr/sbin:/sbin" depmod -b "$kernel_dir" "${modules_dir##*/}"
fi
ln -sfn "$kernel_image" "$ARTEFACTS/Image"
ln -sfn "$modules_dir" "$ARTEFACTS/modules"
ln -sfn "$busybox_dir/bin/busybox" "$ARTEFACTS/busybox"

log "kernel: $kernel_pkg"
log "artefacts in $ARTEFACTS"
echo "VMM_ARTEFACTS=$ARTEFACTS"
