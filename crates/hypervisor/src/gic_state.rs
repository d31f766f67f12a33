//! The vGICv3's state as data, for snapshots: what KVM's device attributes hold for a GICv3
//! without ITS. `kvm::KvmGicV3::save` and `restore` move it in and out of KVM; the types and the
//! register arithmetic here build on every host.
//!
//! Per-SPI registers are kept as the guest sees them, one 32-bit word per register of the
//! GICv3 map (IHI 0069), starting at INTID 32: word `n` of a one-bit-per-interrupt register
//! covers INTIDs `32 + 32n ..`. Nothing that KVM implements as read-as-zero or that only LPIs
//! use is kept: GICD_STATUSR, GICR_STATUSR, GICR_WAKER, GICR_CTLR (only EnableLPIs is
//! writable, and only with an ITS), GICR_PROPBASER and GICR_PENDBASER.

use serde::{Deserialize, Serialize};

/// The whole vGIC: the distributor, then each vCPU's redistributor and CPU interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicState {
    /// The distributor and the SPIs.
    pub distributor: GicDistributorState,
    /// One per vCPU, in the order of the MPIDRs given to `save`.
    pub vcpus: Vec<GicVcpuState>,
}

/// The distributor: its control registers, and the state of every SPI.
///
/// The per-SPI vectors hold one word per register: `spis / 32` for the one-bit registers,
/// `spis / 16` for `icfgr`, `spis / 4` for `ipriorityr` and `spis` for `irouter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicDistributorState {
    /// GICD_IIDR, whose Revision field selects KVM's behaviour; restored before anything else.
    pub iidr: u32,
    /// GICD_CTLR: the group enables.
    pub ctlr: u32,
    /// GICD_IGROUPR.
    pub igroupr: Vec<u32>,
    /// GICD_ISENABLER.
    pub isenabler: Vec<u32>,
    /// GICD_ISPENDR as KVM's user interface gives it: the pending latch, without the line level.
    pub ispendr: Vec<u32>,
    /// GICD_ISACTIVER.
    pub isactiver: Vec<u32>,
    /// The input line levels (`KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO`), one bit per SPI.
    pub line_level: Vec<u32>,
    /// GICD_ICFGR: two bits per SPI, bit 1 set for edge-triggered.
    pub icfgr: Vec<u32>,
    /// GICD_IPRIORITYR: a byte per SPI.
    pub ipriorityr: Vec<u32>,
    /// GICD_IROUTER: the target affinity of each SPI.
    pub irouter: Vec<u64>,
}

/// One vCPU's part of the vGIC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicVcpuState {
    /// The vCPU's `MPIDR_EL1` affinity (Aff3 in bits 39..32, Aff2..Aff0 in bits 23..0), which
    /// names its redistributor in KVM's attributes.
    pub mpidr: u64,
    /// The redistributor: the vCPU's SGIs and PPIs.
    pub redistributor: GicRedistributorState,
    /// The CPU interface system registers.
    pub cpu_interface: GicCpuInterfaceState,
}

/// A redistributor's SGI and PPI registers (INTIDs 0..32), in its SGI_base frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicRedistributorState {
    /// GICR_IGROUPR0.
    pub igroupr0: u32,
    /// GICR_ISENABLER0.
    pub isenabler0: u32,
    /// GICR_ISPENDR0: the pending latch, as for [`GicDistributorState::ispendr`].
    pub ispendr0: u32,
    /// GICR_ISACTIVER0.
    pub isactiver0: u32,
    /// The PPIs' input line levels.
    pub line_level: u32,
    /// GICR_ICFGR0 (SGIs, read-only) and GICR_ICFGR1 (PPIs).
    pub icfgr: [u32; 2],
    /// GICR_IPRIORITYR0..7.
    pub ipriorityr: [u32; 8],
}

/// A vCPU's GICv3 CPU interface (`ICC_*_EL1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicCpuInterfaceState {
    /// ICC_SRE_EL1.
    pub sre: u64,
    /// ICC_CTLR_EL1; its PRIbits field sets how many active-priority registers exist.
    pub ctlr: u64,
    /// ICC_PMR_EL1.
    pub pmr: u64,
    /// ICC_BPR0_EL1.
    pub bpr0: u64,
    /// ICC_BPR1_EL1.
    pub bpr1: u64,
    /// ICC_IGRPEN0_EL1.
    pub igrpen0: u64,
    /// ICC_IGRPEN1_EL1.
    pub igrpen1: u64,
    /// ICC_AP0R<n>_EL1, [`active_priority_registers`] of them.
    pub ap0r: Vec<u64>,
    /// ICC_AP1R<n>_EL1, as many as `ap0r`.
    pub ap1r: Vec<u64>,
}

