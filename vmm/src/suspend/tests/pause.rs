//! Host pause, resume and census, with the fake vCPUs of the suspend tests on real threads.

use std::sync::mpsc::RecvTimeoutError;

use devices::bus::MmioBus;

use super::*;
use crate::vcpu::{VcpuContext, run_vcpu};

/// Long enough for a vCPU thread that could enter the guest, or leave it, to have done so.
pub(super) const QUIET: Duration = Duration::from_millis(100);

/// Runs `f` on a thread; [`done`] collects its result.
fn start<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
    let (report, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = report.send(f());
    });
    result
}

fn done<T>(result: &Receiver<T>) -> T {
    result.recv_timeout(LIMIT).expect("deadlock or panic")
}

fn still_blocked<T>(result: &Receiver<T>) -> bool {
    matches!(
        result.recv_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    )
}

impl Rig {
    pub(super) fn pause(&self) -> Result<(), PauseError> {
        let coordinator = self.coordinator.clone();
        within(move || coordinator.pause())
    }

    pub(super) fn resume(&self) -> Result<(), PauseError> {
        let coordinator = self.coordinator.clone();
        within(move || coordinator.resume())
    }

    pub(super) fn census(&self) -> Result<Vec<Option<MpState>>, PauseError> {
        let coordinator = self.coordinator.clone();
        within(move || coordinator.census())
    }

    pub(super) fn runs(&self) -> Vec<usize> {
        self.vcpus.iter().map(FakeVcpu::runs).collect()
    }

    pub(super) fn mp_reads(&self) -> Vec<usize> {
        self.vcpus.iter().map(FakeVcpu::mp_reads).collect()
    }

    /// Checks that no vCPU enters the guest for a while.
    pub(super) fn assert_none_runs(&self) {
        let before = self.runs();
        thread::sleep(QUIET);
        assert_eq!(self.runs(), before, "a paused vCPU entered KVM_RUN");
    }

    /// Waits until every vCPU's thread is in the guest (in `KVM_RUN`), not parked.
    pub(super) fn wait_all_in_guest(&self) {
        wait_for(|| self.vcpus.iter().all(FakeVcpu::is_in_run));
    }

    /// Starts `hold` (a pause or a census) on a host thread while only vCPU 0 runs, and waits
    /// until vCPU 0 has parked for it; vCPU 1 has no thread yet, so the round stays open.
    pub(super) fn start_hold_without_vcpu_1<T: Send + 'static>(
        &self,
        hold: impl FnOnce(&SuspendCoordinator) -> T + Send + 'static,
    ) -> (Other, Receiver<T>) {
        let other = self.spawn(0);
        let coordinator = self.coordinator.clone();
        let result = start(move || hold(&coordinator));
        wait_for(|| self.mp_reads()[0] == 1);
        (other, result)
    }

    /// Runs vCPU `index` in the real [`run_vcpu`] loop on a thread.
    pub(super) fn spawn_run_vcpu(&self, index: u32) -> JoinHandle<()> {
        let context = VcpuContext {
            bus: Arc::new(MmioBus::new()),
            control: self.control.clone(),
            suspend: self.coordinator.clone(),
        };
        let kick = self.vcpus[index as usize].kicker();
        let vcpu = self.vcpu(index);
        thread::spawn(move || run_vcpu(vcpu, &*kick, &context))
    }
}

