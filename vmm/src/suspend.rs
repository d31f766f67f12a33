//! PSCI SYSTEM_SUSPEND for the whole VM: one [`SuspendCoordinator`] shared by every vCPU
//! thread decides, suspends and resumes.
//!
//! KVM leaves the call to userspace (Linux commit bfbab4456877). The flow follows Oliver
//! Upton's kvmtool RFC: the caller parks every other vCPU outside `KVM_RUN` (only then can their
//! MP state be read, and no CPU_ON can race the check), counts those not OFF, and either writes
//! a PSCI error into `x0` or marks itself SUSPENDED and re-enters `KVM_RUN`, which blocks until
//! an interrupt is pending. The following `KVM_SYSTEM_EVENT_WAKEUP` exit resets the vCPU to the
//! guest's entry point with `x0` = context id.
//!
//! When KVM forwards CPU_ON, CPU_OFF and AFFINITY_INFO (its SMCCC filter, Linux 6.4+), the
//! coordinator keeps every vCPU's power state itself ([`power`]): a vCPU that is off waits in
//! userspace, the suspend decision and the census read the table, and nobody is kicked.
//!
//! The host can hold the vCPUs too, with the same park rounds but no caller:
//! [`SuspendCoordinator::pause`] keeps every vCPU parked until [`SuspendCoordinator::resume`],
//! and [`SuspendCoordinator::census`] parks them for one round to read their MP states. That
//! hold is orthogonal to [`SuspendState`]: a paused VM is Running-paused or Suspended-paused.
//! They meet only through the single park round that may exist at a time:
//!
//! * a host operation waits for a suspend decision (Suspending, Resuming) to end first;
//! * a SYSTEM_SUSPEND exit during a census parks for it like any vCPU and is decided after it;
//!   during a pause it is refused with `DENIED`, as any busy call, so that a snapshot finds it
//!   answered; once paused no vCPU runs, so none can call;
//! * a paused SUSPENDED vCPU keeps that MP state and re-enters `KVM_RUN` still SUSPENDED, so the
//!   guest sleeps on after the resume; an interrupt raised meanwhile wakes it then;
//! * a wakeup exit that races a pause is handled before its vCPU parks, so a pause asked for
//!   while Suspended may end Running-paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arch_aarch64::cpu_power::CpuPowerTable;
use arch_aarch64::layout::GuestRegion;
use arch_aarch64::psci::{ResumeState, SystemSuspendCall, validate_system_suspend};
use arch_aarch64::regs::{PC, PSTATE, PSTATE_EL1H_DAIF_MASKED, xreg};
use hypervisor::{MpState, Vcpu, VcpuError, VcpuKick};
use serde::{Deserialize, Serialize};

use crate::events::{Denial, EventBus, VmEvent, VmEventKind, WakeSource, WakeSourceTracker};
use crate::exit::ExitControl;

mod pause;
mod power;

use pause::Hold;
pub use pause::PauseError;

/// How often waits look at [`ExitControl::stopping`], which has no way to notify them, and
/// re-kick vCPUs that have not parked yet.
const POLL: Duration = Duration::from_millis(10);

/// The VM's power state as the guest's SYSTEM_SUSPEND sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuspendState {
    /// No suspend in progress.
    #[default]
    Running,
    /// A vCPU called SYSTEM_SUSPEND; the others are being parked and checked.
    Suspending,
    /// The caller is SUSPENDED in `KVM_RUN`, waiting for an interrupt.
    Suspended,
    /// The caller woke and is being reset to its entry point.
    Resuming,
}

impl SuspendState {
    /// Whether the state machine may go from `self` to `to`.
    pub fn may_go(self, to: Self) -> bool {
        use SuspendState::*;
        matches!(
            (self, to),
            (Running, Suspending)
                | (Suspending, Running)
                | (Suspending, Suspended)
                | (Suspended, Resuming)
                | (Resuming, Running)
        )
    }
}

