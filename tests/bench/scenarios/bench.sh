#!/bin/sh
# Benchmarks our vmm against QEMU (with KVM) on this arm64 host, for the `bench` harness. Both boot
# the same kernel, initramfs and command line (no console=: each VMM's device tree names its
# UART as stdout-path), with the guest's `vmmtest=bench` mode, `vmmtest=bench-disk` for disk
# throughput or `vmmtest=bench-net` for the network. Runs alternate between the VMMs in each
# round. Every figure is one `@@bench KIND run=... vmm=... cpus=... round=... disks=N
# rng=on|off key=value` line; the runner on the other side aggregates them. The plan comes from bench.env; PARTS says which
# measurements run (bench --only).
#
# Devices: runs without disks are device-less on both sides (ours with --no-rng, QEMU with
# -nodefaults). The disk-throughput runs give both the same one disk and no rng. The `devices`
# part runs ours with disks and its default virtio-rng: suspend cycles with 1 and 2 disks, and
# the idle measurement with 1 disk. The network runs give both the same virtio-net device
# (fixed MAC) on the tap benchtap0, whose host end is 169.254.200.1/24 (ours sets it with
# --net ip=; QEMU's tap gets it from here), and no rng; ours also has a virtio-vsock device
# for the vsock round trips (ours only: QEMU's vhost-vsock needs a host module). Once the guest
# says its network is up, `guest-agent serve-bench` serves it from this host.
. "$ROOT/testbed/lib.sh"
. "$ROOT/testbed/bench.env"

KERNEL="$ROOT/guest/Image"
INITRD="$ROOT/guest/initrd.cpio"
# The same initramfs with disk-pattern in it, for the disk-throughput runs.
DISK_INITRD="$ROOT/guest/initrd-disk.cpio"
DISK_IMAGE=/tmp/bench-disk.img
# The same initramfs with guest-agent in it, for the network runs.
NET_INITRD="$ROOT/guest/initrd-net.cpio"
NET_TAP=benchtap0
NET_HOST=169.254.200.1
NET_GUEST=169.254.200.2/24
NET_MAC=52:54:00:12:34:56
VSOCK_SOCKET=/tmp/bench.vsock
# Guest connections to the host's vsock port 5300 reach this socket (hybrid vsock).
VSOCK_ECHO=${VSOCK_SOCKET}_5300
QEMU_CACHE=none
CMDLINE="quiet panic=-1"
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

# wants PART: whether the plan runs PART (boot, idle, suspend, floor, disk, net, devices,
# snapshot).
wants() {
    case " $PARTS " in *" $1 "*) return 0 ;; esac
    return 1
}

# qemu_cache_probe: whether QEMU accepts cache=none (O_DIRECT) for the disk image, which
# tmpfs (the host's /tmp) refuses before Linux 6.6: QEMU then gets cache=writeback, which,
# like our vmm, goes through the host's page cache. -daemonize returns only once QEMU has
# opened its drives, with its status.
qemu_cache_probe() {
    rm -f /tmp/qemu-probe.pid
    if "$QEMU_LIBS/ld-linux-aarch64.so.1" --library-path "$QEMU_LIBS" \
        "$ROOT/qemu/bin/qemu-system-aarch64" -M virt,gic-version=3 -accel kvm -cpu host \
        -display none -nodefaults -S -daemonize -pidfile /tmp/qemu-probe.pid \
        -drive "if=none,id=bench,file=$DISK_IMAGE,format=raw,cache=none,aio=threads" \
        -device virtio-blk-device,drive=bench,serial=bench >/tmp/qemu-probe.err 2>&1; then
        QEMU_CACHE=none
        kill "$(cat /tmp/qemu-probe.pid)" 2>/dev/null
    else
        QEMU_CACHE=writeback
    fi
    sed 's/^/[qemu cache=none probe] /' /tmp/qemu-probe.err
    echo "@@bench qemu-drive cache=$QEMU_CACHE aio=threads cache_none=$([ "$QEMU_CACHE" = none ] && echo accepted || echo refused)"
}

