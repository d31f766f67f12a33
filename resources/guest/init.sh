#!/bin/busybox sh
# /init of the nested Linux guest, both in its initramfs (guest/initrd.cpio) and on its root
# disk (guest/rootfs.ext4, the only one with /on-rootfs; also its /sbin/init). `vmmtest=MODE`
# on the kernel command line picks what it does after reporting; without one it gives a shell
# on the console. With `root=/dev/vdX` the initramfs loads the modules, mounts that disk (`rw`
# on the command line: read-write) and switches to it, where this script runs again as /init.
/bin/busybox --install -s /bin 2>/dev/null
export PATH=/bin:/sbin
tmp_mounted=no
if [ ! -e /bin/mount ]; then
    # A read-only root disk: the applet links go to a tmpfs instead.
    /bin/busybox mount -t tmpfs tmpfs /tmp
    /bin/busybox mkdir -p /tmp/bin
    /bin/busybox --install -s /tmp/bin
    export PATH=/tmp/bin:/bin:/sbin
    tmp_mounted=yes
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# On the root disk, /dev may already be there: moved by the initramfs while a console is open.
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
on_rootfs=no
if [ -e /on-rootfs ]; then
    on_rootfs=yes
    [ "$tmp_mounted" = yes ] || mount -t tmpfs tmpfs /tmp