#[test]
fn pause_parks_every_vcpu_and_none_runs_until_resume() {
    let rig = Rig::new(&[MpState::Runnable; 4]);
    let others: Vec<Other> = (0..4).map(|index| rig.spawn(index)).collect();
    rig.wait_all_in_guest();

    rig.pause().unwrap();
    assert!(rig.coordinator.is_paused());
    assert!(rig.coordinator.stats().paused);
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    // Each parked and reported its MP state once.
    assert_eq!(rig.mp_reads(), [1; 4]);
    let loops: Vec<usize> = others
        .iter()
        .map(|o| o.loops.load(Ordering::SeqCst))
        .collect();
    rig.assert_none_runs();
    let after: Vec<usize> = others
        .iter()
        .map(|o| o.loops.load(Ordering::SeqCst))
        .collect();
    assert_eq!(loops, after, "a paused vCPU left its park");

    rig.resume().unwrap();
    assert!(!rig.coordinator.is_paused());
    assert!(!rig.coordinator.stats().paused);
    rig.wait_all_in_guest();
    for other in &others {
        assert_eq!(other.parks.load(Ordering::SeqCst), 1);
        assert_eq!(other.errors.load(Ordering::SeqCst), 0);
    }
    assert!(rig.events().is_empty(), "a pause is not a guest suspend");
    rig.stop(others);
}

/// A guest that suspended sleeps on through a pause and a resume, and still wakes at its entry
/// point when an interrupt comes.
#[test]
fn a_guest_suspended_across_a_pause_sleeps_until_its_wakeup() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    rig.vcpus[0].push_exit(VmExit::SystemEvent(SystemEvent::Suspend));
    let threads = vec![rig.spawn_run_vcpu(0), rig.spawn_run_vcpu(1)];
    wait_for(|| rig.coordinator.state() == SuspendState::Suspended);
    rig.wait_all_in_guest();

    rig.pause().unwrap();
    assert_eq!(
        rig.census().unwrap(),
        [Some(MpState::Suspended), Some(MpState::Stopped)]
    );
    rig.assert_none_runs();
    rig.resume().unwrap();
    rig.wait_all_in_guest();
    thread::sleep(QUIET);
    let stats = rig.coordinator.stats();
    assert_eq!(
        (stats.state, stats.paused),
        (SuspendState::Suspended, false)
    );
    assert!(matches!(
        rig.events()[..],
        [
            VmEventKind::SuspendRequested { vcpu: 0, .. },
            VmEventKind::Suspended { vcpu: 0, .. }
        ]
    ));
    assert_ne!(rig.vcpus[0].peek_reg(PC), ENTRY, "resumed without a wakeup");

    // The RTC's alarm, as the vGIC delivers it to the sleeping vCPU.
    let alarm = rig.wake_line(0, WakeSource::Rtc);
    alarm.set_level(true).unwrap();
    wait_for(|| rig.coordinator.stats().resume_count == 1);
    assert_eq!(rig.vcpus[0].peek_reg(PC), ENTRY);
    assert_eq!(rig.vcpus[0].peek_reg(xreg(0)), CONTEXT);
    assert!(matches!(
        rig.events()[..],
        [
            VmEventKind::Woken {
                source: WakeSource::Rtc
            },
            VmEventKind::Resumed {
                vcpu: 0,
                source: WakeSource::Rtc,
                ..
            }
        ]
    ));
    rig.stop_threads(threads);
}

#[test]
fn census_reports_each_vcpu_and_lets_them_run_again() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped, MpState::Runnable]);
    rig.vcpus[2].fail_mp_state_reads(true);
    let others: Vec<Other> = (0..3).map(|index| rig.spawn(index)).collect();

    assert_eq!(
        rig.census().unwrap(),
        [Some(MpState::Runnable), Some(MpState::Stopped), None]
    );
    assert!(!rig.coordinator.is_paused());
    assert_eq!(rig.mp_reads(), [1; 3]);
    rig.wait_all_in_guest();
    // The parked thread reports its failed read after the round, as in a suspend.
    wait_for(|| others[2].errors.load(Ordering::SeqCst) == 1);
    assert_eq!(others[0].parks.load(Ordering::SeqCst), 1);
    assert_eq!(rig.coordinator.state(), SuspendState::Running);
    rig.stop(others);
}

