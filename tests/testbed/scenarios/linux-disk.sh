#!/bin/sh
# virtio-blk and virtio-rng with Linux guests (vmm --disk path=FILE[,readonly=on][,id=NAME]):
#   boot     an ext4 root disk (root=/dev/vda rw) with 1 and 4 vCPUs; init must run from it
#   suspend  disk-pattern rewrites a 64 MiB data disk with O_DIRECT through 20 rtcwake cycles;
#            the last generation must be intact in the guest and in the image file on the host;
#            then 64 bytes from /dev/hwrng
#   fs       an ext4 root with 8 MiB of fsynced data and an fsynced append per cycle through
#            10 cycles: data unchanged, and e2fsck -fn clean on the host afterwards
#   readonly a readonly=on disk: a direct write in the guest fails, the image is unchanged
# The guest finds its disks by serial (the --disk id), never by order; only its @@guest lines
# are asserted on.
. "$ROOT/testbed/lib.sh"
DISK_PATTERN="$ROOT/bin/disk-pattern"
E2FSCK="$ROOT/bin/e2fsck.static"
ROOTFS="$ROOT/guest/rootfs.ext4"
work=/tmp/linux-disk
rm -rf "$work"
mkdir -p "$work"
rc=0

for need in "$DISK_PATTERN" "$E2FSCK" "$ROOTFS"; do
    if [ ! -e "$need" ]; then
        echo "@@result linux-disk-setup fail missing=$need"
        exit 1
    fi
done

# good_cycles CPUS FILE: the suspend cycles in FILE that succeeded, counted, and brought all
# CPUS back online.
good_cycles() {
    online=0
    [ "$1" -gt 1 ] && online="0-$(($1 - 1))"
    grep '@@guest cycle=' "$2" | awk -v online="$online" '
        { ok = 1; for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          if (v["rc"] != 0 || v["success_after"] != v["success_before"] + 1 || v["online"] != online) ok = 0
          n += ok } END { print n + 0 }'
}

# a. Boot from the root disk.
for cpus in 1 4; do
    out=/tmp/linux-disk-boot-$cpus.log
    cp "$ROOTFS" "$work/root.ext4"
    run_vmm 150 "$out" --cpus "$cpus" --memory 256 --disk "path=$work/root.ext4,id=root" \
        --cmdline "$GUEST_CMDLINE root=/dev/vda rw vmmtest=boot"
    status=$?
    serial=$(field serial "$(grep '@@guest switch-root' "$out")")
    line=$(grep '@@guest init' "$out" | tail -1)
    root=$(field root "$line")
    nproc=$(field nproc "$line")
    if [ "$status" = 0 ] && [ "$root" = /dev/vda ] && [ "$nproc" = "$cpus" ] \
        && [ "$serial" = root ]; then
        verdict=pass
    else
        verdict=fail; rc=1
    fi
    echo "@@result linux-disk-boot-${cpus}cpu $verdict exit=$status root=${root:-none} serial=${serial:-none} nproc=$nproc guest_uptime_at_init_s=$(field uptime "$line")"
    rm -f "$work/root.ext4"
done

# b. A pattern written through suspend cycles, then virtio-rng.
cycles=20
seed=12345
size=$((64 << 20))
out=/tmp/linux-disk-suspend.log
cp "$ROOTFS" "$work/root.ext4"
dd if=/dev/zero of="$work/data.img" bs=1048576 count=64 2>/dev/null
run_vmm 450 "$out" -v --cpus 2 --memory 256 --disk "path=$work/root.ext4,id=root" \
    --disk "path=$work/data.img,id=data" \
    --cmdline "$GUEST_CMDLINE root=/dev/vda rw vmmtest=disk-suspend cycles=$cycles seed=$seed wake=3 retry=1"
status=$?
good=$(good_cycles 2 "$out")
gen=$(field gen "$(grep '@@guest pattern-written' "$out")")
guest_verify=$(grep '@@guest pattern-verify' "$out")
guest_ok=$(field ok "$guest_verify")
"$DISK_PATTERN" verify "$work/data.img" --seed "$seed" --gen "${gen:-0}" --size "$size" \
    >"$work/verify.out" 2>&1