# run_vm RUN VMM CPUS EXTRA [DEVICES]: boots the bench guest on VMM (ours, ours-s2idle or qemu)
# with EXTRA on its command line and DEVICES attached: `rng` and `ID=IMAGE` disks (ours
# without `rng` gets --no-rng). Times it from process start to the init marker and measures
# its memory there; a `boot` run ends there, the others follow the guest to `@@bench done`.
# A `disk` run boots the initramfs with disk-pattern; a `net` run the one with guest-agent, on
# the tap (and, ours, with vsock), and serves the guest from here once its network is up.
run_vm() {
    run=$1 vmm=$2 cpus=$3 extra=$4 devices=${5:-}
    disks=0 rng=off initrd=$INITRD
    for device in $devices; do
        case $device in rng) rng=on ;; *=*) disks=$((disks + 1)) ;; esac
    done
    mode=bench
    [ "$run" = disk ] && mode=bench-disk initrd=$DISK_INITRD
    [ "$run" = net ] && mode=bench-net initrd=$NET_INITRD
    tag="run=$run vmm=$vmm cpus=$cpus round=$round disks=$disks rng=$rng"
    name=$run-$vmm-${cpus}cpu
    [ "$disks" = 0 ] || name=$name-${disks}disk
    out=/tmp/bench-$name.out err=/tmp/bench-$name.err
    if [ "$vmm" = qemu ]; then
        set -- "$QEMU_LIBS/ld-linux-aarch64.so.1" --library-path "$QEMU_LIBS" \
            "$ROOT/qemu/bin/qemu-system-aarch64" -M virt,gic-version=3 -accel kvm -cpu host \
            -display none -nodefaults -serial stdio -no-reboot -smp "$cpus" -m "$MEMORY" \
            -kernel "$KERNEL" -initrd "$initrd" -append "$CMDLINE vmmtest=$mode $extra"
        [ "$rng" = on ] && set -- "$@" -device virtio-rng-device
        [ "$run" = net ] && set -- "$@" \
            -netdev "tap,id=n0,ifname=$NET_TAP,script=no,downscript=no,vhost=off" \
            -device "virtio-net-device,netdev=n0,mac=$NET_MAC"
    else
        set -- "$VMM" -v --cpus "$cpus" --memory "$MEMORY" --kernel "$KERNEL" \
            --initramfs "$initrd" --cmdline "$CMDLINE vmmtest=$mode $extra"
        [ "$vmm" = ours-s2idle ] && set -- "$@" --no-suspend
        [ "$rng" = on ] || set -- "$@" --no-rng
        [ "$run" = net ] && set -- "$@" \
            --net "tap=$NET_TAP,ip=$NET_HOST,mask=255.255.255.0,mac=$NET_MAC" \
            --vsock "cid=3,socket=$VSOCK_SOCKET"
    fi
    for device in $devices; do
        case $device in *=*) ;; *) continue ;; esac
        id=${device%%=*} image=${device#*=}
        if [ "$vmm" = qemu ]; then
            set -- "$@" -drive "if=none,id=$id,file=$image,format=raw,cache=$QEMU_CACHE,aio=threads" \
                -device "virtio-blk-device,drive=$id,serial=$id"
        else
            set -- "$@" --disk "path=$image,id=$id"
        fi
    done
    disk_failed=no net_failed=no net_seen= net_missing= server=
    [ "$run" = net ] && rm -f "$VSOCK_SOCKET" "$VSOCK_ECHO"
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
        *"@@bench disk-queue "*) echo "@@bench disk-queue $tag ${line#*@@bench disk-queue }" ;;
        *"@@bench disk "*)
            echo "@@bench disk $tag ${line#*@@bench disk }"
            case "$line " in *" rc=0 "*) ;; *) disk_failed=yes ;; esac
            ;;
        *"@@bench net "*)
            echo "@@bench net $tag ${line#*@@bench net }"
            case "$line " in *" rc=0 "*) ;; *) net_failed=yes ;; esac
            net_test=${line#*test=}
            net_seen="$net_seen ${net_test%% *}"
            ;;
        *"@@guest net-up"*)
            [ "$run" = net ] && [ -z "$server" ] && serve_net
            ;;
        *"@@bench sleep "*) idle "$pid" ;;
        *"@@bench done"*) reached=done; break ;;
        esac
    done <"$FIFO"
    kill "$pid" "$watchdog" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ "$run" = net ]; then
        [ -n "$server" ] && { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; }
        rm -f "$VSOCK_SOCKET" "$VSOCK_ECHO"
        # Every test must have reported; the vsock round trip only on ours.
        net_missing=
        tests="tcp-guest-to-host tcp-host-to-guest tcp-rr"
        [ "$vmm" = qemu ] || tests="$tests vsock-rr"
        for net_test in $tests; do
            case " $net_seen " in
            *" $net_test "*) ;;
            *) net_missing="$net_missing,$net_test" ;;
            esac
        done
        [ -n "$net_missing" ] && net_failed=yes
    fi
    if [ "$vmm" = ours ]; then
        sed -n 's/.*\] suspended (in \([0-9]*\) us).*/suspend_us=\1/p;
                s/.*\] resumed ([^)]*) (in \([0-9]*\) us).*/resume_us=\1/p' "$err" |
            while read -r value; do echo "@@bench suspend $tag $value"; done
        # How many suspends the guest asked for and vmm refused (then rtcwake fails).
        requested=$(grep -c '] suspend requested by ' "$err")
        denied=$(grep -c '] suspend denied to ' "$err")
        echo "@@bench vmm-log $tag suspend_requested=$requested suspend_denied=$denied"
        grep -m 3 '] suspend denied to ' "$err" | sed 's/^/[vmm stderr] /'
    fi
    if [ "$disk_failed" = no ] && [ "$net_failed" = no ] && { [ "$reached" = done ] ||
        { [ "$run" = boot ] && [ "$reached" = init ]; }; }; then
        verdict=pass
    else
        verdict=fail; failures=$((failures + 1))
        echo "@@bench fail $tag reached=$reached disk_failed=$disk_failed net_failed=$net_failed" \
            "net_missing=${net_missing#,}"
        tail -n 20 "$out" | sed 's/^/[guest] /'
        tail -n 10 "$err" | sed 's/^/[vmm stderr] /'
        [ -n "$server" ] && tail -n 5 /tmp/bench-net-server.out | sed 's/^/[serve-bench] /'
    fi
    echo "@@result bench-$name-r$round $verdict reached=$reached"
}

