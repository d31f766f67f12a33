#!/bin/sh
# The library example: boot, wait for `suspended`, wake through the handle, wait for `resumed`.
. "$ROOT/testbed/lib.sh"
out=/tmp/example.log
timeout 300 "$ROOT/bin/suspend_wake" "$ROOT/guest/Image" "$ROOT/guest/initrd.cpio" </dev/null >"$out" 2>&1
status=$?
show "$out"
if [ "$status" = 0 ] && grep -q 'suspend_wake: guest resumed (wakeup: gpio' "$out" \
    && grep -q '@@guest resumed rc=0' "$out"; then
    verdict=pass
else
    verdict=fail
fi
echo "@@result library-example-suspend-wake $verdict exit=$status"
[ $verdict = pass ]
