//! The coordinator driven by fake vCPUs, with real threads for the vCPUs that park. No KVM.
//! The fakes block where KVM blocks (a guest never leaves `KVM_RUN` unkicked, and its MP state
//! cannot be read meanwhile), and every wait has a deadline, so code that would deadlock on KVM
//! fails the test instead of hanging it.

use std::sync::Barrier;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};

use arch_aarch64::layout::GuestRegion;
use arch_aarch64::psci::PsciReturn;
use devices::irq::{IrqError, IrqLine};
use devices::test_utils::RecordingIrqLine;
use hypervisor::{SystemEvent, VmExit};
use test_utils::fake_vcpu::FakeVcpu;

use super::*;
use crate::events::{EventReceiver, WakeSourceIrqLine};
use crate::exit::ExitReason;

const RAM: GuestRegion = GuestRegion {
    start: 0x4000_0000,
    size: 0x1000_0000,
};
const ENTRY: u64 = 0x4008_0000;
const CONTEXT: u64 = 0xDEAD_C0DE;
/// How long a test waits for what must happen: only a deadlock takes this long, however slow
/// the machine (the emulated arm64 host is slow).
const LIMIT: Duration = Duration::from_secs(30);

struct Rig {
    coordinator: Arc<SuspendCoordinator>,
    control: Arc<ExitControl>,
    tracker: Arc<WakeSourceTracker>,
    events: EventReceiver,
    vcpus: Vec<FakeVcpu>,
}

/// A thread running a vCPU loop: park if asked, else [`FakeVcpu::run`].
struct Other {
    handle: JoinHandle<()>,
    loops: Arc<AtomicUsize>,
    parks: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
}

impl Rig {
    /// vCPU `i` starts in `mp[i]`; vCPU 0 is the caller.
    fn new(mp: &[MpState]) -> Self {
        Self::build(mp, false)
    }

    /// `count` vCPUs whose power states the coordinator keeps, as KVM numbers them (MPIDR
    /// Aff0 = index): vCPU 0 on, the others off.
    fn keeping_power(count: usize) -> Self {
        let mut mp = vec![MpState::Stopped; count];
        mp[0] = MpState::Runnable;
        Self::build(&mp, true)
    }

    fn build(mp: &[MpState], keep_power: bool) -> Self {
        Self::build_with(mp, keep_power, |coordinator| coordinator)
    }

    /// A guest restored from a snapshot: `count` vCPUs, all off but `vcpu`, which made
    /// `call` and is SUSPENDED.
    fn restored(count: usize, vcpu: u32, call: SystemSuspendCall) -> Self {
        let mut mp = vec![MpState::Stopped; count];
        mp[vcpu as usize] = MpState::Suspended;
        let mpidrs: Vec<u64> = (0..count as u64).map(|index| 0x8000_0000 | index).collect();
        Self::build_with(&mp, false, move |coordinator| {
            coordinator
                .with_power_table(CpuPowerTable::with_only_on(mpidrs, vcpu as usize))
                .restored_suspended(vcpu, call)
        })
    }

    fn build_with(
        mp: &[MpState],
        keep_power: bool,
        finish: impl FnOnce(SuspendCoordinator) -> SuspendCoordinator,
    ) -> Self {
        let control = Arc::new(ExitControl::new().unwrap());
        let bus = Arc::new(EventBus::new());
        let events = bus.subscribe();
        let tracker = Arc::new(WakeSourceTracker::new());
        let vcpus: Vec<FakeVcpu> = (0..)
            .zip(mp)
            .map(|(index, &mp)| FakeVcpu::new(index, mp))
            .collect();
        let kickers = vcpus
            .iter()
            .map(|vcpu| vcpu.kicker() as Arc<dyn VcpuKick>)
            .collect();
        let mut coordinator = SuspendCoordinator::new(
            mp.len(),
            vec![RAM],
            kickers,
            bus,
            tracker.clone(),
            control.clone(),
        );
        if keep_power {
            let mpidrs = (0..mp.len() as u64)
                .map(|index| 0x8000_0000 | index)
                .collect();
            coordinator = coordinator.with_power_table(CpuPowerTable::new(mpidrs));
        }
        let coordinator = Arc::new(finish(coordinator));
        Self {
            coordinator,
            control,
            tracker,
            events,
            vcpus,
        }
    }

