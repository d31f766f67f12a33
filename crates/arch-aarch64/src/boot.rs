//! vCPU 0's registers at kernel entry, per Documentation/arch/arm64/booting.rst.
//!
//! Only the boot vCPU is set up this way: the others start powered off and the guest
//! brings them up with PSCI CPU_ON, which KVM handles and which sets their entry state.

use crate::regs::{PC, PSTATE, PSTATE_EL1H_DAIF_MASKED, xreg};

/// Why boot registers cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootRegsError {
    /// booting.rst requires the DTB on an 8-byte boundary.
    #[error("FDT address {0:#x} is not 8-byte aligned")]
    UnalignedFdt(u64),
    /// A64 instructions are 4 bytes; an unaligned PC faults on the first fetch.
    #[error("Kernel entry {0:#x} is not 4-byte aligned")]
    UnalignedEntry(u64),
}

/// `(one-reg id, value)` pairs for vCPU 0, in the order to write them: PC, x0..x3, PSTATE.
///
/// `kernel_entry` is the Image loader's `kernel_load` (load base plus `text_offset`).
/// The kernel wants x0 = DTB address, x1..x3 = 0 (reserved), and EL1h with D, A, I and F
/// masked; the MMU and caches are already off after `KVM_ARM_VCPU_INIT`.
pub fn boot_regs(kernel_entry: u64, fdt_addr: u64) -> Result<[(u64, u64); 6], BootRegsError> {
    if fdt_addr % 8 != 0 {
        return Err(BootRegsError::UnalignedFdt(fdt_addr));
    }
    if kernel_entry % 4 != 0 {
        return Err(BootRegsError::UnalignedEntry(kernel_entry));
    }
    Ok([
        (PC, kernel_entry),
        (xreg(0), fdt_addr),
        (xreg(1), 0),
        (xreg(2), 0),
        (xreg(3), 0),
        (PSTATE, PSTATE_EL1H_DAIF_MASKED),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_entry_fdt_and_masked_el1h() {
        let regs = boot_regs(0x4020_0000, 0x5fe0_0000).unwrap();
        assert_eq!(
            regs,
            [
                (0x6030_0000_0010_0040, 0x4020_0000),
                (0x6030_0000_0010_0000, 0x5fe0_0000),
                (0x6030_0000_0010_0002, 0),
                (0x6030_0000_0010_0004, 0),
                (0x6030_0000_0010_0006, 0),
                (0x6030_0000_0010_0042, 0x3c5),
            ]
        );
    }

    #[test]
    fn rejects_misaligned_addresses() {
        assert_eq!(
            boot_regs(0x4020_0000, 0x5fe0_0004),
            Err(BootRegsError::UnalignedFdt(0x5fe0_0004))
        );
        assert_eq!(
            boot_regs(0x4020_0002, 0x5fe0_0000),
            Err(BootRegsError::UnalignedEntry(0x4020_0002))
        );
        assert_eq!(
            BootRegsError::UnalignedFdt(4).to_string(),
            "FDT address 0x4 is not 8-byte aligned"
        );
    }
}
