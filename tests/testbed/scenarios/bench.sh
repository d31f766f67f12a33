#!/bin/sh
# Benchmarks our vmm against QEMU (with KVM) on this arm64 host, for `testbed bench`. Both boot
# the same kernel, initramfs and command line (no console=: each VMM's device tree names its
# UART as stdout-path), with the guest's `vmmtest=bench` mode. Runs alternate between the
# VMMs in each round. Every figure is one `@@bench KIND vmm=... cpus=... round=... key=value`
# line; the runner on the other side aggregates them. The plan comes from bench.env.
. "$ROOT/testbed/lib.sh"
. "$ROOT/testbed/bench.env"

KERNEL="$ROOT/guest/Image"
INITRD="$ROOT/guest/initrd.cpio"
CMDLINE="quiet panic=-1 vmmtest=bench"
QEMU_LIBS="$ROOT/qemu/lib"
FIFO=/tmp/bench.fifo
CR=$(printf '\r')
failures=0

# now_ms: sets ms to CLOCK_BOOTTIME in milliseconds (10 ms steps), without forking.
now_ms() {
    read -r up _ </proc/uptime
    ms=$((${up%.*} * 1000 + 1${up#*.}0 - 1000))
}

# cpu_ns PID: sets ns to the CPU time of every thread of PID (schedstat's first field).
cpu_ns() {
    ns=$(cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }')
}

# memory PID: Rss of the process, of its guest-RAM mappings (those at least as large as guest
# RAM) and of everything else, in KiB.
memory() {
    awk -v guest=$((MEMORY * 1024)) '
        /^Size:/ { size = $2 }
        /^Rss:/ { rss += $2; if (size >= guest) ram += $2 }
        END { printf "rss_kb=%d guest_rss_kb=%d overhead_kb=%d", rss, ram, rss - ram }' \
        "/proc/$1/smaps"
}

# idle PID: CPU time of the VMM over IDLE_WINDOW seconds, IDLE_SETTLE seconds into the
# guest's sleep. For our deep suspend, also whether vmm said `suspended` before the window and
# not `resumed` after it.
idle() {
    sleep "$IDLE_SETTLE"
    cpu_ns "$1"; c0=$ns; now_ms; w0=$ms
    suspended=$(grep -c '] suspended (in ' "$err")
    sleep "$IDLE_WINDOW"
    cpu_ns "$1"; c1=$ns; now_ms; w1=$ms
    resumed=$(grep -c '] resumed (' "$err")
    asleep=unknown
    [ "$vmm" = ours ] && { [ "$suspended" -gt "$resumed" ] && asleep=yes || asleep=no; }
    echo "@@bench idle $tag cpu_ns=$((c1 - c0)) window_ms=$((w1 - w0)) asleep=$asleep"
}

# run_vm RUN VMM CPUS EXTRA: boots the bench guest on VMM (ours, ours-s2idle or qemu) with
# EXTRA on its command line. Times it from process start to the init marker and measures its
# memory there; a `boot` run ends there, the others follow the guest to `@@bench done`.
run_vm() {
    run=$1 vmm=$2 cpus=$3 extra=$4
    tag="run=$run vmm=$vmm cpus=$cpus round=$round"
    out=/tmp/bench-$run-$vmm-$cpus.out err=/tmp/bench-$run-$vmm-$cpus.err
    if [ "$vmm" = qemu ]; then
        set -- "$QEMU_LIBS/ld-linux-aarch64.so.1" --library-path "$QEMU_LIBS" \
            "$ROOT/qemu/bin/qemu-system-aarch64" -M virt,gic-version=3 -accel kvm -cpu host \
            -display none -nodefaults -serial stdio -no-reboot -smp "$cpus" -m "$MEMORY" \
            -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE $extra"
    else
        set -- "$VMM" -v --cpus "$cpus" --memory "$MEMORY" --kernel "$KERNEL" \
            --initramfs "$INITRD" --cmdline "$CMDLINE $extra"
        [ "$vmm" = ours-s2idle ] && set -- "$@" --no-suspend
    fi
    rm -f "$FIFO"
    mkfifo "$FIFO"
    : >"$out"
    now_ms; t0=$ms
    "$@" </dev/null >"$FIFO" 2>"$err" &
    pid=$!
    (sleep "$RUN_LIMIT"; kill "$pid" 2>/dev/null) &
    watchdog=$!
    reached=none
    while IFS= read -r line; do
        line=${line%"$CR"}
        echo "$line" >>"$out"
        case $line in
        *"@@bench init"*)
            now_ms
            reached=init
            timer=$(sed -n 's/.*Guest boot time: \([0-9]*\) us.*/timer_us=\1/p' "$err" | head -1)
            echo "@@bench boot $tag boot_ms=$((ms - t0)) $(memory "$pid") $timer"
            [ "$run" = boot ] && break
            ;;
        *"@@bench trip "*) echo "@@bench trip $tag ${line#*@@bench trip }" ;;
        *"@@bench sleep "*) idle "$pid" ;;
        *"@@bench done"*) reached=done; break ;;
        esac
    done <"$FIFO"
    kill "$pid" "$watchdog" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ "$vmm" = ours ]; then
        sed -n 's/.*\] suspended (in \([0-9]*\) us).*/suspend_us=\1/p;
                s/.*\] resumed ([^)]*) (in \([0-9]*\) us).*/resume_us=\1/p' "$err" |
            while read -r value; do echo "@@bench suspend $tag $value"; done
    fi
    if [ "$reached" = done ] || { [ "$run" = boot ] && [ "$reached" = init ]; }; then
        verdict=pass
    else
        verdict=fail; failures=$((failures + 1))
        echo "@@bench fail $tag reached=$reached"
        tail -n 20 "$out" | sed 's/^/[guest] /'
        tail -n 10 "$err" | sed 's/^/[vmm stderr] /'
    fi
    echo "@@result bench-$run-$vmm-${cpus}cpu-r$round $verdict reached=$reached"
}

