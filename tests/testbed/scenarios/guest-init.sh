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
# The wake button (gpio-keys on the PL061) is a module in Debian's kernel.
insmod /lib/modules/gpio_keys.ko 2>/dev/null
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
