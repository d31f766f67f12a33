//! KVM on arm64: the system handle, the VM, its vCPUs and the vGICv3.

mod gic;
mod vcpu;
mod vm;

pub use gic::{GicError, GicV3};
pub use vcpu::KvmVcpu;
pub use vm::{Vm, VmError, VmOptions};

use kvm_ioctls::{Cap, Kvm};

/// Failures opening and probing `/dev/kvm`.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm does not exist: this host has no KVM")]
    NoKvmDevice,
    /// `/dev/kvm` exists but could not be opened.
    #[error("Cannot open /dev/kvm")]
    Open(#[source] std::io::Error),
    /// KVM lacks what an arm64 guest with PSCI needs.
    #[error("KVM on this host lacks arm64 support: {missing}")]
    NotArm64 {
        /// The first missing capability.
        missing: &'static str,
    },
}

/// An open `/dev/kvm` that was checked for what this VMM needs.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
}

/// Capabilities every VM needs, as Firecracker requires on arm64.
const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::ArmPsci02, "KVM_CAP_ARM_PSCI_0_2"),
    (Cap::DeviceCtrl, "KVM_CAP_DEVICE_CTRL"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::OneReg, "KVM_CAP_ONE_REG"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the capabilities the VMM relies on.
    pub fn new() -> Result<Self, HypervisorError> {
        let kvm = Kvm::new().map_err(|err| {
            if err.errno() == libc::ENOENT {
                HypervisorError::NoKvmDevice
            } else {
                HypervisorError::Open(err.into())
            }
        })?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(HypervisorError::NotArm64 { missing: name });
            }
        }
        Ok(Self { kvm })
    }

    /// The most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Whether KVM can exit to userspace on PSCI SYSTEM_SUSPEND (Linux 5.19 and later).
    pub fn supports_system_suspend(&self) -> bool {
        self.kvm
            .check_extension_raw(kvm_bindings::KVM_CAP_ARM_SYSTEM_SUSPEND.into())
            > 0
    }

    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}
