#!/usr/bin/env bash
# Fuzzes the code that takes guest or user input with cargo-fuzz (libFuzzer + AddressSanitizer):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# runs each target (all of them by default, see fuzz/fuzz_targets/) for SECONDS (default 600),
# one after the other, then prints one line per target: run time, executions, coverage
# (cov/ft of the last status line), corpus size and crashes (crash, timeout, OOM or leak
# artifacts written by this run). Exits 1 if any target crashed. Not part of scripts/test.sh.
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET, read only) plus the working
# corpus in fuzz/corpus/TARGET (git-ignored, kept between runs: it is where the corpus grows).
# Findings go to fuzz/artifacts/TARGET, logs to fuzz/logs/TARGET.log. It runs at nice 19
# (FUZZ_NICE) so that it does not disturb other work on the machine, with a 10 s per-input
# timeout (FUZZ_TIMEOUT) so that a hang is a finding. Needs the nightly toolchain (rustup's
# `nightly`, or RUSTC_BOOTSTRAP=1 on stable when FUZZ_TOOLCHAIN is empty).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz

SECONDS_PER_TARGET=${1:-600}
shift || true
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || ((SECONDS_PER_TARGET == 0)); then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
ALL_TARGETS=(http_request serial rtc_pl031 gpio_pl061 virtio_mmio virtio_blk_request
    virtio_net virtio_vsock image_header vm_config psci_decode)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")
for target in "${TARGETS[@]}"; do
    if [[ ! -f $FUZZ/fuzz_targets/$target.rs ]]; then
        echo "$0: no fuzz target $target (have: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

TOOLCHAIN=${FUZZ_TOOLCHAIN-+nightly}
NICE=${FUZZ_NICE:-19}
TIMEOUT=${FUZZ_TIMEOUT:-10}
CARGO=(cargo)
if [[ -n $TOOLCHAIN ]]; then
    if ! cargo "$TOOLCHAIN" --version >/dev/null 2>&1; then
        echo "$0: no $TOOLCHAIN toolchain; using the default one with RUSTC_BOOTSTRAP=1" >&2
        export RUSTC_BOOTSTRAP=1
    else
        CARGO=(cargo "$TOOLCHAIN")
    fi
else
    export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building the fuzz targets"
nice -n "$NICE" "${CARGO[@]}" fuzz build >/dev/null 2>"$FUZZ/build.log" ||
    { cat "$FUZZ/build.log" >&2; exit 1; }
rm -f "$FUZZ/build.log"

# Extra libFuzzer options per target.
extra_args() {
    case $1 in
    # Long enough to reach the 8 KiB request line, 16 KiB header and 64 KiB body limits.
    http_request) echo "-max_len=90000 -dict=$FUZZ/dicts/http_request.dict" ;;
    vm_config) echo "-dict=$FUZZ/dicts/vm_config.dict" ;;
    esac
}

mkdir -p "$FUZZ/logs"
summary=()
crashed=0
for target in "${TARGETS[@]}"; do
    corpus=$FUZZ/corpus/$target
    artifacts=$FUZZ/artifacts/$target
    log=$FUZZ/logs/$target.log
    mkdir -p "$corpus" "$artifacts"
    marker=$(mktemp)
    echo "== $target: ${SECONDS_PER_TARGET}s"
    start=$(date +%s)
    status=0
    # shellcheck disable=SC2046 # extra_args is a list of words
    nice -n "$NICE" "${CARGO[@]}" fuzz run "$target" "$corpus" "$FUZZ/seeds/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout="$TIMEOUT" \
        -artifact_prefix="$artifacts/" $(extra_args "$target") >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))
    # libFuzzer's own figure leaves the build out: "Done N runs in S second(s)".
    done_secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    elapsed=${done_secs:-$elapsed}
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    status_line=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
    corp=$(find "$corpus" -type f | wc -l)
    crashes=$(find "$artifacts" -type f -newer "$marker" \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    rm -f "$marker"
    if ((status != 0 && crashes == 0)); then
        # libFuzzer failed without an artifact (a build error, a bad option): show why.
        tail -20 "$log" >&2
        crashes="error (exit $status)"
    fi
    [[ $crashes == 0 ]] || crashed=1
    rate=$(( ${execs:-0} / (elapsed > 0 ? elapsed : 1) ))
    summary+=("$(printf '%-19s %5ss  execs %10s  (%6s/s)  cov %5s  ft %6s  corpus %5s  crashes %s' \
        "$target" "$elapsed" "${execs:-?}" "$rate" "${cov:-?}" "${ft:-?}" "$corp" "$crashes")")
    if [[ $crashes != 0 ]]; then
        echo "   $target: see $log" >&2
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|ALARM|Test unit written)' "$log" | head -5 >&2 || true
    fi
done

echo "== summary (logs in fuzz/logs/, findings in fuzz/artifacts/)"
printf '%s\n' "${summary[@]}"
exit "$crashed"