# serve_net: once a net run's guest is up, gives QEMU's tap (ours set its own) the host
# address and starts the host's end of the measurements in the background (sets server).
serve_net() {
    if [ "$vmm" = qemu ]; then
        ip addr add "$NET_HOST/24" dev "$NET_TAP"
        ip link set "$NET_TAP" up
    fi
    rm -f "$VSOCK_ECHO"
    "$ROOT/bin/guest-agent" serve-bench "$NET_HOST" "$VSOCK_ECHO" >/tmp/bench-net-server.out 2>&1 &
    server=$!
}

# console_start: a fresh console FIFO, held open here (fd 6) so that a VMM writing to it never
# blocks and a read of it never waits past its time limit.
console_start() {
    exec 6>&-
    rm -f "$FIFO"
    mkfifo "$FIFO"
    exec 6<>"$FIFO"
}

# console_wait TEXT: reads the console (fd 6, into $out) until a line has TEXT; false if none
# comes within RUN_LIMIT seconds.
console_wait() {
    while IFS= read -t "$RUN_LIMIT" -r line <&6; do
        line=${line%"$CR"}
        echo "$line" >>"$out"
        case $line in *"$1"*) return 0 ;; esac
    done
    return 1
}

# qmp_wait TEXT: reads QEMU's QMP replies and events (fd 8) until one has TEXT (left in line);
# false if one says "failed" or none comes within RUN_LIMIT seconds.
qmp_wait() {
    while IFS= read -t "$RUN_LIMIT" -r line <&8; do
        case $line in *"$1"*) return 0 ;; *'"failed"'*) return 1 ;; esac
    done
    return 1
}

