#!/bin/sh
# Boots the Debian arm64 kernel with 1 and 4 vCPUs. The guest's init reports nproc and the
# PL031 time, then powers off; vmm must exit 0.
. "$ROOT/testbed/lib.sh"
rc=0
for cpus in 1 4; do
    out=/tmp/linux-boot-$cpus.log
    run_vmm 120 "$out" --cpus "$cpus" --memory 256 --cmdline "$GUEST_CMDLINE vmmtest=boot"
    status=$?
    now=$(date +%s)
    line=$(grep "@@guest init" "$out")
    nproc=$(field nproc "$line")
    rtc=$(field rtc "$line")
    uptime=$(field uptime "$line")
    skew=$(( ${rtc:-0} - now )); skew=${skew#-}
    if [ "$status" = 0 ] && [ "$nproc" = "$cpus" ] && [ -n "$rtc" ] && [ "$skew" -le 60 ]; then
        verdict=pass
    else
        verdict=fail; rc=1
    fi
    echo "@@result linux-boot-${cpus}cpu $verdict exit=$status nproc=$nproc rtc_skew_s=$skew guest_uptime_at_init_s=$uptime"
done
exit $rc
