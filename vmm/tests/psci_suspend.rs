//! PSCI SYSTEM_SUSPEND through the `vmm` library, on real KVM: bare-metal guests of raw A64
//! code, like the kernel's `psci_test.c`, but booted by [`vmm::Vm`] with its GIC, RTC and UART.
//! The guest reports values over the UART as a tag byte and eight little-endian bytes. The
//! last test is a hostile virtio driver: it hands the virtio-blk device malformed chains.
#![cfg(target_arch = "aarch64")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch_aarch64::layout::{GIC_DIST_BASE, RTC_BASE, UART_BASE, VIRTIO_MMIO_BASE};
use arch_aarch64::psci::{
    AFFINITY_INFO_64, CPU_OFF, CPU_ON_64, PSCI_FEATURES, PsciReturn, SYSTEM_OFF, SYSTEM_SUSPEND_32,
    SYSTEM_SUSPEND_64,
};
use test_utils::a64::{Assembler, CURRENT_EL, SCTLR_EL1};
use test_utils::image::{LOAD, kernel_image, write_kernel};
use test_utils::kvm::host_kernel;
use vmm::events::{VmEventKind, WakeSource};
use vmm::{Console, CpuPowerMode, DiskConfig, ExitReason, Vm, VmConfig, VmInfo, VmState};
use vmm_sys_util::tempdir::TempDir;

/// Offsets in the image of the resume entry point, the secondary's spin loop, and a secondary
/// entry that calls CPU_OFF at once.
const RESUME_OFFSET: u64 = 0x800;
const SPIN_OFFSET: u64 = 0xC00;
const OFF_OFFSET: u64 = 0xD00;
/// Both ways of keeping the vCPU power states: every PSCI test passes in each. `Auto` is the
/// VMM on a host with the SMCCC filter (Linux 6.4+), KVM before.
const MODES: [CpuPowerMode; 2] = [CpuPowerMode::Auto, CpuPowerMode::Kvm];
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
    asm.enable_gic_cpu_interface(11, 0xFF);
}

/// Arms the PL031 alarm two seconds ahead with its interrupt unmasked.
fn arm_rtc_alarm(asm: &mut Assembler) {
    asm.mov_imm(12, RTC_BASE);
    let arm = asm.offset();
    asm.ldr_w(13, 12, 0x00); // RTCDR
    asm.add_imm(13, 13, 2);
    asm.str_w(13, 12, 0x04); // RTCMR
    // A PL031 match fires when the counter reaches MR, so an MR the counter has already
    // passed fires only after the counter wraps: if the vCPU was held off for 2 s between the
    // read and the write (a loaded emulated host), arm again.
    asm.ldr_w(15, 12, 0x00);
    asm.sub(15, 13, 15); // MR - counter, negative once the counter is past MR
    asm.lsr_imm(15, 15, 63);
    asm.cbnz_to(15, arm);
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
    let mut off = Assembler::new();
    off.psci_call(CPU_OFF, &[]);
    // CPU_OFF does not return; if it did, say so on the UART.
    off.mov_imm(UART, UART_BASE);
    report(&mut off, b'X', 0);
    let here = off.offset();
    off.b_to(here);

    kernel_image(
        main,
        &[
            (RESUME_OFFSET, &resume),
            (SPIN_OFFSET, &spin),
            (OFF_OFFSET, &off),
        ],
    )
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
    /// What `vm.info` says once the VM has stopped: the last boot's final figures.
    info: VmInfo,
}

/// Whether `mode` has the VMM keep the power states on this host.
fn vmm_keeps_power(mode: CpuPowerMode) -> bool {
    match mode {
        CpuPowerMode::Kvm => false,
        CpuPowerMode::Vmm => true,
        CpuPowerMode::Auto => host_kernel() >= (6, 4),
    }
}

impl Run {
    fn report(&self, tag: u8) -> Option<u64> {
        self.reports
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, value)| *value)
    }
}

/// The guest's UART reports: a tag byte and 8 little-endian bytes each; a torn last one is left
/// out.
fn parse_reports(bytes: &[u8]) -> Vec<(u8, u64)> {
    bytes
        .chunks_exact(9)
        .map(|chunk| (chunk[0], u64::from_le_bytes(chunk[1..].try_into().unwrap())))
        .collect()
}

