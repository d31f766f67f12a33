#!/usr/bin/env bash
# Benchmarks our vmm side by side with QEMU (KVM) in one boot of the emulated arm64 host (or
# natively on an arm64 KVM host): boot to init, VMM memory overhead, suspend and resume
# latency next to the bare ioctl floor (also with disks and the rng attached), the host CPU a
# sleeping guest costs, virtio-blk throughput in the guest, the network: TCP throughput
# both ways and TCP round trips over virtio-net on a tap, and (ours only) vsock round trips,
# and snapshots of a suspended 256 MiB and 2 GiB guest: save, size, restore (QEMU: migration
# to and from a file).
# Prints the table and writes bench/results.json and bench/results.svg. Not part of
# scripts/test.sh; it takes about 35 minutes warm on an idle 2-core x86-64 machine, 13 of them
# for the network runs (`--only net`, 5 rounds: 790 s on 2026-11-30); a cold build adds about 5.
#
#   scripts/bench.sh                 5 rounds, alternating vmm and QEMU
#   scripts/bench.sh --rounds 1      a quick look
#   scripts/bench.sh --rounds 1 --only disk,devices
#                                    only some measurements: boot, idle, suspend, floor,
#                                    disk (throughput), net (TCP and vsock), devices
#                                    (suspend and idle with disks), snapshot (save and
#                                    restore of a suspended guest)
#   scripts/bench.sh --profile       ftrace of the suspend and resume paths instead
#   scripts/bench.sh --host-kernel 6.1
#                                    the emulated host on another pinned kernel (default 7;
#                                    resources/kernels.pin); the guests run 6.1 either way
#
# Other arguments go to the `bench` binary (tests/bench; see `cargo run -p bench -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "setup"
# setup.sh fetches a kernel named with --host-kernel too.
eval "$(scripts/setup.sh "$@" | tail -1)"
scripts/setup-bench.sh >/dev/null
export VMM_ARTEFACTS

step "cross build (aarch64, bench-release profile)"
scripts/build-aarch64.sh build --profile bench-release --locked

step "benchmark"
cargo run --quiet --locked -p bench -- "$@"

step "benchmark done in $((SECONDS - started)) s"