host_rc=$?
sed 's/^/[host] /' "$work/verify.out"
host_verify=$(tail -1 "$work/verify.out")
rng=$(field bytes "$(grep '@@guest rng' "$out")")
hwrng=$(field current "$(grep '@@guest hwrng' "$out")")
if [ "$status" = 0 ] && [ "$good" = "$cycles" ] && [ -n "$gen" ] && [ "$guest_ok" = true ] \
    && [ "$host_rc" = 0 ] && [ "$(field ok " $host_verify")" = true ] && [ "$rng" = 64 ]; then
    verdict=pass
else
    verdict=fail; rc=1
fi
echo "@@result linux-disk-suspend $verdict exit=$status good_cycles=$good/$cycles gen=${gen:-none} guest_verify_ok=${guest_ok:-none} guest_bad=$(field bad "$guest_verify") guest_stale=$(field stale "$guest_verify") host_verify_rc=$host_rc host_bad=$(field bad " $host_verify") host_first_bad=$(field first_bad " $host_verify") rng_bytes=${rng:-none} hwrng=${hwrng:-none} guest_aborted_attempts=$(grep -c '@@guest aborted' "$out")"
rm -f "$work/root.ext4" "$work/data.img"

# c. An ext4 root through suspend cycles, checked by e2fsck on the host.
cycles=10
out=/tmp/linux-disk-fs.log
cp "$ROOTFS" "$work/fs.ext4"
run_vmm 300 "$out" -v --cpus 2 --memory 256 --disk "path=$work/fs.ext4,id=root" \
    --cmdline "$GUEST_CMDLINE root=/dev/vda rw vmmtest=fs-suspend cycles=$cycles wake=3 retry=1"
status=$?
check=$(grep '@@guest fs-check' "$out")
md5_before=$(field md5_before "$check")
md5_after=$(field md5_after "$check")
cycles_ok=$(field cycles_ok "$check")
"$E2FSCK" -fn "$work/fs.ext4" >"$work/e2fsck.out" 2>&1
fsck_rc=$?
sed 's/^/[e2fsck] /' "$work/e2fsck.out"
if [ "$status" = 0 ] && [ "$fsck_rc" = 0 ] && [ -n "$md5_before" ] \
    && [ "$md5_before" = "$md5_after" ] && [ "$cycles_ok" = "$cycles/$cycles" ]; then
    verdict=pass
else
    verdict=fail; rc=1
fi
echo "@@result linux-disk-fs $verdict exit=$status e2fsck_rc=$fsck_rc md5_match=$([ -n "$md5_before" ] && [ "$md5_before" = "$md5_after" ] && echo yes || echo no) cycles_ok=${cycles_ok:-none} remount_ro_rc=$(field rc "$(grep '@@guest remount-ro' "$out")") guest_aborted_attempts=$(grep -c '@@guest aborted' "$out")"
rm -f "$work/fs.ext4"

# d. A read-only disk (booted from the initramfs alone): writes fail, the image is unchanged.
out=/tmp/linux-disk-readonly.log
"$DISK_PATTERN" write "$work/ro.img" --seed 777 --size $((4 << 20)) --no-direct >/dev/null
md5_before=$(md5sum "$work/ro.img" | cut -d' ' -f1)
first_mib=$(dd if="$work/ro.img" bs=1048576 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
run_vmm 150 "$out" --memory 256 --disk "path=$work/ro.img,readonly=on,id=ro" \
    --cmdline "$GUEST_CMDLINE vmmtest=disk-readonly"
status=$?
line=$(grep '@@guest ro-write' "$out")
write_rc=$(field rc "$line")
guest_md5=$(field md5 "$(grep '@@guest ro-read' "$out")")
md5_after=$(md5sum "$work/ro.img" | cut -d' ' -f1)
if [ "$status" = 0 ] && [ -n "$write_rc" ] && [ "$write_rc" != 0 ] \
    && [ "$md5_after" = "$md5_before" ] && [ "$guest_md5" = "$first_mib" ]; then
    verdict=pass
else
    verdict=fail; rc=1
fi
echo "@@result linux-disk-readonly $verdict exit=$status guest_write_rc=${write_rc:-none} guest_ro_flag=$(field ro_flag "$line") image_unchanged=$([ "$md5_after" = "$md5_before" ] && echo yes || echo no) guest_read_matches=$([ "$guest_md5" = "$first_mib" ] && echo yes || echo no)"
rm -rf "$work"
exit $rc
