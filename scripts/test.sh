#!/usr/bin/env bash
# The one test command: installs what it needs, then checks formatting, lints the host and the
# aarch64 code, runs the host unit tests, cross-builds for aarch64 and runs the testbed
# scenarios on real arm64 KVM (inside an emulated arm64 host on x86-64).
#
#   scripts/test.sh                  every check, then the default scenarios with the emulated
#                                    host on kernel 7, then the kernel-sensitive subset below
#                                    on 6.1 (resources/kernels.pin)
#   scripts/test.sh kvm-smoke ...    every check, then just those scenarios on kernel 7;
#                                    `--host-kernel 6.1|6.12|7|all` among them picks the kernel
set -euo pipefail
cd "$(dirname "$0")/.."

# The scenarios run again with the emulated host on 6.1, the oldest kernel we support: those
# whose outcome hangs on the host's KVM (PSCI exits and SYSTEM_SUSPEND, vCPU kicks, wakeups,
# the s2idle fallback, vm.info's census). aarch64-tests, the long one, runs on 7 only. no-kvm
# (every test with /dev/kvm hidden: the KVM tests skip, the rest pass) needs only some host.
OLD_KERNEL_SCENARIOS=(kvm-smoke kvm-suspend signals linux-boot linux-suspend linux-s2idle linux-power linux-snapshot api no-kvm)

started=$SECONDS
step_name=""
step_started=$SECONDS
timings=()
# Closes the running step with its duration, then opens the next one (none for "").
step() {
    if [[ -n $step_name ]]; then
        timings+=("$(printf '%5d s  %s' $((SECONDS - step_started)) "$step_name")")
    fi
    step_name=$*
    step_started=$SECONDS
    if [[ -n $step_name ]]; then printf '\n==> %s\n' "$step_name"; fi
}

step "setup"
eval "$(scripts/setup.sh "$@" | tail -1)"
export VMM_ARTEFACTS

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (host)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "clippy (aarch64)"
scripts/build-aarch64.sh clippy --locked

step "unit tests (host)"
cargo test --workspace --locked

step "cross build (aarch64)"
scripts/build-aarch64.sh build --locked

# Both testbed parts run even when the first fails, so that one run shows both.
failed=()
testbed() {
    step "$1"
    shift
    cargo run --quiet --locked -p testbed -- run "$@" || failed+=("$step_name")
}
if (($#)); then
    testbed "testbed: $* (real arm64 KVM)" "$@"
else
    testbed "testbed: default scenarios, host kernel 7 (real arm64 KVM)" --host-kernel 7
    testbed "testbed: ${OLD_KERNEL_SCENARIOS[*]}, host kernel 6.1" \
        --host-kernel 6.1 "${OLD_KERNEL_SCENARIOS[@]}"
fi
step ""

printf '\n==> times\n'
printf '%s\n' "${timings[@]}"
if ((${#failed[@]})); then
    printf '\n==> FAILED after %d s: %s\n' $((SECONDS - started)) "$(IFS=';'; echo "${failed[*]}")"
    exit 1
fi
printf '\n==> all checks passed in %d s\n' $((SECONDS - started))
