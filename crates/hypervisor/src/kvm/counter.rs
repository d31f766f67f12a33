//! The guest's virtual counter: reading it from a vCPU, and setting it on a fresh VM through
//! `KVM_ARM_SET_COUNTER_OFFSET` (Linux 6.4 and later) or, before that, `KVM_REG_ARM_TIMER_CNT`.
//!
//! Which host counter the offset applies to (Linux `arch/arm64/kvm/arch_timer.c`): KVM gives
//! the guest `CNTVCT = kvm_phys_timer_read() - voffset`, and `kvm_phys_timer_read()` is the
//! host kernel's physical counter. Host userspace reads that same counter as `CNTVCT_EL0`:
//! on a VHE host (kernel at EL2, `HCR_EL2.{E2H,TGE} = {1,1}`) the architecture applies no
//! virtual offset to EL0 reads, and on a non-VHE host KVM writes `CNTVOFF_EL2 = 0` whenever it
//! leaves a vCPU for the host. A host that is itself a guest hypervisor (nested virtualisation)
//! sees its own physical counter the same way, through its own `CNTVCT_EL0`.

use kvm_bindings::{KVM_CAP_COUNTER_OFFSET, KVMIO, kvm_arm_counter_offset};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::{KvmVcpu, KvmVm};
use crate::{CounterPath, CounterState, Vcpu, VcpuError, counter::counter_offset};

/// `KVM_REG_ARM_TIMER_CNT`: the vCPU's virtual count. Its id is the encoding of CNTVCT_EL0,
/// `ARM64_SYS_REG(3, 3, 14, 3, 2)`, which is CNTV_CVAL_EL0's: the kernel swapped the two by
/// mistake and kept them as ABI (and `KVM_REG_ARM_TIMER_CVAL` is `(3, 3, 14, 0, 2)`).
pub const KVM_REG_ARM_TIMER_CNT: u64 = arch_aarch64::regs::sysreg(3, 3, 14, 3, 2);

vmm_sys_util::ioctl_iow_nr!(
    KVM_ARM_SET_COUNTER_OFFSET,
    KVMIO,
    0xb5,
    kvm_arm_counter_offset
);

/// Failures setting the guest's counter.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// `KVM_ARM_SET_COUNTER_OFFSET` failed; `EBUSY` means a vCPU was in `KVM_RUN`.
    #[error("Cannot set the VM's counter offset")]
    Offset(#[source] std::io::Error),
    /// Writing `KVM_REG_ARM_TIMER_CNT` failed.
    #[error("Cannot set the virtual counter")]
    Register(#[source] VcpuError),
}

impl KvmVm {
    /// Whether KVM has `KVM_ARM_SET_COUNTER_OFFSET` (`KVM_CAP_COUNTER_OFFSET`, Linux 6.4+).
    pub fn has_counter_offset(&self) -> bool {
        self.fd().check_extension_raw(KVM_CAP_COUNTER_OFFSET.into()) > 0
    }

    /// Makes the guest's virtual counter read `cntvct` now and count on from there, for a VM
    /// restored from a snapshot. Call it after every vCPU of the VM exists (without the offset
    /// ioctl, creating a vCPU resets the counter of the whole VM) and before any runs; `vcpus`
    /// are all of them. Returns how it was done, for the log.
    ///
    /// With `KVM_ARM_SET_COUNTER_OFFSET` the offset is VM-wide, applies to the guest's physical
    /// counter too, and KVM then ignores writes of the counter registers. Without it each vCPU's
    /// `KVM_REG_ARM_TIMER_CNT` is written; KVM then computes the offset from its own read of
    /// the counter, which is the same arithmetic. Compare the host's frequency
    /// ([`host_counter_frequency`]) with the saved one first.
    pub fn set_guest_counter(
        &self,
        vcpus: &[KvmVcpu],
        cntvct: u64,
    ) -> Result<CounterPath, CounterError> {
        if self.has_counter_offset() {
            let offset = counter_offset(host_counter(), cntvct);
            let argument = kvm_arm_counter_offset {
                counter_offset: offset,
                reserved: 0,
            };
            // SAFETY: the VM fd is open, and the request's size is that of the struct KVM only
            // reads, which `argument` is and outlives the call.
            let ret = unsafe { ioctl_with_ref(self.fd(), KVM_ARM_SET_COUNTER_OFFSET(), &argument) };
            if ret < 0 {
                return Err(CounterError::Offset(std::io::Error::last_os_error()));
            }
            return Ok(CounterPath::Offset { offset });
        }
        for vcpu in vcpus {
            vcpu.set_reg(KVM_REG_ARM_TIMER_CNT, cntvct)
                .map_err(CounterError::Register)?;
        }
        Ok(CounterPath::Registers)
    }
}

impl KvmVcpu {
    /// Reads the guest's virtual counter, and its frequency: the host's, since guests read
    /// `CNTFRQ_EL0` from the hardware and KVM has no one-reg for it (`ENOENT` on Linux 6.1
    /// and 7.3). The vCPU must be out of `KVM_RUN` (the call waits for it otherwise).
    pub fn counter_state(&self) -> Result<CounterState, VcpuError> {
        Ok(CounterState {
            cntvct: self.reg(KVM_REG_ARM_TIMER_CNT)?,
            cntfrq: host_counter_frequency(),
        })
    }
}

/// The host's counter as this process reads it (`CNTVCT_EL0`), which is the physical counter
/// KVM's offset is taken from (see the module documentation).
pub fn host_counter() -> u64 {
    let value: u64;
    // SAFETY: reads a register that Linux lets EL0 read (CNTKCTL_EL1.EL0VCTEN); the `isb` keeps
    // the read from being made early. Nothing in memory changes.
    unsafe {
        std::arch::asm!(
            "isb",
            "mrs {value}, cntvct_el0",
            value = out(reg) value,
            options(nomem, nostack, preserves_flags)
        );
    }
    value
}

/// The host's counter frequency in Hz (`CNTFRQ_EL0`), which guests see unchanged.
pub fn host_counter_frequency() -> u64 {
    let value: u64;
    // SAFETY: reads a register that EL0 may always read. Nothing in memory changes.
    unsafe {
        std::arch::asm!(
            "mrs {value}, cntfrq_el0",
            value = out(reg) value,
            options(nomem, nostack, preserves_flags)
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_and_register_ids_match_the_kernel_headers() {
        // _IOW(KVMIO, 0xb5, struct kvm_arm_counter_offset): 16 bytes written to the kernel.
        assert_eq!(KVM_ARM_SET_COUNTER_OFFSET(), 0x4010_AEB5);
        // QEMU's and Cloud Hypervisor's KVM_REG_ARM_TIMER_CNT.
        assert_eq!(KVM_REG_ARM_TIMER_CNT, 0x6030_0000_0013_DF1A);
    }
}
