#!/bin/busybox sh
# /init of the nested Linux guest. `vmmtest=MODE` on the kernel command line picks what it does
# after reporting; without one it gives a shell on the console.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode=shell
cycles=1
for word in $(cat /proc/cmdline); do
    case "$word" in
    vmmtest=*) mode=${word#vmmtest=} ;;
    cycles=*) cycles=${word#cycles=} ;;
    esac
done
# The buttons (gpio-keys on the PL061) and evdev are modules in Debian's kernel.
for module in /lib/modules/*.ko; do insmod "$module" 2>/dev/null; done

# Powers off when KEY_POWER (116) is pressed, like a desktop's power-key handler.
power_key_handler() {
    dev=
    for event in /sys/class/input/event*; do
        [ "$(cat "$event/device/name" 2>/dev/null)" = gpio-keys ] && dev=/dev/input/${event##*/}
    done
    [ -n "$dev" ] || { echo "@@guest no gpio-keys input device"; return; }
    # struct input_event on arm64: 16 bytes of time, u16 type, u16 code, s32 value.
    while :; do
        set -- $(hexdump -n 24 -v -e '12/2 "%u " "\n"' "$dev")
        if [ "$9" = 1 ] && [ "${10}" = 116 ] && [ "${11}" = 1 ]; then
            echo "@@guest power-key pressed"
            poweroff -f
        fi
    done
}
rtc=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null || echo none)
echo "@@guest init uptime=$(cut -d' ' -f1 /proc/uptime) nproc=$(nproc) rtc=$rtc mode=$mode"
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
        before=$(cat /sys/power/suspend_stats/success)
        t0=$(cut -d' ' -f1 /proc/uptime)
        rtcwake -u -m mem -s 2
        rc=$?
        t1=$(cut -d' ' -f1 /proc/uptime)
        after=$(cat /sys/power/suspend_stats/success)
        echo "@@guest cycle=$i rc=$rc success_before=$before success_after=$after online=$(cat /sys/devices/system/cpu/online) t0=$t0 t1=$t1"
        i=$((i + 1))
    done
    echo "@@guest dmesg entry_deep=$(dmesg | grep -c 'PM: suspend entry (deep)') exit=$(dmesg | grep -c 'PM: suspend exit') entry_s2idle=$(dmesg | grep -c 'PM: suspend entry (s2idle)')"
    poweroff -f
    ;;
suspend-wait)
    # One `echo mem` with no alarm: only the host (wake button or console byte) can wake it.
    echo enabled > /sys/class/tty/ttyS0/power/wakeup
    before=$(cat /sys/power/suspend_stats/success)
    echo "@@guest suspending mem_sleep=$(cat /sys/power/mem_sleep | tr ' ' ,)"
    echo mem > /sys/power/state
    rc=$?
    echo "@@guest resumed rc=$rc success_before=$before success_after=$(cat /sys/power/suspend_stats/success) online=$(cat /sys/devices/system/cpu/online)"
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
demo)
    echo "Hello from an arm64 Linux guest on our vmm:"
    uname -a
    echo "CPUs online: $(cat /sys/devices/system/cpu/online); memory: $(grep MemTotal /proc/meminfo)"
    echo "RTC: $(cat /sys/class/rtc/rtc0/name 2>/dev/null) at $(date -u -d @"$rtc" 2>/dev/null)"
    echo "Sleep states: $(cat /sys/power/state); mem_sleep: $(cat /sys/power/mem_sleep 2>/dev/null)"
    poweroff -f
    ;;
*)
    echo "Type 'poweroff -f' to stop the VM."
    setsid cttyhack sh
    poweroff -f
    ;;
esac
