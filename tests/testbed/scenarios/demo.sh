#!/bin/sh
# The main job: boot Linux with 2 vCPUs on our vmm and show its console.
. "$ROOT/testbed/lib.sh"
out=/tmp/demo.log
run_vmm 120 "$out" --cpus 2 --memory 256 --cmdline "$GUEST_CMDLINE vmmtest=demo"
status=$?
if [ "$status" = 0 ] && grep -q "Hello from an arm64 Linux guest" "$out"; then verdict=pass; else verdict=fail; fi
echo "@@result demo-boot $verdict exit=$status"
[ $verdict = pass ]
