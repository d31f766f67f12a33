//! Real-KVM tests of the state a snapshot of a suspended guest needs: the vGICv3 saved from
//! one VM and restored into a fresh one, the guest's virtual counter set on a fresh VM, and a
//! fresh vCPU restored as suspended. Guests are raw A64 code, as in `psci_guests.rs`, and
//! report values by storing to an unmapped address. They need an arm64 host with `/dev/kvm`.
#![cfg(target_arch = "aarch64")]

use std::time::{Duration, Instant};

use arch_aarch64::layout::{GIC_DIST_BASE, GIC_REDIST_BASE, RAM_START};
use arch_aarch64::regs;
use hypervisor::gic_state::active_priority_registers;
use hypervisor::kvm::{
    KvmGicV3, KvmVcpu, KvmVm, KvmVmOptions, host_counter, host_counter_frequency,
};
use hypervisor::{CounterPath, GicState, MpState, SystemEvent, Vcpu, VmExit};
use test_utils::a64::{Assembler, SysReg};
use test_utils::guest::{BareMetal, REPORT_REG, reporting_program, run_reporting};
use test_utils::kvm::host_kernel;

const SPIS: u32 = 64;
const VCPUS: u32 = 2;
/// A redistributor's two 64 KiB frames; the SGI_base frame is the second.
const REDIST_FRAME: u64 = 0x2_0000;
const SGI_BASE: u64 = 0x1_0000;

const CNTVCT_EL0: SysReg = SysReg(3, 3, 14, 0, 2);
const VBAR_EL1: SysReg = SysReg(3, 0, 12, 0, 0);
const ICC_IAR1_EL1: SysReg = SysReg(3, 0, 12, 12, 0);
const ICC_EOIR1_EL1: SysReg = SysReg(3, 0, 12, 12, 1);
/// `msr daifclr, #2`: unmask IRQs.
const UNMASK_IRQ: u32 = 0xD503_42FF;
const NOP: u32 = 0xD503_201F;

/// The level-triggered SPI (KVM's default trigger) and the edge-triggered one of the tests.
const LEVEL_SPI: u32 = 6;
const EDGE_SPI: u32 = 7;

/// A VM of [`VCPUS`] vCPUs and a vGIC with [`SPIS`] SPIs; vCPU 0 starts at `program`, the
/// others powered off.
struct Machine {
    vm: KvmVm,
    vcpus: Vec<KvmVcpu>,
    gic: KvmGicV3,
    mpidrs: Vec<u64>,
}

impl Machine {
    fn new(program: &Assembler) -> Self {
        let options = KvmVmOptions {
            system_suspend: true,
            ..Default::default()
        };
        let BareMetal { vm, vcpus } = BareMetal::new(options, program, VCPUS);
        let mpidrs = vcpus
            .iter()
            .map(|vcpu| vcpu.reg(regs::MPIDR_EL1).unwrap() & regs::MPIDR_AFFINITY_MASK)
            .collect();
        let gic = vm
            .create_gic(GIC_DIST_BASE, GIC_REDIST_BASE, SPIS)
            .expect("create the vGIC");
        Self {
            vm,
            vcpus,
            gic,
            mpidrs,
        }
    }

    /// Runs vCPU 0, as [`run_reporting`] does.
    fn run(&mut self, count: usize, limit: Duration) -> (Vec<u64>, Option<VmExit>) {
        run_reporting(&mut self.vcpus[0], count, limit)
    }
}

/// Stores `value` to the 32-bit register at `base + offset` (clobbers x11, x12).
fn write32(asm: &mut Assembler, base: u64, offset: u64, value: u64) {
    asm.mov_imm(12, base + offset);
    asm.mov_imm(11, value);
    asm.str_w(11, 12, 0);
}

/// A guest that programs the GIC as Linux would, minus taking the interrupts: the level and
/// the edge SPI in group 1 with priorities 0xA0 and 0x80, the second edge-triggered; PPI 20
/// on vCPU 0's redistributor and PPI 21 on vCPU 1's; then its CPU interface. Reports 1.
fn gic_programming_guest() -> Assembler {
    let mut asm = reporting_program();
    let spis = (1 << LEVEL_SPI) | (1 << EDGE_SPI);
    write32(&mut asm, GIC_DIST_BASE, 0x0, 0x12); // GICD_CTLR: EnableGrp1NS | ARE_NS
    write32(&mut asm, GIC_DIST_BASE, 0x84, spis); // GICD_IGROUPR1
    // GICD_ICFGR2 covers INTIDs 32..47: bit 2n+1 makes INTID 32 + n edge-triggered.
    write32(&mut asm, GIC_DIST_BASE, 0xC08, 1 << (2 * EDGE_SPI + 1));
    write32(&mut asm, GIC_DIST_BASE, 0x424, 0x80A0_0000); // GICD_IPRIORITYR9: INTIDs 36..39
    write32(&mut asm, GIC_DIST_BASE, 0x104, spis); // GICD_ISENABLER1
    let rd0 = GIC_REDIST_BASE + SGI_BASE;
    let rd1 = GIC_REDIST_BASE + REDIST_FRAME + SGI_BASE;
    write32(&mut asm, rd0, 0x80, 1 << 20); // GICR_IGROUPR0
    write32(&mut asm, rd0, 0x414, 0x90); // GICR_IPRIORITYR5: INTIDs 20..23
    write32(&mut asm, rd0, 0x100, 1 << 20); // GICR_ISENABLER0
    write32(&mut asm, rd1, 0x414, 0xB0 << 8);
    write32(&mut asm, rd1, 0x100, 1 << 21);
    asm.enable_gic_cpu_interface(11, 0xF0);
    asm.mov_imm(0, 1);
    asm.str_x(0, REPORT_REG, 0);
    let here = asm.offset();
    asm.b_to(here);
    asm
}

