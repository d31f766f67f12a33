//! Real-KVM tests: tiny guests of raw A64 code make PSCI calls through `hvc`, the way the
//! kernel's `psci_test.c` selftest does, and the host checks the exits and the results.
//! They need an arm64 host with `/dev/kvm`; the testbed runs them inside an emulated one.
#![cfg(target_arch = "aarch64")]

use arch_aarch64::psci::{
    PSCI_FEATURES, PsciReturn, SYSTEM_OFF, SYSTEM_RESET, SYSTEM_SUSPEND_32, SYSTEM_SUSPEND_64,
};
use arch_aarch64::regs;
use hypervisor::kvm::{Hypervisor, KvmVcpu, Vm, VmOptions};
use hypervisor::{SystemEvent, Vcpu, VmExit};
use test_utils::a64::Assembler;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: usize = 1 << 20;
/// An unmapped address below RAM: guest stores there reach the host as MMIO writes.
const REPORT_ADDR: u64 = 0x0A00_0000;
/// A register the guest programs use as the report pointer.
const REPORT_REG: u32 = 9;
const ENTRY: u64 = RAM_BASE + 0x1000;
const CONTEXT_ID: u64 = 0xDEAD_C0DE_1234;

struct Guest {
    vm: Vm,
    vcpu: KvmVcpu,
}

impl Guest {
    fn new(system_suspend: bool, program: &Assembler) -> Self {
        Self::with_options(
            VmOptions {
                system_suspend,
                ..Default::default()
            },
            program,
        )
    }

