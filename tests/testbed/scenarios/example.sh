#!/bin/sh
# The library example: boot, wait for `suspended`, wake through the handle, wait for `resumed`.
# Its report lines (stderr) and the guest console (stdout) go to separate files, so that
# neither can split a line of the other. Only its documented `@@example` lines, the guest's
# `@@guest` lines and its exit status are asserted on.
. "$ROOT/testbed/lib.sh"
out=/tmp/example.log
err=/tmp/example.err
timeout 150 "$ROOT/bin/suspend_wake" "$ROOT/guest/Image" "$ROOT/guest/initrd.cpio" </dev/null >"$out" 2>"$err"
status=$?
show "$out"
cat "$err"
resumed=$(grep '^@@example resumed ' "$err")
source=$(field source "$resumed")
guest_rc=$(field rc "$(grep '@@guest resumed ' "$out")")
if [ "$status" = 0 ] && [ "$source" = gpio ] && [ "$guest_rc" = 0 ]; then
    verdict=pass
else
    verdict=fail
fi
echo "@@result library-example-suspend-wake $verdict exit=$status source=${source:-none} guest_rc=${guest_rc:-none} resume_us=$(field latency_us "$resumed")"
[ $verdict = pass ]
