#!/usr/bin/env bash
# Cross-builds static aarch64 binaries with Debian's toolchain (rustup cannot add targets here).
#
#   scripts/build-aarch64.sh build    the `vmm`, `disk-pattern` and `guest-agent` binaries and every crate's
#                                     test binaries; cargo's JSON messages go to
#                                     target/aarch64/artifacts.json, which the testbed runner
#                                     reads to find the test executables
#   scripts/build-aarch64.sh clippy   clippy -D warnings for the aarch64-only code
#
# Extra arguments go to cargo. On a native arm64 host the host toolchain is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-build}
shift || true
target=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="$PWD/target/aarch64"
# Static binaries run in the bare busybox initramfs of the emulated host.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
# No debuginfo: it triples the binaries that go into the emulated host's initramfs.
export CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_TEST_DEBUG=false

if [[ "$(uname -m)" == aarch64 ]]; then
    cargo=(cargo)
else
    # Debian's rustc-web has the aarch64 std; its cargo and clippy must come first on PATH so
    # that `cargo clippy` does not reach rustup's proxy for the host toolchain.
    export PATH="/usr/bin:$PATH"
    export RUSTC=/usr/bin/rustc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    cargo=(/usr/bin/cargo)
fi

case "$mode" in
build)
    mkdir -p "$CARGO_TARGET_DIR"
    "${cargo[@]}" build --target "$target" -p vmm --bins --examples "$@"
    "${cargo[@]}" build --target "$target" -p hypervisor --examples "$@"
    "${cargo[@]}" build --target "$target" -p disk-pattern -p guest-agent --bins "$@"
    "${cargo[@]}" test --target "$target" --workspace --no-run --message-format=json-render-diagnostics "$@" \
        >"$CARGO_TARGET_DIR/artifacts.json"
    ;;
clippy)
    "${cargo[@]}" clippy --target "$target" --workspace --all-targets "$@" -- -D warnings
    ;;
*)
    echo "usage: $0 [build|clippy] [cargo args...]" >&2
    exit 2
    ;;
esac