# until_suspended SOCKET: polls our vm.info until it says suspended; false after RUN_LIMIT
# seconds.
until_suspended() {
    now_ms; limit=$((ms + RUN_LIMIT * 1000))
    while [ "$ms" -lt "$limit" ]; do
        case $("$VMM" ctl --api-socket "$1" --json info 2>/dev/null) in
        *'"state":"suspended"'*) return 0 ;;
        esac
        now_ms
    done
    return 1
}

# snapshot_run MIB VMM: boots the guest with MIB of RAM in its suspend-wait mode on VMM (ours
# or qemu), saves it once it sleeps (ours: `vmm ctl snapshot --exit`; QEMU: QMP `migrate` to
# `exec:cat > FILE`, its guest in s2idle), restores it in a new process and wakes it (ours:
# `vmm ctl wakeup`; QEMU: a byte on its PL011 console). One `@@bench snapshot` line: the Rss
# of guest RAM before the save (guest_rss_kb), the save's wall time (save_ms; ours also
# own_ms, the reply's `ms`), what it stored (stored_kb, du), and from the restoring process's
# start to suspended (restore_ms; ours: vm.info says suspended; QEMU: query-status says
# running, its guest being in s2idle) and to running (running_ms: the guest's `@@guest
# resumed` after the wakeup).
snapshot_run() {
    mib=$1 vmm=$2 cpus=$SNAPSHOT_CPUS
    tag="run=snapshot vmm=$vmm cpus=$cpus round=$round disks=0 rng=off memory_mib=$mib"
    name=snapshot-$vmm-${mib}mib
    out=/tmp/bench-$name.out err=/tmp/bench-$name.err
    dir=/tmp/bench-snapshot sock=/tmp/bench-api.sock qmp=/tmp/bench-qmp qin=/tmp/bench-qin
    rm -rf "$dir" "$sock" "$qmp.in" "$qmp.out" "$qin"
    : >"$out"
    reached=none figures=
    if [ "$vmm" = qemu ]; then
        # QMP on a pipe pair, and the restored guest's console input on a FIFO, held open here.
        mkdir "$dir"
        mkfifo "$qmp.in" "$qmp.out" "$qin"
        exec 7<>"$qin" 8<>"$qmp.out" 9<>"$qmp.in"
        set -- "$QEMU_LIBS/ld-linux-aarch64.so.1" --library-path "$QEMU_LIBS" \
            "$ROOT/qemu/bin/qemu-system-aarch64" -M virt,gic-version=3 -accel kvm -cpu host \
            -display none -nodefaults -serial stdio -no-reboot -smp "$cpus" -m "$mib" \
            -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE vmmtest=suspend-wait" \
            -chardev "pipe,id=qmp,path=$qmp" -mon chardev=qmp,mode=control
    else
        set -- "$VMM" -v --cpus "$cpus" --memory "$mib" --kernel "$KERNEL" \
            --initramfs "$INITRD" --cmdline "$CMDLINE vmmtest=suspend-wait" --no-rng \
            --api-socket "$sock"
    fi
    console_start
    "$@" </dev/null >&6 2>"$err" &
    pid=$!
    if [ "$vmm" = qemu ]; then
        echo '{"execute":"qmp_capabilities"}' >&9
        echo '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}' >&9
    fi
    (sleep "$RUN_LIMIT"; kill "$pid" 2>/dev/null) &
    watchdog=$!
    # Saved once asleep: ours when vm.info says suspended, QEMU's s2idle guest 2 s after its line.
    if console_wait "@@guest suspending"; then
        reached=suspending
        if [ "$vmm" = qemu ]; then sleep 2; else until_suspended "$sock" || reached=not-suspended; fi
    fi
    if [ "$reached" = suspending ]; then
        default_memory=$MEMORY MEMORY=$mib
        figures=$(memory "$pid")
        MEMORY=$default_memory
        now_ms; t0=$ms
        if [ "$vmm" = qemu ]; then
            echo "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $dir/memory\"}}" >&9
            qmp_wait '"completed"' && reached=saved
            now_ms
            echo '{"execute":"quit"}' >&9
        else
            reply=$("$VMM" ctl --api-socket "$sock" --json snapshot "$dir" --exit) && reached=saved
            now_ms
            figures="$figures $(echo "$reply" | sed -n 's/.*"ms":\([0-9]*\).*/own_ms=\1/p')"
        fi
        figures="$figures save_ms=$((ms - t0))"
    fi
    [ "$reached" = saved ] || kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    status=$?
    kill "$watchdog" 2>/dev/null
    [ "$reached" = saved ] && [ "$status" != 0 ] && reached=exit-$status
    if [ "$reached" = saved ]; then
        sync
        stored=$(du -sk "$dir")
        figures="$figures stored_kb=${stored%%[!0-9]*}"
        rm -f "$sock"
        console_start
        now_ms; t0=$ms
        if [ "$vmm" = qemu ]; then
            "$@" -incoming "exec:cat $dir/memory" <"$qin" >&6 2>>"$err" &
            pid=$!
            echo '{"execute":"qmp_capabilities"}' >&9
        else
            "$VMM" -v --restore "$dir" --api-socket "$sock" </dev/null >&6 2>>"$err" &
            pid=$!
        fi
        (sleep "$RUN_LIMIT"; kill "$pid" 2>/dev/null) &
        watchdog=$!
        restored=no
        if [ "$vmm" = qemu ]; then
            now_ms; limit=$((ms + RUN_LIMIT * 1000))
            while [ "$ms" -lt "$limit" ]; do
                echo '{"execute":"query-status"}' >&9
                qmp_wait '"return": {"status": ' || break
                case $line in *'"status": "running"'*) restored=yes; break ;; esac
                now_ms
            done
        else
            until_suspended "$sock" && restored=yes
        fi
        if [ "$restored" = yes ]; then
            now_ms
            reached=restored
            figures="$figures restore_ms=$((ms - t0))"
            if [ "$vmm" = qemu ]; then
                echo >&7
            else
                "$VMM" ctl --api-socket "$sock" wakeup >/dev/null
            fi
            if console_wait "@@guest resumed"; then
                now_ms
                reached=done
                figures="$figures running_ms=$((ms - t0))"
            fi
        fi
        [ "$reached" = done ] || kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        kill "$watchdog" 2>/dev/null
    fi
    exec 6>&- 7>&- 8>&- 9>&-
    rm -rf "$dir" "$sock" "$qmp.in" "$qmp.out" "$qin" "$FIFO"
    echo "@@bench snapshot $tag $figures reached=$reached"
    if [ "$reached" = done ]; then
        verdict=pass
    else
        verdict=fail; failures=$((failures + 1))
        echo "@@bench fail $tag reached=$reached"
        tail -n 20 "$out" | sed 's/^/[guest] /'
        tail -n 10 "$err" | sed 's/^/[vmm stderr] /'
    fi
    echo "@@result bench-$name-r$round $verdict reached=$reached"
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
echo "@@bench plan rounds=$ROUNDS parts=$(echo $PARTS | tr ' ' ,) memory_mib=$MEMORY" \
    "boot_cpus=$(echo $BOOT_CPUS | tr ' ' ,)" \
    "suspend_cpus=$(echo $SUSPEND_CPUS | tr ' ' ,) suspend_cycles=$SUSPEND_CYCLES" \
    "idle_cpus=$IDLE_CPUS idle_trips=$IDLE_TRIPS idle_settle_s=$IDLE_SETTLE" \
    "idle_window_s=$IDLE_WINDOW floor_cycles=$FLOOR_CYCLES disk_cpus=$DISK_CPUS" \
    "disk_image_mib=$DISK_IMAGE_MIB disk_seconds=$DISK_SECONDS" \
    "net_cpus=$NET_CPUS net_seconds=$NET_SECONDS net_rr_count=$NET_RR_COUNT" \
    "device_disk_mib=$DEVICE_DISK_MIB device_suspend_cpus=$(echo $DEVICE_SUSPEND_CPUS | tr ' ' ,)" \
    "device_disks=$(echo $DEVICE_DISKS | tr ' ' ,)" \
    "snapshot_mib=$(echo $SNAPSHOT_MIB | tr ' ' ,) snapshot_cpus=$SNAPSHOT_CPUS"
