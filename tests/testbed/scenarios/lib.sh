# Helpers for scenario scripts; sourced with $ROOT set.
VMM="$ROOT/bin/vmm"
GUEST_CMDLINE="console=ttyS0 quiet panic=-1"

# show FILE: the guest console, marked as such in the testbed log.
show() {
    sed 's/^/[guest] /' "$1"
    # A console cut off mid-line must not swallow the next result line.
    [ -z "$(tail -c 1 "$1")" ] || echo
}

# run_vmm LIMIT OUT ARGS...: runs vmm on the testbed guest under a time limit, output to OUT.
run_vmm() {
    limit=$1; out=$2; shift 2
    timeout "$limit" "$VMM" --kernel "$ROOT/guest/Image" --initramfs "$ROOT/guest/initrd.cpio" \
        "$@" </dev/null >"$out" 2>&1
    status=$?
    show "$out"
    return $status
}

# field NAME LINE: the value of NAME=value in LINE.
field() {
    echo "$2" | sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p"
}