/// A guest that touches no GIC register but takes interrupts: its IRQ handler acknowledges
/// one, reports its INTID, ends it, and reports the next one's.
fn interrupt_taking_guest() -> Assembler {
    const VECTORS: u64 = 0x800;
    const IRQ_CURRENT_EL_SPX: u64 = 0x280;
    let mut asm = reporting_program();
    asm.mov_imm(0, RAM_START + VECTORS);
    asm.msr(VBAR_EL1, 0);
    asm.isb();
    asm.word(UNMASK_IRQ);
    let idle = asm.offset();
    asm.wfi();
    asm.b_to(idle);
    while asm.offset() < VECTORS + IRQ_CURRENT_EL_SPX {
        asm.word(NOP);
    }
    asm.mrs(0, ICC_IAR1_EL1);
    asm.str_x(0, REPORT_REG, 0);
    asm.msr(ICC_EOIR1_EL1, 0);
    asm.mrs(0, ICC_IAR1_EL1);
    asm.str_x(0, REPORT_REG, 0);
    let here = asm.offset();
    asm.b_to(here);
    asm
}

#[test]
fn gic_state_saved_from_one_vm_restores_into_a_fresh_one_and_delivers_its_interrupts() {
    test_utils::require_kvm!();
    let mut a = Machine::new(&gic_programming_guest());
    let (reports, exit) = a.run(1, Duration::from_secs(20));
    assert_eq!((reports.as_slice(), exit), (&[1][..], None));
    // The host's side: a device holds the level SPI's line high, the edge SPI got an edge.
    a.vm.set_spi_level(LEVEL_SPI, true).unwrap();
    a.vm.set_spi_level(EDGE_SPI, true).unwrap();
    a.vm.set_spi_level(EDGE_SPI, false).unwrap();

    // vCPU 0 is out of KVM_RUN (it stopped at a report), and vCPU 1 never ran.
    let saved = a.gic.save(&a.mpidrs).expect("save the vGIC of VM A");
    let dist = &saved.distributor;
    assert_eq!(dist.ctlr & 0x2, 0x2, "EnableGrp1: {dist:x?}");
    assert_eq!(dist.isenabler, [0xC0, 0]);
    assert_eq!(dist.igroupr[0] & 0xC0, 0xC0);
    assert_eq!(dist.line_level, [1 << LEVEL_SPI, 0]);
    assert_eq!(dist.ispendr[0] & (1 << EDGE_SPI), 1 << EDGE_SPI);
    assert_eq!(dist.icfgr[0] & (1 << 15), 1 << 15);
    assert_eq!(dist.ipriorityr[1], 0x80A0_0000);
    assert_eq!(dist.irouter.len(), SPIS as usize);
    assert_eq!(saved.vcpus.len(), 2);
    let (vcpu0, vcpu1) = (&saved.vcpus[0], &saved.vcpus[1]);
    assert_eq!((vcpu0.mpidr, vcpu1.mpidr), (0, 1));
    assert_eq!(vcpu0.redistributor.isenabler0 & (3 << 20), 1 << 20);
    assert_eq!(vcpu1.redistributor.isenabler0 & (3 << 20), 1 << 21);
    assert_eq!(vcpu0.redistributor.ipriorityr[5], 0x90);
    assert_eq!(vcpu1.redistributor.ipriorityr[5], 0xB000);
    let icc = &vcpu0.cpu_interface;
    assert_eq!((icc.pmr, icc.igrpen1), (0xF0, 1));
    assert_eq!(vcpu1.cpu_interface.igrpen1, 0);
    assert_eq!(icc.ap0r.len(), active_priority_registers(icc.ctlr));
    println!(
        "GICD_IIDR {:#x}, ICC_CTLR_EL1 {:#x}: {} active priority registers per group",
        dist.iidr,
        icc.ctlr,
        icc.ap0r.len()
    );

    // Through a file's worth of serde, into a VM of the same shape.
    let json = serde_json::to_string(&saved).unwrap();
    let saved: GicState = serde_json::from_str(&json).unwrap();
    let mut b = Machine::new(&interrupt_taking_guest());
    b.gic.restore(&b.mpidrs, &saved).expect("restore into VM B");
    assert_eq!(b.gic.save(&b.mpidrs).expect("save VM B"), saved);

    // The guest of B never touched its GIC: the restored state delivers, highest priority
    // first, the latched edge and then the level SPI whose line is still high.
    let (reports, exit) = b.run(2, Duration::from_secs(20));
    assert_eq!(exit, None, "reports so far {reports:?}");
    assert_eq!(
        reports,
        [u64::from(32 + EDGE_SPI), u64::from(32 + LEVEL_SPI)]
    );
}

