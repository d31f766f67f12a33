#!/bin/busybox sh
# /init of the nested Linux guest. `vmmtest=MODE` on the kernel command line picks what it does
# after reporting; without one it gives a shell on the console.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode=shell
for word in $(cat /proc/cmdline); do
    case "$word" in vmmtest=*) mode=${word#vmmtest=} ;; esac
done
rtc=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null || echo none)
echo "@@guest init uptime=$(cut -d' ' -f1 /proc/uptime) nproc=$(nproc) rtc=$rtc mode=$mode"
case "$mode" in
boot)
    poweroff -f
    ;;
reboot)
    reboot -f
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
