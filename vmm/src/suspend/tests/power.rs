//! The coordinator keeping the power states: CPU_ON, CPU_OFF and AFFINITY_INFO forwarded by
//! KVM, vCPUs that are off waiting outside the guest, and suspend decisions without kicks.

use arch_aarch64::cpu_power::{AffinityState, CpuPower};
use hypervisor::VmExit;

use super::pause::QUIET;
use super::*;

const CPU_ON_64: u64 = 0xC400_0003;
const CPU_OFF: u64 = 0x8400_0002;
const AFFINITY_INFO_64: u64 = 0xC400_0004;

/// The MPIDR of vCPU `index` in [`Rig::keeping_power`].
fn mpidr(index: u64) -> u64 {
    0x8000_0000 | index
}

impl Rig {
    /// vCPU 0 makes a forwarded power call with `x1..x3`; returns its `x0`.
    fn power_call(&self, function_id: u64, x1: u64, x2: u64, x3: u64) -> u64 {
        let mut vcpu = self.vcpu(0);
        guest_calls(&self.vcpus[0], function_id, x1, x2);
        self.vcpus[0].poke_reg(xreg(3), x3);
        self.coordinator
            .on_power_call(&mut vcpu, function_id)
            .unwrap();
        self.vcpus[0].peek_reg(xreg(0))
    }

    fn cpu_on(&self, target: u64) -> u64 {
        self.power_call(CPU_ON_64, mpidr(target), ENTRY, CONTEXT + target)
    }

    fn kick_count(&self) -> usize {
        self.vcpus.iter().map(FakeVcpu::kicks).sum()
    }

    /// Makes vCPU `index`, running in [`Rig::spawn_run_vcpu`], call CPU_OFF.
    fn cpu_off_from(&self, index: usize) {
        self.vcpus[index].poke_reg(xreg(0), CPU_OFF);
        self.vcpus[index].push_exit(VmExit::Hypercall {
            function_id: CPU_OFF,
            smc: false,
        });
    }

    fn power(&self, index: usize) -> Option<MpState> {
        self.coordinator.census().unwrap()[index]
    }
}

#[test]
fn a_vcpu_that_is_off_waits_outside_the_guest_until_cpu_on() {
    let rig = Rig::keeping_power(3);
    let threads: Vec<JoinHandle<()>> = (1..3).map(|index| rig.spawn_run_vcpu(index)).collect();
    thread::sleep(QUIET);
    assert_eq!(rig.runs(), [0, 0, 0], "an OFF vCPU entered KVM_RUN");

    assert_eq!(rig.cpu_on(1), PsciReturn::Success.to_x0());
    wait_for(|| rig.runs()[1] > 0);
    let started = &rig.vcpus[1];
    assert_eq!(started.resets(), 1);
    assert_eq!(started.peek_reg(PC), ENTRY);
    assert_eq!(started.peek_reg(xreg(0)), CONTEXT + 1);
    assert_eq!(started.peek_reg(PSTATE), 0x3c5);
    assert_eq!(rig.runs()[2], 0, "only the target starts");

    assert_eq!(rig.cpu_on(1), PsciReturn::AlreadyOn.to_x0());
    assert_eq!(
        rig.power_call(CPU_ON_64, mpidr(7), ENTRY, 0),
        PsciReturn::InvalidParameters.to_x0()
    );
    assert_eq!(
        rig.power_call(CPU_ON_64, mpidr(2), 0x10, 0),
        PsciReturn::InvalidAddress.to_x0()
    );
    assert_eq!(rig.runs()[2], 0);
    assert_eq!(rig.events(), [VmEventKind::CpuOn { vcpu: 0, target: 1 }]);
    assert_eq!(rig.kick_count(), 0, "a CPU_ON kicks nobody");
    rig.stop_threads(threads);
}

#[test]
fn cpu_off_takes_the_vcpu_out_of_the_guest_and_affinity_info_sees_it() {
    let rig = Rig::keeping_power(2);
    let thread = rig.spawn_run_vcpu(1);
    assert_eq!(rig.cpu_on(1), 0);
    wait_for(|| rig.runs()[1] > 0);
    assert_eq!(
        rig.power_call(AFFINITY_INFO_64, mpidr(1), 0, 0),
        AffinityState::On.to_x0()
    );
    assert_eq!(rig.power(1), Some(MpState::Runnable));

    rig.cpu_off_from(1);
    wait_for(|| rig.coordinator.census().unwrap()[1] == Some(MpState::Stopped));
    assert_eq!(
        rig.vcpus[1].peek_mp_state(),
        MpState::Stopped,
        "KVM's view agrees"
    );
    let runs = rig.runs()[1];
    thread::sleep(QUIET);
    assert_eq!(rig.runs()[1], runs, "an OFF vCPU entered KVM_RUN");
    assert_eq!(
        rig.power_call(AFFINITY_INFO_64, mpidr(1), 0, 0),
        AffinityState::Off.to_x0()
    );
    assert!(rig.events().contains(&VmEventKind::CpuOff { vcpu: 1 }));

    // And it can be started again, at a new entry point.
    assert_eq!(rig.power_call(CPU_ON_64, mpidr(1), RAM.start, 5), 0);
    wait_for(|| rig.runs()[1] > runs);
    assert_eq!(rig.vcpus[1].peek_reg(PC), RAM.start);
    assert_eq!(rig.vcpus[1].peek_reg(xreg(0)), 5);
    rig.stop_threads(vec![thread]);
}