    /// A handle on vCPU `index`, as its thread holds one.
    fn vcpu(&self, index: u32) -> FakeVcpu {
        self.vcpus[index as usize].clone()
    }

    /// The interrupt line of the device that wakes the guest as `source`, routed to vCPU
    /// `index`: raising it wakes that vCPU if it is SUSPENDED, as the vGIC would.
    fn wake_line(&self, index: u32, source: WakeSource) -> Arc<dyn IrqLine> {
        let line = Arc::new(InterruptOf(self.vcpu(index)));
        WakeSourceIrqLine::wrap(line, self.tracker.clone(), source)
    }

    /// Kicks vCPU `index` as another thread of the VMM would.
    fn kick(&self, index: usize) {
        self.vcpus[index].kicker().kick();
    }

    /// Runs vCPU `index`'s loop on a thread; `first` runs once on that thread before it.
    fn spawn_with(&self, index: u32, first: impl FnOnce(&mut FakeVcpu) + Send + 'static) -> Other {
        let (coordinator, control) = (self.coordinator.clone(), self.control.clone());
        let mut vcpu = self.vcpu(index);
        let [loops, parks, errors] = [(); 3].map(|_| Arc::new(AtomicUsize::new(0)));
        let counters = (loops.clone(), parks.clone(), errors.clone());
        let handle = thread::spawn(move || {
            first(&mut vcpu);
            while !control.stopping() {
                match coordinator.park_if_requested(&vcpu) {
                    Ok(true) => _ = counters.1.fetch_add(1, Ordering::SeqCst),
                    Ok(false) => {}
                    Err(_) => _ = counters.2.fetch_add(1, Ordering::SeqCst),
                }
                counters.0.fetch_add(1, Ordering::SeqCst);
                let _ = vcpu.run();
            }
        });
        Other {
            handle,
            loops,
            parks,
            errors,
        }
    }

    fn spawn(&self, index: u32) -> Other {
        self.spawn_with(index, |_| {})
    }

    fn events(&self) -> Vec<VmEventKind> {
        self.events.try_iter().map(|event| event.kind).collect()
    }

    /// Stops the VM and checks that every thread ends in time.
    fn stop(&self, others: Vec<Other>) {
        self.stop_threads(others.into_iter().map(|other| other.handle).collect());
    }

    /// Stops the VM as the runner does, kicking every vCPU out of the guest and waking those
    /// that are off until their threads end, and checks that they end in time.
    fn stop_threads(&self, threads: Vec<JoinHandle<()>>) {
        self.control.request_exit(ExitReason::Shutdown);
        wait_for(|| {
            for index in 0..self.vcpus.len() {
                self.kick(index);
            }
            self.coordinator.wake_waiters();
            threads.iter().all(JoinHandle::is_finished)
        });
        for thread in threads {
            thread.join().expect("vCPU thread panicked");
        }
    }
}

/// The interrupt line of one vCPU, as the vGIC drives it for an SPI routed there.
struct InterruptOf(FakeVcpu);

impl IrqLine for InterruptOf {
    fn set_level(&self, high: bool) -> Result<(), IrqError> {
        self.0.set_interrupt(high);
        Ok(())
    }
}

/// Sets vCPU `vcpu`'s `x0..x2` as the guest leaves them for a PSCI call.
fn guest_calls(vcpu: &FakeVcpu, x0: u64, x1: u64, x2: u64) {
    vcpu.poke_reg(xreg(0), x0);
    vcpu.poke_reg(xreg(1), x1);
    vcpu.poke_reg(xreg(2), x2);
}

/// Runs `f` on a thread and fails if it takes longer than [`LIMIT`].
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    thread::spawn(move || done.send(f()));
    result.recv_timeout(LIMIT).expect("deadlock or panic")
}

fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in time");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Calls SYSTEM_SUSPEND on `vcpu` from another thread, with a deadline.
fn suspend(rig: &Rig, mut vcpu: FakeVcpu) -> (FakeVcpu, Result<SuspendOutcome, SuspendError>) {
    let coordinator = rig.coordinator.clone();
    within(move || {
        let outcome = coordinator.on_suspend_exit(&mut vcpu);
        (vcpu, outcome)
    })
}

fn wakeup(rig: &Rig, vcpu: &mut FakeVcpu) -> WakeupOutcome {
    rig.coordinator.on_wakeup_exit(vcpu).unwrap()
}

