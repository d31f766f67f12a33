//! Debian's arm64 kernel boots with 1 and 4 vCPUs: the guest's init sees every CPU and a PL031
//! clock within a minute of the host's, then `poweroff -f` ends the VM as a power-off.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`,
//! whose init understands `vmmtest=boot`); the testbed sets them.
#![cfg(target_arch = "aarch64")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vmm::ExitReason;

use common::guest::{self, Guest, the_report};

fn boots_and_powers_off(cpus: u32) {
    let scratch = guest::scratch("linux-boot-");
    let mut config = guest::config(&scratch, "boot", "", cpus, false);
    // As `vmm` has it by default.
    config.rng = true;
    let guest = Guest::start(config, scratch);
    let (exit, _) = guest.run_to_end(Duration::from_secs(120));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let reports = guest.reports();
    let init = the_report(&reports, "init");
    let skew = init.value::<u64>("rtc").abs_diff(now.as_secs());
    println!(
        "linux-boot-{cpus}cpu: exit {exit:?}, nproc {:?}, rtc skew {skew} s, guest uptime at init {:?} s",
        init.get("nproc"),
        init.get("uptime")
    );
    assert_eq!(exit, ExitReason::PowerOff);
    assert_eq!(init.value::<u32>("nproc"), cpus, "{}", init.line);
    assert!(skew <= 60, "the guest's RTC is {skew} s off: {}", init.line);
}

#[test]
fn a_linux_guest_with_1_vcpu_boots_and_powers_off() {
    test_utils::require_kvm!();
    boots_and_powers_off(1);
}

#[test]
fn a_linux_guest_with_4_vcpus_boots_and_powers_off() {
    test_utils::require_kvm!();
    boots_and_powers_off(4);
}
