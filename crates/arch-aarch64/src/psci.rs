//! PSCI (Arm DEN0022) function ids and return codes, and the SYSTEM_SUSPEND rules that KVM
//! leaves to the VMM: decode the call, validate it, decide, and compute the resume state.
//!
//! KVM does no precondition checks for SYSTEM_SUSPEND (Linux commit bfbab4456877): it exits
//! with the call's registers in place and expects userspace to honour or deny it.

use crate::layout::GuestRegion;
use crate::regs::PSTATE_EL1H_DAIF_MASKED;

/// `PSCI_VERSION`.
pub const PSCI_VERSION: u32 = 0x8400_0000;
/// `CPU_OFF`.
pub const CPU_OFF: u32 = 0x8400_0002;
/// `CPU_ON`, SMC64 calling convention.
pub const CPU_ON_64: u32 = 0xC400_0003;
/// `AFFINITY_INFO`, SMC64 calling convention.
pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
/// `SYSTEM_OFF`.
pub const SYSTEM_OFF: u32 = 0x8400_0008;
/// `SYSTEM_RESET`.
pub const SYSTEM_RESET: u32 = 0x8400_0009;
/// `PSCI_FEATURES` (PSCI 1.0).
pub const PSCI_FEATURES: u32 = 0x8400_000A;
/// `SYSTEM_SUSPEND`, SMC32 calling convention (PSCI 1.0).
pub const SYSTEM_SUSPEND_32: u32 = 0x8400_000E;
/// `SYSTEM_SUSPEND`, SMC64 calling convention (PSCI 1.0).
pub const SYSTEM_SUSPEND_64: u32 = 0xC400_000E;

/// A PSCI version, as `PSCI_VERSION` and KVM's `KVM_REG_ARM_PSCI_VERSION` give it: the major
/// number in bits 31:16, the minor in bits 15:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PsciVersion {
    /// The major number.
    pub major: u16,
    /// The minor number.
    pub minor: u16,
}

impl PsciVersion {
    /// PSCI 0.2, the first with function ids and SYSTEM_OFF; KVM's floor with `PSCI_0_2`.
    pub const V0_2: Self = Self::new(0, 2);
    /// PSCI 1.0, which added SYSTEM_SUSPEND and PSCI_FEATURES.
    pub const V1_0: Self = Self::new(1, 0);
    /// PSCI 1.3, which added SYSTEM_OFF2 (hibernation), KVM's default since Linux 6.13.
    pub const V1_3: Self = Self::new(1, 3);

    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// Decodes the register value.
    pub fn from_raw(raw: u64) -> Self {
        Self::new((raw >> 16) as u16, raw as u16)
    }

    /// The register value.
    pub fn to_raw(self) -> u64 {
        (u64::from(self.major) << 16) | u64::from(self.minor)
    }

    /// Whether the guest may call SYSTEM_SUSPEND (KVM answers NOT_SUPPORTED below 1.0).
    pub fn has_system_suspend(self) -> bool {
        self >= Self::V1_0
    }

    /// Whether the guest may call SYSTEM_OFF2 to hibernate.
    pub fn has_system_off2(self) -> bool {
        self >= Self::V1_3
    }

    /// The device tree's `compatible` for the `psci` node: Linux's binding knows
    /// `arm,psci-1.0` for every 1.x and `arm,psci-0.2` before, and probes the minor itself.
    pub fn fdt_compatible(self) -> &'static [&'static str] {
        if self >= Self::V1_0 {
            &["arm,psci-1.0", "arm,psci-0.2"]
        } else {
            &["arm,psci-0.2"]
        }
    }
}

impl std::fmt::Display for PsciVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A PSCI version that is not `MAJOR.MINOR`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Invalid PSCI version {0:?}: expected MAJOR.MINOR, such as 1.0")]
pub struct PsciVersionError(pub String);

impl std::str::FromStr for PsciVersion {
    type Err = PsciVersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || PsciVersionError(text.to_owned());
        let (major, minor) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Self::new(
            major.parse().map_err(|_| invalid())?,
            minor.parse().map_err(|_| invalid())?,
        ))
    }
}

/// PSCI return codes, as the guest sees them in `x0` (sign-extended to 64 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum PsciReturn {
    /// The call succeeded.
    Success = 0,
    /// The function is not implemented.
    NotSupported = -1,
    /// A parameter is invalid.
    InvalidParameters = -2,
    /// The call is not allowed in the current state.
    Denied = -3,
    /// The target CPU is already on.
    AlreadyOn = -4,
    /// The target CPU is being turned on.
    OnPending = -5,
    /// The firmware failed internally.
    InternalFailure = -6,
    /// The target does not exist.
    NotPresent = -7,
    /// The target is disabled.
    Disabled = -8,
    /// The entry address is not a valid physical address.
    InvalidAddress = -9,
}

