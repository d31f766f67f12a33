//! Real-KVM tests: tiny guests of raw A64 code make PSCI calls through `hvc`, the way the
//! kernel's `psci_test.c` selftest does, and the host checks the exits and the results.
//! They need an arm64 host with `/dev/kvm`; the testbed runs them inside an emulated one.
#![cfg(target_arch = "aarch64")]

use arch_aarch64::psci::{
    PSCI_FEATURES, PsciReturn, SYSTEM_OFF, SYSTEM_RESET, SYSTEM_SUSPEND_32, SYSTEM_SUSPEND_64,
};
use std::time::Duration;

use arch_aarch64::layout::RAM_START;
use arch_aarch64::regs;
use hypervisor::kvm::KvmVmOptions;
use hypervisor::{SystemEvent, Vcpu, VmExit};
use test_utils::a64::Assembler;
use test_utils::guest::{BareMetal, REPORT_REG, reporting_program};
use test_utils::kvm::host_kernel;
use vm_memory::{Bytes, GuestAddress};

const ENTRY: u64 = RAM_START + 0x1000;
const CONTEXT_ID: u64 = 0xDEAD_C0DE_1234;
/// Far longer than any of these guests takes to exit, even under emulation.
const LIMIT: Duration = Duration::from_secs(20);

/// A one-vCPU VM running `program`, with SYSTEM_SUSPEND exits if `system_suspend`.
fn bare_metal(system_suspend: bool, program: &Assembler) -> BareMetal {
    let options = KvmVmOptions {
        system_suspend,
        ..Default::default()
    };
    BareMetal::new(options, program, 1)
}

/// Runs `guest` until its first exit that is not a report; returns the reports and the exit.
/// A guest that makes none within [`LIMIT`] fails the test, saying where it was (PC, and the
/// instruction there) instead of hanging it.
fn run_to_exit(guest: &mut BareMetal) -> (Vec<u64>, VmExit) {
    let (reports, exit) = guest.run(usize::MAX, LIMIT);
    match exit {
        Some(VmExit::Interrupted) | None => {
            let vcpu = &guest.vcpus[0];
            let pc = vcpu.reg(regs::PC).unwrap();
            let mut word = [0u8; 4];
            let _ = guest.vm.memory().read_slice(&mut word, GuestAddress(pc));
            panic!(
                "no exit within {LIMIT:?}: PC {pc:#x} ({:#010x}), PSTATE {:#x}, reports {reports:x?}",
                u32::from_le_bytes(word),
                vcpu.reg(regs::PSTATE).unwrap()
            );
        }
        Some(exit) => (reports, exit),
    }
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
    let mut asm = reporting_program();
    asm.psci_call(SYSTEM_OFF, &[]);
    halt(&mut asm);
    let mut guest = bare_metal(false, &asm);
    let (_, exit) = run_to_exit(&mut guest);
    assert!(
        matches!(exit, VmExit::SystemEvent(SystemEvent::Shutdown { .. })),
        "{exit:?}"
    );
}

#[test]
fn psci_system_reset_gives_a_reset_exit() {
    test_utils::require_kvm!();
    let mut asm = reporting_program();
    asm.psci_call(SYSTEM_RESET, &[]);
    halt(&mut asm);
    let mut guest = bare_metal(false, &asm);
    let (_, exit) = run_to_exit(&mut guest);
    assert!(
        matches!(exit, VmExit::SystemEvent(SystemEvent::Reset { .. })),
        "{exit:?}"
    );
}

#[test]
fn with_the_cap_features_reports_system_suspend_and_the_call_exits_to_userspace() {
    test_utils::require_kvm!();
    let mut asm = reporting_program();
    report_features(&mut asm, SYSTEM_SUSPEND_64);
    report_features(&mut asm, SYSTEM_SUSPEND_32);
    asm.psci_call(SYSTEM_SUSPEND_64, &[ENTRY, CONTEXT_ID]);
    halt(&mut asm);
    let mut guest = bare_metal(true, &asm);
    assert!(
        guest.vm.system_suspend_enabled(),
        "host lacks KVM_CAP_ARM_SYSTEM_SUSPEND"
    );

    let (reports, exit) = run_to_exit(&mut guest);
    let features: Vec<_> = reports.iter().map(|x0| PsciReturn::from_x0(*x0)).collect();
    assert_eq!(
        features,
        [Some(PsciReturn::Success), Some(PsciReturn::Success)]
    );
    assert_eq!(exit, VmExit::SystemEvent(SystemEvent::Suspend));
    // KVM leaves the call's registers in place for the VMM to decide.
    assert_eq!(
        guest.vcpus[0].reg(regs::xreg(0)).unwrap(),
        u64::from(SYSTEM_SUSPEND_64)
    );
    assert_eq!(guest.vcpus[0].reg(regs::xreg(1)).unwrap(), ENTRY);
    assert_eq!(guest.vcpus[0].reg(regs::xreg(2)).unwrap(), CONTEXT_ID);
}

