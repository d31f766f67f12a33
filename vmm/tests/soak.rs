//! Soak: many suspend cycles in one VM, and the VMM's memory and descriptors stay flat.
//!
//! Not part of the default run (each test is `#[ignore]`d): `testbed run soak` runs them with
//! `--ignored` in the emulated arm64 host, where `VMM_TEST_KERNEL`, `VMM_TEST_INITRD` and
//! `VMM_TEST_ROOTFS` name the testbed's guest. The VMM is this process (the `vmm` library), so
//! its RSS and open descriptors are read from `/proc/self`.
#![cfg(target_arch = "aarch64")]

mod common;

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch_aarch64::psci::SYSTEM_SUSPEND_64;
use test_utils::a64::Assembler;
use test_utils::image::{CODE, kernel_image, write_kernel};
use test_utils::programs::timer_woken_suspends;
use vmm::events::{EventReceiver, VmEventKind};
use vmm::{Console, DiskConfig, ExitReason, Vm, VmConfig};
use vmm_sys_util::tempdir::TempDir;

use common::guest_file;

/// The most RSS a soak may add once it runs: far less than a leak per cycle would.
const RSS_SLACK_KIB: u64 = 2048;

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// This process's open file descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Counts suspends and resumes until the VM stops, sampling RSS and descriptors at the
/// `settle`-th resume and at the last one; returns (suspends, resumes, before, after) with
/// (RSS KiB, fds) pairs.
fn follow(
    events: &EventReceiver,
    settle: u64,
    limit: Duration,
) -> (u64, u64, (u64, usize), (u64, usize)) {
    let deadline = Instant::now() + limit;
    let (mut suspended, mut resumed) = (0, 0);
    let (mut before, mut after) = (None, None);
    // Until the stream ends with the VM: every event published before the exit is counted.
    loop {
        let event = match events.recv_timeout(Duration::from_millis(200)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                assert!(
                    Instant::now() < deadline,
                    "the soak did not end within {limit:?}"
                );
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match event.kind {
            VmEventKind::Suspended { .. } => suspended += 1,
            VmEventKind::Resumed { .. } => {
                resumed += 1;
                // Sampled while the VM runs: once it stops, its descriptors are closed.
                if resumed == settle {
                    before = Some((rss_kib(), open_fds()));
                } else if resumed > settle {
                    after = Some((rss_kib(), open_fds()));
                }
            }
            VmEventKind::SuspendDenied { reason, .. } => panic!("suspend denied: {reason:?}"),
            VmEventKind::Lagged { .. } => panic!("the soak fell behind its own events"),
            _ => {}
        }
    }
    (
        suspended,
        resumed,
        before.expect("never settled"),
        after.expect("no resume after settling"),
    )
}

fn report(name: &str, cycles: u64, before: (u64, usize), after: (u64, usize)) {
    println!(
        "@@soak {name} cycles={cycles} rss_kib_before={} rss_kib_after={} fds_before={} fds_after={}",
        before.0, after.0, before.1, after.1
    );
    assert_eq!(before.1, after.1, "descriptors leaked");
    assert!(
        after.0 <= before.0 + RSS_SLACK_KIB,
        "RSS grew from {} to {} KiB",
        before.0,
        after.0
    );
}

/// A guest that suspends `cycles` times, woken each time by its virtual timer about 8 ms
/// later, then powers off.
fn timer_suspend_loop(cycles: u64) -> Vec<u8> {
    let mut asm = Assembler::new();
    asm.mov_imm(0, cycles);
    let top = asm.offset();
    asm.append(&timer_woken_suspends(CODE + top));
    kernel_image(&asm, &[])
}

#[test]
#[ignore = "soak: run by `testbed run soak`"]
fn a_thousand_timer_woken_suspends_with_four_vcpus() {
    test_utils::require_kvm!();
    const CYCLES: u64 = 1000;
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("soak-bare-")).unwrap();
    let kernel = write_kernel(dir.as_path(), &timer_suspend_loop(CYCLES));
    let mut config = VmConfig::new(&kernel);
    config.cpus = 4;
    config.memory_mib = 64;
    let vm = Vm::new(config).unwrap().with_console(Console::Null);
    let events = vm.subscribe();
    let handle = vm.start().unwrap();
    let (suspended, resumed, before, after) = follow(&events, 10, Duration::from_secs(1200));
    let exit = handle.wait().unwrap();
    assert_eq!(exit, ExitReason::PowerOff);
    assert_eq!((suspended, resumed), (CYCLES, CYCLES));
    report("bare-metal-4cpu", CYCLES, before, after);
}

