//! Hibernation on real KVM: a Linux 7.x guest with a swap partition on a virtio-blk disk
//! writes its memory to it and powers off through PSCI 1.3 SYSTEM_OFF2; a second `vmm` run
//! with the same configuration and disks resumes it, its processes and tmpfs files intact.
//!
//! The guest kernel must be 6.13 or later (older ones never call SYSTEM_OFF2), so this test
//! boots the testbed's 7.x guest (`VMM_TEST_KERNEL_7`, `VMM_TEST_INITRD_7`). On a host whose
//! KVM has no PSCI 1.3 (before Linux 6.13) the guest falls back to a plain power-off after
//! writing its image, and the next boot resumes it just the same.
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::guest::{Guest, field, scratch};
use common::guest_file;
use test_utils::kvm::host_kernel;
use vmm::events::VmEventKind;
use vmm::{DiskConfig, ExitReason, VmConfig};

const MIB: u64 = 1 << 20;
/// Where the swap partition starts, in 512-byte sectors (1 MiB, as fdisk aligns it).
const SWAP_START: u64 = 2048;

/// A sparse disk of `size` bytes with an MBR and one Linux swap partition (type 0x82) from
/// 1 MiB to the end: the guest sees it as `vda1`.
fn swap_disk(path: &Path, size: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x82;
    entry[8..12].copy_from_slice(&(SWAP_START as u32).to_le_bytes());
    let sectors = size / 512 - SWAP_START;
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&mbr).unwrap();
}

#[test]
fn a_guest_hibernates_to_its_swap_partition_and_the_next_boot_resumes_it() {
    test_utils::require_kvm!();
    let disks = scratch("linux-hibernate-");
    let swap = disks.as_path().join("swap.img");
    swap_disk(&swap, 512 * MIB);
    let mut config = VmConfig::new(guest_file("VMM_TEST_KERNEL_7"));
    config.initramfs = Some(guest_file("VMM_TEST_INITRD_7"));
    // No compression: the compressor is a module the kernel would have to find itself.
    config.cmdline =
        "console=ttyS0 quiet panic=-1 vmmtest=hibernate resume=/dev/vda1 hibernate=nocompress"
            .into();
    config.disks = vec![DiskConfig {
        id: Some("swap".into()),
        ..DiskConfig::new(&swap)
    }];
    config.rng = false;
    config.cpus = 2;
    // The snapshot needs as much free memory as it copies: with 256 MiB the 7.x kernel and
    // the initramfs leave too little ("Image allocation is 4520 pages short").
    config.memory_mib = 512;
    let off2 = host_kernel() >= (6, 13);

    let first = Guest::start(config.clone(), scratch("linux-hibernate-first-"));
    let swap_line = first.wait_console("@@guest swap", Duration::from_secs(120));
    assert_eq!(field(&swap_line, "rc"), Some("0"), "{swap_line}");
    let line = first.wait_console("@@guest hibernating", Duration::from_secs(60));
    let (pid, token) = (field(&line, "pid").unwrap(), field(&line, "token").unwrap());
    let info = first.handle.info();
    let expected_psci = if off2 { "1.3" } else { "1.1" };
    assert_eq!(info.psci_version.as_deref(), Some(expected_psci));
    let exit = first
        .handle
        .wait_timeout(Duration::from_secs(600))
        .unwrap_or_else(|| panic!("the guest did not hibernate:\n{}", first.diagnose()))
        .unwrap();
    let console = first.console_text();
    assert!(
        !console.contains("@@guest thawed"),
        "hibernation failed in the guest:\n{console}"
    );
    if off2 {
        assert_eq!(exit, ExitReason::Hibernated, "{console}");
        first.wait_event(Duration::from_secs(5), |event| {
            matches!(event, VmEventKind::Hibernated { .. }).then_some(())
        });
    } else {
        // No PSCI 1.3: the guest writes its image and then powers off the old way.
        assert_eq!(exit, ExitReason::PowerOff, "{console}");
    }
    drop(first);

    let second = Guest::start(config, scratch("linux-hibernate-second-"));
    let thawed = second.wait_console("@@guest thawed", Duration::from_secs(300));
    assert_eq!(field(&thawed, "rc"), Some("0"), "{thawed}");
    assert_eq!(field(&thawed, "pid"), Some(pid), "{thawed}");
    assert_eq!(field(&thawed, "alive"), Some("yes"), "{thawed}");
    assert_eq!(field(&thawed, "token"), Some(token), "{thawed}");
    let ticks: u64 = field(&thawed, "ticks").unwrap().parse().unwrap();
    let later: u64 = field(&thawed, "ticks_later").unwrap().parse().unwrap();
    assert!(later > ticks, "the resumed process does not run: {thawed}");
    let console = second.console_text();
    assert!(
        !console.contains("@@guest init "),
        "the second boot started afresh instead of resuming:\n{console}"
    );
    second.powers_off();
}