/// How many ICC_AP0R<n>_EL1 (and as many ICC_AP1R<n>_EL1) exist for a CPU interface whose
/// ICC_CTLR_EL1 is `icc_ctlr`: 4 with 7 priority bits, 2 with 6, else 1 (IHI 0069, and KVM's
/// `vgic_v3_max_apr_idx`). KVM refuses the others.
pub fn active_priority_registers(icc_ctlr: u64) -> usize {
    let priority_bits = ((icc_ctlr >> 8) & 0x7) + 1;
    match priority_bits {
        7 => 4,
        6 => 2,
        _ => 1,
    }
}

/// The register map and attribute encodings that `kvm::KvmGicV3` uses.
// Only the aarch64-only `kvm` module uses them; the unit tests below check them on every host.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) mod regs {
    // Distributor registers, by offset in its frame. The per-IRQ ones start with the words of
    // the SGIs and PPIs, which are read-as-zero there: see `spi_word_offset`.
    pub const GICD_CTLR: u32 = 0x0000;
    pub const GICD_IIDR: u32 = 0x0008;
    pub const GICD_IGROUPR: u32 = 0x0080;
    pub const GICD_ISENABLER: u32 = 0x0100;
    pub const GICD_ICENABLER: u32 = 0x0180;
    pub const GICD_ISPENDR: u32 = 0x0200;
    pub const GICD_ISACTIVER: u32 = 0x0300;
    pub const GICD_ICACTIVER: u32 = 0x0380;
    pub const GICD_IPRIORITYR: u32 = 0x0400;
    pub const GICD_ICFGR: u32 = 0x0C00;
    pub const GICD_IROUTER: u32 = 0x6000;
    // Redistributor registers: the SGI_base frame follows the 64 KiB RD_base frame.
    const GICR_SGI_BASE: u32 = 0x1_0000;
    pub const GICR_IGROUPR0: u32 = GICR_SGI_BASE + 0x0080;
    pub const GICR_ISENABLER0: u32 = GICR_SGI_BASE + 0x0100;
    pub const GICR_ICENABLER0: u32 = GICR_SGI_BASE + 0x0180;
    pub const GICR_ISPENDR0: u32 = GICR_SGI_BASE + 0x0200;
    pub const GICR_ISACTIVER0: u32 = GICR_SGI_BASE + 0x0300;
    pub const GICR_ICACTIVER0: u32 = GICR_SGI_BASE + 0x0380;
    pub const GICR_IPRIORITYR0: u32 = GICR_SGI_BASE + 0x0400;
    pub const GICR_ICFGR0: u32 = GICR_SGI_BASE + 0x0C00;

    /// The offset of word `word` of the SPIs' part of a distributor register with `bits` bits
    /// per interrupt: the 32 private interrupts take `4 * bits` bytes before it.
    pub const fn spi_word_offset(base: u32, bits: u32, word: u32) -> u32 {
        base + 4 * (bits + word)
    }

    /// The affinity fields of `MPIDR_EL1` (Aff3 and Aff2..Aff0), without its flag bits.
    pub const fn affinity(mpidr: u64) -> u64 {
        mpidr & 0xFF_00FF_FFFF
    }

    /// A CPU interface register as `KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS` names it: its A64 encoding
    /// `op0:op1:CRn:CRm:op2` in bits 15..0.
    pub const fn icc_sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
        (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
    }

    // CPU interface registers, as in the kernel's `gic_v3_icc_reg_descs`.
    pub const ICC_PMR_EL1: u64 = icc_sysreg(3, 0, 4, 6, 0);
    pub const ICC_BPR0_EL1: u64 = icc_sysreg(3, 0, 12, 8, 3);
    pub const ICC_BPR1_EL1: u64 = icc_sysreg(3, 0, 12, 12, 3);
    pub const ICC_CTLR_EL1: u64 = icc_sysreg(3, 0, 12, 12, 4);
    pub const ICC_SRE_EL1: u64 = icc_sysreg(3, 0, 12, 12, 5);
    pub const ICC_IGRPEN0_EL1: u64 = icc_sysreg(3, 0, 12, 12, 6);
    pub const ICC_IGRPEN1_EL1: u64 = icc_sysreg(3, 0, 12, 12, 7);

    /// ICC_AP0R<n>_EL1.
    pub const fn icc_ap0r(n: u64) -> u64 {
        icc_sysreg(3, 0, 12, 8, 4 | n)
    }

    /// ICC_AP1R<n>_EL1.
    pub const fn icc_ap1r(n: u64) -> u64 {
        icc_sysreg(3, 0, 12, 9, n)
    }

    /// The `mpidr` field of a vGIC attribute (bits 63..32: Aff3, Aff2, Aff1, Aff0) for the vCPU
    /// whose `MPIDR_EL1` is `mpidr`.
    pub fn mpidr_attr(mpidr: u64) -> u64 {
        let aff3 = (mpidr >> 32) & 0xFF;
        let aff2_to_0 = mpidr & 0xFF_FFFF;
        ((aff3 << 24) | aff2_to_0) << 32
    }
}

