//! The only crate that touches KVM.
//!
//! It creates the VM, its vCPUs and the in-kernel vGICv3, enables capabilities, decodes exits
//! into the owned [`VmExit`] enum, and gets and sets MP state and registers. The KVM file
//! descriptors never leave it. The [`Vcpu`] trait is the narrow view the `vmm` crate's state
//! machine needs, so that it can be tested with a fake vCPU on any host.
//!
//! For snapshots, the vGIC's and the virtual counter's state are plain serde data
//! ([`GicState`], [`CounterState`]).
//!
//! The KVM glue itself ([`kvm`]) only exists on aarch64; everything else builds everywhere.

pub mod counter;
pub mod exit;
pub mod gic_state;
pub mod host;
#[cfg(target_arch = "aarch64")]
pub mod kvm;
pub mod vcpu;

pub use counter::{CounterPath, CounterState};
pub use exit::{MmioData, SystemEvent, VmExit};
pub use gic_state::{
    GicCpuInterfaceState, GicDistributorState, GicRedistributorState, GicState, GicVcpuState,
};
pub use host::{DEFAULT_KVM_PATH, HypervisorError, check_kvm_device};
pub use vcpu::{MpState, Vcpu, VcpuError, VcpuKick};
