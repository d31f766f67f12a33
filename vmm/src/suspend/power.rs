//! PSCI CPU_ON, CPU_OFF and AFFINITY_INFO answered by the VMM, when KVM forwards them.
//!
//! Each call is handled on its caller's thread, under the coordinator's lock, against the
//! [`CpuPowerTable`]. A vCPU that is off never sits in `KVM_RUN`: its thread waits on its own
//! condvar in [`SuspendCoordinator::wait_until_on`] until a CPU_ON names it, then
//! puts the vCPU at the entry point itself. Only the vCPU's own thread touches the vCPU, so a
//! CPU_ON needs no kick: KVM's `vcpu->mutex`, which a thread inside `KVM_RUN` holds, is never
//! waited for.

use std::time::Duration;

use arch_aarch64::cpu_power::{CpuPower, CpuPowerTable, PowerCall};
use arch_aarch64::psci::{PsciReturn, ResumeState};
use arch_aarch64::regs::{PSTATE_EL1H_DAIF_MASKED, xreg};
use hypervisor::{MpState, Vcpu};

use super::{Slot, SuspendCoordinator, SuspendError, SuspendState, restore};
use crate::events::VmEventKind;

/// How long a vCPU that is off sleeps between looks at [`crate::exit::ExitControl::stopping`],
/// in case nobody calls [`SuspendCoordinator::wake_waiters`]: the VM's end wakes it at once.
const OFF_POLL: Duration = Duration::from_secs(1);

impl SuspendCoordinator {
    /// Makes the coordinator keep every vCPU's power state in `table` (the VM forwards the
    /// power calls to [`on_power_call`](Self::on_power_call)). Call it before any vCPU runs.
    pub fn with_power_table(self, table: CpuPowerTable) -> Self {
        self.lock().power = Some(table);
        self
    }

    /// Whether the VMM keeps the power states (rather than KVM).
    pub fn keeps_power_states(&self) -> bool {
        self.lock().power.is_some()
    }

    /// Handles a forwarded PSCI call on the calling vCPU's own thread; then re-enter `KVM_RUN`
    /// (after a CPU_OFF, [`wait_until_on`](Self::wait_until_on) keeps the thread out).
    pub fn on_power_call<V: Vcpu + ?Sized>(
        &self,
        vcpu: &mut V,
        function_id: u64,
    ) -> Result<(), SuspendError> {
        let index = vcpu.index();
        let read = |n| {
            vcpu.reg(xreg(n))
                .map_err(|source| SuspendError::ReadPowerCall {
                    function_id,
                    source,
                })
        };
        let call = PowerCall::decode(function_id, read(1)?, read(2)?, read(3)?);
        let x0 = match call {
            Some(PowerCall::CpuOn {
                target,
                entry,
                context_id,
            }) => {
                let started = {
                    let mut inner = self.lock();
                    let result = match inner.power.as_mut() {
                        Some(power) => power.cpu_on(target, entry, context_id, &self.ram),
                        None => Err(PsciReturn::NotSupported),
                    };
                    if let Some(waiting) = result.ok().and_then(|t| self.powered_on.get(t)) {
                        waiting.notify_all();
                    }
                    result
                };
                match started {
                    Ok(started) => {
                        self.events.emit(VmEventKind::CpuOn {
                            vcpu: index,
                            target: started as u32,
                        });
                        PsciReturn::Success.to_x0()
                    }
                    Err(code) => code.to_x0(),
                }
            }
            Some(PowerCall::CpuOff) => {
                // Out of KVM_RUN on its own thread: KVM's view agrees with the table, which a
                // census of a paused VM reads back.
                vcpu.set_mp_state(MpState::Stopped)
                    .map_err(SuspendError::PowerOff)?;
                if let Some(power) = self.lock().power.as_mut() {
                    power.cpu_off(index as usize);
                }
                self.events.emit(VmEventKind::CpuOff { vcpu: index });
                // A successful CPU_OFF does not return; x0 is the guest's no more.
                return Ok(());
            }
            Some(PowerCall::AffinityInfo {
                target,
                lowest_level,
            }) => match self.lock().power.as_ref() {
                Some(power) => match power.affinity_info(target, lowest_level) {
                    Ok(state) => state.to_x0(),
                    Err(code) => code.to_x0(),
                },
                None => PsciReturn::NotSupported.to_x0(),
            },
            // The filter forwards only the ranges above; answer anything else as KVM would.
            None => {
                log::warn!("vCPU {index}: forwarded SMCCC call {function_id:#x}");
                PsciReturn::NotSupported.to_x0()
            }
        };
        vcpu.set_reg(xreg(0), x0)
            .map_err(|source| SuspendError::WritePowerCall {
                function_id,
                source,
            })
    }

    /// Call before entering the guest, on the vCPU's own thread. While the VMM keeps the power
    /// states and this vCPU is off, blocks until a CPU_ON names it, then puts it at the entry
    /// point with the context id in `x0`. Returns whether the vCPU may enter the guest: false
    /// when the VM is stopping or a park round waits for this vCPU (go back to the loop's top).
    pub fn wait_until_on<V: Vcpu + ?Sized>(&self, vcpu: &mut V) -> Result<bool, SuspendError> {
        let index = vcpu.index() as usize;
        let mut inner = self.lock();
        loop {
            if self.control.stopping() {
                return Ok(false);
            }
            let Some(power) = inner.power.as_mut() else {
                return Ok(true);
            };
            match power.state(index) {
                CpuPower::On => return Ok(true),
                CpuPower::OnPending { .. } => {
                    let Some((entry, context_id)) = power.start(index) else {
                        continue;
                    };
                    drop(inner);
                    let state = ResumeState {
                        pc: entry,
                        x0: context_id,
                        pstate: PSTATE_EL1H_DAIF_MASKED,
                    };
                    restore(vcpu, &state).map_err(SuspendError::Start)?;
                    return Ok(true);
                }
                CpuPower::Off => {
                    let wanted = inner
                        .park
                        .as_ref()
                        .is_some_and(|park| park.slots.get(index) == Some(&Slot::Pending));
                    if wanted {
                        return Ok(false);
                    }
                    let Some(waiting) = self.powered_on.get(index) else {
                        return Ok(true);
                    };
                    inner = waiting
                        .wait_timeout(inner, OFF_POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Wakes the threads of vCPUs that are off, to see that the VM is stopping.
    pub fn wake_waiters(&self) {
        let _inner = self.lock();
        self.wake_off_vcpus();
    }

    /// Wakes every thread waiting in [`wait_until_on`](Self::wait_until_on); call it with the
    /// lock held, after the change they must see.
    pub(super) fn wake_off_vcpus(&self) {
        for waiting in &self.powered_on {
            waiting.notify_all();
        }
    }

    /// Every vCPU's power state from the table, as KVM would report it, without stopping any
    /// vCPU; `None` when KVM keeps the states.
    pub(super) fn table_census(&self) -> Option<Vec<Option<MpState>>> {
        let inner = self.lock();
        let power = inner.power.as_ref()?;
        let suspended = match inner.accepted {
            Some(accepted) if inner.state == SuspendState::Suspended => Some(accepted.vcpu),
            _ => None,
        };
        let states = (0..self.vcpus)
            .map(|index| {
                Some(match power.state(index) {
                    _ if suspended == Some(index as u32) => MpState::Suspended,
                    CpuPower::Off => MpState::Stopped,
                    CpuPower::OnPending { .. } | CpuPower::On => MpState::Runnable,
                })
            })
            .collect();
        Some(states)
    }
}