#[test]
fn suspend_decides_from_the_table_without_a_kick() {
    let rig = Rig::keeping_power(8);
    let threads: Vec<JoinHandle<()>> = (1..8).map(|index| rig.spawn_run_vcpu(index)).collect();

    // A secondary on: DENIED.
    assert_eq!(rig.cpu_on(5), 0);
    wait_for(|| rig.runs()[5] > 0);
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (vcpu, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(
        outcome.unwrap(),
        SuspendOutcome::Denied(Denial::OtherCpusOn { count: 1 })
    );
    assert_eq!(rig.vcpus[0].peek_reg(xreg(0)), PsciReturn::Denied.to_x0());

    // Outside RAM: INVALID_ADDRESS (the rule order puts the CPUs first: turn 5 off).
    rig.cpu_off_from(5);
    wait_for(|| rig.coordinator.census().unwrap()[5] == Some(MpState::Stopped));
    guest_calls(&rig.vcpus[0], 0xC400_000E, 0x10, CONTEXT);
    let (vcpu, outcome) = {
        drop(vcpu);
        suspend(&rig, rig.vcpu(0))
    };
    assert_eq!(
        outcome.unwrap(),
        SuspendOutcome::Denied(Denial::InvalidEntry { entry: 0x10 })
    );

    // Every other vCPU off: SUSPENDED, and nobody was ever kicked for a power state.
    drop(vcpu);
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (mut vcpu, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
    assert_eq!(rig.power(0), Some(MpState::Suspended));
    assert_eq!(rig.coordinator.stats().vcpu_kicks, 0);
    assert_eq!(
        rig.vcpus.iter().map(FakeVcpu::kicks).collect::<Vec<_>>(),
        [0; 8]
    );
    assert_eq!(
        wakeup(&rig, &mut vcpu),
        WakeupOutcome::Resumed(WakeSource::Unknown)
    );
    assert_eq!(rig.vcpus[0].peek_reg(PC), ENTRY);
    rig.stop_threads(threads);
}

#[test]
fn a_pause_still_holds_vcpus_that_are_off() {
    let rig = Rig::keeping_power(3);
    let threads: Vec<JoinHandle<()>> = (0..3).map(|index| rig.spawn_run_vcpu(index)).collect();
    wait_for(|| rig.runs()[0] > 0);
    rig.pause().unwrap();
    // A CPU_ON accepted while paused (from a vCPU that was mid-call) starts nothing yet.
    assert_eq!(rig.cpu_on(2), 0);
    thread::sleep(QUIET);
    assert_eq!(rig.runs()[2], 0, "a paused vCPU entered KVM_RUN");
    let census = rig.census().unwrap();
    assert_eq!(census[1], Some(MpState::Stopped));
    rig.resume().unwrap();
    wait_for(|| rig.runs()[2] > 0);
    assert_eq!(rig.vcpus[2].peek_reg(PC), ENTRY);
    assert_eq!(rig.power(1), Some(MpState::Stopped));
    rig.stop_threads(threads);
}

#[test]
fn the_end_of_the_vm_wakes_vcpus_that_are_off_at_once() {
    let rig = Rig::keeping_power(4);
    let threads: Vec<JoinHandle<()>> = (1..4).map(|index| rig.spawn_run_vcpu(index)).collect();
    thread::sleep(QUIET);
    let started = Instant::now();
    rig.control.request_exit(ExitReason::Shutdown);
    rig.coordinator.wake_waiters();
    wait_for(|| threads.iter().all(JoinHandle::is_finished));
    // Not after their 1 s safety poll.
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_table_census_matches_the_states() {
    let rig = Rig::keeping_power(3);
    assert_eq!(
        rig.census().unwrap(),
        [
            Some(MpState::Runnable),
            Some(MpState::Stopped),
            Some(MpState::Stopped)
        ]
    );
    assert_eq!(rig.cpu_on(1), 0);
    assert_eq!(
        rig.power(1),
        Some(MpState::Runnable),
        "ON_PENDING counts as on"
    );
    assert!(matches!(
        rig.coordinator.lock().power.as_ref().unwrap().state(1),
        CpuPower::OnPending { .. }
    ));
    assert_eq!(rig.kick_count(), 0);
    assert!(rig.coordinator.keeps_power_states());
    assert!(
        !Rig::new(&[MpState::Runnable])
            .coordinator
            .keeps_power_states()
    );
}