fn sign_extended(code: PsciReturn) -> u64 {
    code.to_x0()
}

#[test]
fn accepts_when_every_other_vcpu_is_off() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped, MpState::Stopped]);
    let others = vec![rig.spawn(1), rig.spawn(2)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);

    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
    assert_eq!(rig.vcpus[0].peek_mp_state(), MpState::Suspended);
    assert_eq!(rig.coordinator.state(), SuspendState::Suspended);
    assert_eq!(rig.vcpus[0].peek_reg(xreg(0)), 0xC400_000E, "x0 untouched");
    let events = rig.events();
    assert_eq!(
        events[0],
        VmEventKind::SuspendRequested {
            vcpu: 0,
            entry: ENTRY,
            context_id: CONTEXT
        }
    );
    assert!(matches!(events[1], VmEventKind::Suspended { vcpu: 0, .. }));
    assert_eq!(events.len(), 2);
    for (other, index) in others.iter().zip(1..) {
        // Each reported its MP state once, before the caller could go on.
        assert_eq!(rig.vcpus[index].mp_reads(), 1);
        wait_for(|| other.parks.load(Ordering::SeqCst) == 1);
        assert!(rig.vcpus[index].kicks() >= 1);
        assert_eq!(
            rig.vcpus[index].peek_mp_state(),
            MpState::Stopped,
            "stays OFF"
        );
        // Released: back in the guest.
        wait_for(|| rig.vcpus[index].is_in_run());
    }
    let stats = rig.coordinator.stats();
    assert_eq!((stats.suspend_count, stats.denied_count), (1, 0));
    assert!(stats.last_suspend_latency_us.is_some());
    rig.stop(others);
}

#[test]
fn denies_while_another_vcpu_is_on() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Runnable, MpState::Stopped]);
    let others = vec![rig.spawn(1), rig.spawn(2)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);

    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    let denial = Denial::OtherCpusOn { count: 1 };
    assert_eq!(outcome.unwrap(), SuspendOutcome::Denied(denial));
    assert_eq!(rig.vcpus[0].peek_reg(xreg(0)), 0xFFFF_FFFF_FFFF_FFFD);
    assert_eq!(
        rig.vcpus[0].peek_mp_state(),
        MpState::Runnable,
        "caller untouched"
    );
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    let events = rig.events();
    assert!(matches!(events[0], VmEventKind::SuspendRequested { .. }));
    assert_eq!(
        events[1],
        VmEventKind::SuspendDenied {
            vcpu: 0,
            reason: denial
        }
    );
    let loops = others[0].loops.load(Ordering::SeqCst);
    rig.kick(1);
    wait_for(|| others[0].loops.load(Ordering::SeqCst) > loops);
    assert_eq!(others[0].parks.load(Ordering::SeqCst), 1);
    assert_eq!(rig.coordinator.stats().denied_count, 1);
    rig.stop(others);
}

#[test]
fn rejects_an_entry_outside_ram() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    let others = vec![rig.spawn(1)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, 0x1000, CONTEXT);

    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    let denial = Denial::InvalidEntry { entry: 0x1000 };
    assert_eq!(outcome.unwrap(), SuspendOutcome::Denied(denial));
    assert_eq!(
        rig.vcpus[0].peek_reg(xreg(0)),
        sign_extended(PsciReturn::InvalidAddress)
    );
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    rig.stop(others);
}

