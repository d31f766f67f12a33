//! virtio-blk and virtio-rng with Linux guests, which find their disks by serial (the disk's
//! id), never by order:
//! - boot: an ext4 root disk (`root=/dev/vda rw`) with 1 and 4 vCPUs; init runs from it;
//! - pattern: `disk-pattern` rewrites a 64 MiB data disk with `O_DIRECT` through 20 rtcwake
//!   cycles; the last generation must be intact in the guest and in the image on the host;
//!   then 64 bytes from `/dev/hwrng`;
//! - fs: an ext4 root with 8 MiB of fsynced data and an fsynced append per cycle through 10
//!   cycles: the data unchanged, and `e2fsck -fn` clean on the host afterwards;
//! - readonly: a write to a read-only disk fails in the guest, and the image is unchanged.
//!
//! Needs an arm64 KVM host and the testbed's guest (`VMM_TEST_KERNEL`, `VMM_TEST_INITRD`,
//! `VMM_TEST_ROOTFS`), with `disk-pattern` (`VMM_TEST_DISK_PATTERN`) and a static `e2fsck`
//! (`VMM_TEST_E2FSCK`) for the host's side; the testbed sets them.
#![cfg(target_arch = "aarch64")]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vmm::{DiskConfig, ExitReason};

use common::guest::{self, Guest, field, rtc_suspend_cycles, suspend_cycles, the_report};
use common::guest_file;
use common::process::path_text;

const MIB: u64 = 1 << 20;

/// Runs a host tool from the environment variable `variable` with `args`, its output echoed.
fn host_tool(variable: &str, args: &[&str]) -> Output {
    let output = Command::new(guest_file(variable))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {variable}: {err}"));
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        println!("[host] {line}");
    }
    output
}

fn boots_from_its_root_disk(cpus: u32) {
    let scratch = guest::scratch("linux-disk-boot-");
    let guest = Guest::start(guest::config(&scratch, "boot", "", cpus, true), scratch);
    let (exit, _) = guest.run_to_end(Duration::from_secs(150));
    let reports = guest.reports();
    let switched = the_report(&reports, "switch-root");
    let init = the_report(&reports, "init");
    println!(
        "linux-disk-boot-{cpus}cpu: exit {exit:?}, {:?}, {:?}",
        switched.line, init.line
    );
    assert_eq!(exit, ExitReason::PowerOff);
    assert_eq!(switched.get("serial"), Some("root"), "{}", switched.line);
    assert_eq!(init.get("root"), Some("/dev/vda"), "{}", init.line);
    assert_eq!(init.value::<u32>("nproc"), cpus, "{}", init.line);
}

#[test]
fn a_guest_with_1_vcpu_boots_from_its_ext4_root_disk() {
    test_utils::require_kvm!();
    boots_from_its_root_disk(1);
}

#[test]
fn a_guest_with_4_vcpus_boots_from_its_ext4_root_disk() {
    test_utils::require_kvm!();
    boots_from_its_root_disk(4);
}

#[test]
fn a_disk_rewritten_through_20_suspend_cycles_keeps_every_block_and_hwrng_gives_bytes() {
    test_utils::require_kvm!();
    const CYCLES: usize = 20;
    const SEED: u64 = 12345;
    const SIZE: u64 = 64 * MIB;
    let scratch = guest::scratch("linux-disk-pattern-");
    let data = scratch.as_path().join("data.img");
    std::fs::File::create(&data).unwrap().set_len(SIZE).unwrap();
    let mut config = guest::config(
        &scratch,
        "disk-suspend",
        &format!("cycles={CYCLES} seed={SEED} wake=3 retry=1"),
        2,
        true,
    );
    config.disks.push(DiskConfig {
        id: Some("data".into()),
        ..DiskConfig::new(&data)
    });
    let guest = Guest::start(config, scratch);
    let (exit, events) = guest.run_to_end(Duration::from_secs(420));
    let reports = guest.reports();
    let (cycles, good) = suspend_cycles(&reports, 2);
    let aborted = reports.iter().filter(|report| report.is("aborted")).count();
    let generation = the_report(&reports, "pattern-written").value::<u64>("gen");
    let guest_verify = the_report(&reports, "pattern-verify");
    let rng_bytes = the_report(&reports, "rng").value::<u64>("bytes");
    let hwrng = the_report(&reports, "hwrng").value::<String>("current");
    println!(
        "linux-disk-pattern: exit {exit:?}, good cycles {good}/{CYCLES} ({aborted} attempts the guest aborted itself), generation {generation}, rng bytes {rng_bytes}, hwrng {hwrng}"
    );
    let host_verify = host_tool(
        "VMM_TEST_DISK_PATTERN",
        &[
            "verify",
            path_text(&data),
            "--seed",
            &SEED.to_string(),
            "--gen",
            &generation.to_string(),
            "--size",
            &SIZE.to_string(),
        ],
    );
    let host_report = String::from_utf8_lossy(&host_verify.stdout).into_owned();
    assert_eq!(exit, ExitReason::PowerOff);
    assert_eq!(good, CYCLES, "{cycles:#?}");
    assert_eq!(
        guest_verify.get("ok"),
        Some("true"),
        "{}",
        guest_verify.line
    );
    assert!(host_verify.status.success(), "{host_report}");
    assert_eq!(field(&host_report, "ok"), Some("true"), "{host_report}");
    assert_eq!(rng_bytes, 64);
    // Attempts the guest aborted itself never reach the VMM.
    let (suspend_us, resume_us) = rtc_suspend_cycles(&events, CYCLES);
    println!(
        "linux-disk-pattern: vmm suspend latency min/median/max {suspend_us} us, resume {resume_us} us"
    );
}