fn boot(name: &str, main: &Assembler, cpus: u32, suspend: bool) -> Run {
    boot_with(name, main, cpus, suspend, CpuPowerMode::Auto)
}

fn boot_with(name: &str, main: &Assembler, cpus: u32, suspend: bool, mode: CpuPowerMode) -> Run {
    let prefix = std::env::temp_dir().join(format!("psci-suspend-{name}-{mode:?}-"));
    let dir = TempDir::new_with_prefix(prefix).unwrap();
    let kernel = write_kernel(dir.as_path(), &image(main));
    let mut config = VmConfig::new(&kernel);
    config.cpus = cpus;
    config.memory_mib = 64;
    config.suspend = suspend;
    config.cpu_power = mode;
    let output: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let vm = Vm::new(config)
        .expect("check the VM")
        .with_console(Console::Writer(output.clone()));
    let events = vm.subscribe();
    let handle = vm.start().expect("start the VM");
    // Never `info` while it runs: its census would itself kick the vCPUs on the KVM path.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = handle.wait_timeout(Duration::from_millis(20)) {
            break exit.expect("the VM failed");
        }
        if std::time::Instant::now() >= deadline {
            // Where it stopped: the guest's reports, the VMM's events and states (the census
            // kicks the vCPUs, which no longer matters).
            let reports = parse_reports(&output.lock().unwrap());
            let events: Vec<VmEventKind> = events.try_iter().map(|event| event.kind).collect();
            panic!(
                "{mode:?}: the guest did not power off within 60 s\nreports: {reports:x?}\n\
                 events: {events:?}\nstats: {:?}\ninfo: {:?}",
                handle.suspend_stats(),
                handle.info()
            );
        }
    };
    let bytes = output.lock().unwrap().clone();
    assert_eq!(bytes.len() % 9, 0, "torn reports: {bytes:x?}");
    let reports = parse_reports(&bytes);
    Run {
        reports,
        events: events.try_iter().map(|event| event.kind).collect(),
        exit,
        info: handle.info(),
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
    for mode in MODES {
        let run = boot_with(name, &asm, 1, true, mode);

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
        // The stopped VM still tells what its boot did.
        let info = &run.info;
        assert_eq!(info.state, VmState::Stopped);
        assert_eq!(info.suspend_count, 1);
        assert_eq!(info.last_wake_source, Some(WakeSource::Rtc));
        assert!(info.last_resume_latency_us.is_some(), "{info:?}");
    }
}

#[test]
fn features_reports_system_suspend_only_when_enabled() {
    test_utils::require_kvm!();
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
    test_utils::require_kvm!();
    suspend_and_wake_by_rtc("rtc64", SYSTEM_SUSPEND_64, CONTEXT_ID);
}

#[test]
fn suspend_32_uses_w1_and_w2() {
    test_utils::require_kvm!();
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
    for mode in MODES {
        let run = boot_with("rtc32", &asm, 1, true, mode);
        assert_eq!(run.report(b'S'), None, "{:?}", run.reports);
        assert_eq!(run.report(b'R'), Some(0x1234_5678));
    }
}

