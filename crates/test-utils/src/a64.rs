//! A minimal A64 instruction encoder for bare-metal test guests.
//!
//! KVM tests run tiny guests of raw machine code, like the kernel's own selftests. Encoding the
//! few instructions they need here keeps them readable and free of an assembler at build time.
//! Encodings follow the Arm ARM (DDI 0487); the unit tests pin them against `objdump` output.

/// A general-purpose register number, 0..=30, or 31 for `xzr`/`sp` depending on the instruction.
pub type Reg = u32;

/// The zero register in data-processing instructions.
pub const XZR: Reg = 31;

/// A system register operand `(op0, op1, CRn, CRm, op2)` for `mrs`/`msr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysReg(pub u32, pub u32, pub u32, pub u32, pub u32);

/// `CurrentEL`: bits 3..2 hold the exception level.
pub const CURRENT_EL: SysReg = SysReg(3, 0, 4, 2, 2);
/// `SCTLR_EL1`.
pub const SCTLR_EL1: SysReg = SysReg(3, 0, 1, 0, 0);
/// `MPIDR_EL1`.
pub const MPIDR_EL1: SysReg = SysReg(3, 0, 0, 0, 5);
/// `CNTFRQ_EL0`: the generic timer's frequency.
pub const CNTFRQ_EL0: SysReg = SysReg(3, 3, 14, 0, 0);
/// `CNTV_TVAL_EL0`: the virtual timer fires this many ticks from now.
pub const CNTV_TVAL_EL0: SysReg = SysReg(3, 3, 14, 3, 0);
/// `CNTV_CTL_EL0`: bit 0 enables the virtual timer.
pub const CNTV_CTL_EL0: SysReg = SysReg(3, 3, 14, 3, 1);
/// `ICC_SRE_EL1`: GICv3 system-register interface enable.
pub const ICC_SRE_EL1: SysReg = SysReg(3, 0, 12, 12, 5);
/// `ICC_PMR_EL1`: GICv3 priority mask.
pub const ICC_PMR_EL1: SysReg = SysReg(3, 0, 4, 6, 0);
/// `ICC_IGRPEN1_EL1`: GICv3 group 1 interrupt enable.
pub const ICC_IGRPEN1_EL1: SysReg = SysReg(3, 0, 12, 12, 7);

/// Builds a guest program as a sequence of 32-bit instructions.
#[derive(Clone, Debug, Default)]
pub struct Assembler {
    words: Vec<u32>,
}

impl Assembler {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// The byte offset of the next instruction from the start of the program.
    pub fn offset(&self) -> u64 {
        self.words.len() as u64 * 4
    }

    /// Appends a raw instruction word.
    pub fn word(&mut self, word: u32) -> &mut Self {
        self.words.push(word);
        self
    }

    /// `movz xd, #imm16, lsl #(16 * hw)`.
    pub fn movz(&mut self, rd: Reg, imm16: u16, hw: u32) -> &mut Self {
        self.word(0xD280_0000 | (hw << 21) | (u32::from(imm16) << 5) | rd)
    }

    /// `movk xd, #imm16, lsl #(16 * hw)`.
    pub fn movk(&mut self, rd: Reg, imm16: u16, hw: u32) -> &mut Self {
        self.word(0xF280_0000 | (hw << 21) | (u32::from(imm16) << 5) | rd)
    }

    /// Loads a 64-bit constant into `xd` with one `movz` and as many `movk` as needed.
    pub fn mov_imm(&mut self, rd: Reg, value: u64) -> &mut Self {
        self.movz(rd, value as u16, 0);
        for hw in 1..4 {
            let part = (value >> (16 * hw)) as u16;
            if part != 0 {
                self.movk(rd, part, hw);
            }
        }
        self
    }

    /// `mov xd, xm` (an alias of `orr xd, xzr, xm`).
    pub fn mov(&mut self, rd: Reg, rm: Reg) -> &mut Self {
        self.word(0xAA00_03E0 | (rm << 16) | rd)
    }