#[test]
fn an_ext4_root_written_through_10_suspend_cycles_stays_intact_and_clean() {
    test_utils::require_kvm!();
    const CYCLES: usize = 10;
    let scratch = guest::scratch("linux-disk-fs-");
    let config = guest::config(
        &scratch,
        "fs-suspend",
        &format!("cycles={CYCLES} wake=3 retry=1"),
        2,
        true,
    );
    let root = config.disks[0].path.clone();
    let guest = Guest::start(config, scratch);
    let (exit, events) = guest.run_to_end(Duration::from_secs(300));
    let reports = guest.reports();
    let check = the_report(&reports, "fs-check");
    let remount = the_report(&reports, "remount-ro");
    let aborted = reports.iter().filter(|report| report.is("aborted")).count();
    println!(
        "linux-disk-fs: exit {exit:?}, {:?}, remount read-only rc {:?}, {aborted} attempts the guest aborted itself",
        check.line,
        remount.get("rc")
    );
    let fsck = host_tool("VMM_TEST_E2FSCK", &["-fn", path_text(&root)]);
    assert_eq!(exit, ExitReason::PowerOff);
    assert!(fsck.status.success(), "e2fsck: {:?}", fsck.status);
    let md5_before = check.value::<String>("md5_before");
    assert!(!md5_before.is_empty(), "{}", check.line);
    assert_eq!(
        check.get("md5_after"),
        Some(md5_before.as_str()),
        "{}",
        check.line
    );
    assert_eq!(
        check.get("cycles_ok"),
        Some(format!("{CYCLES}/{CYCLES}").as_str()),
        "{}",
        check.line
    );
    let (suspend_us, resume_us) = rtc_suspend_cycles(&events, CYCLES);
    println!(
        "linux-disk-fs: vmm suspend latency min/median/max {suspend_us} us, resume {resume_us} us"
    );
}

/// The MD5 of `bytes` in hex, from the host's `md5sum`: what the guest reports of a disk.
fn md5(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn a_readonly_disk_refuses_a_write_and_its_image_is_unchanged() {
    test_utils::require_kvm!();
    let scratch = guest::scratch("linux-disk-readonly-");
    let image = scratch.as_path().join("ro.img");
    let written = host_tool(
        "VMM_TEST_DISK_PATTERN",
        &[
            "write",
            path_text(&image),
            "--seed",
            "777",
            "--size",
            &(4 * MIB).to_string(),
            "--no-direct",
        ],
    );
    assert!(written.status.success());
    let before = std::fs::read(&image).unwrap();
    // Booted from the initramfs alone.
    let mut config = guest::config(&scratch, "disk-readonly", "", 1, false);
    config.disks = vec![DiskConfig {
        readonly: true,
        id: Some("ro".into()),
        ..DiskConfig::new(&image)
    }];
    let guest = Guest::start(config, scratch);
    let (exit, _) = guest.run_to_end(Duration::from_secs(150));
    let reports = guest.reports();
    let write = the_report(&reports, "ro-write");
    let read = the_report(&reports, "ro-read");
    let after = std::fs::read(&image).unwrap();
    println!(
        "linux-disk-readonly: exit {exit:?}, {:?}, image unchanged: {}",
        write.line,
        after == before
    );
    assert_eq!(exit, ExitReason::PowerOff);
    assert_ne!(write.value::<i32>("rc"), 0, "{}", write.line);
    assert!(after == before, "the guest changed a read-only image");
    assert_eq!(
        read.value::<String>("md5"),
        md5(&before[..MIB as usize]),
        "the guest read other bytes than the image's first MiB"
    );
}