impl PsciReturn {
    /// The 64-bit value written to `x0`.
    pub fn to_x0(self) -> u64 {
        i64::from(self as i32) as u64
    }

    /// Decodes `x0` as the guest would (the low 32 bits, sign-extended).
    pub fn from_x0(x0: u64) -> Option<Self> {
        Some(match x0 as u32 as i32 {
            0 => Self::Success,
            -1 => Self::NotSupported,
            -2 => Self::InvalidParameters,
            -3 => Self::Denied,
            -4 => Self::AlreadyOn,
            -5 => Self::OnPending,
            -6 => Self::InternalFailure,
            -7 => Self::NotPresent,
            -8 => Self::Disabled,
            -9 => Self::InvalidAddress,
            _ => return None,
        })
    }
}

/// Which calling convention a SYSTEM_SUSPEND call used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallWidth {
    /// SMC32: arguments are in `w1` and `w2`.
    Smc32,
    /// SMC64: arguments are in `x1` and `x2`.
    Smc64,
}

/// A decoded SYSTEM_SUSPEND call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemSuspendCall {
    /// The calling convention.
    pub width: CallWidth,
    /// Where the guest wants to resume, a physical address.
    pub entry: u64,
    /// The value the guest wants in `x0` when it resumes.
    pub context_id: u64,
}

impl SystemSuspendCall {
    /// Decodes the registers that KVM left in place on a `KVM_SYSTEM_EVENT_SUSPEND` exit.
    ///
    /// Returns `None` when `x0` is not a SYSTEM_SUSPEND function id. For the SMC32 id only the
    /// low 32 bits of `x1` and `x2` count, as KVM's `kvm_psci_narrow_to_32bit` does.
    pub fn decode(x0: u64, x1: u64, x2: u64) -> Option<Self> {
        match x0 as u32 {
            SYSTEM_SUSPEND_32 => Some(Self {
                width: CallWidth::Smc32,
                entry: x1 & 0xFFFF_FFFF,
                context_id: x2 & 0xFFFF_FFFF,
            }),
            SYSTEM_SUSPEND_64 => Some(Self {
                width: CallWidth::Smc64,
                entry: x1,
                context_id: x2,
            }),
            _ => None,
        }
    }
}

/// Why a SYSTEM_SUSPEND call is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendDenial {
    /// Another vCPU is not OFF (PSCI `DENIED`).
    OtherCpusOn {
        /// How many other vCPUs are still on.
        count: usize,
    },
    /// The entry point is not 4-byte aligned guest RAM (PSCI `INVALID_ADDRESS`).
    InvalidEntry {
        /// The rejected entry point.
        entry: u64,
    },
}

impl SuspendDenial {
    /// The PSCI return code the guest receives.
    pub fn psci_return(&self) -> PsciReturn {
        match self {
            Self::OtherCpusOn { .. } => PsciReturn::Denied,
            Self::InvalidEntry { .. } => PsciReturn::InvalidAddress,
        }
    }
}

/// Checks a SYSTEM_SUSPEND call against the rules of DEN0022 5.19.2, in the order TF-A's
/// `psci_system_suspend` uses: first that the caller is the last CPU on, then the entry point.
///
/// `other_vcpus_on` is the number of vCPUs, the caller excluded, whose power state is not OFF.
pub fn validate_system_suspend(
    call: &SystemSuspendCall,
    ram: &[GuestRegion],
    other_vcpus_on: usize,
) -> Result<(), SuspendDenial> {
    if other_vcpus_on > 0 {
        return Err(SuspendDenial::OtherCpusOn {
            count: other_vcpus_on,
        });
    }
    let aligned = call.entry % 4 == 0;
    if !aligned || !ram.iter().any(|range| range.contains(call.entry)) {
        return Err(SuspendDenial::InvalidEntry { entry: call.entry });
    }
    Ok(())
}

/// The state of the calling vCPU when it resumes from SYSTEM_SUSPEND. The rest of the vCPU is
/// in its architectural reset state (MMU and caches off), which a fresh `KVM_ARM_VCPU_INIT`
/// gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeState {
    /// Program counter: the entry point.
    pub pc: u64,
    /// `x0`: the context id.
    pub x0: u64,
    /// `PSTATE`: EL1h with DAIF masked.
    pub pstate: u64,
}

