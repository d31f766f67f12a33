//! `reboot -f` in a Linux guest: with rebooting off the VM ends after one boot, as a reboot;
//! with it on, the guest boots again in the same `vmm` process, which SIGTERM then stops with
//! status 0.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`,
//! whose init understands `vmmtest=reboot`); the testbed sets them and `VMM_BIN`.
#![cfg(target_arch = "aarch64")]

mod common;

use std::time::{Duration, Instant};

use vmm::ExitReason;

use common::guest::{self, Guest, reports};
use common::process::{Vmm, guest_args};

const CMDLINE: &str = "console=ttyS0 quiet panic=-1 vmmtest=reboot";

#[test]
fn with_rebooting_off_a_guest_reset_ends_the_vm_after_one_boot() {
    test_utils::require_kvm!();
    let scratch = guest::scratch("linux-reboot-once-");
    let mut config = guest::config(&scratch, "reboot", "", 1, false);
    config.no_reboot = true;
    let guest = Guest::start(config, scratch);
    let (exit, _) = guest.run_to_end(Duration::from_secs(120));
    let boots = guest
        .reports()
        .iter()
        .filter(|report| report.is("init"))
        .count();
    println!("linux-no-reboot: exit {exit:?}, boots {boots}");
    assert_eq!(exit, ExitReason::Reboot);
    assert_eq!(boots, 1);
}

#[test]
fn a_guest_reset_boots_the_guest_again_in_process_until_sigterm_stops_vmm() {
    test_utils::require_kvm!();
    let mut vmm = Vmm::start("linux-reboot", &guest_args(CMDLINE, 1, 256));
    let deadline = Instant::now() + Duration::from_secs(240);
    let boots = loop {
        let boots = reports(&vmm.console_text())
            .iter()
            .filter(|report| report.is("init"))
            .count();
        if boots >= 2 {
            break boots;
        }
        assert!(
            Instant::now() < deadline && vmm.child.try_wait().unwrap().is_none(),
            "the guest did not boot twice ({boots} boots):\n{}\n{}",
            vmm.console_text(),
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (status, info) = vmm.call("GET", "vm.info");
    assert_eq!(status, 200, "{info}");
    let counted = info["boots"].as_u64().unwrap();
    // Still rebooting: only the signal can end it now.
    assert!(vmm.child.try_wait().unwrap().is_none(), "vmm exited");
    let pid = libc::pid_t::try_from(vmm.child.id()).unwrap();
    // SAFETY: kill(2) only sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // A vmm that lost the signal would reboot forever.
    let status = vmm.wait_exit(Duration::from_secs(60));
    println!(
        "linux-reboot-in-process: {boots} guest boots seen, vm.info boots {counted}, exit status {status} after SIGTERM"
    );
    assert!(counted >= 2, "vm.info counted {counted} boots");
    assert_eq!(status, 0, "{}", vmm.stderr());
}
