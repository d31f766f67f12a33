#!/bin/sh
# The library example: boot, wait for `suspended`, wake through the handle, wait for `resumed`.
# Its messages (stderr) and the guest console (stdout) go to separate files, so that neither
# can split a line of the other.
. "$ROOT/testbed/lib.sh"
out=/tmp/example.log
err=/tmp/example.err
timeout 150 "$ROOT/bin/suspend_wake" "$ROOT/guest/Image" "$ROOT/guest/initrd.cpio" </dev/null >"$out" 2>"$err"
status=$?
show "$out"
cat "$err"
if [ "$status" = 0 ] && grep -q 'suspend_wake: guest resumed (wakeup: gpio' "$err" \
    && grep -q '@@guest resumed rc=0' "$out"; then
    verdict=pass
else
    verdict=fail
fi
echo "@@result library-example-suspend-wake $verdict exit=$status"
[ $verdict = pass ]