fi
mode=shell
cycles=1
# rtcwake's alarm, in seconds; with retry=1, disk-suspend retries an attempt the guest aborted
# itself (the alarm came before the slow emulated suspend was done) instead of counting it.
wake=2
retry=0
seed=1
root=
rootfstype=ext4
root_mode=ro
# net=ADDR/PREFIX configures eth0; host=ADDR is the host's end of the tap; peer=ADDR:PORT is
# where the exchange mode connects; udp=PORT makes the net mode count datagrams while asleep.
net=
host=
peer=
udp=
# resume=/dev/vdXN: the swap partition a hibernated guest resumes from (and hibernates to).
resume=
# alarm=N: the snapshot mode sets an RTC wake alarm N seconds ahead before it suspends;
# more=N: it then runs N ordinary suspend cycles after its resume; with sleepkey=1 it
# suspends only when the sleep button (KEY_SLEEP, 142) is pressed.
alarm=
more=
sleepkey=
for word in $(cat /proc/cmdline); do
    case "$word" in
    vmmtest=*) mode=${word#vmmtest=} ;;
    cycles=*) cycles=${word#cycles=} ;;
    wake=*) wake=${word#wake=} ;;
    retry=*) retry=${word#retry=} ;;
    seed=*) seed=${word#seed=} ;;
    root=/dev/vd*) root=${word#root=} ;;
    rootfstype=*) rootfstype=${word#rootfstype=} ;;
    rw) root_mode=rw ;;
    ro) root_mode=ro ;;
    net=*) net=${word#net=} ;;
    host=*) host=${word#host=} ;;
    peer=*) peer=${word#peer=} ;;
    udp=*) udp=${word#udp=} ;;
    resume=/dev/vd*) resume=${word#resume=} ;;
    alarm=*) alarm=${word#alarm=} ;;
    more=*) more=${word#more=} ;;
    sleepkey=*) sleepkey=${word#sleepkey=} ;;
    esac
done

if [ "$on_rootfs" = no ]; then
    # Debian's kernel has these as modules: the buttons (gpio-keys on the PL061) and evdev,
    # virtio-mmio, virtio-blk, virtio-rng and ext4, with their dependencies, listed in load
    # order. The root disk's init finds them loaded.
    while read -r module; do
        name=$(echo "${module%.ko}" | tr - _)
        [ -d "/sys/module/$name" ] || insmod "/lib/modules/$module" \
            || echo "@@guest insmod-failed module=$module"
    done </lib/modules/load-order
fi

if [ "$on_rootfs" = no ] && [ -n "$resume" ]; then
    # virtio-blk is a module, so the kernel cannot resume by itself at boot: once the disk is
    # there, name it in /sys/power/resume. With an image on it the kernel restores the
    # hibernated guest and this write never returns here; without one boot goes on.
    i=0
    while [ ! -b "$resume" ] && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    cat "/sys/class/block/${resume#/dev/}/dev" >/sys/power/resume
    echo "@@guest resume-image none rc=$? dev=$resume"
fi

if [ "$on_rootfs" = no ] && [ -n "$root" ]; then
    # Switch to the root disk: wait up to 10 s for it, mount it and run its init.
    i=0
    while [ ! -b "$root" ] && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if mount -t "$rootfstype" -o "$root_mode" "$root" /newroot && [ -x /newroot/init ]; then
        echo "@@guest switch-root dev=$root serial=$(cat "/sys/block/${root#/dev/}/serial" 2>/dev/null)"
        # The root disk's init mounts them again.
        for fs in /dev /sys /proc; do
            umount "$fs" 2>/dev/null || mount -o move "$fs" "/newroot$fs"
        done
        exec switch_root /newroot /init
    fi
    echo "@@guest switch-root failed dev=$root present=$([ -b "$root" ] && echo yes || echo no)"
    [ "$mode" = shell ] || poweroff -f
fi

# disk_by_id NAME: prints the /dev/vdX whose virtio-blk serial (vmm's --disk id) is NAME,
# waiting up to 10 s for it to appear; disks are never found by their order.
disk_by_id() {
    local tries=0 serial dev
    while [ "$tries" -lt 100 ]; do
        for serial in /sys/block/vd*/serial; do
            [ -r "$serial" ] && [ "$(cat "$serial" 2>/dev/null)" = "$1" ] || continue
            dev=${serial%/serial}
            dev=/dev/${dev##*/}
            [ -b "$dev" ] || continue
            echo "$dev"
            return 0
        done
        sleep 0.1
        tries=$((tries + 1))
    done
    return 1
}

# suspend_cycle N: one `rtcwake -m mem -s 2` round trip, reported as `@@guest cycle=N ...`;
# returns rtcwake's status.
suspend_cycle() {
    local before after t0 t1 rc
    before=$(cat /sys/power/suspend_stats/success)
    t0=$(cut -d' ' -f1 /proc/uptime)
    rtcwake -u -m mem -s "$wake"
    rc=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    after=$(cat /sys/power/suspend_stats/success)
    echo "@@guest cycle=$1 rc=$rc success_before=$before success_after=$after online=$(cat /sys/devices/system/cpu/online) t0=$t0 t1=$t1"
    return $rc
}

# wait_file PATH SECONDS: waits for PATH to exist; returns 1 if it did not in time.
wait_file() {
    local tries=0
    while [ ! -e "$1" ]; do
        [ "$tries" -ge $(($2 * 10)) ] && return 1
        sleep 0.1
        tries=$((tries + 1))
    done
}

# in_echos: ICMP echo requests this guest received so far.
in_echos() {
    awk '$1 == "Icmp:" && $2 !~ /^[0-9]+$/ { for (i = 2; i <= NF; i++) if ($i == "InEchos") f = i; next }
        $1 == "Icmp:" { print $f }' /proc/net/snmp
}

# suspend_cycles N: N rtcwake cycles (retrying those the guest aborted itself with retry=1),
# each followed by `after_cycle I` when defined; reports `@@guest cycles-done good=G ...`.
suspend_cycles() {
    local i=1 attempts=0
    while [ "$i" -le "$1" ] && [ "$attempts" -lt $(($1 * 2)) ]; do
        attempts=$((attempts + 1))
        if suspend_cycle "$i" || [ "$retry" != 1 ]; then
            after_cycle "$i"
            i=$((i + 1))
        else
            aborted "$i"
        fi
    done
    echo "@@guest cycles-done good=$((i - 1)) attempts=$attempts"
}
after_cycle() { :; }

# aborted N: reports an attempt the guest gave up itself (retried with retry=1).
aborted() {
    echo "@@guest aborted cycle=$1 step=$(cat /sys/power/suspend_stats/last_failed_step) errno=$(cat /sys/power/suspend_stats/last_failed_errno) dev=$(cat /sys/power/suspend_stats/last_failed_dev)"
}

# wait_key CODE: returns once the gpio-keys key CODE is pressed (1 if there is no such device).
wait_key() {
    local code=$1
    dev=
    for event in /sys/class/input/event*; do
        [ "$(cat "$event/device/name" 2>/dev/null)" = gpio-keys ] && dev=/dev/input/${event##*/}
    done
    [ -n "$dev" ] || { echo "@@guest no gpio-keys input device"; return 1; }
    # struct input_event on arm64: 16 bytes of time, u16 type, u16 code, s32 value.
    while :; do
        set -- $(hexdump -n 24 -v -e '12/2 "%u " "\n"' "$dev")
        [ "$9" = 1 ] && [ "${10}" = "$code" ] && [ "${11}" = 1 ] && return 0
    done
}

# Powers off when KEY_POWER (116) is pressed, like a desktop's power-key handler.
power_key_handler() {
    wait_key 116 || return
    echo "@@guest power-key pressed"
    poweroff -f
}
rtc=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null || echo none)
root_dev=$(awk '$2 == "/" { dev = $1 } END { print dev }' /proc/mounts)
if [ -n "$net" ]; then
    # Static configuration of the first virtio-net device (waiting up to 10 s for it).
    wait_file /sys/class/net/eth0 10
    ip link set lo up
    ip addr add "$net" dev eth0 && ip link set eth0 up
    echo "@@guest net-up rc=$? dev=eth0 addr=$net mac=$(cat /sys/class/net/eth0/address 2>/dev/null)"
fi
echo "@@guest init uptime=$(cut -d' ' -f1 /proc/uptime) nproc=$(nproc) rtc=$rtc mode=$mode root=$root_dev"
case "$mode" in
boot)
    poweroff -f
    ;;
reboot)
    reboot -f
    ;;
suspend-rtc)
    # `rtcwake -m mem -s 2` cycles: each must succeed, bring every CPU back and count.
    echo "@@guest mem_sleep=$(cat /sys/power/mem_sleep | tr ' ' ,) online=$(cat /sys/devices/system/cpu/online)"
    i=1
    while [ "$i" -le "$cycles" ]; do
        suspend_cycle "$i"
        i=$((i + 1))
    done
    echo "@@guest dmesg entry_deep=$(dmesg | grep -c 'PM: suspend entry (deep)') exit=$(dmesg | grep -c 'PM: suspend exit') entry_s2idle=$(dmesg | grep -c 'PM: suspend entry (s2idle)')"
    poweroff -f
    ;;
