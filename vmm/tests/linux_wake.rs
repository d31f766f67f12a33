//! A Linux guest that suspends to RAM with no alarm set is woken by the host: by the GPIO wake
//! button, and by a byte on its serial console. While it sleeps, the VMM must not use CPU, also
//! with virtio devices attached: the guest resets every device before it sleeps (its
//! virtio-mmio freeze), so no device thread is left, and sets each up again after the wakeup.
//!
//! Needs an arm64 KVM host and the testbed's guest: `VMM_TEST_KERNEL` (Debian's arm64 Image),
//! `VMM_TEST_INITRD` (the testbed's busybox initramfs, whose init understands
//! `vmmtest=suspend-wait`) and `VMM_TEST_ROOTFS` (its ext4 root disk). The testbed sets them.
#![cfg(target_arch = "aarch64")]

mod common;

use std::time::{Duration, Instant};

use devices::virtio::DeviceKind;
use vmm::events::{VmEventKind, WakeSource};
use vmm::virtio_devices::DeviceInfo;
use vmm::{ExitReason, VmHandle, VmState};

use common::guest::{self, Guest, cpu_time};

/// Threads of this process whose name says they serve a virtio device.
fn device_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("virtio-"))
        .collect()
}

fn kinds(devices: &[DeviceInfo]) -> Vec<DeviceKind> {
    devices.iter().map(|device| device.kind).collect()
}

/// The devices' figures once each of `asleep` was set up again after the wakeup. Read while
/// the guest runs: right after its `resumed` line it powers off, which resets them again.
fn reactivated(handle: &VmHandle, asleep: &[DeviceInfo]) -> Vec<DeviceInfo> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let devices = handle.devices();
        let again = |(now, before): (&DeviceInfo, &DeviceInfo)| {
            now.stats.activations > before.stats.activations
        };
        let done = devices.len() == asleep.len() && devices.iter().zip(asleep).all(again);
        if done || Instant::now() >= deadline {
            return devices;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Boots, waits until the guest is suspended, checks it stays asleep without using CPU, wakes
/// it with `wake`, and checks it resumed from that source and came back. With `root_disk`, also
/// checks that the guest reset its devices before it slept and set them up again after.
fn suspend_then_wake(cpus: u32, root_disk: bool, source: WakeSource, wake: impl Fn(&VmHandle)) {
    let scratch = guest::scratch("linux-wake-");
    let guest = Guest::start(
        guest::config(&scratch, "suspend-wait", "", cpus, root_disk),
        scratch,
    );
    let latency = guest.wait_event(Duration::from_secs(120), |kind| match kind {
        VmEventKind::Suspended { latency_us, .. } => Some(*latency_us),
        _ => None,
    });
    guest.wait_console("@@guest suspending", Duration::from_secs(30));
    assert_eq!(guest.handle.state(), VmState::Suspended);
    let asleep = guest.handle.info().devices;
    if root_disk {
        assert_eq!(kinds(&asleep), [DeviceKind::Block, DeviceKind::Rng]);
        for device in &asleep {
            let stats = device.stats;
            assert!(stats.activations >= 1, "{device:?}");
            assert_eq!(
                stats.resets, stats.activations,
                "not reset before sleeping: {device:?}"
            );
        }
        assert!(asleep[0].stats.requests > 0, "{:?}", asleep[0]);
    } else {
        assert_eq!(asleep, []);
    }
    assert_eq!(
        device_threads(),
        Vec::<String>::new(),
        "device threads while asleep"
    );

    let (cpu_before, wall_before) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (cpu, wall) = (cpu_time() - cpu_before, wall_before.elapsed());
    let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "suspended {:.1} s: vmm CPU time {} ms = {share:.2}% of wall time (suspend latency {latency} us)",
        wall.as_secs_f64(),
        cpu.as_millis()
    );
    assert_eq!(
        guest.handle.state(),
        VmState::Suspended,
        "woke up on its own"
    );
    assert!(
        share < 1.0,
        "vmm used {share:.2}% CPU while the guest slept"
    );

    wake(&guest.handle);
    let (woken_by, resume_latency) = guest.wait_event(Duration::from_secs(30), |kind| match kind {
        VmEventKind::Resumed {
            source, latency_us, ..
        } => Some((*source, *latency_us)),
        _ => None,
    });
    println!("resumed by {woken_by} (resume latency {resume_latency} us)");
    assert_eq!(woken_by, source);
    let awake = reactivated(&guest.handle, &asleep);
    let line = guest.wait_console("@@guest resumed", Duration::from_secs(60));
    assert_eq!(kinds(&awake), kinds(&asleep));
    for (before, after) in asleep.iter().zip(&awake) {
        assert_eq!(
            after.stats.activations,
            before.stats.activations + 1,
            "not set up again after the wakeup: {after:?}"
        );
        assert_eq!(after.stats.resets, before.stats.resets);
    }
    assert!(line.contains("rc=0"), "{line}");
    assert!(line.contains("success_before=0 success_after=1"), "{line}");
    let online = if cpus == 1 {
        "online=0".to_owned()
    } else {
        format!("online=0-{}", cpus - 1)
    };
    assert!(line.contains(&online), "{line}");
    let exit = guest
        .handle
        .wait_timeout(Duration::from_secs(60))
        .expect("the guest did not power off")
        .unwrap();
    assert_eq!(exit, ExitReason::PowerOff);
    // Not counted while the guest runs: right after its line it powers off, and its devices
    // stop with it. Once the VM has ended, no device thread may be left behind.
    assert_eq!(device_threads(), Vec::<String>::new(), "after the VM ended");
}

#[test]
fn the_gpio_wake_button_wakes_a_suspended_guest_with_its_disk_and_rng() {
    test_utils::require_kvm!();
    suspend_then_wake(2, true, WakeSource::Gpio, |handle| {
        handle.press_wake_button().unwrap()
    });
}

#[test]
fn a_byte_on_the_serial_console_wakes_a_suspended_guest() {
    test_utils::require_kvm!();
    suspend_then_wake(1, false, WakeSource::Serial, |handle| {
        assert_eq!(handle.send_console_input(b"\r").unwrap(), 1);
    });
}