    /// `add xd, xn, #imm12`.
    pub fn add_imm(&mut self, rd: Reg, rn: Reg, imm12: u32) -> &mut Self {
        assert!(imm12 < 4096, "add immediate out of range");
        self.word(0x9100_0000 | (imm12 << 10) | (rn << 5) | rd)
    }

    /// `sub xd, xn, #imm12`.
    pub fn sub_imm(&mut self, rd: Reg, rn: Reg, imm12: u32) -> &mut Self {
        assert!(imm12 < 4096, "sub immediate out of range");
        self.word(0xD100_0000 | (imm12 << 10) | (rn << 5) | rd)
    }

    /// `sub xd, xn, xm`.
    pub fn sub(&mut self, rd: Reg, rn: Reg, rm: Reg) -> &mut Self {
        self.word(0xCB00_0000 | (rm << 16) | (rn << 5) | rd)
    }

    /// `str xt, [xn, #offset]`, `offset` a multiple of 8 below 32 KiB.
    pub fn str_x(&mut self, rt: Reg, rn: Reg, offset: u32) -> &mut Self {
        assert!(
            offset % 8 == 0 && offset / 8 < 4096,
            "str offset out of range"
        );
        self.word(0xF900_0000 | ((offset / 8) << 10) | (rn << 5) | rt)
    }

    /// `str wt, [xn, #offset]`, `offset` a multiple of 4 below 16 KiB.
    pub fn str_w(&mut self, rt: Reg, rn: Reg, offset: u32) -> &mut Self {
        assert!(
            offset % 4 == 0 && offset / 4 < 4096,
            "str offset out of range"
        );
        self.word(0xB900_0000 | ((offset / 4) << 10) | (rn << 5) | rt)
    }

    /// `strb wt, [xn, #offset]`, `offset` below 4 KiB.
    pub fn strb(&mut self, rt: Reg, rn: Reg, offset: u32) -> &mut Self {
        assert!(offset < 4096, "strb offset out of range");
        self.word(0x3900_0000 | (offset << 10) | (rn << 5) | rt)
    }

    /// `ldr wt, [xn, #offset]`, `offset` a multiple of 4 below 16 KiB.
    pub fn ldr_w(&mut self, rt: Reg, rn: Reg, offset: u32) -> &mut Self {
        assert!(
            offset % 4 == 0 && offset / 4 < 4096,
            "ldr offset out of range"
        );
        self.word(0xB940_0000 | ((offset / 4) << 10) | (rn << 5) | rt)
    }

    /// `lsr xd, xn, #shift` (an alias of `ubfm xd, xn, #shift, #63`).
    pub fn lsr_imm(&mut self, rd: Reg, rn: Reg, shift: u32) -> &mut Self {
        assert!(shift < 64, "shift out of range");
        self.word(0xD340_FC00 | (shift << 16) | (rn << 5) | rd)
    }

    /// `ldr xt, [xn, #offset]`, `offset` a multiple of 8 below 32 KiB.
    pub fn ldr_x(&mut self, rt: Reg, rn: Reg, offset: u32) -> &mut Self {
        assert!(
            offset % 8 == 0 && offset / 8 < 4096,
            "ldr offset out of range"
        );
        self.word(0xF940_0000 | ((offset / 8) << 10) | (rn << 5) | rt)
    }

    /// `mrs xt, <sysreg>`.
    pub fn mrs(&mut self, rt: Reg, reg: SysReg) -> &mut Self {
        self.word(0xD530_0000 | sysreg_fields(reg) | rt)
    }

    /// `msr <sysreg>, xt`.
    pub fn msr(&mut self, reg: SysReg, rt: Reg) -> &mut Self {
        self.word(0xD510_0000 | sysreg_fields(reg) | rt)
    }

    /// `hvc #imm16`: the PSCI conduit KVM guests use.
    pub fn hvc(&mut self, imm16: u16) -> &mut Self {
        self.word(0xD400_0002 | (u32::from(imm16) << 5))
    }

