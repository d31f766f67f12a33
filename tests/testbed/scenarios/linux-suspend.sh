#!/bin/sh
# Suspend-to-RAM with 1 and 4 vCPUs: 10 `rtcwake -m mem -s 2` cycles each. Every cycle must
# succeed, bring every CPU back and count in suspend_stats; the guest must offer [deep] and
# log deep suspend entries and exits; vmm must log `suspended` and `resumed (wakeup: rtc)`.
. "$ROOT/testbed/lib.sh"
cycles=10
rc=0
for cpus in 1 4; do
    out=/tmp/linux-suspend-$cpus.log
    run_vmm 600 "$out" -v --cpus "$cpus" --memory 256 \
        --cmdline "$GUEST_CMDLINE vmmtest=suspend-rtc cycles=$cycles"
    status=$?
    online_all=0
    [ "$cpus" -gt 1 ] && online_all="0-$((cpus - 1))"
    mem_sleep=$(field mem_sleep "$(grep '@@guest mem_sleep=' "$out")")
    good=$(grep '@@guest cycle=' "$out" | awk -v online="$online_all" '
        { ok = 1; for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          if (v["rc"] != 0 || v["success_after"] != v["success_before"] + 1 || v["online"] != online) ok = 0
          n += ok } END { print n + 0 }')
    trip=$(grep '@@guest cycle=' "$out" | awk '
        { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          t = v["t1"] - v["t0"] - 2; s += t; if (n == 0 || t > max) max = t; n++ }
        END { if (n) printf "%.2f/%.2f", s / n, max; else print "none" }')
    dmesg=$(grep '@@guest dmesg' "$out")
    deep=$(field entry_deep "$dmesg")
    exits=$(field exit "$dmesg")
    suspended=$(grep -c '] suspended' "$out")
    resumed=$(grep -c '] resumed (wakeup: rtc)' "$out")
    if [ "$status" = 0 ] && [ "$good" = "$cycles" ] && echo "$mem_sleep" | grep -q '\[deep\]' \
        && [ "${deep:-0}" -ge "$cycles" ] && [ "${exits:-0}" -ge "$cycles" ] \
        && [ "$suspended" -ge "$cycles" ] && [ "$resumed" -ge "$cycles" ]; then
        verdict=pass
    else
        verdict=fail; rc=1
    fi
    suspend_us=$(latencies 'suspended' "$out")
    resume_us=$(latencies 'resumed (wakeup: rtc)' "$out")
    echo "@@result linux-suspend-${cpus}cpu $verdict exit=$status mem_sleep=$mem_sleep good_cycles=$good/$cycles dmesg_deep_entries=$deep dmesg_exits=$exits vmm_suspended=$suspended vmm_resumed_rtc=$resumed rtcwake_overhead_s_mean/max=$trip vmm_suspend_us_min/median/max=$suspend_us vmm_resume_us_min/median/max=$resume_us"
done
exit $rc
