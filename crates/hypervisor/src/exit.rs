//! vCPU exits as owned values, decoded from `kvm_run` so that no borrow of it escapes.

/// Data of an MMIO write, up to 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioData {
    bytes: [u8; 8],
    len: usize,
}

impl MmioData {
    /// Copies up to 8 bytes; longer accesses cannot come from a single A64 store.
    pub fn new(data: &[u8]) -> Self {
        let len = data.len().min(8);
        let mut bytes = [0; 8];
        bytes[..len].copy_from_slice(&data[..len]);
        Self { bytes, len }
    }

    /// The bytes written.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The value written, zero-extended, little-endian.
    pub fn value(&self) -> u64 {
        u64::from_le_bytes(self.bytes)
    }
}

/// What KVM reported in `KVM_EXIT_SYSTEM_EVENT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// PSCI SYSTEM_OFF (or SYSTEM_OFF2, with its flag in `flags`). KVM has stopped every vCPU.
    Shutdown {
        /// `data[0]` when KVM gave it, else 0.
        flags: u64,
    },
    /// PSCI SYSTEM_RESET or SYSTEM_RESET2. KVM has stopped every vCPU.
    Reset {
        /// `data[0]` when KVM gave it, else 0.
        flags: u64,
    },
    /// The guest reported a crash.
    Crash,
    /// A suspended vCPU has a pending interrupt (`KVM_SYSTEM_EVENT_WAKEUP`).
    Wakeup,
    /// The guest called PSCI SYSTEM_SUSPEND (`KVM_SYSTEM_EVENT_SUSPEND`). The call's registers
    /// are still in place and userspace must honour or deny it.
    Suspend,
    /// An event type this crate does not know.
    Unknown {
        /// The raw event type.
        kind: u32,
    },
}

impl SystemEvent {
    /// `KVM_SYSTEM_EVENT_SHUTDOWN_FLAG_PSCI_OFF2`: the shutdown came from PSCI 1.3 SYSTEM_OFF2,
    /// which a guest calls after writing its hibernation image (Linux 6.13 and later).
    pub const SHUTDOWN_FLAG_PSCI_OFF2: u64 = 1 << 0;

    /// Whether this is a shutdown by SYSTEM_OFF2: the guest hibernated.
    pub fn is_hibernation(&self) -> bool {
        matches!(self, Self::Shutdown { flags } if flags & Self::SHUTDOWN_FLAG_PSCI_OFF2 != 0)
    }

    /// Decodes `system_event.type` and its data words.
    pub fn decode(kind: u32, data: &[u64]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Self::Shutdown { flags },
            KVM_SYSTEM_EVENT_RESET => Self::Reset { flags },
            KVM_SYSTEM_EVENT_CRASH => Self::Crash,
            KVM_SYSTEM_EVENT_WAKEUP => Self::Wakeup,
            KVM_SYSTEM_EVENT_SUSPEND => Self::Suspend,
            kind => Self::Unknown { kind },
        }
    }
}

// From include/uapi/linux/kvm.h; kvm-bindings has them too, but these tests run on any host.
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;
const KVM_SYSTEM_EVENT_WAKEUP: u32 = 4;
const KVM_SYSTEM_EVENT_SUSPEND: u32 = 5;

/// Why `KVM_RUN` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest read `len` bytes at `addr`. Supply the data with
    /// [`Vcpu::complete_mmio_read`](crate::Vcpu::complete_mmio_read) before running again.
    MmioRead {
        /// Guest physical address.
        addr: u64,
        /// Access size in bytes.
        len: usize,
    },
    /// The guest wrote `data` at `addr`.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// The bytes written.
        data: MmioData,
    },
    /// A system event: power off, reset, suspend, wakeup.
    SystemEvent(SystemEvent),
    /// An SMCCC call (PSCI is one) that the VM forwards to userspace. The PC is already past
    /// the HVC or SMC; the arguments are in `x1` and up, and the result goes into `x0`.
    Hypercall {
        /// The SMCCC function id.
        function_id: u64,
        /// The guest used SMC rather than HVC.
        smc: bool,
    },
    /// `KVM_RUN` was interrupted by a signal or `immediate_exit` before or while running.
    Interrupted,
    /// KVM could not enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// The physical CPU.
        cpu: u32,
    },
    /// KVM hit an internal error.
    InternalError,
    /// Any other exit, by its `Debug` text.
    Unhandled(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_system_events() {
        assert_eq!(
            SystemEvent::decode(1, &[]),
            SystemEvent::Shutdown { flags: 0 }
        );
        assert_eq!(
            SystemEvent::decode(1, &[1]),
            SystemEvent::Shutdown { flags: 1 }
        );
        assert!(SystemEvent::decode(1, &[1]).is_hibernation());
        assert!(!SystemEvent::decode(1, &[]).is_hibernation());
        assert!(!SystemEvent::decode(2, &[1]).is_hibernation());
        assert_eq!(
            SystemEvent::decode(2, &[1]),
            SystemEvent::Reset { flags: 1 }
        );
        assert_eq!(SystemEvent::decode(3, &[]), SystemEvent::Crash);
        assert_eq!(SystemEvent::decode(4, &[]), SystemEvent::Wakeup);
        assert_eq!(SystemEvent::decode(5, &[]), SystemEvent::Suspend);
        assert_eq!(
            SystemEvent::decode(6, &[]),
            SystemEvent::Unknown { kind: 6 }
        );
    }

    #[test]
    fn mmio_data_keeps_the_access_size() {
        let data = MmioData::new(&[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(data.as_slice(), &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(data.value(), 0x1234_5678);
        assert_eq!(MmioData::new(&[0xff; 12]).as_slice().len(), 8);
    }
}
