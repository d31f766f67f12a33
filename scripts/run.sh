#!/usr/bin/env bash
# The main job: boots an arm64 Linux guest with 2 vCPUs on vmm and shows its serial console.
# On x86-64 it runs inside the emulated arm64 host of the testbed; on an arm64 KVM host, natively.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh | tail -1)"
export VMM_ARTEFACTS
scripts/build-aarch64.sh build --locked
cargo run --quiet --locked -p testbed -- run demo
