//! Host-initiated holds on the vCPUs: pause, resume and census, with the park rounds of a
//! suspend but no caller (every vCPU pending). Call them from host threads, never from a vCPU
//! thread, which would wait for itself to park.

use hypervisor::MpState;

use super::{Inner, Slot, SuspendCoordinator, SuspendState};

/// The host's hold on the vCPUs. Orthogonal to [`SuspendState`]; while it is not `Free` a park
/// round with no caller exists, so no suspend decision can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    /// The vCPUs run, or the guest sleeps, as the guest wants.
    Free,
    /// A census parks every vCPU for one round, then releases them.
    Census,
    /// A pause is parking every vCPU.
    Pausing,
    /// Every vCPU is parked outside `KVM_RUN` until the resume.
    Paused,
}

impl Hold {
    /// Whether the hold may go from `self` to `to`.
    pub(super) fn may_go(self, to: Self) -> bool {
        use Hold::*;
        matches!(
            (self, to),
            (Free, Census)
                | (Census, Free)
                | (Free, Pausing)
                | (Pausing, Paused)
                // The VM started stopping before every vCPU parked.
                | (Pausing, Free)
                | (Paused, Free)
        )
    }
}

/// Why a pause, resume or census was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// The VM is already paused, or being paused.
    #[error("The VM is already paused")]
    AlreadyPaused,
    /// The VM is not paused.
    #[error("The VM is not paused")]
    NotPaused,
    /// The VM is stopping.
    #[error("The VM is stopping")]
    Stopping,
}

impl SuspendCoordinator {
    /// Parks every vCPU outside `KVM_RUN` and keeps them there until [`resume`](Self::resume);
    /// returns once all have parked. Works whether the guest runs or is suspended: a SUSPENDED
    /// vCPU is kicked out of `KVM_RUN` and later re-enters it still SUSPENDED. Waits for a
    /// suspend decision or a census in progress to end first. All waits end when the VM stops.
    pub fn pause(&self) -> Result<(), PauseError> {
        let mut inner = self.lock();
        loop {
            if self.control.stopping() {
                return Err(PauseError::Stopping);
            }
            match inner.hold {
                Hold::Pausing | Hold::Paused => return Err(PauseError::AlreadyPaused),
                Hold::Free if settled(&inner) => break,
                // A suspend decision or a census: both end on their own.
                Hold::Free | Hold::Census => inner = self.wait(inner).0,
            }
        }
        self.hold(&mut inner, Hold::Pausing);
        let round = self.start_round(&mut inner, None);
        drop(inner);
        self.kick_pending();
        let (mut inner, parked) = self.await_round(self.lock(), round);
        if !parked {
            // Only stopping ends a pausing round early: resume and census wait for it.
            self.end_hold(&mut inner);
            return Err(PauseError::Stopping);
        }
        self.hold(&mut inner, Hold::Paused);
        log::info!("VM paused ({:?})", inner.state);
        Ok(())
    }

    /// Lets the paused vCPUs re-enter `KVM_RUN`, each in the MP state it had. A pause in
    /// progress is waited for first.
    pub fn resume(&self) -> Result<(), PauseError> {
        let mut inner = self.lock();
        loop {
            match inner.hold {
                // Even while stopping: releasing is harmless and leaves the state consistent.
                Hold::Paused => break,
                Hold::Pausing if self.control.stopping() => return Err(PauseError::Stopping),
                Hold::Pausing => inner = self.wait(inner).0,
                Hold::Free | Hold::Census => return Err(PauseError::NotPaused),
            }
        }
        self.end_hold(&mut inner);
        log::info!("VM resumed ({:?})", inner.state);
        Ok(())
    }

    /// Whether every vCPU is held parked by [`pause`](Self::pause) (false while pausing).
    pub fn is_paused(&self) -> bool {
        self.lock().hold == Hold::Paused
    }

    /// Every vCPU's MP state, by index, read by its own thread while parked (`None`: it could
    /// not be read). Parks the vCPUs for one round, waiting for a suspend decision or a pause
    /// in progress to end first; a paused VM stays paused and its vCPUs read their state anew.
    ///
    /// When the VMM keeps the power states, reads them from its table and parks nobody.
    pub fn census(&self) -> Result<Vec<Option<MpState>>, PauseError> {
        if self.control.stopping() {
            return Err(PauseError::Stopping);
        }
        if let Some(states) = self.table_census() {
            return Ok(states);
        }
        let mut inner = self.lock();
        loop {
            if self.control.stopping() {
                return Err(PauseError::Stopping);
            }
            match inner.hold {
                Hold::Paused => {
                    let Some(park) = inner.park.as_mut() else {
                        log::error!("Paused without a park round");
                        return Err(PauseError::NotPaused);
                    };
                    for slot in &mut park.slots {
                        if matches!(slot, Slot::Parked(_)) {
                            *slot = Slot::Asked;
                        }
                    }
                    let round = park.id;
                    self.notify_changed(&inner);
                    let (guard, read) = self.await_round(inner, round);
                    if read {
                        return Ok(states(&guard));
                    }
                    // Resumed meanwhile (stopping is checked above): count in a round of our own.
                    inner = guard;
                }
                Hold::Free if settled(&inner) => {
                    self.hold(&mut inner, Hold::Census);
                    let round = self.start_round(&mut inner, None);
                    drop(inner);
                    self.kick_pending();
                    let (mut inner, parked) = self.await_round(self.lock(), round);
                    let census = parked.then(|| states(&inner));
                    self.end_hold(&mut inner);
                    return census.ok_or(PauseError::Stopping);
                }
                // A suspend decision, another census or a pause: all end on their own.
                Hold::Free | Hold::Census | Hold::Pausing => inner = self.wait(inner).0,
            }
        }
    }

    /// Ends the host's round: the parked vCPUs return to `KVM_RUN` in their own state.
    fn end_hold(&self, inner: &mut Inner) {
        self.hold(inner, Hold::Free);
        self.release(inner);
    }

    /// The one place the hold changes.
    fn hold(&self, inner: &mut Inner, to: Hold) {
        let from = inner.hold;
        if !from.may_go(to) {
            log::error!("Unexpected host hold change {from:?} -> {to:?}");
        }
        log::debug!("Host hold {from:?} -> {to:?}");
        inner.hold = to;
        self.notify_changed(inner);
    }
}

/// No suspend decision and no park round in progress: the host may open one.
fn settled(inner: &Inner) -> bool {
    matches!(inner.state, SuspendState::Running | SuspendState::Suspended) && inner.park.is_none()
}

/// The MP states the current round's vCPUs reported.
fn states(inner: &Inner) -> Vec<Option<MpState>> {
    let slots = inner.park.as_ref().map_or(&[][..], |park| &park.slots);
    slots
        .iter()
        .map(|slot| match slot {
            Slot::Parked(state) => *state,
            Slot::Caller | Slot::Pending | Slot::Asked => None,
        })
        .collect()
}
