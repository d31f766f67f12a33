#!/bin/sh
# With --no-suspend the guest has no deep sleep, and `rtcwake -m mem` still returns (s2idle).
# --no-rng: Debian's 6.1 guest kernel with virtio-rng hangs in its s2idle device suspend (right
# after freezing tasks; the same run without virtio-rng, and deep suspend with it, pass). Known,
# documented in the README, not yet explained.
. "$ROOT/testbed/lib.sh"
out=/tmp/linux-s2idle.log
run_vmm 150 "$out" -v --no-suspend --no-rng --memory 256 --cmdline "$GUEST_CMDLINE vmmtest=suspend-rtc cycles=1"
status=$?
mem_sleep=$(field mem_sleep "$(grep '@@guest mem_sleep=' "$out")")
cycle=$(grep '@@guest cycle=1' "$out")
s2idle=$(field entry_s2idle "$(grep '@@guest dmesg' "$out")")
if [ "$status" = 0 ] && [ -n "$mem_sleep" ] && ! echo "$mem_sleep" | grep -q deep \
    && [ "$(field rc "$cycle")" = 0 ] && [ "${s2idle:-0}" -ge 1 ] && ! grep -q '] suspended' "$out"; then
    verdict=pass
else
    verdict=fail
fi
echo "@@result linux-no-suspend-s2idle $verdict exit=$status mem_sleep=$mem_sleep s2idle_entries=$s2idle"
[ $verdict = pass ]