#[test]
fn gic_restore_refuses_a_state_of_another_shape() {
    test_utils::require_kvm!();
    let a = Machine::new(&Assembler::new());
    let mut state = a.gic.save(&a.mpidrs).unwrap();
    assert!(a.gic.restore(&a.mpidrs[..1], &state).is_err());
    state.distributor.irouter.pop();
    let err = a.gic.restore(&a.mpidrs, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Cannot restore GICD_IROUTER from 63 values: this vGIC has 64"
    );
}

#[test]
fn the_guest_counter_starts_at_the_value_set_on_a_fresh_vm() {
    test_utils::require_kvm!();
    let mut asm = reporting_program();
    asm.isb();
    asm.mrs(0, CNTVCT_EL0);
    asm.str_x(0, REPORT_REG, 0);
    let here = asm.offset();
    asm.b_to(here);
    let mut machine = Machine::new(&asm);

    let frequency = host_counter_frequency();
    // Emulated hosts are slow: allow this long from setting the counter to the guest's read.
    let slack = 10 * frequency;
    let target = host_counter() + 3600 * frequency;
    let path = machine
        .vm
        .set_guest_counter(&machine.vcpus, target)
        .expect("set the guest counter");
    println!(
        "counter path on Linux {:?}: {path:?} (host at {} Hz)",
        host_kernel(),
        frequency
    );
    match path {
        CounterPath::Offset { .. } => assert!(host_kernel() >= (6, 4)),
        CounterPath::Registers => assert!(host_kernel() < (6, 4)),
    }
    // Both vCPUs see it, not only the first.
    let before = machine.vcpus[1].counter_state().unwrap();
    assert_eq!(before.cntfrq, frequency);
    assert!(
        (target..target + slack).contains(&before.cntvct),
        "vCPU 1 reads {} for {target}",
        before.cntvct
    );

    let (reports, exit) = machine.run(1, Duration::from_secs(20));
    assert_eq!(exit, None);
    let read = reports[0];
    assert!(
        (target..target + slack).contains(&read),
        "the guest read {read}, {} ticks from {target}",
        read as i128 - target as i128
    );
    let after = machine.vcpus[0].counter_state().unwrap();
    assert!(after.cntvct >= read);
}

#[test]
fn a_fresh_vcpu_set_suspended_stays_in_kvm_run_until_an_interrupt_then_wakes() {
    test_utils::require_kvm!();
    const WAKE_SPI: u32 = 3;
    let mut machine = Machine::new(&Assembler::new());
    assert!(machine.vm.system_suspend_enabled());
    // A fresh vGIC has every interrupt disabled, so nothing could wake the vCPU: give it the
    // state a guest leaves before suspending, one wake-up SPI enabled and unmasked.
    let mut state = machine.gic.save(&machine.mpidrs).unwrap();
    state.distributor.ctlr |= 0x2;
    state.distributor.igroupr[0] |= 1 << WAKE_SPI;
    state.distributor.isenabler[0] |= 1 << WAKE_SPI;
    state.distributor.ipriorityr[0] = 0x80 << (8 * WAKE_SPI);
    state.vcpus[0].cpu_interface.pmr = 0xF0;
    state.vcpus[0].cpu_interface.igrpen1 = 1;
    machine.gic.restore(&machine.mpidrs, &state).unwrap();

    machine.vcpus[0].set_mp_state(MpState::Suspended).unwrap();
    assert_eq!(machine.vcpus[0].mp_state().unwrap(), MpState::Suspended);
    // Nothing pending: KVM keeps the vCPU in KVM_RUN until the watchdog kicks it out.
    let (_, exit) = machine.run(1, Duration::from_millis(300));
    assert_eq!(exit, Some(VmExit::Interrupted));

    let delay = Duration::from_millis(500);
    let started = Instant::now();
    let Machine { vm, vcpus, .. } = &mut machine;
    let exit = std::thread::scope(|scope| {
        let vm = &*vm;
        scope.spawn(move || {
            std::thread::sleep(delay);
            vm.set_spi_level(WAKE_SPI, true).unwrap();
        });
        run_reporting(&mut vcpus[0], 1, Duration::from_secs(20)).1
    });
    assert_eq!(exit, Some(VmExit::SystemEvent(SystemEvent::Wakeup)));
    assert!(
        started.elapsed() >= delay,
        "woke after {:?}",
        started.elapsed()
    );
    // KVM leaves the vCPU suspended: making it runnable is the VMM's decision.
    assert_eq!(machine.vcpus[0].mp_state().unwrap(), MpState::Suspended);
}
