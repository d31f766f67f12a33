//! KVM on arm64: the system handle, the VM, its vCPUs and the vGICv3.

mod counter;
mod gic;
mod gic_state;
mod kick;
mod vcpu;
mod vm;

pub use counter::{CounterError, KVM_REG_ARM_TIMER_CNT, host_counter, host_counter_frequency};
pub use gic::{GicError, KvmGicV3};
pub use gic_state::GicStateError;
pub use kick::{KickError, KvmVcpuKicker};
pub use vcpu::KvmVcpu;
pub use vm::{KvmVm, KvmVmOptions, VM_TYPE_40_BIT_IPA, VmError};

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::HypervisorError;

/// An open `/dev/kvm` that was checked for what this VMM needs.
#[derive(Debug)]
pub struct KvmHypervisor {
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

impl KvmHypervisor {
    /// Opens `/dev/kvm` and checks the capabilities the VMM relies on.
    pub fn new() -> Result<Self, HypervisorError> {
        Self::open(Path::new(crate::DEFAULT_KVM_PATH))
    }

    /// Opens the KVM device at `path` and checks the capabilities the VMM relies on.
    pub fn open(path: &Path) -> Result<Self, HypervisorError> {
        crate::check_kvm_device(path)?;
        let kvm = crate::host::open_kvm(path)
            .map_err(|err| HypervisorError::Open(path.to_owned(), err))?;
        if kvm.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(HypervisorError::NotKvm(path.to_owned()));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(HypervisorError::MissingCapability { missing: name });
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
