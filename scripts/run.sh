#!/usr/bin/env bash
# The main job: boots an arm64 Linux guest with 2 vCPUs on vmm from its root disk.
#
# On a terminal (stdin and stdout both): the guest's shell on your terminal, where
# `echo mem > /sys/power/state` suspends the VM and a keypress wakes it, with vmm's suspend and
# resume log lines shown; `poweroff -f` in the guest ends it. Without one (CI): the scripted
# `demo` scenario (greeting, one RTC-woken suspend, power-off), checked.
# On x86-64 the VM runs inside the testbed's emulated arm64 host; on an arm64 KVM host, natively.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh | tail -1)"
export VMM_ARTEFACTS
scripts/build-aarch64.sh build --locked
if [[ -t 0 && -t 1 ]]; then
    exec cargo run --quiet --locked -p testbed -- shell
fi
exec cargo run --quiet --locked -p testbed -- run demo
