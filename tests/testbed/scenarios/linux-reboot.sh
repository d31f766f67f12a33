#!/bin/sh
# `reboot -f` in the guest: with --no-reboot vmm exits 0 after one boot; without it the guest
# boots again in the same process, and SIGTERM then stops vmm cleanly with status 0.
. "$ROOT/testbed/lib.sh"
rc=0

out=/tmp/reboot-once.log
run_vmm 120 "$out" --no-reboot --cmdline "$GUEST_CMDLINE vmmtest=reboot"
status=$?
boots=$(grep -c "@@guest init" "$out")
if [ "$status" = 0 ] && [ "$boots" = 1 ]; then verdict=pass; else verdict=fail; rc=1; fi
echo "@@result linux-no-reboot-exits $verdict exit=$status boots=$boots"

out=/tmp/reboot-twice.log
"$VMM" --kernel "$ROOT/guest/Image" --initramfs "$ROOT/guest/initrd.cpio" \
    --cmdline "$GUEST_CMDLINE vmmtest=reboot" </dev/null >"$out" 2>&1 &
pid=$!
waited=0
while [ "$(grep -c "@@guest init" "$out")" -lt 2 ] && [ $waited -lt 240 ] && kill -0 $pid 2>/dev/null; do
    sleep 0.5; waited=$((waited + 1))
done
kill -TERM $pid 2>/dev/null
# A vmm that lost the signal would reboot forever: give it a minute, then name the failure.
waited=0
while kill -0 $pid 2>/dev/null && [ $waited -lt 120 ]; do
    sleep 0.5; waited=$((waited + 1))
done
stopped=yes
if kill -0 $pid 2>/dev/null; then stopped=no; kill -KILL $pid; fi
wait $pid
status=$?
show "$out"
boots=$(grep -c "@@guest init" "$out")
if [ "$stopped" = yes ] && [ "$status" = 0 ] && [ "$boots" -ge 2 ] \
    && grep -q "Terminating on signal 15" "$out"; then
    verdict=pass
else
    verdict=fail; rc=1
fi
echo "@@result linux-reboot-in-process $verdict exit=$status boots=$boots stopped_by_sigterm=$stopped"
exit $rc