#[test]
fn the_32_bit_call_uses_w1_and_w2() {
    let rig = Rig::new(&[MpState::Runnable]);
    guest_calls(
        &rig.vcpus[0],
        0x8400_000E,
        0xFFFF_FFFF_4000_1000,
        0x5555_0000_1234,
    );

    let (mut vcpu, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
    assert_eq!(
        rig.events()[0],
        VmEventKind::SuspendRequested {
            vcpu: 0,
            entry: 0x4000_1000,
            context_id: 0x1234
        }
    );
    wakeup(&rig, &mut vcpu);
    assert_eq!(rig.vcpus[0].peek_reg(PC), 0x4000_1000);
    assert_eq!(rig.vcpus[0].peek_reg(xreg(0)), 0x1234);
}

#[test]
fn wakeup_resets_the_vcpu_to_the_entry_point() {
    let rig = Rig::new(&[MpState::Runnable]);
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (mut vcpu, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
    rig.vcpus[0].poke_reg(PSTATE, 0x3c4);

    // The wake button, as the GPIO controller drives its line.
    let line = WakeSourceIrqLine::wrap(
        Arc::new(RecordingIrqLine::new()),
        rig.tracker.clone(),
        WakeSource::Gpio,
    );
    line.set_level(true).unwrap();
    assert_eq!(
        wakeup(&rig, &mut vcpu),
        WakeupOutcome::Resumed(WakeSource::Gpio)
    );

    let state = &rig.vcpus[0];
    assert_eq!(state.resets(), 1);
    assert_eq!(state.peek_reg(PC), ENTRY);
    assert_eq!(state.peek_reg(xreg(0)), CONTEXT);
    assert_eq!(state.peek_reg(PSTATE), 0x3c5);
    assert_eq!(state.peek_mp_state(), MpState::Runnable);
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    let events = rig.events();
    assert_eq!(
        events[2],
        VmEventKind::Woken {
            source: WakeSource::Gpio
        }
    );
    assert!(matches!(
        events[3],
        VmEventKind::Resumed {
            vcpu: 0,
            source: WakeSource::Gpio,
            ..
        }
    ));
    let stats = rig.coordinator.stats();
    assert_eq!(stats.resume_count, 1);
    assert_eq!(stats.last_wake_source, Some(WakeSource::Gpio));
    assert!(stats.last_resume_latency_us.is_some());
}

#[test]
fn a_guest_restored_while_suspended_resumes_at_its_saved_entry_on_the_first_wakeup() {
    let call = SystemSuspendCall {
        width: arch_aarch64::psci::CallWidth::Smc64,
        entry: ENTRY,
        context_id: CONTEXT,
    };
    let rig = Rig::restored(4, 2, call);
    assert_eq!(rig.coordinator.state(), SuspendState::Suspended);
    assert_eq!(rig.coordinator.suspended_call(), Some((2, call)));
    // Every other vCPU is off, without any vCPU having been asked.
    assert_eq!(
        rig.coordinator.census().unwrap(),
        [
            Some(MpState::Stopped),
            Some(MpState::Stopped),
            Some(MpState::Suspended),
            Some(MpState::Stopped)
        ]
    );
    assert_eq!(rig.coordinator.stats().vcpu_kicks, 0);

    // An alarm that fell due while the guest was on disk fires as soon as it runs again.
    let line = WakeSourceIrqLine::wrap(
        Arc::new(RecordingIrqLine::new()),
        rig.tracker.clone(),
        WakeSource::Rtc,
    );
    line.set_level(true).unwrap();
    let mut vcpu = rig.vcpu(2);
    assert_eq!(
        wakeup(&rig, &mut vcpu),
        WakeupOutcome::Resumed(WakeSource::Rtc)
    );
    let state = &rig.vcpus[2];
    assert_eq!(state.peek_reg(PC), ENTRY);
    assert_eq!(state.peek_reg(xreg(0)), CONTEXT);
    assert_eq!(state.peek_mp_state(), MpState::Runnable);
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    assert_eq!(rig.coordinator.suspended_call(), None);
    assert!(matches!(
        rig.events()[..],
        [
            VmEventKind::Woken {
                source: WakeSource::Rtc
            },
            VmEventKind::Resumed { vcpu: 2, .. }
        ]
    ));
}

#[test]
fn a_wake_raised_while_suspending_still_resumes() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    let others = vec![rig.spawn(1)];
    // The RTC alarm fires just before the caller is SUSPENDED; KVM then exits at once.
    let tracker = rig.tracker.clone();
    rig.vcpus[0].on_suspended(move || tracker.note(WakeSource::Rtc));
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);

    let (mut vcpu, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
    assert_eq!(
        wakeup(&rig, &mut vcpu),
        WakeupOutcome::Resumed(WakeSource::Rtc)
    );
    assert_eq!(rig.vcpus[0].peek_reg(PC), ENTRY);
    let events = rig.events();
    assert!(events.contains(&VmEventKind::Woken {
        source: WakeSource::Rtc
    }));
    assert!(matches!(
        events.last(),
        Some(VmEventKind::Resumed {
            source: WakeSource::Rtc,
            ..
        })
    ));
    rig.stop(others);
}

#[test]
fn stopping_ends_the_wait_for_parking_and_releases_parked_vcpus() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped, MpState::Stopped]);
    // vCPU 2 has no thread: it never parks.
    let others = vec![rig.spawn(1)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let control = rig.control.clone();
    let parked = rig.vcpus[1].clone();
    thread::spawn(move || {
        wait_for(|| parked.mp_reads() > 0);
        control.request_exit(ExitReason::Shutdown);
    });

    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Denied(Denial::Stopping));
    assert_eq!(
        rig.vcpus[0].peek_reg(xreg(0)),
        sign_extended(PsciReturn::Denied)
    );
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    assert!(rig.vcpus[2].kicks() >= 1);
    rig.stop(others);
}