    /// `wfi`.
    pub fn wfi(&mut self) -> &mut Self {
        self.word(0xD503_207F)
    }

    /// `isb`.
    pub fn isb(&mut self) -> &mut Self {
        self.word(0xD503_3FDF)
    }

    /// `b` to the instruction at byte offset `target` in this program.
    pub fn b_to(&mut self, target: u64) -> &mut Self {
        let delta = (target as i64 - self.offset() as i64) / 4;
        self.word(0x1400_0000 | (delta as u32 & 0x03FF_FFFF))
    }

    /// `cbz xt, target`, `target` a byte offset in this program.
    pub fn cbz_to(&mut self, rt: Reg, target: u64) -> &mut Self {
        let delta = (target as i64 - self.offset() as i64) / 4;
        self.word(0xB400_0000 | ((delta as u32 & 0x7FFFF) << 5) | rt)
    }

    /// `cbnz xt, target`, `target` a byte offset in this program.
    pub fn cbnz_to(&mut self, rt: Reg, target: u64) -> &mut Self {
        let delta = (target as i64 - self.offset() as i64) / 4;
        self.word(0xB500_0000 | ((delta as u32 & 0x7FFFF) << 5) | rt)
    }

    /// Appends the instructions of `other`, which must not branch outside itself.
    pub fn append(&mut self, other: &Assembler) -> &mut Self {
        self.words.extend_from_slice(&other.words);
        self
    }

    /// Rewrites the instruction at byte offset `at` into a `b` to byte offset `target`, for a
    /// branch forward to code not written yet.
    pub fn patch_b(&mut self, at: u64, target: u64) -> &mut Self {
        let delta = (target as i64 - at as i64) / 4;
        self.words[(at / 4) as usize] = 0x1400_0000 | (delta as u32 & 0x03FF_FFFF);
        self
    }

    /// Enables the GICv3 CPU interface as a guest kernel does: its system registers, the
    /// priority mask at `priority_mask`, and group 1 interrupts. Clobbers `scratch`.
    pub fn enable_gic_cpu_interface(&mut self, scratch: Reg, priority_mask: u64) -> &mut Self {
        self.mov_imm(scratch, 7).msr(ICC_SRE_EL1, scratch).isb();
        self.mov_imm(scratch, priority_mask)
            .msr(ICC_PMR_EL1, scratch);
        self.mov_imm(scratch, 1).msr(ICC_IGRPEN1_EL1, scratch).isb()
    }

    /// A PSCI call through `hvc #0`: function id in `x0`, arguments in `x1..x3`; the result comes
    /// back in `x0`.
    pub fn psci_call(&mut self, function: u32, args: &[u64]) -> &mut Self {
        assert!(args.len() <= 3, "PSCI calls take at most three arguments");
        self.mov_imm(0, u64::from(function));
        for (index, arg) in args.iter().enumerate() {
            self.mov_imm(index as Reg + 1, *arg);
        }
        self.hvc(0)
    }

    /// The program as little-endian bytes, ready to copy into guest memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    }
}