disk-suspend)
    # `disk-pattern write` keeps rewriting the disk with id `data` while `cycles=N` rtcwake
    # cycles suspend and resume the guest under it; then every block must hold the last
    # generation, read back with O_DIRECT. Then 64 bytes from the virtio-rng.
    size=$((64 << 20))
    disk=$(disk_by_id data) || { echo "@@guest disk-missing id=data"; poweroff -f; }
    echo "@@guest disk id=data dev=$disk sectors=$(cat "/sys/block/${disk#/dev/}/size")"
    rm -f /tmp/stop
    disk-pattern write "$disk" --seed "$seed" --size "$size" --stop-file /tmp/stop \
        >/tmp/writer.out 2>&1 &
    writer=$!
    i=1
    attempts=0
    while [ "$i" -le "$cycles" ] && [ "$attempts" -lt $((cycles * 2)) ]; do
        attempts=$((attempts + 1))
        if suspend_cycle "$i" || [ "$retry" != 1 ]; then
            i=$((i + 1))
        else
            aborted "$i"
        fi
    done
    echo "@@guest cycles-done good=$((i - 1)) attempts=$attempts"
    touch /tmp/stop
    wait "$writer"
    writer_rc=$?
    cat /tmp/writer.out
    gen=$(sed -n 's/.*@@guest pattern-written gen=\([0-9]*\).*/\1/p' /tmp/writer.out)
    echo "@@guest writer rc=$writer_rc gen=${gen:-none}"
    sync
    disk-pattern verify "$disk" --direct --seed "$seed" --gen "${gen:-0}" --size "$size" \
        >/tmp/verify.out 2>&1
    sed 's/^/@@guest /' /tmp/verify.out
    rng=$(timeout 5 dd if=/dev/hwrng bs=64 count=1 iflag=fullblock 2>/dev/null | wc -c)
    echo "@@guest rng bytes=$((rng + 0))"
    echo "@@guest hwrng current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null || echo none)"
    poweroff -f
    ;;
fs-suspend)
    # On a read-write ext4 root: 8 MiB of random data written and fsynced, `cycles=N` rtcwake
    # cycles each followed by a 64 KiB fsynced append, then the data read back from the disk
    # (page cache dropped) must be unchanged; the root is left clean (read-only) for e2fsck.
    dd if=/dev/urandom of=/data.bin bs=1048576 count=8 iflag=fullblock conv=fsync 2>/dev/null
    echo "@@guest fs-data rc=$? bytes=$(($(wc -c </data.bin)))"
    sync
    md5_before=$(md5sum /data.bin | cut -d' ' -f1)
    rm -f /cycles.log
    ok=0
    log_bytes=0
    i=1
    attempts=0
    while [ "$i" -le "$cycles" ] && [ "$attempts" -lt $((cycles * 2)) ]; do
        attempts=$((attempts + 1))
        suspend_cycle "$i"
        rc=$?
        if [ "$rc" != 0 ] && [ "$retry" = 1 ]; then
            aborted "$i"
            continue
        fi
        dd if=/dev/urandom of=/cycles.log bs=65536 count=1 iflag=fullblock oflag=append \
            conv=notrunc,fsync 2>/dev/null
        append_rc=$?
        log_bytes=$(($(wc -c </cycles.log)))
        echo "@@guest fs-append cycle=$i rc=$append_rc log_bytes=$log_bytes"
        if [ "$rc" = 0 ] && [ "$append_rc" = 0 ] && [ "$log_bytes" = $((i * 65536)) ]; then
            ok=$((ok + 1))
        fi
        i=$((i + 1))
    done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    md5_after=$(md5sum /data.bin | cut -d' ' -f1)
    echo "@@guest fs-check md5_before=$md5_before md5_after=$md5_after cycles_ok=$ok/$cycles log_bytes=$log_bytes"
    sync
    mount -o remount,ro /
    echo "@@guest remount-ro rc=$?"
    poweroff -f
    ;;
