//! A boot-timer pseudo device, like Firecracker's: the guest writes [`BOOT_TIMER_MAGIC`] to
//! its first byte once it reaches userspace, and the VMM logs the time since it started.
//!
//! Busybox does it with `devmem 0x09040000 8 123`. The log line is stable for scripts:
//! `Guest boot time: N us since vmm start, M CPU us`, where the CPU time is the whole
//! process's (the vCPU threads running the guest included), as in Firecracker.
//!
//! "Start" is the kernel's record of when this process was created (`starttime` in
//! `/proc/self/stat`), read once and kept, so the figure counts everything the VMM did before
//! the guest ran, without a hook in `main`. That record has the resolution of the kernel's
//! `USER_HZ` clock ticks (10 ms on Linux); finer figures come from timing the process from
//! outside.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bus::MmioDevice;

/// The byte that signals "the guest reached userspace" (Firecracker's value).
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// What a [`BootTimer`] measured, for save/restore. The start it counts from is this
/// process's, so it is not saved: a restored timer counts a later magic write from the
/// restoring process's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimerState {
    /// The time from the start to the guest's last magic write, if there was one.
    pub boot_time: Option<Duration>,
}

/// The pseudo device. Reads return zeros.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    boot_time: Option<Duration>,
}

impl BootTimer {
    /// A boot timer that counts from this process's start, or from now if the kernel does
    /// not say when that was.
    pub fn new() -> Self {
        let start = process_start().unwrap_or_else(|| {
            log::warn!("Cannot read this process's start time; the boot timer counts from now");
            Instant::now()
        });
        Self::since(start)
    }

    /// A boot timer that counts from `start`.
    pub fn since(start: Instant) -> Self {
        Self {
            start,
            boot_time: None,
        }
    }

    /// A boot timer like [`BootTimer::new`] that reports the boot time `state` recorded.
    /// Every state is valid, so this cannot fail.
    pub fn from_state(state: &BootTimerState) -> Self {
        Self {
            boot_time: state.boot_time,
            ..Self::new()
        }
    }

    /// The boot time it measured, for save/restore.
    pub fn state(&self) -> BootTimerState {
        BootTimerState {
            boot_time: self.boot_time,
        }
    }

    /// The time from the start to the guest's last magic write, if there was one.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time
    }
}

impl Default for BootTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let elapsed = self.start.elapsed();
        self.boot_time = Some(elapsed);
        // The guest may write the magic in a loop; the log gets a few lines a second.
        if !BOOT_TIMER_LOG.allow() {
            return;
        }
        log::info!(
            "Guest boot time: {} us since vmm start, {} CPU us",
            elapsed.as_micros(),
            process_cpu_time().map_or(0, |cpu| cpu.as_micros())
        );
    }
}

static BOOT_TIMER_LOG: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new(5);

/// When this process started, on the monotonic clock; read once.
fn process_start() -> Option<Instant> {
    static START: OnceLock<Option<Instant>> = OnceLock::new();
    *START.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf reads a configuration value and has no memory-safety preconditions.
        let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
        let started =
            Duration::from_millis(start_ticks(&stat)?.checked_mul(1000)? / ticks_per_second.max(1));
        // starttime counts from boot on CLOCK_BOOTTIME.
        let age = clock(libc::CLOCK_BOOTTIME)?.checked_sub(started)?;
        Instant::now().checked_sub(age)
    })
}

/// Field 22 of `/proc/PID/stat`, `starttime`, in clock ticks since boot.
fn start_ticks(stat: &str) -> Option<u64> {
    // The command name in field 2 is parenthesised and may hold spaces and parentheses; the
    // fields after its last `)` are plain, starting with field 3.
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// CPU time used by every thread of this process.
fn process_cpu_time() -> Option<Duration> {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(id, &mut now) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_stops_the_clock() {
        let start = Instant::now() - Duration::from_millis(5);
        let mut timer = BootTimer::since(start);
        timer.write(0, &[BOOT_TIMER_MAGIC - 1]);
        timer.write(4, &[BOOT_TIMER_MAGIC]);
        timer.write(0, &[]);
        assert_eq!(timer.boot_time(), None);
        // devmem's 32-bit write of 123 puts the magic in the first byte.
        timer.write(0, &u32::from(BOOT_TIMER_MAGIC).to_le_bytes());
        assert!(timer.boot_time().unwrap() >= Duration::from_millis(5));
    }

    #[test]
    fn restored_timer_reports_the_saved_boot_time_and_still_reads_zero() {
        let mut timer = BootTimer::since(Instant::now() - Duration::from_millis(5));
        let state = crate::test_utils::through_json(&timer.state());
        assert_eq!(BootTimer::from_state(&state).boot_time(), None);

        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let measured = timer.boot_time();
        let state = crate::test_utils::through_json(&timer.state());
        let mut restored = BootTimer::from_state(&state);
        assert_eq!(restored.boot_time(), measured);
        let mut data = [0xaa; 4];
        restored.read(0, &mut data);
        assert_eq!(data, [0; 4]);
        // A magic write after restore measures from the restoring process's start.
        restored.write(0, &[BOOT_TIMER_MAGIC]);
        assert!(restored.boot_time().is_some());
    }

    #[test]
    fn reads_are_zero() {
        let mut timer = BootTimer::since(Instant::now());
        let mut data = [0xaa; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn parses_the_start_time_after_an_awkward_command_name() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 200";
        assert_eq!(start_ticks(stat), Some(987_654));
        assert_eq!(start_ticks("4242 (short) S 1"), None);
        assert_eq!(start_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_started_in_the_past() {
        let start = process_start().expect("Linux has /proc/self/stat");
        assert!(start <= Instant::now());
        assert!(process_cpu_time().is_some());
    }
}
