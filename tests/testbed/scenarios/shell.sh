#!/bin/sh
# Not a scenario: what `testbed shell` (scripts/run.sh on a terminal) runs, in the emulated
# arm64 host with its console on the user's terminal, or natively on an arm64 KVM host. vmm
# runs in the foreground on this terminal, logging on stderr (-v: its suspended / resumed
# lines), with 2 vCPUs, 512 MiB, a writable copy of the guest's root disk and the default
# virtio-rng; the guest's init (vmmtest=shell) enables serial wakeup and gives a shell.
. "$ROOT/testbed/lib.sh"
guest=${ROOT%/}/guest
work=$(mktemp -d /tmp/vmm-shell.XXXXXX) || exit 1
if ! cp "$guest/rootfs.ext4" "$work/root.ext4"; then
    rm -rf "$work"
    exit 1
fi
set -- -v --cpus 2 --memory 512 --kernel "$guest/Image" --initramfs "$guest/initrd.cpio" \
    --disk "path=$work/root.ext4,id=root" --cmdline "$GUEST_CMDLINE root=/dev/vda rw vmmtest=shell"
echo "host: vmm $*"
"${ROOT%/}/bin/vmm" "$@"
status=$?
rm -rf "$work"
echo "host: vmm exited with status $status"
exit $status