net)
    # Pings the host and waits to be pinged (3 echo requests each way); with peer=, answers
    # the host's exchange rounds over one TCP connection: round 0 at once, round I after
    # rtcwake cycle I of `cycles`; with udp=PORT, then sleeps with no alarm (the host sends
    # datagrams to the sleeping guest, then wakes it) and reports what arrived.
    ping -c 3 -W 5 "$host" >/tmp/ping.out 2>&1
    echo "@@guest ping to=$host rc=$? received=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)"
    tries=0
    while [ "$(in_echos)" -lt 3 ] && [ "$tries" -lt 600 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    echo "@@guest pinged in_echos=$(in_echos)"
    if [ -n "$peer" ]; then
        guest-agent exchange "$peer" &
        wait_file /tmp/exchange-round-0 120 || echo "@@guest exchange-missing round=0"
        after_cycle() {
            wait_file "/tmp/exchange-round-$1" 120 || echo "@@guest exchange-missing round=$1"
        }
        suspend_cycles "$cycles"
    fi
    if [ -n "$udp" ]; then
        guest-agent udp-sink "$udp" /tmp/udp-count &
        wait_file /tmp/udp-count 10
        echo enabled > /sys/class/tty/ttyS0/power/wakeup
        echo "@@guest udp-ready port=$udp"
        echo mem > /sys/power/state
        echo "@@guest udp-woken rc=$?"
        sleep 2
        echo "@@guest udp received=$(cat /tmp/udp-count)"
    fi
    poweroff -f
    ;;
vsock)
    # A command agent on vsock port 1234. The host drives it: once it creates
    # /tmp/go-suspend (through the agent), `cycles` rtcwake cycles; once it creates
    # /tmp/go-poweroff, power-off.
    guest-agent agent 1234 &
    wait_file /tmp/go-suspend 300 || echo "@@guest go-suspend-missing"
    suspend_cycles "$cycles"
    wait_file /tmp/go-poweroff 300 || echo "@@guest go-poweroff-missing"
    poweroff -f
    ;;
