#!/usr/bin/env bash
# Installs what the build and the testbed need, unattended and idempotently.
#
# On an x86-64 host: Debian's aarch64 cross toolchain, QEMU, mke2fs and depmod, and arm64
# artefacts unpacked into a cache outside git: the pinned Debian arm64 kernels of
# resources/kernels.pin (each with a modules.dep), a static busybox, rtcwake and a static
# e2fsck. On a native arm64 host with /dev/kvm only the artefacts and the image tools are
# needed, and no QEMU.
#
#   scripts/setup.sh                       kernels 6.1 and 7 (VMM_HOST_KERNELS="6.1 7")
#   VMM_HOST_KERNELS=all scripts/setup.sh  every pinned kernel
#   scripts/setup.sh --host-kernel 6.12    6.1 and 7, and 6.12 too (other arguments are
#                                          ignored: test.sh and bench.sh pass theirs on)
#
# Prints the cache directory's variables for `source`-ing callers on its last line.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

asked_kernels=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --host-kernel) asked_kernels+=("${args[i + 1]:-}") ;;
        --host-kernel=*) asked_kernels+=("${args[i]#*=}") ;;
    esac
done

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

# The pinned kernels (resources/kernels.pin): 6.1 always, since the nested guest runs it, and
# the emulated host's kernels that were asked for: VMM_HOST_KERNELS (default "6.1 7", what CI
# runs), plus any `--host-kernel NAME` among this script's arguments; `all` means every pin.
# On a native arm64 host there is no emulated host, so only 6.1 is fetched.
PINS="$REPO/resources/kernels.pin"
pinned_names=$(awk '!/^[[:space:]]*(#|$)/ {print $1}' "$PINS")
wanted="6.1"
if [[ $NATIVE == 0 ]]; then
    wanted+=" ${VMM_HOST_KERNELS:-6.1 7} ${asked_kernels[*]}"
fi
if [[ " $wanted " == *" all "* ]]; then wanted=$pinned_names; fi

# Kernel downloads use a private apt configuration in the cache, for those downloads only:
# Debian's arm64 archive across the suites the pins come from, never added to the system's
# sources. Debug::NoLocking lets it run without root.
KAPT_DIR="$CACHE_DIR/kernel-apt"
kapt_opts=(-o Dir::Etc::SourceList="$KAPT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o Dir::State::Lists="$KAPT_DIR/lists" -o Dir::Cache="$KAPT_DIR/cache"
           -o APT::Architectures::=arm64 -o Debug::NoLocking=1)
kapt_updated=0
kapt_update() {
    if [[ $kapt_updated == 1 ]]; then return; fi
    mkdir -p "$KAPT_DIR/lists/partial" "$KAPT_DIR/cache/archives/partial"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    cat >"$KAPT_DIR/sources.list" <<SOURCES
# Written by scripts/setup.sh for its kernel downloads only.
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian trixie-backports main
SOURCES
    log "apt-get update (kernel sources in $KAPT_DIR)"
    apt-get -qq "${kapt_opts[@]}" update >&2
    kapt_updated=1
}

# The newest version of a package in the private archive (madison lists it first), optionally
# only in one suite.
kapt_newest() {
    local pkg=$1 suite=${2:-}
    apt-cache "${kapt_opts[@]}" madison "$pkg" 2>/dev/null \
        | awk -F'|' -v suite="$suite" '!found && (suite == "" || $3 ~ (" " suite "/")) {gsub(/ /, "", $2); print $2; found = 1}'
}

# Downloads PACKAGE=VERSION into DIR and checks its sha256 against the pin; sets kernel_deb_file.
# A version the archive no longer has is one clear line naming what it offers instead.
kernel_deb() {
    local name=$1 suite=$2 track=$3 pkg=$4 version=$5 sha=$6 dir=$7
    kapt_update
    local offered
    offered=$(apt-cache "${kapt_opts[@]}" madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}')
    if ! grep -qxF -- "$version" <<<"$offered"; then
        local now
        now=$(kapt_newest "$pkg")
        if [[ -n $now ]]; then now="$pkg $now"
        else now="$track $(kapt_newest "$track" "$suite") in $suite"; fi
        log "kernel $name: the pinned $pkg $version is gone from the archive, which offers $now now: update the $name line of resources/kernels.pin (docs/host-kernels.md)"
        exit 1
    fi
    log "downloading $pkg $version (kernel $name)"
    (cd "$dir" && apt-get -qq "${kapt_opts[@]}" download "$pkg=$version" >&2)
    local debs=("$dir/${pkg}_"*.deb) got
    local deb=${debs[0]}
    got=$(sha256sum "$deb" | cut -d' ' -f1)
    if [[ $got != "$sha" ]]; then
        log "kernel $name: ${deb##*/} has sha256 $got, resources/kernels.pin says $sha"
        exit 1
    fi
    kernel_deb_file=$deb
}

