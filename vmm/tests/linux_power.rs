//! `vm.info` polled every 10 ms while a 4-vCPU Linux guest runs 20 `rtcwake -m mem` cycles.
//!
//! No cycle may fail and no suspend may be refused as busy: a census is no reason to deny the
//! guest. When the VMM keeps the vCPU power states (a host with the SMCCC filter, Linux 6.4+),
//! no vCPU may be kicked either: neither the polls nor the suspend decisions stop the guest.
//! When KVM keeps them (Linux 6.1), every poll parks every vCPU for a census, and a
//! SYSTEM_SUSPEND arriving during one waits for it.
#![cfg(target_arch = "aarch64")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::guest::{self, Guest, field};
use vmm::events::{Denial, VmEventKind};
use vmm::{CpuPowerMode, VcpuPower};

const CYCLES: usize = 20;

/// A guest with `cpus` vCPUs that runs `cycles` suspends, each woken by an RTC alarm 3 s on.
fn rtc_woken_guest(name: &str, cycles: usize, cpus: u32) -> Guest {
    let scratch = guest::scratch(name);
    let config = guest::config(
        &scratch,
        "suspend-rtc",
        &format!("cycles={cycles} wake=3"),
        cpus,
        false,
    );
    Guest::start(config, scratch)
}

#[test]
fn vm_info_every_10_ms_does_not_disturb_20_suspend_cycles() {
    test_utils::require_kvm!();
    let guest = rtc_woken_guest("linux-power-", CYCLES, 4);
    guest.wait_console("@@guest mem_sleep", Duration::from_secs(120));

    let stop = Arc::new(AtomicBool::new(false));
    let (polls, last_kicks, unknown) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let handle = guest.handle.clone();
    let keeper = handle.info().cpu_power;
    let poller = {
        let (stop, polls, last_kicks, unknown) = (
            stop.clone(),
            polls.clone(),
            last_kicks.clone(),
            unknown.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let info = handle.info();
                if info.cpu_power.is_some() {
                    polls.fetch_add(1, Ordering::SeqCst);
                    last_kicks.store(info.vcpu_kicks, Ordering::SeqCst);
                    let lost = info.vcpus.iter().any(|v| v.power == VcpuPower::Unknown);
                    unknown.fetch_add(u64::from(lost), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut failed = 0;
    for cycle in 1..=CYCLES {
        let line = guest.wait_console(&format!("@@guest cycle={cycle} "), Duration::from_secs(120));
        if field(&line, "rc") != Some("0") {
            failed += 1;
        }
        assert_eq!(field(&line, "online"), Some("0-3"), "{line}");
    }
    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    guest.powers_off();

    let events = guest.events_so_far();
    let suspended = events
        .iter()
        .filter(|e| matches!(e, VmEventKind::Suspended { .. }))
        .count();
    let busy = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                VmEventKind::SuspendDenied {
                    reason: Denial::Busy,
                    ..
                }
            )
        })
        .count();
    let polls = polls.load(Ordering::SeqCst);
    let kicks = last_kicks.load(Ordering::SeqCst);
    eprintln!(
        "cpu power kept by {keeper:?}: {polls} polls, {kicks} kicks, {suspended} suspends, {failed} failed cycles, {busy} busy denials"
    );
    assert!(polls > 1000, "only {polls} polls");
    assert_eq!(unknown.load(Ordering::SeqCst), 0, "a census lost a vCPU");
    assert_eq!(failed, 0, "a cycle failed");
    assert_eq!(suspended, CYCLES);
    assert_eq!(busy, 0, "a suspend was refused as busy");
    match keeper {
        Some(CpuPowerMode::Vmm) => assert_eq!(kicks, 0, "a poll or a decision kicked a vCPU"),
        Some(CpuPowerMode::Kvm) => assert!(kicks > polls, "every census kicks the vCPUs"),
        other => panic!("the VM was not running: {other:?}"),
    }
}

/// Acceptance of the VMM keeping the power states with Linux itself: an 8-vCPU guest takes
/// its 7 secondaries down with CPU_OFF before each suspend, and the suspend is decided without
/// a kick. On the KVM path the decision kicks those 7 out of `KVM_RUN`.
#[test]
fn an_8_vcpu_linux_guest_suspends_with_its_secondaries_off_and_no_kick() {
    test_utils::require_kvm!();
    const CYCLES: usize = 2;
    let guest = rtc_woken_guest("linux-power-8-", CYCLES, 8);
    // Asked while the guest boots: on the KVM path its census must not meet a suspend.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let keeper = loop {
        match guest.handle.info().cpu_power {
            Some(keeper) => break Some(keeper),
            None if std::time::Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    guest.wait_console("@@guest mem_sleep", Duration::from_secs(180));
    // The suspend figures only: `info` would take a census on the KVM path, kicking itself.
    let stop = Arc::new(AtomicBool::new(false));
    let kicks = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, kicks, handle) = (stop.clone(), kicks.clone(), guest.handle.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(stats) = handle.suspend_stats() {
                    kicks.store(stats.vcpu_kicks, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    for cycle in 1..=CYCLES {
        let line = guest.wait_console(&format!("@@guest cycle={cycle} "), Duration::from_secs(180));
        assert_eq!(field(&line, "rc"), Some("0"), "{line}");
        assert_eq!(field(&line, "online"), Some("0-7"), "{line}");
    }
    guest.powers_off();
    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();

    let events = guest.events_so_far();
    let mut off_before_each_suspend = Vec::new();
    let mut off = 0;
    for event in &events {
        match event {
            VmEventKind::CpuOff { .. } => off += 1,
            VmEventKind::Suspended { .. } => off_before_each_suspend.push(std::mem::take(&mut off)),
            _ => {}
        }
    }
    let kicks = kicks.load(Ordering::SeqCst);
    eprintln!(
        "cpu power kept by {keeper:?}: CPU_OFFs before each suspend {off_before_each_suspend:?}, {kicks} kicks"
    );
    match keeper {
        Some(CpuPowerMode::Vmm) => {
            assert_eq!(off_before_each_suspend, [7; CYCLES]);
            assert_eq!(kicks, 0, "a suspend decision kicked a vCPU");
        }
        Some(CpuPowerMode::Kvm) => {
            assert_eq!(
                off_before_each_suspend, [0; CYCLES],
                "no CPU_OFF event on the KVM path"
            );
            assert!(kicks >= 7 * CYCLES as u64 + 7, "{kicks} kicks");
        }
        other => panic!("the VM was not running: {other:?}"),
    }
}
