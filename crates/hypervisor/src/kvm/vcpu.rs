//! A KVM vCPU and the decoding of its exits.

use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_EXIT_MMIO, KVM_HYPERCALL_EXIT_SMC, kvm_mp_state, kvm_vcpu_init,
};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::KvmVcpuKicker;

use crate::{MmioData, MpState, SystemEvent, Vcpu, VcpuError, VmExit};

/// A KVM vCPU, initialised with PSCI 0.2.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    index: u32,
    // The feature set of the first KVM_ARM_VCPU_INIT; a re-init must repeat it.
    init: kvm_vcpu_init,
    pending_mmio_read: Option<usize>,
    kicker: Arc<KvmVcpuKicker>,
}

impl KvmVcpu {
    pub(crate) fn new(
        fd: VcpuFd,
        index: u32,
        init: kvm_vcpu_init,
        kicker: KvmVcpuKicker,
    ) -> Result<Self, VcpuError> {
        fd.vcpu_init(&init).map_err(|err| VcpuError::Init {
            index,
            source: err.into(),
        })?;
        Ok(Self {
            fd,
            index,
            init,
            pending_mmio_read: None,
            kicker: Arc::new(kicker),
        })
    }

    /// The handle other threads use to kick this vCPU out of `KVM_RUN`.
    pub fn kicker(&self) -> Arc<KvmVcpuKicker> {
        Arc::clone(&self.kicker)
    }
}

impl Vcpu for KvmVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn run(&mut self) -> Result<VmExit, VcpuError> {
        self.pending_mmio_read = None;
        let exit = match self.fd.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0);
                self.pending_mmio_read = Some(data.len());
                VmExit::MmioRead {
                    addr,
                    len: data.len(),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => VmExit::MmioWrite {
                addr,
                data: MmioData::new(data),
            },
            Ok(VcpuExit::SystemEvent(kind, data)) => {
                VmExit::SystemEvent(SystemEvent::decode(kind, data))
            }
            Ok(VcpuExit::Hypercall(call)) => VmExit::Hypercall {
                function_id: call.nr,
                // kvm-ioctls names the low word of `flags` after x86's field.
                smc: call.longmode & KVM_HYPERCALL_EXIT_SMC != 0,
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => VmExit::FailEntry { reason, cpu },
            Ok(VcpuExit::InternalError) => VmExit::InternalError,
            Ok(VcpuExit::Intr) => VmExit::Interrupted,
            Ok(other) => VmExit::Unhandled(format!("{other:?}")),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                VmExit::Interrupted
            }
            Err(err) => {
                return Err(VcpuError::Run {
                    index: self.index,
                    source: err.into(),
                });
            }
        };
        if exit == VmExit::Interrupted {
            // A kick sets immediate_exit; clear it so the next KVM_RUN enters the guest.
            self.fd.set_kvm_immediate_exit(0);
        }
        Ok(exit)
    }

    fn complete_mmio_read(&mut self, data: &[u8]) -> Result<(), VcpuError> {
        let Some(len) = self.pending_mmio_read.take() else {
            return Err(VcpuError::NoPendingMmioRead { index: self.index });
        };
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_MMIO {
            return Err(VcpuError::NoPendingMmioRead { index: self.index });
        }
        let len = len.min(data.len());
        // SAFETY: the last exit was KVM_EXIT_MMIO, so `mmio` is the union member KVM filled in
        // and reads back on the next KVM_RUN; `len` is at most its 8-byte data array.
        unsafe { run.__bindgen_anon_1.mmio.data[..len].copy_from_slice(&data[..len]) };
        Ok(())
    }

    fn reg(&self, id: u64) -> Result<u64, VcpuError> {
        let mut bytes = [0u8; 8];
        self.fd
            .get_one_reg(id, &mut bytes)
            .map_err(|err| VcpuError::Register {
                index: self.index,
                id,
                source: err.into(),
            })?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn set_reg(&self, id: u64, value: u64) -> Result<(), VcpuError> {
        self.fd
            .set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(|err| VcpuError::Register {
                index: self.index,
                id,
                source: err.into(),
            })
    }

    fn mp_state(&self) -> Result<MpState, VcpuError> {
        self.fd
            .get_mp_state()
            .map(|state| MpState::from_raw(state.mp_state))
            .map_err(|err| VcpuError::MpState {
                index: self.index,
                source: err.into(),
            })
    }

    fn set_mp_state(&self, state: MpState) -> Result<(), VcpuError> {
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: state.to_raw(),
            })
            .map_err(|err| VcpuError::MpState {
                index: self.index,
                source: err.into(),
            })
    }

    fn reset(&mut self) -> Result<(), VcpuError> {
        // KVM treats POWER_OFF as ephemeral and requires the rest of the feature set to match.
        let mut init = self.init;
        init.features[0] &= !(1 << KVM_ARM_VCPU_POWER_OFF);
        self.fd.vcpu_init(&init).map_err(|err| VcpuError::Init {
            index: self.index,
            source: err.into(),
        })
    }
}