#[test]
fn census_while_paused_reads_again_and_stays_paused() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Runnable]);
    let others: Vec<Other> = (0..2).map(|index| rig.spawn(index)).collect();
    rig.pause().unwrap();
    assert_eq!(rig.mp_reads(), [1, 1]);
    let runs = rig.runs();

    // Only the vCPU's own thread can see this, so the census must ask it.
    rig.vcpus[1].kvm_sets_mp_state(MpState::Stopped);
    assert_eq!(
        rig.census().unwrap(),
        [Some(MpState::Runnable), Some(MpState::Stopped)]
    );
    assert_eq!(rig.mp_reads(), [2, 2]);
    assert_eq!(
        rig.census().unwrap(),
        [Some(MpState::Runnable), Some(MpState::Stopped)]
    );
    assert_eq!(rig.mp_reads(), [3, 3]);
    assert!(rig.coordinator.is_paused());
    assert_eq!(rig.runs(), runs, "no vCPU ran for the census");
    for other in &others {
        assert_eq!(
            other.parks.load(Ordering::SeqCst),
            0,
            "still in the first park"
        );
    }

    rig.resume().unwrap();
    rig.wait_all_in_guest();
    rig.stop(others);
}

#[test]
fn pausing_twice_or_resuming_unpaused_is_refused() {
    let rig = Rig::new(&[MpState::Runnable]);
    let others = vec![rig.spawn(0)];
    assert_eq!(rig.resume(), Err(PauseError::NotPaused));
    rig.pause().unwrap();
    assert_eq!(rig.pause(), Err(PauseError::AlreadyPaused));
    assert!(rig.coordinator.is_paused());
    rig.resume().unwrap();
    assert_eq!(rig.resume(), Err(PauseError::NotPaused));
    assert_eq!(
        PauseError::AlreadyPaused.to_string(),
        "The VM is already paused"
    );

    rig.stop(others);
    assert_eq!(rig.pause(), Err(PauseError::Stopping));
    assert_eq!(rig.census(), Err(PauseError::Stopping));
    assert!(!rig.coordinator.is_paused());
}

#[test]
fn shutdown_while_paused_releases_every_thread_without_a_resume() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped, MpState::Runnable]);
    let others: Vec<Other> = (0..3).map(|index| rig.spawn(index)).collect();
    rig.pause().unwrap();

    // Joins every vCPU thread (within the deadlock limit) while the VM is still paused.
    rig.stop(others);
    // The hold is left for a resume, which releases nothing by now but keeps the state sane.
    assert!(rig.coordinator.is_paused());
    rig.resume().unwrap();
    assert!(!rig.coordinator.is_paused());
}

#[test]
fn shutdown_while_pausing_fails_the_pause() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Runnable]);
    // vCPU 1 never gets a thread: it never parks.
    let (other, pause) = rig.start_hold_without_vcpu_1(SuspendCoordinator::pause);
    let others = vec![other];
    assert!(still_blocked(&pause));
    assert!(!rig.coordinator.is_paused());
    assert!(rig.vcpus[1].kicks() >= 1);

    rig.control.request_exit(ExitReason::Shutdown);
    assert_eq!(done(&pause), Err(PauseError::Stopping));
    assert!(!rig.coordinator.is_paused());
    rig.stop(others);
}

#[test]
fn while_pausing_suspend_is_denied_and_resume_waits() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped]);
    // vCPU 1 parks late, so the pause stays in progress.
    let (other, pause) = rig.start_hold_without_vcpu_1(SuspendCoordinator::pause);
    let mut others = vec![other];

    // A SYSTEM_SUSPEND exit vCPU 1 took just before its kick is refused at once.
    guest_calls(&rig.vcpus[1], 0xC400_000E, ENTRY, CONTEXT);
    let (_, outcome) = suspend(&rig, rig.vcpu(1));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Denied(Denial::Busy));
    assert_eq!(
        rig.vcpus[1].peek_reg(xreg(0)),
        sign_extended(PsciReturn::Denied)
    );
    assert_eq!(rig.coordinator.state(), SuspendState::Running);

    let coordinator = rig.coordinator.clone();
    let resume = start(move || coordinator.resume());
    assert!(still_blocked(&resume), "resume waits for the pause");
    assert!(still_blocked(&pause));

    others.push(rig.spawn(1));
    assert_eq!(done(&pause), Ok(()));
    assert_eq!(done(&resume), Ok(()));
    assert!(!rig.coordinator.is_paused());
    rig.wait_all_in_guest();
    rig.stop(others);
}

