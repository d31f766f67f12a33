#!/usr/bin/env bash
# Fetches what scripts/bench.sh needs beyond scripts/setup.sh, unattended and idempotently:
# QEMU for arm64, the peer our vmm is compared with inside the emulated arm64 host.
#
# `qemu-system-arm:arm64` and the arm64 libraries it depends on are downloaded and unpacked
# (never installed) into the cache of scripts/setup.sh. Then `qemu-system-aarch64`, the shared
# libraries its NEEDED entries reach and the dynamic loader are copied to
# `$VMM_CACHE_DIR/artefacts/qemu-arm64/{bin,lib}`, and the unpacked packages are dropped.
# Installs nothing on the host: scripts/setup.sh already gives the arm64 dpkg architecture
# and the cross binutils (aarch64-linux-gnu-readelf).
#
# Prints the cache directory's variables for `source`-ing callers on its last line.
set -euo pipefail

CACHE_DIR=${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-testbed}
ARTEFACTS="$CACHE_DIR/artefacts"
QEMU_DIR="$ARTEFACTS/qemu-arm64"

log() { printf 'setup-bench: %s\n' "$*" >&2; }

if [[ -f "$QEMU_DIR/.complete" ]]; then
    log "QEMU for arm64 ($(cat "$QEMU_DIR/version")) in $QEMU_DIR"
    echo "VMM_ARTEFACTS=$ARTEFACTS"
    exit 0
fi

if [[ "$(uname -m)" == aarch64 ]]; then
    arch="" readelf=readelf
else
    arch=":arm64" readelf=aarch64-linux-gnu-readelf
fi
if ! command -v "$readelf" >/dev/null; then
    log "$readelf is missing: run scripts/setup.sh first"
    exit 1
fi
SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi

log "apt-get update"
$SUDO apt-get update -qq

# Every arm64 library package qemu-system-arm pulls in; which of their files QEMU really
# loads is decided below from the ELF headers, not from the package list.
mapfile -t packages < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "qemu-system-arm$arch" |
        grep -E "^((lib|zlib)[^ <]*|qemu-system-(arm|common))$arch\$" | sort -u
)
if ((${#packages[@]} < 2)); then
    log "apt-cache offers no qemu-system-arm$arch"
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 1777 "$work" # apt downloads as the _apt user
log "downloading qemu-system-arm$arch and ${#packages[@]} packages it depends on"
(cd "$work" && apt-get download -qq "${packages[@]}" >&2)
root="$work/root"
mkdir -p "$root"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$root"; done

# Follows a symlink inside the unpacked tree, where absolute targets mean `$root/...`.
resolve() {
    local path=$1 target
    for _ in $(seq 20); do
        [[ -L "$path" ]] || break
        target=$(readlink "$path")
        if [[ "$target" == /* ]]; then path="$root$target"; else path="$(dirname "$path")/$target"; fi
    done
    echo "$path"
}

find_library() {
    local dir
    for dir in lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu lib usr/lib; do
        if [[ -e "$root/$dir/$1" || -L "$root/$dir/$1" ]]; then
            resolve "$root/$dir/$1"
            return
        fi
    done
    return 1
}

rm -rf "$QEMU_DIR"
mkdir -p "$QEMU_DIR/bin" "$QEMU_DIR/lib"
cp "$root/usr/bin/qemu-system-aarch64" "$QEMU_DIR/bin/"
loader=$(find_library ld-linux-aarch64.so.1) || { log "no ld-linux-aarch64.so.1 in the packages"; exit 1; }
cp "$loader" "$QEMU_DIR/lib/ld-linux-aarch64.so.1"

# The NEEDED closure, breadth first.
queue=("$QEMU_DIR/bin/qemu-system-aarch64")
declare -A seen=()
while ((${#queue[@]})); do
    elf=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r soname; do
        [[ -n "$soname" && -z "${seen[$soname]:-}" ]] || continue
        seen[$soname]=1
        [[ "$soname" == ld-linux-aarch64.so.1 ]] && continue
        library=$(find_library "$soname") || { log "no $soname in the packages"; exit 1; }
        cp "$library" "$QEMU_DIR/lib/$soname"
        queue+=("$QEMU_DIR/lib/$soname")
    done < <("$readelf" -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done

dpkg-deb -f "$work"/qemu-system-arm_*.deb Version >"$QEMU_DIR/version"
touch "$QEMU_DIR/.complete"
log "QEMU for arm64 ($(cat "$QEMU_DIR/version")) with ${#seen[@]} libraries: $(du -sh "$QEMU_DIR" | cut -f1) in $QEMU_DIR"
echo "VMM_ARTEFACTS=$ARTEFACTS"