fn sysreg_fields(SysReg(op0, op1, crn, crm, op2): SysReg) -> u32 {
    ((op0 & 1) << 19) | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(build: impl FnOnce(&mut Assembler) -> &mut Assembler) -> u32 {
        let mut asm = Assembler::new();
        build(&mut asm);
        assert_eq!(asm.words.len(), 1);
        asm.words[0]
    }

    // Reference words as printed by `aarch64-linux-gnu-objdump -d` for the same instructions.
    #[test]
    fn encodes_like_binutils() {
        assert_eq!(one(|a| a.hvc(0)), 0xd400_0002);
        assert_eq!(one(|a| a.wfi()), 0xd503_207f);
        assert_eq!(one(|a| a.isb()), 0xd503_3fdf);
        assert_eq!(one(|a| a.movz(0, 0x000e, 0)), 0xd280_01c0); // mov x0, #0xe
        assert_eq!(one(|a| a.movk(0, 0xc400, 1)), 0xf2b8_8000); // movk x0, #0xc400, lsl #16
        assert_eq!(one(|a| a.mov(1, 2)), 0xaa02_03e1); // mov x1, x2
        assert_eq!(one(|a| a.add_imm(3, 4, 16)), 0x9100_4083); // add x3, x4, #0x10
        assert_eq!(one(|a| a.sub_imm(3, 4, 16)), 0xd100_4083); // sub x3, x4, #0x10
        assert_eq!(one(|a| a.sub(15, 13, 15)), 0xcb0f_01af); // sub x15, x13, x15
        assert_eq!(one(|a| a.str_x(0, 9, 0)), 0xf900_0120); // str x0, [x9]
        assert_eq!(one(|a| a.str_x(1, 9, 8)), 0xf900_0521); // str x1, [x9, #8]
        assert_eq!(one(|a| a.str_w(1, 9, 4)), 0xb900_0521); // str w1, [x9, #4]
        assert_eq!(one(|a| a.ldr_x(2, 3, 16)), 0xf940_0862); // ldr x2, [x3, #16]
        assert_eq!(one(|a| a.ldr_w(2, 3, 8)), 0xb940_0862); // ldr w2, [x3, #8]
        assert_eq!(one(|a| a.strb(0, 9, 0)), 0x3900_0120); // strb w0, [x9]
        assert_eq!(one(|a| a.lsr_imm(0, 0, 8)), 0xd348_fc00); // lsr x0, x0, #8
        assert_eq!(one(|a| a.mrs(1, CURRENT_EL)), 0xd538_4241); // mrs x1, CurrentEL
        assert_eq!(one(|a| a.mrs(2, SCTLR_EL1)), 0xd538_1002); // mrs x2, sctlr_el1
        assert_eq!(one(|a| a.mrs(3, MPIDR_EL1)), 0xd538_00a3); // mrs x3, mpidr_el1
        assert_eq!(one(|a| a.msr(ICC_PMR_EL1, 0)), 0xd518_4600); // msr icc_pmr_el1, x0
        assert_eq!(one(|a| a.msr(ICC_IGRPEN1_EL1, 0)), 0xd518_cce0); // msr icc_igrpen1_el1, x0
        assert_eq!(one(|a| a.msr(ICC_SRE_EL1, 0)), 0xd518_cca0); // msr icc_sre_el1, x0
    }

    #[test]
    fn branches_are_pc_relative() {
        let mut asm = Assembler::new();
        asm.b_to(0); // b . (to itself)
        asm.b_to(0); // b .-4
        asm.cbz_to(5, 16); // cbz x5, .+8
        asm.cbnz_to(5, 0); // cbnz x5, .-12
        assert_eq!(
            asm.words,
            [0x1400_0000, 0x17ff_ffff, 0xb400_0045, 0xb5ff_ffa5]
        );
    }

    #[test]
    fn a_patched_branch_jumps_forward_to_later_code() {
        let mut asm = Assembler::new();
        asm.b_to(0);
        asm.wfi();
        asm.patch_b(0, asm.offset());
        asm.hvc(0);
        assert_eq!(asm.words, [0x1400_0002, 0xd503_207f, 0xd400_0002]); // b .+8
    }

    #[test]
    fn mov_imm_skips_zero_halfwords() {
        let mut asm = Assembler::new();
        asm.mov_imm(0, 0xC400_000E);
        assert_eq!(asm.words, [0xd280_01c0, 0xf2b8_8000]);
        let mut asm = Assembler::new();
        asm.mov_imm(2, 0);
        assert_eq!(asm.words, [0xd280_0002]);
        let mut asm = Assembler::new();
        asm.mov_imm(1, 0x1234_0000_0000_5678);
        assert_eq!(asm.words.len(), 2);
    }

    #[test]
    fn bytes_are_little_endian() {
        let mut asm = Assembler::new();
        asm.hvc(0);
        assert_eq!(asm.to_bytes(), [0x02, 0x00, 0x00, 0xd4]);
    }
}