/// `vm.info` counts the vCPUs on the KVM path: a guest that suspends meanwhile must not be
/// refused for it (6.1 guests failed `echo mem` while a client polled).
#[test]
fn a_suspend_exit_during_a_census_parks_for_it_and_is_decided_after() {
    let rig = Rig::new(&[MpState::Stopped, MpState::Runnable]);
    // vCPU 1 has no thread, so the census waits for it.
    let (other, census) = rig.start_hold_without_vcpu_1(SuspendCoordinator::census);
    let others = vec![other];
    assert!(still_blocked(&census));

    // vCPU 1 leaves KVM_RUN with a SYSTEM_SUSPEND exit: it reports to the census first.
    guest_calls(&rig.vcpus[1], 0xC400_000E, ENTRY, CONTEXT);
    let (vcpu, outcome) = suspend(&rig, rig.vcpu(1));
    assert_eq!(outcome.unwrap(), SuspendOutcome::Suspended);
    let seen = vec![Some(MpState::Stopped), Some(MpState::Runnable)];
    assert_eq!(done(&census), Ok(seen));
    assert_eq!(vcpu.peek_mp_state(), MpState::Suspended);
    assert_eq!(vcpu.peek_reg(xreg(0)), 0xC400_000E, "no PSCI error written");
    let stats = rig.coordinator.stats();
    assert_eq!(stats.state, SuspendState::Suspended);
    assert_eq!((stats.suspend_count, stats.denied_count), (1, 0));
    // vCPU 0 parked twice: for the census, then for the decision.
    assert_eq!(rig.mp_reads()[0], 2);
    rig.stop(others);
}

#[test]
fn pause_and_census_wait_for_a_suspend_decision() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Stopped, MpState::Stopped]);
    // vCPU 2 parks late, so the decision stays in progress.
    let mut others = vec![rig.spawn(1)];
    guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
    let (coordinator, mut caller) = (rig.coordinator.clone(), rig.vcpu(0));
    let suspend = start(move || coordinator.on_suspend_exit(&mut caller).map(|_| caller));
    wait_for(|| rig.mp_reads()[1] == 1);
    assert_eq!(rig.coordinator.state(), SuspendState::Suspending);

    let coordinator = rig.coordinator.clone();
    let pause = start(move || coordinator.pause());
    let coordinator = rig.coordinator.clone();
    let census = start(move || coordinator.census());
    assert!(still_blocked(&pause));
    assert!(still_blocked(&census));
    assert_eq!(rig.coordinator.state(), SuspendState::Suspending);

    others.push(rig.spawn(2));
    let caller = done(&suspend).unwrap();
    assert_eq!(caller.peek_mp_state(), MpState::Suspended);
    // The caller re-enters KVM_RUN, SUSPENDED; it parks for the pause and the census.
    others.push(rig.spawn(0));
    let all = [
        Some(MpState::Suspended),
        Some(MpState::Stopped),
        Some(MpState::Stopped),
    ];
    assert_eq!(done(&pause), Ok(()));
    assert_eq!(done(&census), Ok(all.to_vec()));
    let stats = rig.coordinator.stats();
    assert_eq!((stats.state, stats.paused), (SuspendState::Suspended, true));
    assert_eq!(stats.suspend_count, 1);
    rig.resume().unwrap();
    rig.stop(others);
}

