#!/usr/bin/env bash
# The one test command: installs what it needs, then checks formatting, lints the host and the
# aarch64 code, runs the host unit tests, cross-builds for aarch64 and runs the testbed
# scenarios on real arm64 KVM (inside an emulated arm64 host on x86-64).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "setup"
eval "$(scripts/setup.sh | tail -1)"
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

step "testbed scenarios (real arm64 KVM)"
cargo run --quiet --locked -p testbed -- run "$@"

step "all checks passed in $((SECONDS - started)) s"