/// Counters for the API, as a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendStats {
    /// The state when the snapshot was taken.
    pub state: SuspendState,
    /// Whether the host had paused every vCPU ([`SuspendCoordinator::pause`]).
    pub paused: bool,
    /// Accepted SYSTEM_SUSPEND calls.
    pub suspend_count: u64,
    /// Completed resumes.
    pub resume_count: u64,
    /// Refused SYSTEM_SUSPEND calls.
    pub denied_count: u64,
    /// The source of the last wakeup.
    pub last_wake_source: Option<WakeSource>,
    /// From the last accepted suspend exit to the caller being SUSPENDED.
    pub last_suspend_latency_us: Option<u64>,
    /// From the last wakeup exit to the vCPU being ready to re-enter the guest.
    pub last_resume_latency_us: Option<u64>,
    /// How many times a suspend decision, a census or a pause kicked a vCPU out of the guest
    /// to read its power state. Decisions and censuses add none when the VMM keeps the power
    /// states.
    #[serde(default)]
    pub vcpu_kicks: u64,
}

/// What [`SuspendCoordinator::on_suspend_exit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendOutcome {
    /// The caller is SUSPENDED; re-enter `KVM_RUN`, which blocks until a wakeup.
    Suspended,
    /// The guest got the error in `x0`; re-enter `KVM_RUN`.
    Denied(Denial),
}

/// What [`SuspendCoordinator::on_wakeup_exit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeupOutcome {
    /// The vCPU is at the guest's entry point.
    Resumed(WakeSource),
    /// No suspend of this vCPU was in progress; it was made runnable as it was.
    Spurious,
}