/// A SYSTEM_SUSPEND exit races a pause in the real vCPU loop: the suspend is decided either
/// way (accepted, or denied because the pause came first) and the pause then completes.
#[test]
fn a_suspend_exit_racing_a_pause_ends_cleanly() {
    for attempt in 0..20u64 {
        let rig = Rig::new(&[MpState::Runnable, MpState::Stopped, MpState::Stopped]);
        guest_calls(&rig.vcpus[0], 0xC400_000E, ENTRY, CONTEXT);
        let threads: Vec<JoinHandle<()>> = (0..3).map(|index| rig.spawn_run_vcpu(index)).collect();
        rig.wait_all_in_guest();
        let barrier = Arc::new(Barrier::new(2));
        let (coordinator, wait) = (rig.coordinator.clone(), barrier.clone());
        // Spread the exit around the pause over the attempts: first the pause, then the exit
        // gets a head start.
        let lead = Duration::from_micros((attempt % 10) * 100);
        let pause = start(move || {
            wait.wait();
            if attempt >= 10 {
                thread::sleep(lead);
            }
            coordinator.pause()
        });
        barrier.wait();
        if attempt < 10 {
            thread::sleep(lead);
        }
        rig.vcpus[0].push_exit(VmExit::SystemEvent(SystemEvent::Suspend));
        rig.kick(0);

        assert_eq!(done(&pause), Ok(()), "attempt {attempt}");
        // The exit may still be queued if the pause won before vCPU 0 ran again.
        let pending = rig.vcpus[0].pending_exits() > 0;
        let stats = rig.coordinator.stats();
        assert!(stats.paused);
        let (state, mp) = (stats.state, rig.vcpus[0].peek_mp_state());
        match (stats.suspend_count, stats.denied_count) {
            (1, 0) => assert_eq!((state, mp), (SuspendState::Suspended, MpState::Suspended)),
            (0, 1) => {
                assert_eq!((state, mp), (SuspendState::Running, MpState::Runnable));
                let denial = VmEventKind::SuspendDenied {
                    vcpu: 0,
                    reason: Denial::Busy,
                };
                assert!(rig.events().contains(&denial), "attempt {attempt}");
            }
            (0, 0) => assert!(pending, "attempt {attempt}: the exit got lost"),
            counts => panic!("attempt {attempt}: {counts:?}"),
        }
        assert_eq!(rig.census().unwrap()[0], Some(mp));
        rig.assert_none_runs();

        rig.resume().unwrap();
        // Once resumed, vCPU 0 takes any exit still queued and runs on.
        wait_for(|| rig.vcpus[0].pending_exits() == 0);
        rig.wait_all_in_guest();
        rig.stop_threads(threads);
        assert_eq!(rig.control.exit_reason(), Some(ExitReason::Shutdown));
    }
}

#[test]
fn a_pause_asked_during_a_census_waits_for_it_then_holds_every_vcpu() {
    let rig = Rig::new(&[MpState::Runnable, MpState::Runnable]);
    // vCPU 1 parks late, so the census stays in progress.
    let (other, census) = rig.start_hold_without_vcpu_1(SuspendCoordinator::census);
    let mut others = vec![other];
    let coordinator = rig.coordinator.clone();
    let pause = start(move || coordinator.pause());
    assert!(still_blocked(&pause), "a pause during a census");
    assert!(!rig.coordinator.is_paused());

    others.push(rig.spawn(1));
    assert_eq!(
        done(&census),
        Ok(vec![Some(MpState::Runnable), Some(MpState::Runnable)])
    );
    assert_eq!(done(&pause), Ok(()));
    assert!(rig.coordinator.is_paused());
    rig.assert_none_runs();
    assert_eq!(rig.mp_reads(), [2, 2], "parked once for each");
    rig.resume().unwrap();
    rig.wait_all_in_guest();
    rig.stop(others);
}
