//! Suspend-to-RAM with 1 and 4 vCPUs: 10 `rtcwake -m mem -s 2` cycles each. The guest must
//! offer `[deep]`, and every cycle must succeed, count in `suspend_stats` and bring every CPU
//! back, with the guest's log showing the deep entries and exits; the VMM must see each cycle
//! as one suspend and one resume that the RTC woke. Prints the VMM-side latencies from those
//! events, and the guest's round trip.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`,
//! whose init understands `vmmtest=suspend-rtc`); the testbed sets them.
#![cfg(target_arch = "aarch64")]

mod common;

use std::time::Duration;

use vmm::ExitReason;

use common::guest::{self, Guest, rtc_suspend_cycles, suspend_cycles, the_report};

const CYCLES: usize = 10;
/// rtcwake's alarm, in seconds.
const WAKE_S: u32 = 2;

fn rtc_wake_cycles(cpus: u32) {
    let scratch = guest::scratch("linux-suspend-");
    let mut config = guest::config(
        &scratch,
        "suspend-rtc",
        &format!("cycles={CYCLES} wake={WAKE_S}"),
        cpus,
        false,
    );
    // As `vmm` has it by default: the guest also resets virtio-rng around each suspend.
    config.rng = true;
    let guest = Guest::start(config, scratch);
    let (exit, events) = guest.run_to_end(Duration::from_secs(480));
    let reports = guest.reports();
    let (cycles, good) = suspend_cycles(&reports, cpus);
    // The guest's round trip minus its alarm: its own suspend and resume work, and the RTC's
    // one-second resolution.
    let overheads: Vec<f64> = cycles
        .iter()
        .map(|cycle| cycle.value::<f64>("t1") - cycle.value::<f64>("t0") - f64::from(WAKE_S))
        .collect();
    let mean = overheads.iter().sum::<f64>() / overheads.len().max(1) as f64;
    let max = overheads.iter().copied().fold(f64::NAN, f64::max);
    let mem_sleep = the_report(&reports, "mem_sleep").value::<String>("mem_sleep");
    let dmesg = the_report(&reports, "dmesg");
    println!(
        "linux-suspend-{cpus}cpu: exit {exit:?}, good cycles {good}/{CYCLES}, mem_sleep {mem_sleep}, dmesg deep entries {:?} exits {:?}, rtcwake overhead mean/max {mean:.2}/{max:.2} s",
        dmesg.get("entry_deep"),
        dmesg.get("exit")
    );
    assert_eq!(exit, ExitReason::PowerOff);
    assert_eq!(good, CYCLES, "{cycles:#?}");
    assert_eq!(cycles.len(), CYCLES, "{cycles:#?}");
    assert!(mem_sleep.contains("[deep]"), "{mem_sleep}");
    assert!(
        dmesg.value::<usize>("entry_deep") >= CYCLES,
        "{}",
        dmesg.line
    );
    assert!(dmesg.value::<usize>("exit") >= CYCLES, "{}", dmesg.line);
    let (suspend_us, resume_us) = rtc_suspend_cycles(&events, CYCLES);
    println!(
        "linux-suspend-{cpus}cpu: vmm suspend latency min/median/max {suspend_us} us, resume {resume_us} us"
    );
}

#[test]
fn ten_rtc_woken_suspend_cycles_with_1_vcpu() {
    test_utils::require_kvm!();
    rtc_wake_cycles(1);
}

#[test]
fn ten_rtc_woken_suspend_cycles_with_4_vcpus() {
    test_utils::require_kvm!();
    rtc_wake_cycles(4);
}
