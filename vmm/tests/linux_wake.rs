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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::DeviceKind;
use vmm::events::{EventReceiver, VmEventKind, WakeSource};
use vmm::virtio_devices::DeviceInfo;
use vmm::{Console, DiskConfig, ExitReason, Vm, VmConfig, VmHandle, VmState};
use vmm_sys_util::tempdir::TempDir;

use common::guest_file;

struct Guest {
    handle: VmHandle,
    events: EventReceiver,
    console: Arc<Mutex<Vec<u8>>>,
    /// Holds the root disk's copy, if it has one.
    _scratch: TempDir,
}

impl Guest {
    /// Boots the guest with `cpus` vCPUs: from a copy of the root disk (with virtio-rng) when
    /// `root_disk`, else from the initramfs alone with no virtio device.
    fn boot(cpus: u32, root_disk: bool) -> Self {
        let scratch = TempDir::new_with_prefix(std::env::temp_dir().join("linux-wake-")).unwrap();
        let mut config = VmConfig::new(guest_file("VMM_TEST_KERNEL"));
        config.initramfs = Some(guest_file("VMM_TEST_INITRD"));
        config.cmdline = "console=ttyS0 quiet panic=-1 vmmtest=suspend-wait".into();
        if root_disk {
            let root = scratch.as_path().join("rootfs.ext4");
            std::fs::copy(guest_file("VMM_TEST_ROOTFS"), &root).unwrap();
            config.disks = vec![DiskConfig {
                id: Some("root".into()),
                ..DiskConfig::new(root)
            }];
            config.cmdline.push_str(" root=/dev/vda rw");
        } else {
            config.rng = false;
        }
        config.cpus = cpus;
        config.memory_mib = 256;
        let console: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let vm = Vm::new(config)
            .unwrap()
            .with_console(Console::Writer(console.clone()));
        let events = vm.subscribe();
        let handle = vm.start().unwrap();
        Self {
            handle,
            events,
            console,
            _scratch: scratch,
        }
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    /// Waits for the first event `pick` accepts.
    fn wait_event<T>(&self, limit: Duration, pick: impl Fn(&VmEventKind) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    if let Some(value) = pick(&event.kind) {
                        return value;
                    }
                }
                Err(_) => panic!(
                    "no such event within {limit:?}; console:\n{}",
                    self.console_text()
                ),
            }
        }
    }

    fn wait_console(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let console = self.console_text();
            // Only whole lines: the guest may be in the middle of writing one.
            let complete = console.rsplit_once('\n').map_or("", |(whole, _)| whole);
            if let Some(line) = complete.lines().find(|line| line.contains(text)) {
                return line.to_owned();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{text:?} not on the console within {limit:?}:\n{}",
            self.console_text()
        );
    }
}

/// User plus system CPU time of this process, which is the VMM.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (USER_HZ = 100).
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

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

/// Boots, waits until the guest is suspended, checks it stays asleep without using CPU, wakes
/// it with `wake`, and checks it resumed from that source and came back. With `root_disk`, also
/// checks that the guest reset its devices before it slept and set them up again after.
fn suspend_then_wake(cpus: u32, root_disk: bool, source: WakeSource, wake: impl Fn(&VmHandle)) {
    let guest = Guest::boot(cpus, root_disk);
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
    let line = guest.wait_console("@@guest resumed", Duration::from_secs(60));
    let awake = guest.handle.info().devices;
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
    suspend_then_wake(2, true, WakeSource::Gpio, |handle| {
        handle.press_wake_button().unwrap()
    });
}

#[test]
fn a_byte_on_the_serial_console_wakes_a_suspended_guest() {
    suspend_then_wake(1, false, WakeSource::Serial, |handle| {
        assert_eq!(handle.send_console_input(b"\r").unwrap(), 1);
    });
}