#[cfg(test)]
mod tests {
    use super::regs::*;
    use super::*;

    #[test]
    fn mpidr_attr_packs_all_four_affinity_levels_in_the_top_word() {
        assert_eq!(mpidr_attr(0), 0);
        // KVM's MPIDR for vCPU 17: Aff0 1, Aff1 1, plus the RES1 bit 31 that must not leak.
        assert_eq!(mpidr_attr(0x8000_0101), 0x0000_0101 << 32);
        assert_eq!(mpidr_attr(0x12_0034_5678), 0x1234_5678 << 32);
    }

    #[test]
    fn icc_encodings_match_the_kernel_and_firecracker() {
        // FC's test_icc_constructors pins these.
        assert_eq!(ICC_SRE_EL1, 50789);
        assert_eq!(icc_ap0r(1), 50757);
        assert_eq!(icc_ap1r(1), 50761);
    }

    #[test]
    fn active_priority_register_count_follows_pribits() {
        assert_eq!(active_priority_registers(4 << 8), 1); // 5 bits, KVM's usual
        assert_eq!(active_priority_registers(5 << 8), 2);
        assert_eq!(active_priority_registers(6 << 8), 4);
        assert_eq!(active_priority_registers(7 << 8), 1); // 8 bits: not a GICv3 CPU interface
    }

    #[test]
    fn spi_words_skip_the_private_interrupts() {
        // INTID 32's bit, then INTID 64's (the kernel's VGIC_ADDR_TO_INTID in reverse).
        assert_eq!(spi_word_offset(GICD_ISENABLER, 1, 0), 0x104);
        assert_eq!(spi_word_offset(GICD_ISENABLER, 1, 1), 0x108);
        // INTIDs 48..63, 36..39, and the low word of INTID 33's route.
        assert_eq!(spi_word_offset(GICD_ICFGR, 2, 1), 0xC0C);
        assert_eq!(spi_word_offset(GICD_IPRIORITYR, 8, 1), 0x424);
        assert_eq!(spi_word_offset(GICD_IROUTER, 64, 2), 0x6108);
        assert_eq!(affinity(0x12_8034_5678), 0x12_0034_5678);
    }

    #[test]
    fn a_state_survives_a_json_round_trip() {
        let state = GicState {
            distributor: GicDistributorState {
                iidr: 0x0300_043B,
                ctlr: 0x52,
                igroupr: vec![u32::MAX, 0],
                isenabler: vec![1 << 5, 0],
                ispendr: vec![0, 1 << 31],
                isactiver: vec![0, 0],
                line_level: vec![1 << 6, 0],
                icfgr: vec![0; 4],
                ipriorityr: vec![0xA0A0_A0A0; 16],
                irouter: (0..64).collect(),
            },
            vcpus: vec![GicVcpuState {
                mpidr: 0x8000_0001,
                redistributor: GicRedistributorState {
                    igroupr0: u32::MAX,
                    isenabler0: 1 << 27,
                    icfgr: [0xAAAA_AAAA, 0],
                    ipriorityr: [0x80; 8],
                    ..Default::default()
                },
                cpu_interface: GicCpuInterfaceState {
                    sre: 7,
                    ctlr: 0x4_0400,
                    pmr: 0xF0,
                    igrpen1: 1,
                    ap0r: vec![0],
                    ap1r: vec![1 << 20],
                    ..Default::default()
                },
            }],
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<GicState>(&json).unwrap(), state);
    }
}