#[test]
fn stopping_while_suspended_blocks_nobody() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    let others = vec![rig.spawn(1)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (vcpu, outcome) = suspend(&rig, rig.vcpu(0));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);

    rig.control.request_exit(ExitReason::Shutdown);
    assert!(!rig.coordinator.park_if_requested(&vcpu).unwrap());
    rig.stop(others);
    assert_eq!(rig.coordinator.state(), SuspendState::Suspended);
}

#[test]
fn repeated_cycles_are_counted() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    let others = vec![rig.spawn(1)];
    let mut vcpu = rig.vcpu(0);
    for _ in 0..2 {
        guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
        let (back, outcome) = suspend(&rig, vcpu);
        vcpu = back;
        assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
        rig.tracker.note(WakeSource::Serial);
        assert_eq!(
            wakeup(&rig, &mut vcpu),
            WakeupOutcome::Resumed(WakeSource::Serial)
        );
    }
    let stats = rig.coordinator.stats();
    assert_eq!(
        (stats.state, stats.suspend_count, stats.resume_count),
        (SuspendState::Running, 2, 2)
    );
    assert_eq!(stats.last_wake_source, Some(WakeSource::Serial));
    assert_eq!(rig.vcpus[1].mp_reads(), 2, "parked twice");
    assert_eq!(rig.vcpus[0].resets(), 2);
    rig.stop(others);
}

#[test]
fn simultaneous_calls_are_both_denied() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Runnable]);
    let barrier = Arc::new(Barrier::new(2));
    let (report, outcomes) = mpsc::channel();
    let others: Vec<Other> = (0..2)
        .map(|index| {
            let (coordinator, barrier, report) =
                (rig.coordinator.clone(), barrier.clone(), report.clone());
            guest_calls(&rig.vcpus[index as usize], 0xC400_000E, ENTRY, CONTEXT);
            rig.spawn_with(index, move |vcpu| {
                barrier.wait();
                let outcome = coordinator.on_suspend_exit(vcpu);
                let _ = report.send((vcpu.index(), outcome));
            })
        })
        .collect();
    for _ in 0..2 {
        let (index, outcome) = outcomes.recv_timeout(LIMIT).expect("deadlock");
        let SuspendOutcome::Denied(denial) = outcome.unwrap() else {
            panic!("vCPU {index} was suspended");
        };
        assert_eq!(denial.psci_return(), PsciReturn::Denied);
        let x0 = rig.vcpus[index as usize].peek_reg(xreg(0));
        assert_eq!(x0, sign_extended(PsciReturn::Denied));
    }
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    assert_eq!(rig.coordinator.stats().denied_count, 2);
    rig.stop(others);
}

#[test]
fn another_function_id_is_not_supported() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    guest_calls(&rig.vcpus[0], 0x8400_0008, ENTRY, CONTEXT);
    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    let denial = Denial::NotSystemSuspend {
        function_id: 0x8400_0008,
    };
    assert_eq!(outcome.unwrap(), SuspendOutcome::Denied(denial));
    assert_eq!(rig.vcpus[0].peek_reg(xreg(0)), u64::MAX, "NOT_SUPPORTED");
    assert_eq!(rig.vcpus[1].kicks(), 0);
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
}

#[test]
fn a_wakeup_without_a_suspend_makes_the_vcpu_runnable() {
    let rig = Rig::new(&[MpState::Suspended]);
    let mut vcpu = rig.vcpu(0);
    assert_eq!(wakeup(&rig, &mut vcpu), WakeupOutcome::Spurious);
    assert_eq!(rig.vcpus[0].peek_mp_state(), MpState::Runnable);
    assert_eq!(rig.vcpus[0].resets(), 0);
    assert!(rig.events().is_empty());
}