# Makes DEST an uncompressed arm64 Image from the package's kernel SRC: a link when it is one
# already (Debian's arm64 vmlinuz is), else unpacked from gzip or an EFI zboot image (QEMU's
# -kernel and vmm's loader take only the plain Image).
kernel_image() {
    local src=$1 dest=$2
    local magic
    magic=$(od -An -c -j 56 -N 4 "$src" | tr -d ' ')
    if [[ $magic == ARMd ]]; then
        ln -sfn "${src#"${dest%/*}/"}" "$dest"
        return
    fi
    if [[ $(od -An -tx1 -N 2 "$src" | tr -d ' ') == 1f8b ]]; then
        gzip -dc "$src" >"$dest"
    elif [[ $(od -An -c -j 4 -N 4 "$src" | tr -d ' ') == zimg ]]; then
        # EFI zboot: the payload's offset and size at 8 and 12, its compression at 24.
        local offset size comp
        offset=$(od -An -tu4 -j 8 -N 4 "$src" | tr -d ' ')
        size=$(od -An -tu4 -j 12 -N 4 "$src" | tr -d ' ')
        comp=$(dd if="$src" bs=1 skip=24 count=8 status=none | tr -d '\0')
        case $comp in
            gzip) tail -c +$((offset + 1)) "$src" | head -c "$size" | gzip -dc >"$dest" ;;
            zstd) tail -c +$((offset + 1)) "$src" | head -c "$size" | zstd -dcq >"$dest" ;;
            xz) tail -c +$((offset + 1)) "$src" | head -c "$size" | xz -dc >"$dest" ;;
            *) log "${src##*/}: EFI zboot image compressed with '$comp', which setup cannot unpack"; exit 1 ;;
        esac
    else
        log "${src##*/} is neither an arm64 Image nor a gzip or EFI zboot one"
        exit 1
    fi
    if [[ $(od -An -c -j 56 -N 4 "$dest" | tr -d ' ') != ARMd ]]; then
        log "${src##*/} did not unpack to an arm64 Image"
        exit 1
    fi
}

# Fetches one pinned kernel into $ARTEFACTS/kernels/NAME: the packages unpacked in pkg/, Image,
# and modules (the lib/modules/VERSION directory, with depmod's index). Skipped when the pin
# line it was made from has not changed.
fetch_kernel() {
    local line=$1
    local name suite track pkg version sha mod_pkg mod_version mod_sha
    read -r name suite track pkg version sha mod_pkg mod_version mod_sha <<<"$line"
    local final="$ARTEFACTS/kernels/$name"
    if [[ -f "$final/.pin" && "$(cat "$final/.pin")" == "$line" && -e "$final/Image" && -d "$final/modules/" ]]; then
        return
    fi
    # Made next to its place and moved there whole, so a failed update keeps the old kernel.
    local dir="$final.new"
    rm -rf "$dir"
    mkdir -p "$dir/pkg"
    local tmp
    tmp=$(mktemp -d)
    chmod 1777 "$tmp"  # apt downloads as the _apt user, who cannot enter a home directory
    kernel_deb "$name" "$suite" "$track" "$pkg" "$version" "$sha" "$tmp"
    dpkg-deb -x "$kernel_deb_file" "$dir/pkg"
    if [[ -n ${mod_pkg:-} ]]; then
        kernel_deb "$name" "$suite" "$track" "$mod_pkg" "$mod_version" "$mod_sha" "$tmp"
        dpkg-deb -x "$kernel_deb_file" "$dir/pkg"
    fi
    rm -rf "$tmp"
    # bookworm's packages: boot/vmlinuz-VERSION and lib/modules/VERSION; trixie's (7.x):
    # usr/lib/modules/VERSION/vmlinuz.unsigned next to its modules.
    shopt -s nullglob
    local images=("$dir"/pkg/boot/vmlinuz-* "$dir"/pkg/usr/lib/modules/*/vmlinuz*)
    local trees=("$dir"/pkg/lib/modules/*/kernel "$dir"/pkg/usr/lib/modules/*/kernel)
    shopt -u nullglob
    if ((${#images[@]} != 1 || ${#trees[@]} != 1)); then
        log "kernel $name: expected one vmlinuz and one modules tree in its packages, found ${#images[@]} and ${#trees[@]}"
        exit 1
    fi
    local modules=${trees[0]%/kernel}
    kernel_image "${images[0]}" "$dir/Image"
    # The packages ship no modules.dep (their postinst runs depmod); the testbed resolves modules
    # and their dependencies from it. depmod reads arm64 modules on any host; 7.x's modules
    # package lacks modules.order and modules.builtin, which only make depmod warn.
    if [[ ! -s "$modules/modules.dep" ]]; then
        log "depmod for ${modules##*/}"
        local base=${modules%/lib/modules/*}
        PATH="$PATH:/usr/sbin:/sbin" depmod -b "$base" "${modules##*/}" 2>&1 \
            | { grep -v 'WARNING: could not open modules\.' || true; } >&2
    fi
    # Links relative to the kernel's directory, which moves into place next.
    ln -sfn "${modules#"$dir/"}" "$dir/modules"
    echo "$line" >"$dir/.pin"
    rm -rf "$final"
    mv "$dir" "$final"
}

for name in $wanted; do
    line=$(awk -v name="$name" '$1 == name' "$PINS")
    if [[ -z $line ]]; then
        log "no kernel named '$name' in resources/kernels.pin (pinned: ${pinned_names//$'\n'/ }); see VMM_HOST_KERNELS and --host-kernel"
        exit 1
    fi
    fetch_kernel "$line"
done
# The nested guest's kernel, and what the rest of the code takes as the kernel: Debian 12's 6.1.
ln -sfn kernels/6.1/Image "$ARTEFACTS/Image"
ln -sfn kernels/6.1/modules "$ARTEFACTS/modules"
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

ln -sfn "$busybox_dir/bin/busybox" "$ARTEFACTS/busybox"

log "kernels: $(cd "$ARTEFACTS/kernels" && echo *)"
log "artefacts in $ARTEFACTS"
echo "VMM_ARTEFACTS=$ARTEFACTS"
