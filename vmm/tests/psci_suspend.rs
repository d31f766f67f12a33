//! PSCI SYSTEM_SUSPEND through the `vmm` library, on real KVM: bare-metal guests of raw A64
//! code, like the kernel's `psci_test.c`, but booted by [`vmm::Vm`] with its GIC, RTC and UART.
//! The guest reports values over the UART as a tag byte and eight little-endian bytes.
#![cfg(target_arch = "aarch64")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch_aarch64::a64::{
    Assembler, CURRENT_EL, ICC_IGRPEN1_EL1, ICC_PMR_EL1, ICC_SRE_EL1, SCTLR_EL1,
};
use arch_aarch64::image::ImageHeader;
use arch_aarch64::layout::{GIC_DIST_BASE, RAM_START, RTC_BASE, UART_BASE};
use arch_aarch64::psci::{
    CPU_ON_64, PSCI_FEATURES, PsciReturn, SYSTEM_OFF, SYSTEM_SUSPEND_32, SYSTEM_SUSPEND_64,
};
use vmm::events::{VmEventKind, WakeSource};
use vmm::{Console, ExitReason, Vm, VmConfig};
use vmm_sys_util::tempdir::TempDir;

/// Where the kernel Image is loaded: RAM + 2 MiB.
const LOAD: u64 = RAM_START + 0x20_0000;
/// Offsets in the image of the resume entry point and the secondary's spin loop.
const RESUME_OFFSET: u64 = 0x800;
const SPIN_OFFSET: u64 = 0xC00;
const CONTEXT_ID: u64 = 0x0DEC_AF00_1234_5678;
const UART: u32 = 9;

/// Emits `tag` then the 8 bytes of `reg` on the UART (clobbers x15, x16).
fn report(asm: &mut Assembler, tag: u8, reg: u32) {
    asm.mov_imm(15, u64::from(tag));
    asm.strb(15, UART, 0);
    asm.mov(16, reg);
    for _ in 0..8 {
        asm.strb(16, UART, 0);
        asm.lsr_imm(16, 16, 8);
    }
}

/// Enables SPI `intid` in the distributor and the CPU interface, routed to vCPU 0.
fn enable_spi(asm: &mut Assembler, intid: u32) {
    asm.mov_imm(10, GIC_DIST_BASE);
    asm.mov_imm(11, 0x13); // GICD_CTLR: EnableGrp0 | EnableGrp1 | ARE
    asm.str_w(11, 10, 0);
    let bank = (intid / 32) * 4;
    asm.mov_imm(11, 1 << (intid % 32));
    asm.str_w(11, 10, 0x80 + bank); // GICD_IGROUPRn: group 1
    asm.str_w(11, 10, 0x100 + bank); // GICD_ISENABLERn
    asm.mov_imm(11, 7);
    asm.msr(ICC_SRE_EL1, 11);
    asm.isb();
    asm.mov_imm(11, 0xFF);
    asm.msr(ICC_PMR_EL1, 11);
    asm.mov_imm(11, 1);
    asm.msr(ICC_IGRPEN1_EL1, 11);
    asm.isb();
}

/// Arms the PL031 alarm two seconds ahead with its interrupt unmasked.
fn arm_rtc_alarm(asm: &mut Assembler) {
    asm.mov_imm(12, RTC_BASE);
    asm.ldr_w(13, 12, 0x00); // RTCDR
    asm.add_imm(13, 13, 2);
    asm.str_w(13, 12, 0x04); // RTCMR
    asm.mov_imm(14, 1);
    asm.str_w(14, 12, 0x10); // RTCIMSC
}