#[test]
fn an_unreadable_parked_vcpu_counts_as_on_and_reports_its_error() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    rig.vcpus[1].fail_mp_state_reads(true);
    let others = vec![rig.spawn(1)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    let denial = Denial::OtherCpusOn { count: 1 };
    assert_eq!(outcome.unwrap(), SuspendOutcome::Denied(denial));
    wait_for(|| others[0].errors.load(Ordering::SeqCst) == 1);
    rig.stop(others);
}

#[test]
fn a_failed_suspend_releases_the_parked_vcpus() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    rig.vcpus[0].fail_mp_state_writes(true);
    let others = vec![rig.spawn(1)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (_, outcome) = suspend(&rig, rig.vcpu(0));
    assert!(matches!(outcome, Err(SuspendError::Suspend(_))));
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    let loops = others[0].loops.load(Ordering::SeqCst);
    rig.kick(1);
    wait_for(|| others[0].loops.load(Ordering::SeqCst) > loops);
    rig.stop(others);
}

/// A guest's SYSTEM_SUSPEND through the real vCPU loop, as a client of the figures and the
/// event stream sees it: refused while a secondary is on, accepted once it is off, and resumed
/// at the entry point by the wake button.
#[test]
fn the_state_a_client_reads_follows_the_guests_suspend_calls() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Runnable]);
    let threads = vec![rig.spawn_run_vcpu(0), rig.spawn_run_vcpu(1)];
    let caller = &rig.vcpus[0];
    guest_calls(caller, 0xC400_000E, ENTRY, CONTEXT);
    caller.push_exit(VmExit::SystemEvent(SystemEvent::Suspend));
    wait_for(|| rig.coordinator.stats().denied_count == 1);
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    assert_eq!(caller.peek_reg(xreg(0)), sign_extended(PsciReturn::Denied));

    // KVM handles the secondary's CPU_OFF; the guest calls again.
    rig.vcpus[1].kvm_sets_mp_state(MpState::Stopped);
    guest_calls(caller, 0xC400_000E, ENTRY, CONTEXT);
    caller.push_exit(VmExit::SystemEvent(SystemEvent::Suspend));
    wait_for(|| rig.coordinator.state() == SuspendState::Suspended);
    assert_eq!(
        rig.coordinator.suspended_call().map(|(vcpu, _)| vcpu),
        Some(0)
    );
    assert_eq!(
        rig.coordinator.census().unwrap(),
        [Some(MpState::Suspended), Some(MpState::Stopped)]
    );

    let button = rig.wake_line(0, WakeSource::Gpio);
    button.set_level(true).unwrap();
    wait_for(|| rig.coordinator.stats().resume_count == 1);
    let stats = rig.coordinator.stats();
    assert_eq!(stats.state, SuspendState::Running);
    assert_eq!(
        (stats.suspend_count, stats.denied_count),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.last_wake_source, Some(WakeSource::Gpio));
    assert_eq!(caller.peek_reg(PC), ENTRY);
    assert_eq!(caller.peek_reg(xreg(0)), CONTEXT);
    assert!(matches!(
        rig.events()[..],
        [
            VmEventKind::SuspendRequested { vcpu: 0, .. },
            VmEventKind::SuspendDenied {
                vcpu: 0,
                reason: Denial::OtherCpusOn { count: 1 }
            },
            VmEventKind::SuspendRequested { vcpu: 0, .. },
            VmEventKind::Suspended { vcpu: 0, .. },
            VmEventKind::Woken {
                source: WakeSource::Gpio
            },
            VmEventKind::Resumed { vcpu: 0, .. },
        ]
    ));
    rig.stop_threads(threads);
}

#[test]
fn stats_serialise_for_the_api() {
    let stats = SuspendStats {
        suspend_count: 2,
        last_wake_source: Some(WakeSource::Rtc),
        ..SuspendStats::default()
    };
    assert_eq!(
        serde_json::to_value(stats).unwrap(),
        serde_json::json!({
            "state": "running",
            "paused": false,
            "suspend_count": 2,
            "resume_count": 0,
            "denied_count": 0,
            "last_wake_source": "rtc",
            "last_suspend_latency_us": null,
            "last_resume_latency_us": null,
            "vcpu_kicks": 0,
        })
    );
}

mod pause;
mod power;
