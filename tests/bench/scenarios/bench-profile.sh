#!/bin/sh
# Profiles the suspend and resume paths with ftrace, for `bench --profile` (tests/bench): one
# `rtcwake -m mem` cycle of the bench guest on our vmm at each vCPU count, and the ioctl floor,
# with the scheduler, KVM-exit and syscall events of their threads recorded. For each suspend
# (suspend exit to KVM_SET_MP_STATE) and resume (wakeup exit to the next KVM_RUN) it prints a
# `@@profile` line: the span, context switches and wakeups, syscalls by kind, the time the
# calling thread spent in them, and for each kicked vCPU the time from its tgkill to its
# KVM_RUN returning plus the time from there to reading its MP state (parking), as `A+B`.
# Tracing slows every event down; read the counts and the shares.
. "$ROOT/testbed/lib.sh"
. "$ROOT/testbed/bench.env"

T=/sys/kernel/tracing
[ -d "$T/events" ] || mount -t tracefs tracefs "$T" || exit 1
CR=$(printf '\r')
FIFO=/tmp/profile.fifo
rc=0

trace_reset() {
    echo 0 >"$T/tracing_on"
    echo 16384 >"$T/buffer_size_kb"
    echo >"$T/trace"
    echo 1 >"$T/options/event-fork"
    : >"$T/set_event_pid"
    : >"$T/set_event"
    # Page faults through the function tracer: arm64 has no fault tracepoint.
    echo handle_mm_fault >"$T/set_ftrace_filter"
    echo 1 >"$T/options/function-fork"
    : >"$T/set_ftrace_pid"
    echo function >"$T/current_tracer"
    for event in sched:sched_switch sched:sched_wakeup kvm:kvm_userspace_exit \
        syscalls:sys_enter_ioctl syscalls:sys_exit_ioctl syscalls:sys_enter_futex \
        syscalls:sys_exit_futex syscalls:sys_enter_write syscalls:sys_exit_write \
        syscalls:sys_enter_tgkill raw_syscalls:sys_enter; do
        echo "$event" >>"$T/set_event"
    done
}

