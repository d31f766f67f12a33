#!/bin/sh
# The main job without a terminal (scripts/run.sh in CI): boot Linux with 2 vCPUs on our vmm
# from a copy of the root disk (root=/dev/vda), show its greeting, suspend it to RAM once with
# an RTC wake (rtcwake -m mem -s 2; vmm's -v log shows the suspend and the resume) and power
# off. Only the guest's @@guest lines and vmm's exit status are asserted on.
. "$ROOT/testbed/lib.sh"
work=/tmp/demo
rm -rf "$work"
mkdir -p "$work"
out=$work/demo.log
if ! cp "$ROOT/guest/rootfs.ext4" "$work/root.ext4"; then
    echo "@@result demo-boot fail missing=$ROOT/guest/rootfs.ext4"
    exit 1
fi
run_vmm 150 "$out" -v --cpus 2 --memory 512 --disk "path=$work/root.ext4,id=root" \
    --cmdline "$GUEST_CMDLINE root=/dev/vda rw vmmtest=demo"
status=$?
init=$(grep '@@guest init' "$out" | tail -1)
cycle=$(grep '@@guest cycle=1 ' "$out" | tail -1)
root=$(field root "$init")
mode=$(field mode "$init")
nproc=$(field nproc "$init")
rc=$(field rc "$cycle")
before=$(field success_before "$cycle")
after=$(field success_after "$cycle")
online=$(field online "$cycle")
suspended=no
[ -n "$before" ] && [ -n "$after" ] && [ "$after" = $((before + 1)) ] && suspended=yes
if [ "$status" = 0 ] && [ "$root" = /dev/vda ] && [ "$mode" = demo ] && [ "$nproc" = 2 ] \
    && [ "$rc" = 0 ] && [ "$suspended" = yes ] && [ "$online" = 0-1 ]; then
    verdict=pass
else
    verdict=fail
fi
echo "@@result demo-boot $verdict exit=$status root=${root:-none} mode=${mode:-none} nproc=${nproc:-none} rtcwake_rc=${rc:-none} suspended=$suspended online=${online:-none}"
rm -rf "$work"
[ $verdict = pass ]