# floor: the bare ioctl sequence of a suspend cycle, at each vCPU count.
floor() {
    for cpus in $SUSPEND_CPUS; do
        if "$ROOT/bin/suspend_floor" --cpus "$cpus" --cycles "$FLOOR_CYCLES" >/tmp/floor.out 2>&1; then
            verdict=pass
        else
            verdict=fail; failures=$((failures + 1))
            sed 's/^/[floor] /' /tmp/floor.out
        fi
        sed -n "s/^@@floor /@@bench floor run=floor vmm=floor round=$round /p" /tmp/floor.out
        echo "@@result bench-floor-${cpus}cpu-r$round $verdict"
    done
}

echo "@@bench host date=$(date -u +%Y-%m-%dT%H:%M:%SZ) kernel=$(uname -r) cpus=$(nproc)" \
    "qemu=$(cat "$ROOT/qemu/version") vmm_bytes=$(wc -c <"$VMM")"
echo "@@bench plan rounds=$ROUNDS memory_mib=$MEMORY boot_cpus=$(echo $BOOT_CPUS | tr ' ' ,)" \
    "suspend_cpus=$(echo $SUSPEND_CPUS | tr ' ' ,) suspend_cycles=$SUSPEND_CYCLES" \
    "idle_cpus=$IDLE_CPUS idle_trips=$IDLE_TRIPS idle_settle_s=$IDLE_SETTLE" \
    "idle_window_s=$IDLE_WINDOW floor_cycles=$FLOOR_CYCLES"
round=1
while [ "$round" -le "$ROUNDS" ]; do
    # Alternate which VMM goes first, so that neither always runs on a warmer host.
    if [ $((round % 2)) = 1 ]; then pair="ours qemu" trio="ours ours-s2idle qemu"
    else pair="qemu ours" trio="qemu ours-s2idle ours"; fi
    echo "@@bench round $round of $ROUNDS"
    for cpus in $BOOT_CPUS; do
        for vmm in $pair; do run_vm boot "$vmm" "$cpus" "cycles=0"; done
    done
    for vmm in $trio; do
        run_vm idle "$vmm" "$IDLE_CPUS" "cycles=$IDLE_TRIPS sleep=$((IDLE_SETTLE + IDLE_WINDOW + 2))"
    done
    for cpus in $SUSPEND_CPUS; do
        run_vm suspend ours "$cpus" "cycles=$SUSPEND_CYCLES"
    done
    floor
    round=$((round + 1))
done
echo "@@bench end failures=$failures"
[ "$failures" = 0 ]
