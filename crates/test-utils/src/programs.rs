//! Bare-metal guest programs that more than one test or tool runs.

use arch_aarch64::layout::{GIC_DIST_BASE, GIC_REDIST_BASE, GIC_REDIST_SIZE};
use arch_aarch64::psci::{SYSTEM_OFF, SYSTEM_SUSPEND_64};

use crate::a64::{Assembler, CNTFRQ_EL0, CNTV_CTL_EL0, CNTV_TVAL_EL0};

/// The virtual timer's interrupt, INTID 27.
const VTIMER_INTID: u32 = 27;
/// GICD_CTLR: EnableGrp1 (non-secure), as KVM's single-security-state GIC has it.
const GICD_CTLR_ENABLE_GRP1: u64 = 1 << 1;
/// vCPU 0's SGI_base frame, and its IGROUPR0 and ISENABLER0 registers in it.
const GICR_SGI_BASE: u64 = GIC_REDIST_BASE + GIC_REDIST_SIZE / 2;
const GICR_IGROUPR0: u32 = 0x80;
const GICR_ISENABLER0: u32 = 0x100;

/// A loop of SYSTEM_SUSPEND calls, each woken by the virtual timer about 8 ms later, for a
/// program placed at guest address `entry`. `x0` holds the cycles left: with none left it
/// powers off; otherwise it arms the timer and suspends with `entry` as the resume entry and
/// `x0 - 1` as the context id. A refused suspend falls through to the power-off.
pub fn timer_woken_suspends(entry: u64) -> Assembler {
    let mut suspend = Assembler::new();
    // The distributor and vCPU 0's redistributor: group 1, the timer's PPI enabled.
    suspend
        .mov_imm(10, GIC_DIST_BASE)
        .mov_imm(11, GICD_CTLR_ENABLE_GRP1)
        .str_w(11, 10, 0);
    suspend
        .mov_imm(10, GICR_SGI_BASE)
        .mov_imm(11, 1 << VTIMER_INTID)
        .str_w(11, 10, GICR_IGROUPR0)
        .str_w(11, 10, GICR_ISENABLER0);
    // Every priority let through.
    suspend.enable_gic_cpu_interface(11, 0xff);
    // CNTFRQ / 128 ticks from now. Interrupts stay masked in PSTATE, so it only wakes the vCPU.
    suspend
        .mrs(12, CNTFRQ_EL0)
        .lsr_imm(12, 12, 7)
        .msr(CNTV_TVAL_EL0, 12)
        .mov_imm(12, 1)
        .msr(CNTV_CTL_EL0, 12)
        .isb();
    suspend.sub_imm(2, 0, 1);
    suspend
        .mov_imm(1, entry)
        .mov_imm(0, u64::from(SYSTEM_SUSPEND_64))
        .hvc(0);

    let mut asm = Assembler::new();
    asm.cbz_to(0, 4 + suspend.offset());
    asm.append(&suspend);
    asm.psci_call(SYSTEM_OFF, &[]);
    let here = asm.offset();
    asm.b_to(here);
    asm
}