impl ResumeState {
    /// The resume state for an accepted call.
    pub fn for_call(call: &SystemSuspendCall) -> Self {
        Self {
            pc: call.entry,
            x0: call.context_id,
            pstate: PSTATE_EL1H_DAIF_MASKED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: [GuestRegion; 1] = [GuestRegion {
        start: 0x4000_0000,
        size: 0x1000_0000,
    }];

    #[test]
    fn psci_versions_parse_order_and_encode() {
        let v: PsciVersion = "1.3".parse().unwrap();
        assert_eq!(v, PsciVersion::V1_3);
        assert_eq!(v.to_raw(), 0x1_0003);
        assert_eq!(PsciVersion::from_raw(0x1_0001).to_string(), "1.1");
        assert!(PsciVersion::V0_2 < PsciVersion::V1_0);
        assert!(PsciVersion::new(1, 1) < PsciVersion::V1_3);
        assert!(!PsciVersion::V0_2.has_system_suspend());
        assert!(PsciVersion::new(1, 1).has_system_suspend());
        assert!(!PsciVersion::new(1, 2).has_system_off2());
        assert_eq!(PsciVersion::V0_2.fdt_compatible(), ["arm,psci-0.2"]);
        assert_eq!(PsciVersion::V1_3.fdt_compatible()[0], "arm,psci-1.0");
        for bad in ["1", "one.two", "1.", "1.0.0", "70000.0"] {
            assert!(bad.parse::<PsciVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn return_codes_are_sign_extended_in_x0() {
        assert_eq!(PsciReturn::Denied.to_x0(), 0xFFFF_FFFF_FFFF_FFFD);
        assert_eq!(PsciReturn::InvalidAddress.to_x0(), 0xFFFF_FFFF_FFFF_FFF7);
        assert_eq!(
            PsciReturn::from_x0(0xFFFF_FFFF_FFFF_FFFF),
            Some(PsciReturn::NotSupported)
        );
        // A 32-bit caller only sees w0.
        assert_eq!(PsciReturn::from_x0(0xFFFF_FFFD), Some(PsciReturn::Denied));
        assert_eq!(PsciReturn::from_x0(7), None);
    }

    #[test]
    fn decodes_the_64_bit_call() {
        let call = SystemSuspendCall::decode(0xC400_000E, 0x1_4000_1000, 0xDEAD_BEEF_0000_1234);
        assert_eq!(
            call,
            Some(SystemSuspendCall {
                width: CallWidth::Smc64,
                entry: 0x1_4000_1000,
                context_id: 0xDEAD_BEEF_0000_1234,
            })
        );
    }

    #[test]
    fn the_32_bit_call_uses_w1_and_w2() {
        let call = SystemSuspendCall::decode(0x8400_000E, 0xFFFF_FFFF_4000_1000, 0x5555_0000_1234)
            .unwrap();
        assert_eq!(call.width, CallWidth::Smc32);
        assert_eq!(call.entry, 0x4000_1000);
        assert_eq!(call.context_id, 0x1234);
    }

    #[test]
    fn other_function_ids_are_not_system_suspend() {
        assert_eq!(SystemSuspendCall::decode(u64::from(SYSTEM_OFF), 0, 0), None);
        assert_eq!(SystemSuspendCall::decode(0xC400_0001, 0, 0), None);
    }

    #[test]
    fn accepts_an_aligned_entry_in_ram_with_the_others_off() {
        let call = SystemSuspendCall::decode(0xC400_000E, 0x4008_0000, 7).unwrap();
        assert_eq!(validate_system_suspend(&call, &RAM, 0), Ok(()));
        let resume = ResumeState::for_call(&call);
        assert_eq!(
            (resume.pc, resume.x0, resume.pstate),
            (0x4008_0000, 7, 0x3c5)
        );
    }

    #[test]
    fn denies_while_another_vcpu_is_on_even_with_a_bad_entry() {
        let call = SystemSuspendCall::decode(0xC400_000E, 0x10, 0).unwrap();
        let denial = validate_system_suspend(&call, &RAM, 2).unwrap_err();
        assert_eq!(denial, SuspendDenial::OtherCpusOn { count: 2 });
        assert_eq!(denial.psci_return(), PsciReturn::Denied);
    }

    #[test]
    fn rejects_entries_outside_ram_or_misaligned() {
        for entry in [0x3FFF_FFFC, 0x5000_0000, 0x4000_0002, u64::MAX - 3] {
            let call = SystemSuspendCall::decode(0xC400_000E, entry, 0).unwrap();
            let denial = validate_system_suspend(&call, &RAM, 0).unwrap_err();
            assert_eq!(denial, SuspendDenial::InvalidEntry { entry });
            assert_eq!(denial.psci_return(), PsciReturn::InvalidAddress);
        }
        // The last word of RAM is still valid.
        let call = SystemSuspendCall::decode(0xC400_000E, 0x4FFF_FFFC, 0).unwrap();
        assert_eq!(validate_system_suspend(&call, &RAM, 0), Ok(()));
    }
}
