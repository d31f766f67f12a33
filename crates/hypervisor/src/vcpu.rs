//! The narrow vCPU interface the VMM's state machine drives.

use crate::VmExit;

/// A vCPU's multiprocessing state, as `KVM_GET_MP_STATE` reports it on arm64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpState {
    /// Running or ready to run.
    Runnable,
    /// Powered off (PSCI CPU_OFF, or never started).
    Stopped,
    /// Suspended by userspace until a wakeup event (`KVM_MP_STATE_SUSPENDED`).
    Suspended,
    /// Any other state value.
    Other(u32),
}

impl MpState {
    /// `KVM_MP_STATE_RUNNABLE`.
    pub const RAW_RUNNABLE: u32 = 0;
    /// `KVM_MP_STATE_STOPPED`.
    pub const RAW_STOPPED: u32 = 5;
    /// `KVM_MP_STATE_SUSPENDED`.
    pub const RAW_SUSPENDED: u32 = 10;

    /// Decodes the kernel's value.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            Self::RAW_RUNNABLE => Self::Runnable,
            Self::RAW_STOPPED => Self::Stopped,
            Self::RAW_SUSPENDED => Self::Suspended,
            other => Self::Other(other),
        }
    }

    /// The kernel's value.
    pub fn to_raw(self) -> u32 {
        match self {
            Self::Runnable => Self::RAW_RUNNABLE,
            Self::Stopped => Self::RAW_STOPPED,
            Self::Suspended => Self::RAW_SUSPENDED,
            Self::Other(raw) => raw,
        }
    }
}

/// Failures of vCPU operations.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_RUN` failed.
    #[error("Cannot run vCPU {index}")]
    Run {
        /// The vCPU index.
        index: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A register access failed.
    #[error("Cannot access register {id:#x} of vCPU {index}")]
    Register {
        /// The vCPU index.
        index: u32,
        /// The one-reg id.
        id: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the MP state failed.
    #[error("Cannot access the MP state of vCPU {index}")]
    MpState {
        /// The vCPU index.
        index: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `KVM_ARM_VCPU_INIT` failed.
    #[error("Cannot initialise vCPU {index}")]
    Init {
        /// The vCPU index.
        index: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// MMIO read data was supplied while no MMIO read was pending.
    #[error("No MMIO read is pending on vCPU {index}")]
    NoPendingMmioRead {
        /// The vCPU index.
        index: u32,
    },
}

/// What the VMM needs from a vCPU. `KvmVcpu` implements it on aarch64; tests implement it with
/// a fake that never touches `/dev/kvm`.
pub trait Vcpu: Send {
    /// The vCPU's index, 0 for the boot vCPU.
    fn index(&self) -> u32;

    /// Enters the guest until the next exit.
    fn run(&mut self) -> Result<VmExit, VcpuError>;

    /// Supplies the data for the pending [`VmExit::MmioRead`].
    fn complete_mmio_read(&mut self, data: &[u8]) -> Result<(), VcpuError>;

    /// Reads a 64-bit register by its one-reg id (see `arch_aarch64::regs`).
    fn reg(&self, id: u64) -> Result<u64, VcpuError>;

    /// Writes a 64-bit register by its one-reg id.
    fn set_reg(&self, id: u64, value: u64) -> Result<(), VcpuError>;

    /// Reads the MP state. Blocks while another thread is inside `KVM_RUN` on this vCPU.
    fn mp_state(&self) -> Result<MpState, VcpuError>;

    /// Sets the MP state.
    fn set_mp_state(&self, state: MpState) -> Result<(), VcpuError>;

    /// Puts the vCPU back in its architectural reset state, powered on and runnable: MMU and
    /// caches off, PSTATE EL1h with DAIF masked. Guest memory is untouched.
    fn reset(&mut self) -> Result<(), VcpuError>;
}

/// Kicks a vCPU's thread out of [`Vcpu::run`], which then returns [`VmExit::Interrupted`].
/// A kick that lands before the thread enters the guest makes that entry return at once.
pub trait VcpuKick: Send + Sync {
    /// Records the calling thread as the one that runs the vCPU. Call it from that thread
    /// before its first `run`.
    fn bind_current_thread(&self);

    /// Forgets the thread. Call it from that thread before it exits.
    fn unbind_thread(&self);

    /// Interrupts `run`, now or at its next entry.
    fn kick(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp_state_round_trips_the_kernel_values() {
        for raw in [0, 5, 10, 3] {
            assert_eq!(MpState::from_raw(raw).to_raw(), raw);
        }
        assert_eq!(MpState::from_raw(10), MpState::Suspended);
        assert_eq!(MpState::from_raw(5), MpState::Stopped);
        assert_eq!(MpState::from_raw(3), MpState::Other(3));
    }
}
