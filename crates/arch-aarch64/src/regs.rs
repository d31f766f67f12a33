//! KVM one-reg identifiers for the arm64 registers the VMM reads and writes.
//!
//! kvm-bindings has no arm64 register-id helpers and only exports its arm64 module on
//! aarch64, so the encoding from the kernel's `Documentation/virt/kvm/api.rst` is
//! reproduced here where host unit tests can check it.

const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
const KVM_REG_ARM_CORE: u64 = 0x0010_0000;
const KVM_REG_ARM64_SYSREG: u64 = 0x0013_0000;
const KVM_REG_ARM_FW: u64 = 0x0014_0000;

/// The id of the 64-bit core register at `byte_offset` in `struct kvm_regs`.
pub const fn core_reg(byte_offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (byte_offset as u64 / 4)
}

/// General-purpose register `x{n}`, for `n` in 0..=30.
pub const fn xreg(n: usize) -> u64 {
    assert!(n <= 30, "x0..x30 only");
    core_reg(n * 8)
}

/// `SP_EL0`, the `sp` field of `user_pt_regs`.
pub const SP: u64 = core_reg(31 * 8);
/// The program counter.
pub const PC: u64 = core_reg(32 * 8);
/// `PSTATE` (`CPSR` when seen from AArch32).
pub const PSTATE: u64 = core_reg(33 * 8);

/// The id of the 64-bit system register encoded as `(op0, op1, CRn, CRm, op2)`.
pub const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// `MPIDR_EL1`: the vCPU's affinity, which the FDT `cpu@N/reg` and PSCI CPU_ON use.
pub const MPIDR_EL1: u64 = sysreg(3, 0, 0, 0, 5);
/// `SCTLR_EL1`: bit 0 (M) says whether the stage-1 MMU is on.
pub const SCTLR_EL1: u64 = sysreg(3, 0, 1, 0, 0);

/// `KVM_REG_ARM_PSCI_VERSION`: the PSCI version KVM implements for the guest.
pub const PSCI_VERSION: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW;

/// Mask of the affinity fields (Aff2..Aff0) of `MPIDR_EL1`, as written to the FDT.
pub const MPIDR_AFFINITY_MASK: u64 = 0x00FF_FFFF;

/// `PSTATE` at reset and at every PSCI entry: EL1h with D, A, I and F masked.
pub const PSTATE_EL1H_DAIF_MASKED: u64 = PSR_MODE_EL1H | PSR_F | PSR_I | PSR_A | PSR_D;

/// `PSTATE.M[3:0]` for EL1 using `SP_EL1`.
pub const PSR_MODE_EL1H: u64 = 0x5;
/// `PSTATE.M[3:0]` mask.
pub const PSR_MODE_MASK: u64 = 0xF;
/// FIQ mask bit.
pub const PSR_F: u64 = 1 << 6;
/// IRQ mask bit.
pub const PSR_I: u64 = 1 << 7;
/// SError mask bit.
pub const PSR_A: u64 = 1 << 8;
/// Debug mask bit.
pub const PSR_D: u64 = 1 << 9;

/// `SCTLR_EL1.M`: the stage-1 MMU enable bit.
pub const SCTLR_M: u64 = 1;
/// `SCTLR_EL1.C`: the data cache enable bit.
pub const SCTLR_C: u64 = 1 << 2;

#[cfg(test)]
mod tests {
    use super::*;

    // Values from the table in Documentation/virt/kvm/api.rst (KVM_SET_ONE_REG, arm64).
    #[test]
    fn core_register_ids_match_the_kernel_table() {
        assert_eq!(xreg(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg(1), 0x6030_0000_0010_0002);
        assert_eq!(xreg(30), 0x6030_0000_0010_003c);
        assert_eq!(SP, 0x6030_0000_0010_003e);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
    }

    #[test]
    fn system_register_ids_match_their_encodings() {
        // MPIDR_EL1 is op0=3 op1=0 CRn=0 CRm=0 op2=5: 0xC005 in the low 16 bits.
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        // SCTLR_EL1 is op0=3 op1=0 CRn=1 CRm=0 op2=0: 0xC080.
        assert_eq!(SCTLR_EL1, 0x6030_0000_0013_c080);
        assert_eq!(PSCI_VERSION, 0x6030_0000_0014_0000);
    }

    #[test]
    fn reset_pstate_is_el1h_with_daif_masked() {
        assert_eq!(PSTATE_EL1H_DAIF_MASKED, 0x3c5);
    }
}