# analyse TRACE LABEL [SHOW]: one @@profile line per suspend and resume window in TRACE; with
# SHOW=1 also the suspend windows' trace lines, as `@@trace`.
analyse() {
    awk -v label="$2" -v show="${3:-0}" '
    function hex(s,   i, n) {
        n = 0; s = tolower(s)
        for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
        return n
    }
    # Sets tid, ts (us), text (what follows the timestamp) and name (the event or syscall).
    function parse(   i) {
        tid = $1; sub(/.*-/, "", tid)
        for (i = 2; i <= NF && $i !~ /^[0-9]+\.[0-9]+:$/; i++) ;
        if (i > NF) return 0
        ts = substr($i, 1, length($i) - 1) * 1e6
        text = substr($0, index($0, $i) + length($i) + 1)
        name = text; sub(/[(: ].*/, "", name)
        return 1
    }
    # A syscall argument in hex, without the 0x that newer kernels (7.3.4, not 6.1) print.
    function arg(key,   v) {
        if (!match(text, key ": (0x)?[0-9a-f]+")) return ""
        v = substr(text, RSTART + length(key) + 2, RLENGTH - length(key) - 2); sub(/^0x/, "", v)
        return v
    }
    function cmd() { return arg("cmd") }
    function window_of(   w) { for (w = 1; w <= nw; w++) if (ts >= start[w] && ts <= end[w]) return w; return 0 }
    FNR == 1 { pass++ }
    /^#/ || !parse() { next }
    pass == 1 {
        if (text ~ /^kvm_userspace_exit:/ && text ~ /\(24\)/) { exited[tid] = ts; next }
        if (name != "sys_ioctl") next
        c = cmd()
        if (c == "4004ae99" && tid in exited) {
            nw++; start[nw] = exited[tid]; end[nw] = ts; kind[nw] = "suspend"; owner[nw] = tid
            delete exited[tid]
        } else if (c == "4020aeae" && tid in exited) {
            resuming[tid] = exited[tid]; delete exited[tid]
        } else if (c == "ae80" && tid in resuming) {
            nw++; start[nw] = resuming[tid]; end[nw] = ts; kind[nw] = "resume"; owner[nw] = tid
            delete resuming[tid]
        }
        next
    }
    {
        w = window_of()
        if (!w) next
        # A kicked vCPU leaves KVM_RUN: the kernel part of its kick ends here.
        if (text ~ /^sys_ioctl -> / && (w, tid) in kicked && !((w, tid) in left)) left[w, tid] = ts
        if (name == "sched_switch") switches[w]++
        else if (name == "sched_wakeup") wakeups[w]++
        else if (text ~ /^sys_[a-z0-9_]+\(/) {
            calls[w, name]++
            if (tid == owner[w]) entered[w, name] = ts
            if (name == "sys_tgkill" && arg("pid") != "") {
                target = hex(arg("pid"))
                if (!((w, target) in kicked)) kicked[w, target] = ts
                if (!first_kick[w]) first_kick[w] = ts
            }
            if (name == "sys_ioctl" && cmd() == "8004ae98" && (w, tid) in kicked && !((w, tid) in parked)) {
                parked[w, tid] = ts
                out = (w, tid) in left ? left[w, tid] : ts
                parks[w] = parks[w] (parks[w] == "" ? "" : ",") int(out - kicked[w, tid]) "+" int(ts - out)
                last_park[w] = ts
            }
        } else if (text ~ / -> / && tid == owner[w] && ((w, name) in entered)) {
            spent[w, name] += ts - entered[w, name]; delete entered[w, name]
        } else if (name == "sys_enter" && tid == owner[w] && match(text, /NR [0-9]+/)) {
            nr[w, substr(text, RSTART + 3, RLENGTH - 3)]++
        } else if (name == "handle_mm_fault") {
            faults[w]++
            if (tid == owner[w]) caller_faults[w]++
        }
        if (show && kind[w] == "suspend" && shown[w]++ < 400) print "@@trace " w " " $0
    }
    END {
        for (w = 1; w <= nw; w++) {
            line = sprintf("@@profile %s %s span_us=%d switches=%d wakeups=%d faults=%d caller_faults=%d",
                kind[w], label, end[w] - start[w], switches[w], wakeups[w], faults[w], caller_faults[w])
            for (key in nr) { split(key, k, SUBSEP); if (k[1] == w) line = line sprintf(" caller_nr%s=%d", k[2], nr[key]) }
            for (key in calls) { split(key, k, SUBSEP); if (k[1] == w) line = line sprintf(" %s=%d", substr(k[2], 5), calls[key]) }
            for (key in spent) { split(key, k, SUBSEP); if (k[1] == w) line = line sprintf(" caller_%s_us=%d", substr(k[2], 5), spent[key]) }
            if (first_kick[w]) line = line sprintf(" before_kick_us=%d kick_to_exit+exit_to_park_us=%s after_last_park_us=%d",
                first_kick[w] - start[w], parks[w], end[w] - last_park[w])
            print line
        }
    }' "$1" "$1"
}

# profile_vmm CPUS: one suspend cycle of the bench guest on our vmm, traced from the guest
# init marker to `@@bench done`.
profile_vmm() {
    cpus=$1 out=/tmp/profile-vmm-$1.out err=/tmp/profile-vmm-$1.err
    trace_reset
    rm -f "$FIFO"; mkfifo "$FIFO"
    # The shell that becomes vmm puts itself in the filter first, so every thread is followed.
    sh -c 'echo $$ >/sys/kernel/tracing/set_event_pid; echo $$ >/sys/kernel/tracing/set_ftrace_pid; exec "$@"' traced \
        "$VMM" -v --cpus "$cpus" --memory "$MEMORY" --kernel "$ROOT/guest/Image" \
        --initramfs "$ROOT/guest/initrd.cpio" --cmdline "quiet panic=-1 vmmtest=bench cycles=1" \
        </dev/null >"$FIFO" 2>"$err" &
    pid=$!
    (sleep "$RUN_LIMIT"; kill "$pid" 2>/dev/null) &
    watchdog=$!
    done=no
    while IFS= read -r line; do
        line=${line%"$CR"}
        echo "$line" >>"$out"
        case $line in
        *"@@bench init"*) echo 1 >"$T/tracing_on" ;;
        *"@@bench done"*) done=yes; break ;;
        esac
    done <"$FIFO"
    echo 0 >"$T/tracing_on"
    kill "$pid" "$watchdog" 2>/dev/null
    wait "$pid" 2>/dev/null
    cat "$T/trace" >/tmp/trace-vmm-$cpus.txt
    echo "@@profile events vmm=ours cpus=$cpus lines=$(wc -l </tmp/trace-vmm-$cpus.txt)" \
        "logged=$(grep -o '] suspended (in [0-9]* us)\|] resumed ([^)]*) (in [0-9]* us)' "$err" | tr ' ' _ | tr '\n' ' ')"
    analyse /tmp/trace-vmm-$cpus.txt "vmm=ours cpus=$cpus" 1
    [ $done = yes ] && verdict=pass || { verdict=fail; rc=1; tail -n 20 "$out"; }
    echo "@@result profile-vmm-${cpus}cpu $verdict"
}

# profile_floor CPUS: three traced cycles of the ioctl floor.
profile_floor() {
    trace_reset
    echo 1 >"$T/tracing_on"
    sh -c 'echo $$ >/sys/kernel/tracing/set_event_pid; echo $$ >/sys/kernel/tracing/set_ftrace_pid; exec "$@"' traced \
        "$ROOT/bin/suspend_floor" --cpus "$1" --cycles 3 >/tmp/profile-floor.out 2>&1 &&
        verdict=pass || { verdict=fail; rc=1; cat /tmp/profile-floor.out; }
    echo 0 >"$T/tracing_on"
    cat "$T/trace" >/tmp/trace-floor-$1.txt
    analyse /tmp/trace-floor-$1.txt "vmm=floor cpus=$1"
    echo "@@result profile-floor-${1}cpu $verdict"
}

for cpus in $SUSPEND_CPUS; do
    profile_floor "$cpus"
    profile_vmm "$cpus"
done
trace_reset
echo nop >"$T/current_tracer"
exit $rc