disk-readonly)
    # The disk with id `ro` is read-only: a direct write must fail; its first MiB is reported.
    disk=$(disk_by_id ro) || { echo "@@guest disk-missing id=ro"; poweroff -f; }
    dd if=/dev/zero of="$disk" bs=4096 count=1 oflag=direct conv=fsync 2>/dev/null
    rc=$?
    echo "@@guest ro-write rc=$rc ro_flag=$(cat "/sys/block/${disk#/dev/}/ro")"
    echo "@@guest ro-read md5=$(dd if="$disk" bs=1048576 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
    poweroff -f
    ;;
suspend-wait)
    # One `echo mem` with no alarm: only the host (wake button or console byte) can wake it.
    # Under QEMU the console is the PL011 (ttyAMA0), whose byte must wake its s2idle.
    echo enabled > /sys/class/tty/ttyS0/power/wakeup
    [ -e /sys/class/tty/ttyAMA0 ] && echo enabled > /sys/class/tty/ttyAMA0/power/wakeup
    before=$(cat /sys/power/suspend_stats/success)
    echo "@@guest suspending mem_sleep=$(cat /sys/power/mem_sleep | tr ' ' ,)"
    echo mem > /sys/power/state
    rc=$?
    echo "@@guest resumed rc=$rc success_before=$before success_after=$(cat /sys/power/suspend_stats/success) online=$(cat /sys/devices/system/cpu/online)"
    poweroff -f
    ;;
snapshot)
    # A process that counts in memory and a file on the root disk, then one `echo mem` that
    # only the host (wake button, console byte) or the RTC alarm (alarm=N) ends: the host
    # saves the sleeping guest to disk meanwhile and restores it in a new vmm. The guest then
    # reports whether the process went on, the file kept its token, the clock is right, and
    # (more=N) that N ordinary suspend cycles still work.
    echo enabled > /sys/class/tty/ttyS0/power/wakeup
    echo "$seed-$(cat /proc/sys/kernel/random/uuid)" >/snapshot-token
    sync
    mkdir -p /mnt/memory && mount -t tmpfs tmpfs /mnt/memory
    # Written aside and renamed: a reader never sees the file empty between truncate and write.
    (n=0; while :; do n=$((n + 1)); echo "$n" >/mnt/memory/ticks.new; mv /mnt/memory/ticks.new /mnt/memory/ticks; sleep 0.2; done) &
    ticker=$!
    sleep 1
    if [ -n "$alarm" ]; then
        echo 0 >/sys/class/rtc/rtc0/wakealarm
        echo "+$alarm" >/sys/class/rtc/rtc0/wakealarm
    fi
    if [ "$sleepkey" = 1 ]; then
        echo "@@guest waiting-for-sleep-key"
        wait_key 142
    fi
    echo "@@guest suspending pid=$ticker token=$(cat /snapshot-token) ticks=$(cat /mnt/memory/ticks) online=$(cat /sys/devices/system/cpu/online)"
    echo mem > /sys/power/state
    rc=$?
    ticks=$(cat /mnt/memory/ticks)
    sleep 1
    alive=no
    kill -0 "$ticker" 2>/dev/null && alive=yes
    # The clock is read last, right before the line goes out: the host compares it with its own
    # as it reads the line, and dmesg alone can take seconds in a loaded nested guest.
    echo "@@guest resumed rc=$rc pid=$ticker alive=$alive ticks=$ticks ticks_later=$(cat /mnt/memory/ticks) token=$(cat /snapshot-token) pm_exit=$(dmesg | grep -c 'PM: suspend exit') online=$(cat /sys/devices/system/cpu/online) date=$(date +%s)"
    [ -n "$more" ] && suspend_cycles "$more"
    poweroff -f
    ;;