# The images live in the host's RAM (tmpfs), written in full so that no read hits a hole.
if wants disk; then
    dd if=/dev/zero of="$DISK_IMAGE" bs=1048576 count="$DISK_IMAGE_MIB" 2>/dev/null
    qemu_cache_probe
fi
if wants devices; then
    for i in 1 2; do
        dd if=/dev/zero of=/tmp/bench-dev$i.img bs=1048576 count="$DEVICE_DISK_MIB" 2>/dev/null
    done
fi
round=1
while [ "$round" -le "$ROUNDS" ]; do
    # Alternate which VMM goes first, so that neither always runs on a warmer host.
    if [ $((round % 2)) = 1 ]; then pair="ours qemu" trio="ours ours-s2idle qemu"
    else pair="qemu ours" trio="qemu ours-s2idle ours"; fi
    echo "@@bench round $round of $ROUNDS"
    idle_extra="cycles=$IDLE_TRIPS sleep=$((IDLE_SETTLE + IDLE_WINDOW + 2))"
    if wants boot; then
        for cpus in $BOOT_CPUS; do
            for vmm in $pair; do run_vm boot "$vmm" "$cpus" "cycles=0"; done
        done
    fi
    if wants disk; then
        for vmm in $pair; do
            run_vm disk "$vmm" "$DISK_CPUS" "seconds=$DISK_SECONDS" "bench=$DISK_IMAGE"
        done
    fi
    if wants net; then
        for vmm in $pair; do
            run_vm net "$vmm" "$NET_CPUS" \
                "net=$NET_GUEST host=$NET_HOST seconds=$NET_SECONDS count=$NET_RR_COUNT"
        done
    fi
    if wants idle; then
        for vmm in $trio; do run_vm idle "$vmm" "$IDLE_CPUS" "$idle_extra"; done
    fi
    if wants devices; then
        run_vm idle ours "$IDLE_CPUS" "$idle_extra" "rng dev1=/tmp/bench-dev1.img"
    fi
    if wants suspend; then
        for cpus in $SUSPEND_CPUS; do
            run_vm suspend ours "$cpus" "cycles=$SUSPEND_CYCLES"
        done
    fi
    if wants devices; then
        for cpus in $DEVICE_SUSPEND_CPUS; do
            for n in $DEVICE_DISKS; do
                devices=rng
                for i in $(seq "$n"); do devices="$devices dev$i=/tmp/bench-dev$i.img"; done
                run_vm suspend ours "$cpus" "cycles=$SUSPEND_CYCLES" "$devices"
            done
        done
    fi
    wants floor && floor
    if wants snapshot; then
        for mib in $SNAPSHOT_MIB; do
            for vmm in $pair; do snapshot_run "$mib" "$vmm"; done
        done
    fi
    round=$((round + 1))
done
rm -f "$DISK_IMAGE" /tmp/bench-dev1.img /tmp/bench-dev2.img
echo "@@bench end failures=$failures"
[ "$failures" = 0 ]