/// An arm64 Image: a header whose first instruction branches over it, `main` right after it,
/// then the resume code and a spin loop at fixed offsets.
fn image(main: &Assembler) -> Vec<u8> {
    let mut resume = Assembler::new();
    resume.mov(20, 0);
    resume.mov_imm(UART, UART_BASE);
    report(&mut resume, b'R', 20);
    resume.mrs(21, CURRENT_EL);
    report(&mut resume, b'C', 21);
    resume.mrs(22, SCTLR_EL1);
    report(&mut resume, b'M', 22);
    resume.psci_call(SYSTEM_OFF, &[]);
    let mut spin = Assembler::new();
    spin.b_to(0);

    let header = ImageHeader {
        text_offset: 0,
        image_size: 0x1_0000,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.resize(0x1000, 0);
    let code = main.to_bytes();
    assert!(64 + code.len() <= RESUME_OFFSET as usize, "main too long");
    bytes[64..64 + code.len()].copy_from_slice(&code);
    let code = resume.to_bytes();
    bytes[RESUME_OFFSET as usize..][..code.len()].copy_from_slice(&code);
    let code = spin.to_bytes();
    bytes[SPIN_OFFSET as usize..][..code.len()].copy_from_slice(&code);
    bytes
}

fn program() -> Assembler {
    let mut asm = Assembler::new();
    asm.mov_imm(UART, UART_BASE);
    asm
}

/// A guest's run: its reports, the VMM's events, and why it stopped.
struct Run {
    reports: Vec<(u8, u64)>,
    events: Vec<VmEventKind>,
    exit: ExitReason,
}

impl Run {
    fn report(&self, tag: u8) -> Option<u64> {
        self.reports
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, value)| *value)
    }
}

fn boot(name: &str, main: &Assembler, cpus: u32, suspend: bool) -> Run {
    let prefix = std::env::temp_dir().join(format!("psci-suspend-{name}-"));
    let dir = TempDir::new_with_prefix(prefix).unwrap();
    let kernel = dir.as_path().join("Image");
    std::fs::write(&kernel, image(main)).unwrap();
    let mut config = VmConfig::new(&kernel);
    config.cpus = cpus;
    config.memory_mib = 64;
    config.suspend = suspend;
    let output: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let vm = Vm::new(config)
        .expect("check the VM")
        .with_console(Console::Writer(output.clone()));
    let events = vm.subscribe();
    let handle = vm.start().expect("start the VM");
    let exit = handle
        .wait_timeout(Duration::from_secs(60))
        .expect("the guest did not power off within 60 s")
        .expect("the VM failed");
    let bytes = output.lock().unwrap().clone();
    assert_eq!(bytes.len() % 9, 0, "torn reports: {bytes:x?}");
    let reports = bytes
        .chunks(9)
        .map(|chunk| {
            (
                chunk[0],
                u64::from_le_bytes(chunk[1..9].try_into().unwrap()),
            )
        })
        .collect();
    Run {
        reports,
        events: events.try_iter().map(|event| event.kind).collect(),
        exit,
    }
}

/// Suspends with `function` and checks that the RTC alarm resumes the guest at the entry point,
/// in EL1 with the MMU off and the context id in x0.
fn suspend_and_wake_by_rtc(name: &str, function: u32, context_id: u64) {
    let mut asm = program();
    enable_spi(&mut asm, 32 + 2); // the PL031's SPI 2
    arm_rtc_alarm(&mut asm);
    asm.psci_call(function, &[LOAD + RESUME_OFFSET, context_id]);
    report(&mut asm, b'S', 0); // only reached if the call returned
    asm.psci_call(SYSTEM_OFF, &[]);
    let run = boot(name, &asm, 1, true);

    assert_eq!(run.exit, ExitReason::PowerOff);
    assert_eq!(
        run.report(b'S'),
        None,
        "SYSTEM_SUSPEND returned: {:?}",
        run.reports
    );
    assert_eq!(run.report(b'R'), Some(context_id), "x0 at the entry point");
    assert_eq!(
        run.report(b'C').map(|el| (el >> 2) & 3),
        Some(1),
        "CurrentEL"
    );
    assert_eq!(
        run.report(b'M').map(|sctlr| sctlr & 1),
        Some(0),
        "SCTLR_EL1.M"
    );
    assert!(
        run.events
            .iter()
            .any(|e| matches!(e, VmEventKind::Suspended { .. })),
        "{:?}",
        run.events
    );
    assert!(
        run.events.iter().any(|e| matches!(
            e,
            VmEventKind::Resumed {
                source: WakeSource::Rtc,
                ..
            }
        )),
        "{:?}",
        run.events
    );
}