#[test]
fn without_the_cap_features_and_the_call_return_not_supported() {
    test_utils::require_kvm!();
    let mut asm = reporting_program();
    report_features(&mut asm, SYSTEM_SUSPEND_64);
    report_features(&mut asm, SYSTEM_SUSPEND_32);
    asm.psci_call(SYSTEM_SUSPEND_64, &[ENTRY, CONTEXT_ID]);
    asm.str_x(0, REPORT_REG, 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    halt(&mut asm);
    let mut guest = bare_metal(false, &asm);
    assert!(!guest.vm.system_suspend_enabled());

    let (reports, exit) = run_to_exit(&mut guest);
    let results: Vec<_> = reports.iter().map(|x0| PsciReturn::from_x0(*x0)).collect();
    assert_eq!(results, [Some(PsciReturn::NotSupported); 3]);
    assert!(
        matches!(exit, VmExit::SystemEvent(SystemEvent::Shutdown { .. })),
        "{exit:?}"
    );
}

const CPU_ON_64: u32 = 0xC400_0003;
const PSCI_VERSION: u32 = 0x8400_0000;
const SYSTEM_OFF2_64: u32 = 0xC400_0015;

#[test]
fn cpu_on_exits_to_userspace_when_forwarded_on_hosts_with_the_smccc_filter() {
    test_utils::require_kvm!();
    // CPU_ON for this very vCPU (MPIDR affinity 0): KVM itself would say ALREADY_ON.
    let mut asm = reporting_program();
    asm.psci_call(CPU_ON_64, &[0, ENTRY, CONTEXT_ID]);
    asm.str_x(0, REPORT_REG, 0);
    halt(&mut asm);
    let forward = &arch_aarch64::cpu_power::FORWARDED_RANGES;
    let options = KvmVmOptions {
        system_suspend: true,
        forward_smccc: forward,
    };
    let mut guest = BareMetal::new(options, &asm, 1);
    if host_kernel() < (6, 4) {
        // No filter before Linux 6.4: KVM answers, and the VM says so.
        assert!(!guest.vm.smccc_forwarded());
        let (reports, exit) = guest.run(1, LIMIT);
        assert_eq!(exit, None);
        assert_eq!(PsciReturn::from_x0(reports[0]), Some(PsciReturn::AlreadyOn));
        return;
    }
    assert!(guest.vm.smccc_forwarded(), "a 6.4+ host must forward");
    let (reports, exit) = guest.run(1, LIMIT);
    assert_eq!(
        exit,
        Some(VmExit::Hypercall {
            function_id: u64::from(CPU_ON_64),
            smc: false
        })
    );
    assert!(reports.is_empty());
    assert_eq!(guest.vcpus[0].reg(regs::xreg(2)).unwrap(), ENTRY);
    assert_eq!(guest.vcpus[0].reg(regs::xreg(3)).unwrap(), CONTEXT_ID);
    // The VMM's answer is what the guest sees: the PC is already past the HVC.
    guest.vcpus[0]
        .set_reg(regs::xreg(0), PsciReturn::OnPending.to_x0())
        .unwrap();
    let (reports, exit) = guest.run(1, LIMIT);
    assert_eq!(exit, None);
    assert_eq!(
        reports.first().copied().and_then(PsciReturn::from_x0),
        Some(PsciReturn::OnPending)
    );
}

#[test]
fn the_psci_version_can_be_read_and_lowered_before_the_first_run() {
    test_utils::require_kvm!();
    let mut asm = reporting_program();
    asm.psci_call(PSCI_VERSION, &[]);
    asm.str_x(0, REPORT_REG, 0);
    asm.psci_call(SYSTEM_OFF2_64, &[0, 0]);
    asm.str_x(0, REPORT_REG, 0);
    halt(&mut asm);

    let mut guest = bare_metal(true, &asm);
    let offered = guest.vcpus[0].reg(regs::PSCI_VERSION).unwrap();
    let expected = if host_kernel() >= (6, 13) {
        0x1_0003
    } else {
        0x1_0001
    };
    assert_eq!(offered, expected, "KVM's default PSCI version on this host");
    guest.vcpus[0]
        .set_reg(regs::PSCI_VERSION, 0x1_0000)
        .unwrap();
    let (reports, exit) = guest.run(2, LIMIT);
    assert_eq!(exit, None);
    // PSCI 1.0 has no SYSTEM_OFF2: KVM answers NOT_SUPPORTED instead of shutting down.
    assert_eq!(reports[0], 0x1_0000);
    assert_eq!(
        PsciReturn::from_x0(reports[1]),
        Some(PsciReturn::NotSupported)
    );
    // Above KVM's version: refused.
    let guest = bare_metal(true, &reporting_program());
    assert!(
        guest.vcpus[0]
            .set_reg(regs::PSCI_VERSION, 0x1_0009)
            .is_err()
    );
}

#[test]
fn system_off2_is_a_shutdown_with_the_hibernation_flag_on_6_13_hosts() {
    test_utils::require_kvm!();
    let mut asm = reporting_program();
    // Type 0: what Linux passes, and what the PSCI 1.3 F.b spec allows for HIBERNATE_OFF.
    asm.psci_call(SYSTEM_OFF2_64, &[0, 0]);
    asm.str_x(0, REPORT_REG, 0);
    halt(&mut asm);
    let mut guest = bare_metal(true, &asm);
    let (reports, exit) = guest.run(1, LIMIT);
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

#[test]
fn vm_after_vm_in_one_process_each_runs_its_own_program() {
    test_utils::require_kvm!();
    // vmm builds a new VM at every guest reboot, in the same process.
    for round in 1..=4u64 {
        let mut asm = reporting_program();
        asm.mov_imm(0, round);
        asm.str_x(0, REPORT_REG, 0);
        asm.psci_call(SYSTEM_OFF, &[]);
        halt(&mut asm);
        let mut guest = bare_metal(true, &asm);
        let (reports, exit) = run_to_exit(&mut guest);
        assert_eq!(reports, [round], "round {round}");
        assert!(
            matches!(exit, VmExit::SystemEvent(SystemEvent::Shutdown { .. })),
            "round {round}: {exit:?}"
        );
    }
}