hibernate)
    # Swap on the `resume=` partition, then a process and a tmpfs file that only live in
    # memory, then `echo disk`: the guest writes itself to the swap and powers off (PSCI
    # SYSTEM_OFF2 on a 6.13+ host). The next boot with the same disks resumes it here, and it
    # reports whether the process still runs and the file still holds its token.
    mkswap "$resume" >/dev/null && swapon "$resume"
    echo "@@guest swap rc=$? dev=$resume"
    mkdir -p /mnt/memory && mount -t tmpfs tmpfs /mnt/memory
    echo "$seed-$(cat /proc/sys/kernel/random/uuid)" >/mnt/memory/token
    # Written aside and renamed: a reader never sees the file empty between truncate and write.
    (n=0; while :; do n=$((n + 1)); echo "$n" >/mnt/memory/ticks.new; mv /mnt/memory/ticks.new /mnt/memory/ticks; sleep 0.2; done) &
    ticker=$!
    sleep 1
    echo "@@guest hibernating pid=$ticker token=$(cat /mnt/memory/token) ticks=$(cat /mnt/memory/ticks)"
    echo disk >/sys/power/state
    rc=$?
    # A resumed guest goes on here; so does one whose hibernation failed (rc != 0).
    ticks=$(cat /mnt/memory/ticks)
    sleep 1
    alive=no
    kill -0 "$ticker" 2>/dev/null && alive=yes
    echo "@@guest thawed rc=$rc pid=$ticker alive=$alive ticks=$ticks ticks_later=$(cat /mnt/memory/ticks) token=$(cat /mnt/memory/token)"
    poweroff -f
    ;;
ticker)
    # Ticks once a second with the guest's clocks until the power button is pressed.
    power_key_handler &
    i=0
    while :; do
        i=$((i + 1))
        echo "@@guest tick n=$i uptime=$(cut -d' ' -f1 /proc/uptime) date=$(date +%s)"
        sleep 1
    done
    ;;
bench)
    # scripts/bench.sh: stop the VMM's boot timer (BOOT_TIMER_BASE, Firecracker's magic 123)
    # and print the marker the runner times from outside; then `cycles=N` round trips of
    # `rtcwake -m mem -s 1`, each started just after an RTC second ticks so that its alarm
    # (util-linux sets it at the RTC's second + 1 + 1) is 2 s away, and with `sleep=S` one
    # S-second sleep for the host's idle cost. The runner stops the VM after `@@bench done`.
    devmem 0x09040000 8 123
    echo "@@bench init"
    sleep_s=0
    for word in $(cat /proc/cmdline); do
        case "$word" in sleep=*) sleep_s=${word#sleep=} ;; esac
    done
    rtc_now=/sys/class/rtc/rtc0/since_epoch
    i=1
    while [ "$i" -le "$cycles" ]; do
        read -r s0 <"$rtc_now"
        s=$s0
        while [ -n "$s0" ] && [ "$s" = "$s0" ]; do read -r s <"$rtc_now"; done
        read -r t0 _ </proc/uptime
        rtcwake -u -m mem -s 1 >/dev/null
        rc=$?
        read -r t1 _ </proc/uptime
        echo "@@bench trip cycle=$i rc=$rc t0=$t0 t1=$t1"
        i=$((i + 1))
    done
    if [ "$sleep_s" -gt 0 ]; then
        echo "@@bench sleep s=$sleep_s mem_sleep=$(tr ' ' , </sys/power/mem_sleep)"
        rtcwake -u -m mem -s "$sleep_s" >/dev/null
        echo "@@bench woke rc=$?"
    fi
    echo "@@bench done"
    sleep 600
    poweroff -f
    ;;
bench-disk)
    # scripts/bench.sh: throughput of the disk with id `bench` (from the initramfs, which then
    # has disk-pattern), one O_DIRECT request at a time for `seconds=S` each: 1 MiB sequential
    # reads, 1 MiB sequential writes (ending with an fdatasync) and 4 KiB random reads, each
    # as `@@bench disk rc=N requests=R mode=M block=B span=... ops=N bytes=N ns=N mbps=X
    # iops=Y` (R: the virtio requests the block layer made of the N operations), after the
    # queue's limits as `@@bench disk-queue ...`. The runner stops the VM after `@@bench done`.
    echo "@@bench init"
    seconds=5
    for word in $(cat /proc/cmdline); do
        case "$word" in seconds=*) seconds=${word#seconds=} ;; esac
    done
    disk=$(disk_by_id bench) || echo "@@bench disk rc=missing id=bench"
    if [ -n "$disk" ]; then
        queue=/sys/block/${disk#/dev/}/queue
        echo "@@bench disk-queue max_segments=$(cat "$queue/max_segments")" \
            "max_segment_size=$(cat "$queue/max_segment_size")" \
            "max_sectors_kb=$(cat "$queue/max_sectors_kb") scheduler=$(tr ' ' , <"$queue/scheduler")"
    fi
    for spec in seqread:1048576 seqwrite:1048576 randread:4096; do
        [ -n "$disk" ] || break
        read -r reads0 _ _ _ writes0 _ <"/sys/block/${disk#/dev/}/stat"
        disk-pattern bench "$disk" --mode "${spec%:*}" --block "${spec#*:}" \
            --seconds "$seconds" --seed "$seed" >/tmp/disk-bench.out 2>&1
        rc=$?
        read -r reads1 _ _ _ writes1 _ <"/sys/block/${disk#/dev/}/stat"
        requests=$((reads1 - reads0 + writes1 - writes0))
        result=$(tail -n 1 /tmp/disk-bench.out)
        case "$result" in
        "disk-bench "*) echo "@@bench disk rc=$rc requests=$requests ${result#disk-bench }" ;;
        *) echo "@@bench disk rc=$rc mode=${spec%:*}"; sed 's/^/[disk-pattern] /' /tmp/disk-bench.out ;;
        esac
    done
    echo "@@bench done"
    sleep 600
    poweroff -f
    ;;