#[test]
fn features_reports_system_suspend_only_when_enabled() {
    for (suspend, expected) in [
        (true, PsciReturn::Success),
        (false, PsciReturn::NotSupported),
    ] {
        let mut asm = program();
        for function in [SYSTEM_SUSPEND_64, SYSTEM_SUSPEND_32] {
            asm.psci_call(PSCI_FEATURES, &[u64::from(function)]);
            report(&mut asm, b'F', 0);
        }
        asm.psci_call(SYSTEM_OFF, &[]);
        let run = boot(&format!("features-{suspend}"), &asm, 1, suspend);
        let features: Vec<_> = run
            .reports
            .iter()
            .map(|(tag, x0)| (*tag, PsciReturn::from_x0(*x0)))
            .collect();
        assert_eq!(
            features,
            [(b'F', Some(expected)), (b'F', Some(expected))],
            "suspend={suspend}"
        );
    }
}

#[test]
fn suspend_64_resumes_at_the_entry_on_an_rtc_alarm() {
    suspend_and_wake_by_rtc("rtc64", SYSTEM_SUSPEND_64, CONTEXT_ID);
}

#[test]
fn suspend_32_uses_w1_and_w2() {
    // The upper halves of x1 and x2 must be ignored for the SMC32 function id.
    let mut asm = program();
    enable_spi(&mut asm, 32 + 2);
    arm_rtc_alarm(&mut asm);
    asm.psci_call(
        SYSTEM_SUSPEND_32,
        &[
            0xFFFF_0000_0000_0000 | (LOAD + RESUME_OFFSET),
            0xAAAA_0000_0000_0000 | 0x1234_5678,
        ],
    );
    report(&mut asm, b'S', 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    let run = boot("rtc32", &asm, 1, true);
    assert_eq!(run.report(b'S'), None, "{:?}", run.reports);
    assert_eq!(run.report(b'R'), Some(0x1234_5678));
}

#[test]
fn denied_while_a_secondary_started_with_cpu_on_is_on() {
    let mut asm = program();
    asm.psci_call(CPU_ON_64, &[1, LOAD + SPIN_OFFSET, 0]);
    report(&mut asm, b'O', 0);
    asm.psci_call(SYSTEM_SUSPEND_64, &[LOAD + RESUME_OFFSET, CONTEXT_ID]);
    report(&mut asm, b'S', 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    let run = boot("denied", &asm, 2, true);
    assert_eq!(run.exit, ExitReason::PowerOff);
    assert_eq!(
        run.report(b'O').and_then(PsciReturn::from_x0),
        Some(PsciReturn::Success)
    );
    assert_eq!(
        run.report(b'S').and_then(PsciReturn::from_x0),
        Some(PsciReturn::Denied)
    );
    assert_eq!(run.report(b'R'), None, "must not resume");
    assert!(
        run.events
            .iter()
            .any(|e| matches!(e, VmEventKind::SuspendDenied { .. })),
        "{:?}",
        run.events
    );
}

#[test]
fn invalid_address_for_an_entry_outside_ram() {
    let mut asm = program();
    asm.psci_call(SYSTEM_SUSPEND_64, &[0x1000, CONTEXT_ID]);
    report(&mut asm, b'S', 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    let run = boot("invalid", &asm, 1, true);
    assert_eq!(
        run.report(b'S').and_then(PsciReturn::from_x0),
        Some(PsciReturn::InvalidAddress)
    );
}