/// Failures of the vCPU operations a suspend or resume needs. The VM cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The SYSTEM_SUSPEND arguments could not be read.
    #[error("Cannot read the SYSTEM_SUSPEND arguments")]
    ReadCall(#[source] VcpuError),
    /// The PSCI error could not be returned to the guest.
    #[error("Cannot return the SYSTEM_SUSPEND error to the guest")]
    WriteResult(#[source] VcpuError),
    /// The caller could not be made SUSPENDED.
    #[error("Cannot suspend the calling vCPU")]
    Suspend(#[source] VcpuError),
    /// A parking vCPU could not read its own MP state.
    #[error("Cannot read the MP state of a parked vCPU")]
    ParkedMpState(#[source] VcpuError),
    /// The woken vCPU could not be reset to the entry point.
    #[error("Cannot reset the vCPU to the resume entry point")]
    Resume(#[source] VcpuError),
    /// A vCPU woken without a suspend could not be made runnable.
    #[error("Cannot make the woken vCPU runnable")]
    Runnable(#[source] VcpuError),
    /// The arguments of a forwarded PSCI power call could not be read.
    #[error("Cannot read the arguments of PSCI call {function_id:#x}")]
    ReadPowerCall {
        /// The function id.
        function_id: u64,
        /// The register error.
        #[source]
        source: VcpuError,
    },
    /// The result of a forwarded PSCI power call could not be returned to the guest.
    #[error("Cannot return the result of PSCI call {function_id:#x} to the guest")]
    WritePowerCall {
        /// The function id.
        function_id: u64,
        /// The register error.
        #[source]
        source: VcpuError,
    },
    /// A vCPU could not be started at its CPU_ON entry point.
    #[error("Cannot start the vCPU at its CPU_ON entry point")]
    Start(#[source] VcpuError),
    /// A vCPU could not be marked powered off after its CPU_OFF.
    #[error("Cannot power off the vCPU")]
    PowerOff(#[source] VcpuError),
}

/// Where each vCPU is in a park round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// The vCPU that asked for the round.
    Caller,
    /// Not parked yet.
    Pending,
    /// Parked, with its MP state (`None`: it could not be read, so it counts as on).
    Parked(Option<MpState>),
    /// Parked, and asked by a census to read its MP state again.
    Asked,
}

/// Every vCPU but the caller, if any, parks outside `KVM_RUN` until the round ends.
struct ParkRound {
    id: u64,
    slots: Vec<Slot>,
}

impl ParkRound {
    /// The vCPUs to kick: those not parked yet. `Asked` ones wait on the condvar instead.
    fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&i| self.slots[i] == Slot::Pending)
    }

    /// Whether every vCPU has reported its MP state.
    fn complete(&self) -> bool {
        !self
            .slots
            .iter()
            .any(|slot| matches!(slot, Slot::Pending | Slot::Asked))
    }

    fn others_on(&self) -> usize {
        let on =
            |slot: &&Slot| matches!(slot, Slot::Parked(state) if *state != Some(MpState::Stopped));
        self.slots.iter().filter(on).count()
    }
}

/// The suspend accepted for a vCPU, kept for its resume.
#[derive(Clone, Copy)]
struct Accepted {
    vcpu: u32,
    call: SystemSuspendCall,
}

struct Inner {
    state: SuspendState,
    /// The host's hold on the vCPUs, orthogonal to `state`.
    hold: Hold,
    /// At most one round: a suspend decision's (`state` Suspending) or the host's (`hold` not
    /// Free), never both.
    park: Option<ParkRound>,
    next_round: u64,
    accepted: Option<Accepted>,
    stats: SuspendStats,
    /// Every vCPU's power state, when the VMM keeps them; `None` when KVM does.
    power: Option<CpuPowerTable>,
    /// Threads waiting on `changed` and on `parked`. A notify costs a futex syscall even with
    /// nobody waiting, and a suspend or resume notifies up to four times.
    waiting: Waiting,
}

/// How many threads wait on each condvar of the coordinator, counted under its lock.
#[derive(Default)]
struct Waiting {
    changed: usize,
    parked: usize,
}

/// The VM-wide SYSTEM_SUSPEND state machine; one per VM, shared by the vCPU threads.
pub struct SuspendCoordinator {
    vcpus: usize,
    ram: Vec<GuestRegion>,
    kickers: Vec<Arc<dyn VcpuKick>>,
    events: Arc<EventBus>,
    wake: Arc<WakeSourceTracker>,
    control: Arc<ExitControl>,
    /// Lets `park_if_requested`, called after every exit, skip the lock.
    park_requested: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Signalled when a vCPU parks: only the one thread waiting for the round listens, so a
    /// park does not wake every vCPU parked before it (that made a round cost O(N²) wakeups).
    parked: Condvar,
    /// One per vCPU, for its thread while the vCPU is off: a CPU_ON wakes its target only,
    /// and the state changes of a suspend wake none of them (waking 7 threads on every
    /// transition made an 8-vCPU suspend cost 3 times a 1-vCPU one on 2 host CPUs).
    powered_on: Vec<Condvar>,
}

impl SuspendCoordinator {
    /// A coordinator for `vcpus` vCPUs whose guest RAM is `ram`. `kickers[i]` kicks vCPU `i`
    /// out of `KVM_RUN`. Waits end when `control` says the VM is stopping.
    pub fn new(
        vcpus: usize,
        ram: Vec<GuestRegion>,
        kickers: Vec<Arc<dyn VcpuKick>>,
        events: Arc<EventBus>,
        wake: Arc<WakeSourceTracker>,
        control: Arc<ExitControl>,
    ) -> Self {
        if kickers.len() != vcpus {
            log::warn!("{} vCPU kickers for {vcpus} vCPUs", kickers.len());
        }
        Self {
            vcpus,
            ram,
            kickers,
            events,
            wake,
            control,
            park_requested: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                state: SuspendState::Running,
                hold: Hold::Free,
                park: None,
                next_round: 0,
                accepted: None,
                stats: SuspendStats::default(),
                power: None,
                waiting: Waiting::default(),
            }),
            changed: Condvar::new(),
            parked: Condvar::new(),
            powered_on: (0..vcpus).map(|_| Condvar::new()).collect(),
        }
    }

    /// The current state.
    pub fn state(&self) -> SuspendState {
        self.lock().state
    }

    /// While the VM is Suspended: the suspended vCPU and the call it made.
    pub fn suspended_call(&self) -> Option<(u32, SystemSuspendCall)> {
        let inner = self.lock();
        match (inner.state, inner.accepted) {
            (SuspendState::Suspended, Some(accepted)) => Some((accepted.vcpu, accepted.call)),
            _ => None,
        }
    }

    /// Makes a coordinator for a guest restored while suspended: `vcpu` made `call` and is
    /// SUSPENDED, every other vCPU is off. Its next wakeup resumes the guest as if the suspend
    /// had happened in this process. Call it before any vCPU runs.
    pub fn restored_suspended(self, vcpu: u32, call: SystemSuspendCall) -> Self {
        {
            let mut inner = self.lock();
            inner.state = SuspendState::Suspended;
            inner.accepted = Some(Accepted { vcpu, call });
        }
        // Only interrupts raised from now on can be the wakeup.
        self.wake.arm();
        self
    }

    /// The counters.
    pub fn stats(&self) -> SuspendStats {
        let inner = self.lock();
        SuspendStats {
            state: inner.state,
            paused: inner.hold == Hold::Paused,
            ..inner.stats
        }
    }

    /// The bus the transitions are published on.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// The tracker the wake sources are read from.
    pub fn wake_sources(&self) -> &Arc<WakeSourceTracker> {
        &self.wake
    }

    /// Handles `KVM_SYSTEM_EVENT_SUSPEND` on the calling vCPU's own thread; then re-enter
    /// `KVM_RUN` whatever the outcome. Blocks until every other vCPU has parked in
    /// [`park_if_requested`](Self::park_if_requested) or the VM is stopping.
    ///
    /// An `x0` that is not a SYSTEM_SUSPEND id (KVM never exits so) gets `NOT_SUPPORTED`,
    /// as KVM answers unknown PSCI calls. A call while another is in progress, or while the
    /// host pauses the vCPUs, gets `DENIED`; a call during a census waits for it to end.
    pub fn on_suspend_exit<V: Vcpu + ?Sized>(
        &self,
        vcpu: &mut V,
    ) -> Result<SuspendOutcome, SuspendError> {
        let started = Instant::now();
        let index = vcpu.index();
        let read = |n| vcpu.reg(xreg(n)).map_err(SuspendError::ReadCall);
        let (x0, x1, x2) = (read(0)?, read(1)?, read(2)?);
        let Some(call) = SystemSuspendCall::decode(x0, x1, x2) else {
            log::warn!("vCPU {index}: suspend exit with x0 = {x0:#x}");
            return self.refuse(vcpu, Denial::NotSystemSuspend { function_id: x0 });
        };

        let mut inner = self.lock();
        // A census holds the vCPUs for a moment only: this one parks for it as any other, and
        // its call is decided after. (A pause is refused: it may be for a snapshot, which must
        // find the call answered.)
        while inner.hold == Hold::Census && inner.state == SuspendState::Running {
            drop(inner);
            let parked = self.park_if_requested(vcpu)?;
            inner = self.lock();
            if !parked {
                break;
            }
        }
        if self.control.stopping() {
            drop(inner);
            return self.refuse(vcpu, Denial::Stopping);
        }
        if inner.state != SuspendState::Running || inner.park.is_some() {
            drop(inner);
            return self.refuse(vcpu, Denial::Busy);
        }
        self.go(&mut inner, SuspendState::Suspending);
        // Only interrupts raised from now on can be the wakeup.
        self.wake.arm();
        // Stamped now, published with the decision: logging it here would be timed too.
        let requested = VmEvent::now(VmEventKind::SuspendRequested {
            vcpu: index,
            entry: call.entry,
            context_id: call.context_id,
        });
        let (mut inner, others_on) = match inner.power.as_ref() {
            // Under the lock no CPU_ON can slip in: the table is the truth.
            Some(power) => {
                let on = power.others_on(index as usize);
                (inner, Some(on))
            }
            None => {
                let round = self.start_round(&mut inner, Some(index as usize));
                drop(inner);
                self.kick_pending();
                let (inner, parked) = self.await_round(self.lock(), round);
                let on = match &inner.park {
                    Some(park) if parked => Some(park.others_on()),
                    _ => None,
                };
                (inner, on)
            }
        };

        let denial = match others_on {
            None => Denial::Stopping,
            Some(on) => match validate_system_suspend(&call, &self.ram, on) {
                Err(denial) => Denial::from(denial),
                Ok(()) => {
                    let result = self.accept(&mut inner, vcpu, call, started, requested);
                    self.release(&mut inner);
                    return result;
                }
            },
        };
        let written = vcpu
            .set_reg(xreg(0), denial.psci_return().to_x0())
            .map_err(SuspendError::WriteResult);
        self.go(&mut inner, SuspendState::Running);
        self.release(&mut inner);
        self.events.publish(requested);
        written?;
        inner.stats.denied_count += 1;
        self.events.emit(VmEventKind::SuspendDenied {
            vcpu: index,
            reason: denial,
        });
        Ok(SuspendOutcome::Denied(denial))
    }

    /// Handles `KVM_SYSTEM_EVENT_WAKEUP` on the woken vCPU's own thread; then re-enter
    /// `KVM_RUN`. Resets the vCPU to the suspend call's entry point with `x0` = context id.
    ///
    /// A wakeup of a vCPU this coordinator did not suspend (KVM only reports it for a
    /// SUSPENDED vCPU, so something else set that state) is logged and the vCPU made runnable
    /// where it stopped: leaving it SUSPENDED would hang the guest.
    pub fn on_wakeup_exit<V: Vcpu + ?Sized>(
        &self,
        vcpu: &mut V,
    ) -> Result<WakeupOutcome, SuspendError> {
        let started = Instant::now();
        let index = vcpu.index();
        let (accepted, source) = {
            let mut inner = self.lock();
            match inner.accepted {
                Some(accepted)
                    if inner.state == SuspendState::Suspended && accepted.vcpu == index =>
                {
                    self.go(&mut inner, SuspendState::Resuming);
                    let source = self.wake.take();
                    self.events.emit(VmEventKind::Woken { source });
                    (accepted, source)
                }
                _ => {
                    let state = inner.state;
                    drop(inner);
                    log::warn!("vCPU {index}: wakeup exit while {state:?}; resuming it in place");
                    vcpu.set_mp_state(MpState::Runnable)
                        .map_err(SuspendError::Runnable)?;
                    return Ok(WakeupOutcome::Spurious);
                }
            }
        };

        // Outside the lock: only this thread touches its vCPU, and nothing waits on Resuming.
        let result = restore(vcpu, &ResumeState::for_call(&accepted.call));
        let mut inner = self.lock();
        inner.accepted = None;
        self.go(&mut inner, SuspendState::Running);
        result.map_err(SuspendError::Resume)?;
        let latency_us = micros_since(started);
        inner.stats.resume_count += 1;
        inner.stats.last_wake_source = Some(source);
        inner.stats.last_resume_latency_us = Some(latency_us);
        self.events.emit(VmEventKind::Resumed {
            vcpu: index,
            latency_us,
            source,
        });
        Ok(WakeupOutcome::Resumed(source))
    }

    /// Call at the top of each vCPU loop iteration and after `VmExit::Interrupted`, on the
    /// vCPU's own thread. While another vCPU is suspending, or the host pauses or counts the
    /// vCPUs, reports this vCPU's MP state and blocks until the round is over (for a pause:
    /// until the resume) or the VM is stopping, reading the state again when a census asks.
    /// Returns whether it parked.
    ///
    /// An error (the MP state could not be read) is returned after the round; this vCPU then
    /// counted as on, so a suspend was denied, and a census saw `None`.
    pub fn park_if_requested<V: Vcpu + ?Sized>(&self, vcpu: &V) -> Result<bool, SuspendError> {
        if !self.park_requested.load(Ordering::SeqCst) || self.control.stopping() {
            return Ok(false);
        }
        let index = vcpu.index() as usize;
        let round = match self.lock().park.as_ref() {
            Some(park) if park.slots.get(index) == Some(&Slot::Pending) => park.id,
            _ => return Ok(false),
        };
        let (mut parked, mut failed) = (false, None);
        'read: loop {
            // Out of KVM_RUN, so this does not block; no other thread may touch the vCPU.
            // The first error is the one reported.
            let state = vcpu.mp_state().map_err(|e| failed.get_or_insert(e)).ok();
            let mut inner = self.lock();
            // None: the caller gave up meanwhile (the VM is stopping).
            let Some(park) = inner.park.as_mut().filter(|park| park.id == round) else {
                break;
            };
            park.slots[index] = Slot::Parked(state);
            parked = true;
            self.notify_parked(&inner);
            while !self.control.stopping() {
                match inner.park.as_ref().filter(|park| park.id == round) {
                    Some(park) if park.slots[index] == Slot::Asked => continue 'read,
                    Some(_) => inner = self.wait(inner).0,
                    None => break,
                }
            }
            break;
        }
        match failed {
            Some(err) => Err(SuspendError::ParkedMpState(err)),
            None => Ok(parked),
        }
    }

    /// Marks the caller SUSPENDED and records the call for its resume.
    fn accept<V: Vcpu + ?Sized>(
        &self,
        inner: &mut Inner,
        vcpu: &mut V,
        call: SystemSuspendCall,
        started: Instant,
        requested: VmEvent,
    ) -> Result<SuspendOutcome, SuspendError> {
        if let Err(err) = vcpu.set_mp_state(MpState::Suspended) {
            self.go(inner, SuspendState::Running);
            self.events.publish(requested);
            return Err(SuspendError::Suspend(err));
        }
        let vcpu = vcpu.index();
        self.go(inner, SuspendState::Suspended);
        inner.accepted = Some(Accepted { vcpu, call });
        let latency_us = micros_since(started);
        self.events.publish(requested);
        inner.stats.suspend_count += 1;
        inner.stats.last_suspend_latency_us = Some(latency_us);
        self.events
            .emit(VmEventKind::Suspended { vcpu, latency_us });
        Ok(SuspendOutcome::Suspended)
    }

    /// Returns `denial`'s error to the guest without touching the state.
    fn refuse<V: Vcpu + ?Sized>(
        &self,
        vcpu: &mut V,
        denial: Denial,
    ) -> Result<SuspendOutcome, SuspendError> {
        vcpu.set_reg(xreg(0), denial.psci_return().to_x0())
            .map_err(SuspendError::WriteResult)?;
        self.lock().stats.denied_count += 1;
        self.events.emit(VmEventKind::SuspendDenied {
            vcpu: vcpu.index(),
            reason: denial,
        });
        Ok(SuspendOutcome::Denied(denial))
    }

    /// Opens a park round with every vCPU but `caller` pending; returns its id. Kick them next.
    fn start_round(&self, inner: &mut Inner, caller: Option<usize>) -> u64 {
        let mut slots = vec![Slot::Pending; self.vcpus];
        if let Some(slot) = caller.and_then(|caller| slots.get_mut(caller)) {
            *slot = Slot::Caller;
        }
        let id = inner.next_round;
        inner.next_round += 1;
        inner.park = Some(ParkRound { id, slots });
        // Before the kicks: a kicked thread must see it at the top of its loop.
        self.park_requested.store(true, Ordering::SeqCst);
        // vCPUs that are off wait in `wait_until_on`, not in the guest: a kick misses them.
        self.wake_off_vcpus();
        id
    }

    /// Waits until every vCPU of round `id` has reported, kicking the laggards again every
    /// [`POLL`]. False if the round ended first or the VM is stopping.
    fn await_round<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        id: u64,
    ) -> (MutexGuard<'a, Inner>, bool) {
        loop {
            if self.control.stopping() {
                return (inner, false);
            }
            match inner.park.as_ref().filter(|park| park.id == id) {
                None => return (inner, false),
                Some(park) if park.complete() => return (inner, true),
                Some(_) => {}
            }
            inner.waiting.parked += 1;
            let (guard, wait) = self
                .parked
                .wait_timeout(inner, POLL)
                .unwrap_or_else(|e| e.into_inner());
            inner = guard;
            inner.waiting.parked -= 1;
            if wait.timed_out() {
                drop(inner);
                self.kick_pending();
                inner = self.lock();
            }
        }
    }

    /// Ends the park round: parked vCPUs return to `KVM_RUN` in their own state.
    fn release(&self, inner: &mut Inner) {
        inner.park = None;
        self.park_requested.store(false, Ordering::SeqCst);
        self.notify_changed(inner);
        self.notify_parked(inner);
    }

    /// Kicks the vCPUs of the current round that have not parked yet.
    fn kick_pending(&self) {
        let pending: Vec<usize> = {
            let mut inner = self.lock();
            let Some(park) = inner.park.as_ref() else {
                return;
            };
            let pending: Vec<usize> = park.pending().collect();
            inner.stats.vcpu_kicks += pending.len() as u64;
            pending
        };
        for index in pending {
            if let Some(kicker) = self.kickers.get(index) {
                kicker.kick();
            }
        }
    }

    /// The one place the state changes.
    fn go(&self, inner: &mut Inner, to: SuspendState) {
        let from = inner.state;
        if !from.may_go(to) {
            log::error!("Unexpected suspend state change {from:?} -> {to:?}");
        }
        log::debug!("Suspend state {from:?} -> {to:?}");
        inner.state = to;
        // Host operations wait for a suspend decision to end.
        self.notify_changed(inner);
    }

    fn wait<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner>,
    ) -> (MutexGuard<'a, Inner>, std::sync::WaitTimeoutResult) {
        inner.waiting.changed += 1;
        let (mut inner, result) = self
            .changed
            .wait_timeout(inner, POLL)
            .unwrap_or_else(|e| e.into_inner());
        inner.waiting.changed -= 1;
        (inner, result)
    }

    /// Wakes the threads waiting on `changed`, if any. Call with the lock held.
    fn notify_changed(&self, inner: &Inner) {
        if inner.waiting.changed > 0 {
            self.changed.notify_all();
        }
    }

    /// Wakes the thread waiting for a round's vCPUs to park, if any. Call with the lock held.
    fn notify_parked(&self, inner: &Inner) {
        if inner.waiting.parked > 0 {
            self.parked.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Puts `vcpu` in the state PSCI requires at the resume entry point.
fn restore<V: Vcpu + ?Sized>(vcpu: &mut V, resume: &ResumeState) -> Result<(), VcpuError> {
    // KVM_ARM_VCPU_INIT again: MMU and caches off, RUNNABLE, PSTATE EL1h with DAIF masked
    // (the kvm-suspend tests see EL1 and the MMU off at the entry on real KVM).
    vcpu.reset()?;
    vcpu.set_reg(PC, resume.pc)?;
    vcpu.set_reg(xreg(0), resume.x0)?;
    // Each ioctl is on the resume's critical path: write PSTATE only if the reset's differs.
    if resume.pstate != PSTATE_EL1H_DAIF_MASKED {
        vcpu.set_reg(PSTATE, resume.pstate)?;
    }
    Ok(())
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