bench-net)
    # scripts/bench.sh: TCP throughput for `seconds=S` each way (guest to host, host to guest)
    # and `count=N` one-byte TCP round trips with the host's `guest-agent serve-bench` on
    # host=ADDR, and N vsock round trips to the host's port 5300 when there is a virtio-vsock
    # device; each as guest-agent's `@@bench net test=NAME rc=0 ...` line (`rc=1 error=...`
    # when it failed). The guest-agent from the initramfs retries connecting for 30 s: the
    # host starts its server after `@@guest net-up`. The runner stops the VM after `@@bench done`.
    echo "@@bench init"
    seconds=5
    count=2000
    for word in $(cat /proc/cmdline); do
        case "$word" in
        seconds=*) seconds=${word#seconds=} ;;
        count=*) count=${word#count=} ;;
        esac
    done
    guest-agent tcp-send "$host" "$seconds"
    guest-agent tcp-recv "$host" "$seconds"
    guest-agent rr "$host" "$count"
    if ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | grep -q virtio; then
        guest-agent vsock-rr 5300 "$count"
    fi
    echo "@@bench done"
    sleep 600
    poweroff -f
    ;;
demo)
    # The main job without a terminal (scripts/run.sh in CI): a greeting, one suspend-to-RAM
    # woken by the RTC (reported as `@@guest cycle=1 ...`), power-off.
    echo "Hello from an arm64 Linux guest on our vmm:"
    uname -a
    echo "Root file system: $root_dev ($(awk '$2 == "/" { print $3 ", " substr($4, 1, 2) }' /proc/mounts))"
    echo "CPUs online: $(cat /sys/devices/system/cpu/online); memory: $(grep MemTotal /proc/meminfo)"
    echo "RTC: $(cat /sys/class/rtc/rtc0/name 2>/dev/null) at $(date -u -d @"$rtc" 2>/dev/null)"
    echo "Sleep states: $(cat /sys/power/state); mem_sleep: $(cat /sys/power/mem_sleep 2>/dev/null)"
    echo "Suspending to RAM for 2 s (rtcwake -m mem -s 2):"
    suspend_cycle 1
    echo "Back from suspend-to-RAM; suspends so far: $(cat /sys/power/suspend_stats/success). Powering off."
    poweroff -f
    ;;
shell)
    # The main job on a terminal (scripts/run.sh): a shell on the console, and a keypress on
    # it wakes the guest from suspend-to-RAM.
    echo enabled > /sys/class/tty/ttyS0/power/wakeup
    echo
    echo "Guest shell on $root_dev ($(nproc) CPUs). Try:"
    echo "  echo mem > /sys/power/state     the VM sleeps; press Enter (any key) to wake it"
    echo "  cat /sys/power/suspend_stats/success     suspends so far"
    echo "  poweroff -f     leave (vmm exits)"
    PS1='guest:\w# ' setsid cttyhack sh
    poweroff -f
    ;;
*)
    echo "Type 'poweroff -f' to stop the VM."
    setsid cttyhack sh
    poweroff -f
    ;;
esac
