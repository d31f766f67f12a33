#!/bin/sh
# Flake hunt (not a default scenario): boots a 1-vCPU Linux guest and runs the psci_suspend
# suite (staged by naming kvm-suspend too: `testbed run kvm-suspend stress`) over and over for
# 30 minutes, with the kernel recording a stack for every SIGSEGV, SIGBUS and SIGSYS it
# generates (the runner sets that up for every scenario); a failure prints vmm's fault report,
# the trace and dmesg. For #12's rare vCPU crash.
. "$ROOT/testbed/lib.sh"
T=/sys/kernel/tracing
end=$(( $(date +%s) + ${STRESS_SECONDS:-1800} ))
n=0 bad=0
report() {
    bad=$((bad + 1))
    echo "@@stress failure $1 run=$n status=$2"
    grep -a "vmm: fatal\|seccomp\|panicked" "$3" | tail -5
    tail -n 40 "$3"
    echo "--- trace"; tail -n 80 "$T/trace"
    echo "--- dmesg"; dmesg | tail -n 20
}
while [ "$(date +%s)" -lt "$end" ]; do
    n=$((n + 1))
    run_vmm 120 /tmp/stress-boot.log --cpus 1 --memory 256 --cmdline "$GUEST_CMDLINE vmmtest=boot" >/dev/null
    status=$?
    [ "$status" = 0 ] || report boot "$status" /tmp/stress-boot.log
    timeout 300 "$ROOT/tests/vmm-psci_suspend" --test-threads=1 >/tmp/stress-psci.log 2>&1
    status=$?
    [ "$status" = 0 ] || report psci "$status" /tmp/stress-psci.log
    echo "@@stress run=$n bad=$bad"
done
verdict=pass
[ "$bad" = 0 ] || verdict=fail
echo "@@result stress $verdict runs=$n bad=$bad"
