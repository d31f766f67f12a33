//! The only crate that touches KVM.
//!
//! It creates the VM, its vCPUs and the in-kernel vGICv3, enables capabilities, decodes exits
//! into the owned [`VmExit`] enum, and gets and sets MP state and registers. The KVM file
//! descriptors never leave it. The [`Vcpu`] trait is the narrow view the `vmm` crate's state
//! machine needs, so that it can be tested with a fake vCPU on any host.
//!
//! The KVM glue itself ([`kvm`]) only exists on aarch64; everything else builds everywhere.

pub mod exit;
pub mod host;
#[cfg(target_arch = "aarch64")]
pub mod kvm;
pub mod vcpu;

pub use exit::{MmioData, SystemEvent, VmExit};
pub use host::{DEFAULT_KVM_PATH, HypervisorError, check_kvm_device};
pub use vcpu::{MpState, Vcpu, VcpuError, VcpuKick};