    fn with_options(options: VmOptions, program: &Assembler) -> Self {
        let hypervisor = Hypervisor::new().expect("open /dev/kvm");
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE)]).unwrap();
        memory
            .write_slice(&program.to_bytes(), GuestAddress(RAM_BASE))
            .unwrap();
        let vm = Vm::new(&hypervisor, memory, options).expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU 0");
        vcpu.set_reg(regs::PC, RAM_BASE).unwrap();
        vcpu.set_reg(regs::PSTATE, regs::PSTATE_EL1H_DAIF_MASKED)
            .unwrap();
        Self { vm, vcpu }
    }

    /// Runs until the next exit that is not an MMIO write to the report address, collecting
    /// the reported values.
    fn run_collecting(&mut self, reports: &mut Vec<u64>) -> VmExit {
        loop {
            match self.vcpu.run().expect("KVM_RUN") {
                VmExit::MmioWrite { addr, data } if addr == REPORT_ADDR => {
                    reports.push(data.value())
                }
                VmExit::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl Guest {
    /// Runs until `count` values are reported in all (`None`), or another exit comes first.
    fn run_for_reports(&mut self, count: usize, reports: &mut Vec<u64>) -> Option<VmExit> {
        while reports.len() < count {
            match self.vcpu.run().expect("KVM_RUN") {
                VmExit::MmioWrite { addr, data } if addr == REPORT_ADDR => {
                    reports.push(data.value())
                }
                VmExit::Interrupted => {}
                other => return Some(other),
            }
        }
        None
    }
}

/// A program prologue that points the report register at the report address.
fn program() -> Assembler {
    let mut asm = Assembler::new();
    asm.mov_imm(REPORT_REG, REPORT_ADDR);
    asm
}

/// Calls PSCI_FEATURES(function) and reports the result.
fn report_features(asm: &mut Assembler, function: u32) {
    asm.psci_call(PSCI_FEATURES, &[u64::from(function)]);
    asm.str_x(0, REPORT_REG, 0);
}

fn halt(asm: &mut Assembler) {
    let here = asm.offset();
    asm.b_to(here);
}

#[test]
fn psci_system_off_gives_a_shutdown_exit() {
    test_utils::require_kvm!();
    let mut asm = program();
    asm.psci_call(SYSTEM_OFF, &[]);
    halt(&mut asm);
    let mut guest = Guest::new(false, &asm);
    let exit = guest.run_collecting(&mut Vec::new());
    assert!(
        matches!(exit, VmExit::SystemEvent(SystemEvent::Shutdown { .. })),
        "{exit:?}"
    );
}

#[test]
fn psci_system_reset_gives_a_reset_exit() {
    test_utils::require_kvm!();
    let mut asm = program();
    asm.psci_call(SYSTEM_RESET, &[]);
    halt(&mut asm);
    let mut guest = Guest::new(false, &asm);
    let exit = guest.run_collecting(&mut Vec::new());
    assert!(
        matches!(exit, VmExit::SystemEvent(SystemEvent::Reset { .. })),
        "{exit:?}"
    );
}

#[test]
fn with_the_cap_features_reports_system_suspend_and_the_call_exits_to_userspace() {
    test_utils::require_kvm!();
    let mut asm = program();
    report_features(&mut asm, SYSTEM_SUSPEND_64);
    report_features(&mut asm, SYSTEM_SUSPEND_32);
    asm.psci_call(SYSTEM_SUSPEND_64, &[ENTRY, CONTEXT_ID]);
    halt(&mut asm);
    let mut guest = Guest::new(true, &asm);
    assert!(
        guest.vm.system_suspend_enabled(),
        "host lacks KVM_CAP_ARM_SYSTEM_SUSPEND"
    );

    let mut reports = Vec::new();
    let exit = guest.run_collecting(&mut reports);
    let features: Vec<_> = reports.iter().map(|x0| PsciReturn::from_x0(*x0)).collect();
    assert_eq!(
        features,
        [Some(PsciReturn::Success), Some(PsciReturn::Success)]
    );
    assert_eq!(exit, VmExit::SystemEvent(SystemEvent::Suspend));
    // KVM leaves the call's registers in place for the VMM to decide.
    assert_eq!(
        guest.vcpu.reg(regs::xreg(0)).unwrap(),
        u64::from(SYSTEM_SUSPEND_64)
    );
    assert_eq!(guest.vcpu.reg(regs::xreg(1)).unwrap(), ENTRY);
    assert_eq!(guest.vcpu.reg(regs::xreg(2)).unwrap(), CONTEXT_ID);
}

#[test]
fn without_the_cap_features_and_the_call_return_not_supported() {
    test_utils::require_kvm!();
    let mut asm = program();
    report_features(&mut asm, SYSTEM_SUSPEND_64);
    report_features(&mut asm, SYSTEM_SUSPEND_32);
    asm.psci_call(SYSTEM_SUSPEND_64, &[ENTRY, CONTEXT_ID]);
    asm.str_x(0, REPORT_REG, 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    halt(&mut asm);
    let mut guest = Guest::new(false, &asm);
    assert!(!guest.vm.system_suspend_enabled());

    let mut reports = Vec::new();
    let exit = guest.run_collecting(&mut reports);
    let results: Vec<_> = reports.iter().map(|x0| PsciReturn::from_x0(*x0)).collect();
    assert_eq!(results, [Some(PsciReturn::NotSupported); 3]);
    assert!(
        matches!(exit, VmExit::SystemEvent(SystemEvent::Shutdown { .. })),
        "{exit:?}"
    );
}

/// The host kernel's `major.minor`, from `/proc/sys/kernel/osrelease` ("7.3.4+deb13-arm64").
fn host_kernel() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

const CPU_ON_64: u32 = 0xC400_0003;
const PSCI_VERSION: u32 = 0x8400_0000;
const SYSTEM_OFF2_64: u32 = 0xC400_0015;

#[test]
fn cpu_on_exits_to_userspace_when_forwarded_on_hosts_with_the_smccc_filter() {
    test_utils::require_kvm!();
    // CPU_ON for this very vCPU (MPIDR affinity 0): KVM itself would say ALREADY_ON.
    let mut asm = program();
    asm.psci_call(CPU_ON_64, &[0, ENTRY, CONTEXT_ID]);
    asm.str_x(0, REPORT_REG, 0);
    halt(&mut asm);
    let forward = &arch_aarch64::cpu_power::FORWARDED_RANGES;
    let mut guest = Guest::with_options(
        VmOptions {
            system_suspend: true,
            forward_smccc: forward,
        },
        &asm,
    );
    let mut reports = Vec::new();
    if host_kernel() < (6, 4) {
        // No filter before Linux 6.4: KVM answers, and the VM says so.
        assert!(!guest.vm.smccc_forwarded());
        assert_eq!(guest.run_for_reports(1, &mut reports), None);
        assert_eq!(PsciReturn::from_x0(reports[0]), Some(PsciReturn::AlreadyOn));
        return;
    }
    assert!(guest.vm.smccc_forwarded(), "a 6.4+ host must forward");
    let exit = guest.run_for_reports(1, &mut reports);
    assert_eq!(
        exit,
        Some(VmExit::Hypercall {
            function_id: u64::from(CPU_ON_64),
            smc: false
        })
    );
    assert!(reports.is_empty());
    assert_eq!(guest.vcpu.reg(regs::xreg(2)).unwrap(), ENTRY);
    assert_eq!(guest.vcpu.reg(regs::xreg(3)).unwrap(), CONTEXT_ID);
    // The VMM's answer is what the guest sees: the PC is already past the HVC.
    guest
        .vcpu
        .set_reg(regs::xreg(0), PsciReturn::OnPending.to_x0())
        .unwrap();
    assert_eq!(guest.run_for_reports(1, &mut reports), None);
    assert_eq!(
        reports.first().copied().and_then(PsciReturn::from_x0),
        Some(PsciReturn::OnPending)
    );
}

#[test]
fn the_psci_version_can_be_read_and_lowered_before_the_first_run() {
    test_utils::require_kvm!();
    let mut asm = program();
    asm.psci_call(PSCI_VERSION, &[]);
    asm.str_x(0, REPORT_REG, 0);
    asm.psci_call(SYSTEM_OFF2_64, &[0, 0]);
    asm.str_x(0, REPORT_REG, 0);
    halt(&mut asm);

    let mut guest = Guest::new(true, &asm);
    let offered = guest.vcpu.reg(regs::PSCI_VERSION).unwrap();
    let expected = if host_kernel() >= (6, 13) {
        0x1_0003
    } else {
        0x1_0001
    };
    assert_eq!(offered, expected, "KVM's default PSCI version on this host");
    guest.vcpu.set_reg(regs::PSCI_VERSION, 0x1_0000).unwrap();
    let mut reports = Vec::new();
    assert_eq!(guest.run_for_reports(2, &mut reports), None);
    // PSCI 1.0 has no SYSTEM_OFF2: KVM answers NOT_SUPPORTED instead of shutting down.
    assert_eq!(reports[0], 0x1_0000);
    assert_eq!(
        PsciReturn::from_x0(reports[1]),
        Some(PsciReturn::NotSupported)
    );
    // Above KVM's version: refused.
    let guest = Guest::new(true, &program());
    assert!(guest.vcpu.set_reg(regs::PSCI_VERSION, 0x1_0009).is_err());
}

#[test]
fn system_off2_is_a_shutdown_with_the_hibernation_flag_on_6_13_hosts() {
    test_utils::require_kvm!();
    let mut asm = program();
    // Type 0: what Linux passes, and what the PSCI 1.3 F.b spec allows for HIBERNATE_OFF.
    asm.psci_call(SYSTEM_OFF2_64, &[0, 0]);
    asm.str_x(0, REPORT_REG, 0);
    halt(&mut asm);
    let mut guest = Guest::new(true, &asm);
    let mut reports = Vec::new();
    let exit = guest.run_for_reports(1, &mut reports);
    if host_kernel() < (6, 13) {
        assert_eq!(exit, None);
        assert_eq!(
            PsciReturn::from_x0(reports[0]),
            Some(PsciReturn::NotSupported)
        );
        return;
    }
    match exit {
        Some(VmExit::SystemEvent(event)) => assert!(event.is_hibernation(), "{event:?}"),
        other => panic!("expected SYSTEM_OFF2's shutdown, got {other:?}"),
    }
}

/// A guest that makes no exit for `limit` is kicked out of `KVM_RUN`; the panic then says
/// where it was (PC, and the instruction there) instead of hanging the test.
fn run_or_explain(guest: &mut Guest, limit: std::time::Duration, reports: &mut Vec<u64>) -> VmExit {
    use hypervisor::VcpuKick;
    let kicker = guest.vcpu.kicker();
    kicker.bind_current_thread();
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let kicker = kicker.clone();
        std::thread::spawn(move || {
            if cancelled.recv_timeout(limit).is_err() {
                kicker.kick();
            }
        })
    };
    let exit = loop {
        match guest.vcpu.run().expect("KVM_RUN") {
            VmExit::MmioWrite { addr, data } if addr == REPORT_ADDR => reports.push(data.value()),
            VmExit::Interrupted => {
                let pc = guest.vcpu.reg(regs::PC).unwrap();
                let mut word = [0u8; 4];
                let _ = guest.vm.memory().read_slice(&mut word, GuestAddress(pc));
                panic!(
                    "no exit within {limit:?}: PC {pc:#x} ({:#010x}), PSTATE {:#x}, reports {reports:x?}",
                    u32::from_le_bytes(word),
                    guest.vcpu.reg(regs::PSTATE).unwrap()
                );
            }
            other => break other,
        }
    };
    let _ = cancel.send(());
    watchdog.join().unwrap();
    kicker.unbind_thread();
    exit
}

#[test]
fn vm_after_vm_in_one_process_each_runs_its_own_program() {
    test_utils::require_kvm!();
    // vmm builds a new VM at every guest reboot, in the same process.
    for round in 1..=4u64 {
        let mut asm = program();
        asm.mov_imm(0, round);
        asm.str_x(0, REPORT_REG, 0);
        asm.psci_call(SYSTEM_OFF, &[]);
        halt(&mut asm);
        let mut guest = Guest::new(true, &asm);
        let mut reports = Vec::new();
        let exit = run_or_explain(&mut guest, std::time::Duration::from_secs(20), &mut reports);
        assert_eq!(reports, [round], "round {round}");
        assert!(
            matches!(exit, VmExit::SystemEvent(SystemEvent::Shutdown { .. })),
            "round {round}: {exit:?}"
        );
    }
}