#[test]
fn denied_while_a_secondary_started_with_cpu_on_is_on() {
    test_utils::require_kvm!();
    let mut asm = program();
    asm.psci_call(CPU_ON_64, &[1, LOAD + SPIN_OFFSET, 0]);
    report(&mut asm, b'O', 0);
    asm.psci_call(SYSTEM_SUSPEND_64, &[LOAD + RESUME_OFFSET, CONTEXT_ID]);
    report(&mut asm, b'S', 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    for mode in MODES {
        let run = boot_with("denied", &asm, 2, true, mode);
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
        let started = VmEventKind::CpuOn { vcpu: 0, target: 1 };
        assert_eq!(
            run.events.contains(&started),
            vmm_keeps_power(mode),
            "{mode:?}: {:?}",
            run.events
        );
    }
}

/// Acceptance of the VMM keeping the power states: 8 vCPUs, 7 started and then OFF again by
/// CPU_OFF (as Linux's suspend takes its secondaries down), and the suspend is decided
/// without kicking any vCPU. On the KVM path the same guest suspends too, but the decision
/// kicks the 7 secondaries out of `KVM_RUN` to read their MP states.
#[test]
fn seven_secondaries_off_again_and_the_suspend_is_decided_without_a_kick() {
    test_utils::require_kvm!();
    let mut asm = program();
    enable_spi(&mut asm, 32 + 2);
    // CPU_ON vCPUs 1..=7 at the CPU_OFF entry, reporting each result.
    asm.mov_imm(19, 1);
    let start_next = asm.offset();
    asm.mov_imm(0, u64::from(CPU_ON_64));
    asm.mov(1, 19);
    asm.mov_imm(2, LOAD + OFF_OFFSET);
    asm.mov_imm(3, 0);
    asm.hvc(0);
    report(&mut asm, b'O', 0);
    asm.add_imm(19, 19, 1);
    asm.sub_imm(20, 19, 8);
    asm.cbnz_to(20, start_next);
    // Wait for each to be OFF (AFFINITY_INFO = 1), as Linux's cpu_kill does.
    asm.mov_imm(19, 1);
    let poll = asm.offset();
    asm.mov_imm(0, u64::from(AFFINITY_INFO_64));
    asm.mov(1, 19);
    asm.mov_imm(2, 0);
    asm.hvc(0);
    asm.sub_imm(0, 0, 1);
    asm.cbnz_to(0, poll);
    asm.add_imm(19, 19, 1);
    asm.sub_imm(20, 19, 8);
    asm.cbnz_to(20, poll);
    arm_rtc_alarm(&mut asm);
    asm.psci_call(SYSTEM_SUSPEND_64, &[LOAD + RESUME_OFFSET, CONTEXT_ID]);
    report(&mut asm, b'S', 0);
    asm.psci_call(SYSTEM_OFF, &[]);

    for mode in MODES {
        let run = boot_with("eight", &asm, 8, true, mode);
        assert_eq!(run.exit, ExitReason::PowerOff);
        let started: Vec<_> = run
            .reports
            .iter()
            .filter(|(tag, _)| *tag == b'O')
            .map(|(_, x0)| PsciReturn::from_x0(*x0))
            .collect();
        assert_eq!(started, [Some(PsciReturn::Success); 7], "{mode:?}");
        assert_eq!(run.report(b'X'), None, "a CPU_OFF returned");
        assert_eq!(run.report(b'S'), None, "{mode:?}: {:?}", run.reports);
        assert_eq!(run.report(b'R'), Some(CONTEXT_ID), "{mode:?}");
        let count =
            |wanted: fn(&VmEventKind) -> bool| run.events.iter().filter(|e| wanted(e)).count();
        let suspended = run
            .events
            .iter()
            .position(|e| matches!(e, VmEventKind::Suspended { .. }))
            .unwrap_or_else(|| panic!("{mode:?}: not suspended: {:?}", run.events));
        if vmm_keeps_power(mode) {
            assert_eq!(count(|e| matches!(e, VmEventKind::CpuOn { .. })), 7);
            assert_eq!(count(|e| matches!(e, VmEventKind::CpuOff { .. })), 7);
            let last_off = run
                .events
                .iter()
                .rposition(|e| matches!(e, VmEventKind::CpuOff { .. }))
                .unwrap();
            assert!(last_off < suspended, "{:?}", run.events);
            assert_eq!(run.info.vcpu_kicks, 0, "the VMM kicked a vCPU to decide");
        } else {
            assert_eq!(count(|e| matches!(e, VmEventKind::CpuOn { .. })), 0);
            assert!(
                run.info.vcpu_kicks >= 7,
                "KVM path: {} kicks",
                run.info.vcpu_kicks
            );
        }
    }
}

#[test]
fn cpu_on_answers_already_on_and_invalid_parameters() {
    test_utils::require_kvm!();
    let mut asm = program();
    asm.psci_call(CPU_ON_64, &[0, LOAD + SPIN_OFFSET, 0]);
    report(&mut asm, b'A', 0);
    asm.psci_call(CPU_ON_64, &[9, LOAD + SPIN_OFFSET, 0]);
    report(&mut asm, b'I', 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    for mode in MODES {
        let run = boot_with("cpu-on", &asm, 2, true, mode);
        let code = |tag| run.report(tag).and_then(PsciReturn::from_x0);
        assert_eq!(code(b'A'), Some(PsciReturn::AlreadyOn), "{mode:?}");
        assert_eq!(code(b'I'), Some(PsciReturn::InvalidParameters), "{mode:?}");
    }
}

#[test]
fn invalid_address_for_an_entry_outside_ram() {
    test_utils::require_kvm!();
    let mut asm = program();
    asm.psci_call(SYSTEM_SUSPEND_64, &[0x1000, CONTEXT_ID]);
    report(&mut asm, b'S', 0);
    asm.psci_call(SYSTEM_OFF, &[]);
    for mode in MODES {
        let run = boot_with("invalid", &asm, 1, true, mode);
        assert_eq!(
            run.report(b'S').and_then(PsciReturn::from_x0),
            Some(PsciReturn::InvalidAddress)
        );
    }
}

/// A hostile virtio driver on real KVM: a looping chain, a buffer beyond RAM and one in the
/// GIC's MMIO frame each get a used entry (with IOERR where a status byte can be found), a
/// good request next to them is served, and vmm keeps running.
#[test]
fn malformed_virtio_chains_get_errors_and_vmm_keeps_running() {
    test_utils::require_kvm!();
    // Queue and buffers inside the loaded image, above the code.
    const QUEUE: u64 = LOAD + 0x2000;
    const AVAIL: u64 = QUEUE + 0x100;
    const USED: u64 = QUEUE + 0x200;
    const HEADER: u64 = LOAD + 0x3000;
    const STATUS: u64 = LOAD + 0x3100; // one byte per chain: A, B, C, D
    const DATA_A: u64 = LOAD + 0x3200;
    const DATA_C: u64 = LOAD + 0x3400;
    const BEYOND_RAM: u64 = 0x1_0000_0000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let virtio = VIRTIO_MMIO_BASE;

    let mut asm = program();
    asm.mov_imm(1, virtio);
    let reg = |asm: &mut Assembler, offset: u32, value: u64| {
        asm.mov_imm(2, value);
        asm.str_w(2, 1, offset);
    };
    // Reset, ACKNOWLEDGE, DRIVER, VERSION_1 (feature bit 32), FEATURES_OK.
    reg(&mut asm, 0x70, 0);
    reg(&mut asm, 0x70, 1);
    reg(&mut asm, 0x70, 3);
    reg(&mut asm, 0x24, 1);
    reg(&mut asm, 0x20, 1);
    reg(&mut asm, 0x24, 0);
    reg(&mut asm, 0x20, 0);
    reg(&mut asm, 0x70, 0xB);
    // Queue 0: 16 entries on the rings above; ready; DRIVER_OK; notify.
    reg(&mut asm, 0x30, 0);
    reg(&mut asm, 0x38, 16);
    for (low, addr) in [(0x80, QUEUE), (0x90, AVAIL), (0xA0, USED)] {
        reg(&mut asm, low, addr & 0xFFFF_FFFF);
        reg(&mut asm, low + 4, addr >> 32);
    }
    reg(&mut asm, 0x44, 1);
    reg(&mut asm, 0x70, 0xF);
    reg(&mut asm, 0x50, 0);
    // Wait until the device has used all four chains.
    asm.mov_imm(3, USED);
    let poll = asm.offset();
    asm.ldr_w(4, 3, 0);
    asm.lsr_imm(4, 4, 16);
    asm.sub_imm(4, 4, 4);
    asm.cbnz_to(4, poll);
    for entry in 0..4u32 {
        asm.ldr_w(5, 3, 4 + 8 * entry);
        report(&mut asm, b'0' + entry as u8, 5);
        asm.ldr_w(5, 3, 8 + 8 * entry);
        report(&mut asm, b'a' + entry as u8, 5);
    }
    asm.mov_imm(6, STATUS);
    asm.ldr_w(5, 6, 0);
    report(&mut asm, b'S', 5);
    asm.mov_imm(6, DATA_C);
    asm.ldr_x(5, 6, 0);
    report(&mut asm, b'D', 5);
    let spin = asm.offset();
    asm.wfi();
    asm.b_to(spin);

    let mut bytes = image(&asm);
    bytes.resize(0x4000, 0);
    let mut put = |addr: u64, data: &[u8]| {
        let at = (addr - LOAD) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
    };
    let descriptors: [(u64, u32, u16, u16); 12] = [
        // A: header -> data -> status -> data -> status ... (1 and 2 loop)
        (HEADER, 16, NEXT, 1),
        (DATA_A, 512, NEXT | WRITE, 2),
        (STATUS, 1, NEXT | WRITE, 1),
        // B: a data buffer beyond RAM
        (HEADER, 16, NEXT, 4),
        (BEYOND_RAM, 512, NEXT | WRITE, 5),
        (STATUS + 1, 1, WRITE, 0),
        // C: a good read of sector 0
        (HEADER, 16, NEXT, 7),
        (DATA_C, 512, NEXT | WRITE, 8),
        (STATUS + 2, 1, WRITE, 0),
        // D: a data buffer on the GIC distributor's MMIO frame
        (HEADER, 16, NEXT, 10),
        (GIC_DIST_BASE, 512, NEXT | WRITE, 11),
        (STATUS + 3, 1, WRITE, 0),
    ];
    for (index, (addr, len, flags, next)) in descriptors.into_iter().enumerate() {
        let mut raw = addr.to_le_bytes().to_vec();
        raw.extend(len.to_le_bytes());
        raw.extend(flags.to_le_bytes());
        raw.extend(next.to_le_bytes());
        put(QUEUE + 16 * index as u64, &raw);
    }
    // avail: flags, idx 4, ring [A, B, D, C].
    put(AVAIL, &[0, 0, 4, 0, 0, 0, 3, 0, 9, 0, 6, 0]);
    // header: VIRTIO_BLK_T_IN, sector 0.
    put(HEADER, &[0; 16]);
    put(STATUS, &[0xEE; 4]);

    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("virtio-hostile-")).unwrap();
    let kernel = dir.as_path().join("Image");
    std::fs::write(&kernel, &bytes).unwrap();
    let disk = dir.as_path().join("disk.img");
    let pattern: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &pattern).unwrap();
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.rng = false;
    config.disks = vec![DiskConfig::new(&disk)];
    let output: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let vm = Vm::new(config)
        .unwrap()
        .with_console(Console::Writer(output.clone()));
    let handle = vm.start().unwrap();
    // 10 reports of 9 bytes; only a deadlock or a crashed device takes 60 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while output.lock().unwrap().len() < 90 {
        assert!(
            std::time::Instant::now() < deadline && !handle.has_exited(),
            "the guest did not see its four chains used: {:x?}, exit {:?}",
            output.lock().unwrap(),
            handle.wait_timeout(Duration::ZERO)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reports: Vec<(u8, u64)> = output.lock().unwrap()[..90]
        .chunks(9)
        .map(|chunk| {
            (
                chunk[0],
                u64::from_le_bytes(chunk[1..9].try_into().unwrap()),
            )
        })
        .collect();
    let value = |tag: u8| reports.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    // Used entries in order: A (loop: no status found, length 0), B and D (IOERR written:
    // length 1), C (512 bytes read plus the status byte).
    let used: Vec<(Option<u64>, Option<u64>)> = (0..4u8)
        .map(|entry| (value(b'0' + entry), value(b'a' + entry)))
        .collect();
    assert_eq!(
        used,
        [
            (Some(0), Some(0)),
            (Some(3), Some(1)),
            (Some(9), Some(1)),
            (Some(6), Some(513))
        ]
    );
    // Status bytes A..D: A untouched, B IOERR, C OK, D IOERR.
    assert_eq!(value(b'S'), Some(0x01_00_01_EE));
    assert_eq!(
        value(b'D'),
        Some(u64::from_le_bytes(pattern[..8].try_into().unwrap()))
    );
    let device = handle.info().devices.remove(0);
    assert_eq!((device.stats.requests, device.stats.errors), (4, 3));
    assert_eq!(handle.state(), vmm::VmState::Running);
    handle.shutdown().unwrap();
    let exit = handle
        .wait_timeout(Duration::from_secs(60))
        .expect("vmm did not stop")
        .unwrap();
    assert_eq!(exit, ExitReason::Shutdown);
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        pattern,
        "the image was written"
    );
}