#[test]
#[ignore = "soak: run by `testbed run soak`"]
fn two_hundred_linux_suspends_with_four_vcpus_and_the_disk_busy() {
    test_utils::require_kvm!();
    const CYCLES: u64 = 200;
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("soak-linux-")).unwrap();
    let root = dir.as_path().join("rootfs.ext4");
    std::fs::copy(guest_file("VMM_TEST_ROOTFS"), &root).unwrap();
    let data = dir.as_path().join("data.img");
    std::fs::write(&data, vec![0u8; 64 << 20]).unwrap();
    let mut config = VmConfig::new(guest_file("VMM_TEST_KERNEL"));
    config.initramfs = Some(guest_file("VMM_TEST_INITRD"));
    config.cmdline = format!(
        "console=ttyS0 quiet panic=-1 root=/dev/vda rw vmmtest=disk-suspend cycles={CYCLES} seed=777 wake=3 retry=1"
    );
    config.cpus = 4;
    config.memory_mib = 256;
    config.disks = vec![
        DiskConfig {
            id: Some("root".into()),
            ..DiskConfig::new(&root)
        },
        DiskConfig {
            id: Some("data".into()),
            ..DiskConfig::new(&data)
        },
    ];
    let console: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let vm = Vm::new(config)
        .unwrap()
        .with_console(Console::Writer(console.clone()));
    let events = vm.subscribe();
    let handle = vm.start().unwrap();
    let (suspended, resumed, before, after) = follow(&events, 5, Duration::from_secs(2400));
    let exit = handle.wait().unwrap();
    let text = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("@@guest")).collect();
    let good = lines
        .iter()
        .filter(|line| line.contains("@@guest cycle=") && line.contains(" rc=0 "))
        .count() as u64;
    // Attempts the guest aborted itself never reached the VMM: they are retried, not counted.
    let aborted: Vec<&&str> = lines
        .iter()
        .filter(|line| line.contains("@@guest aborted"))
        .collect();
    let verify = lines
        .iter()
        .find(|line| line.contains("@@guest pattern-verify"))
        .unwrap_or(&"none");
    println!("{verify}");
    println!(
        "@@soak linux-aborted-attempts count={} {aborted:?}",
        aborted.len()
    );
    assert_eq!(exit, ExitReason::PowerOff);
    assert_eq!(
        (suspended, resumed, good),
        (CYCLES, CYCLES, CYCLES),
        "{lines:#?}"
    );
    assert!(verify.contains("ok=true"), "{verify}");
    report("linux-disk-4cpu", CYCLES, before, after);
}

#[test]
#[ignore = "soak: run by `testbed run soak`"]
fn a_subscriber_that_never_reads_while_the_guest_loops_on_refused_suspends() {
    test_utils::require_kvm!();
    use arch_aarch64::psci::CPU_ON_64;
    // vCPU 1 is started and spins, so every SYSTEM_SUSPEND of vCPU 0 is refused (DENIED):
    // four events and a log line per call, as fast as the guest can call.
    let mut asm = Assembler::new();
    asm.b_to(0); // patched below: over the spin loop
    let spin = asm.offset();
    asm.b_to(spin);
    let start = asm.offset();
    asm.patch_b(0, start);
    asm.psci_call(CPU_ON_64, &[1, CODE + spin, 0]);
    let again = asm.offset();
    asm.psci_call(SYSTEM_SUSPEND_64, &[CODE, 0]);
    asm.b_to(again);
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("soak-lag-")).unwrap();
    let kernel = write_kernel(dir.as_path(), &kernel_image(&asm, &[]));
    let mut config = VmConfig::new(&kernel);
    config.cpus = 2;
    config.memory_mib = 64;
    let vm = Vm::new(config).unwrap().with_console(Console::Null);
    let idle = vm.subscribe();
    let events = vm.subscribe();
    let handle = vm.start().unwrap();
    // Settle on the first refusals, then leave the idle subscriber alone for a minute.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused = 0u64;
    while refused < 100 {
        assert!(
            Instant::now() < deadline,
            "the guest did not loop on refusals"
        );
        if let Ok(event) = events.recv_timeout(Duration::from_millis(200)) {
            if let VmEventKind::SuspendDenied { .. } = event.kind {
                refused += 1;
            }
        }
    }
    drop(events);
    let before = (rss_kib(), open_fds());
    std::thread::sleep(Duration::from_secs(60));
    let after = (rss_kib(), open_fds());
    assert_eq!(handle.info().suspend_count, 0, "a suspend was accepted");
    handle.shutdown().unwrap();
    assert_eq!(handle.wait().unwrap(), ExitReason::Shutdown);
    let kept: Vec<VmEventKind> = idle.try_iter().map(|event| event.kind).collect();
    println!(
        "@@soak lagging-subscriber kept={} last={:?}",
        kept.len(),
        kept.last()
    );
    assert_eq!(kept.len(), vmm::events::EVENT_QUEUE_LIMIT + 1);
    assert!(matches!(kept.last(), Some(VmEventKind::Lagged { .. })));
    report("lagging-subscriber-60s", 0, before, after);
}
