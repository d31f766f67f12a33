//! `devices::Pl031Rtc` on a manual clock and a fake alarm timer, driven by a program of guest
//! MMIO accesses, clock steps and timer expiries.
//!
//! Input: a u64 start time in seconds since the epoch (below 2^40), then operations:
//! - `0` write: offset selector, size selector ([`crate::access_size`]), value byte(s).
//! - `1` read: offset selector, size selector.
//! - `2` the host clock moves forward by a u32 of milliseconds; an armed timer that comes
//!   due fires (`on_alarm_timer`), as the event loop's epoll would make it.
//! - `3` the host clock jumps to a u64 of nanoseconds (backwards too: NTP, a restore).
//! - `4` a spurious `on_alarm_timer` (the event loop woke with nothing due).
//! - `5` the interrupt line starts or stops failing.
//! - `6` the timer's arm/disarm start or stop failing.
//! - `7` save and restore through `state()` and `from_state`.
//!
//! An offset selector below 0x80 picks one of the registers (or an id register, or an
//! unaligned or reserved offset); otherwise a u64 follows. Checks: while the line never
//! failed, its level is RIS & IMSC after every operation; the state survives a restore
//! unchanged but for a match that came due.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::MmioDevice;
use devices::test_utils::{ManualClock, RecordingIrqLine};
use devices::{AlarmTimer, Pl031Rtc};

use crate::{Input, read_access, write_access};

const MAX_OPS: usize = 4096;

const OFFSETS: [u64; 16] = [
    0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x018, 0x01C, 0x020, 0xFE0, 0xFE4, 0xFF0, 0xFFC,
    0x002, 0x1000, 0xFFE,
];

/// What the device asked of its timer, shared with the harness.
#[derive(Clone, Default)]
struct FakeTimer {
    /// Time left until the armed expiry.
    armed: Arc<Mutex<Option<Duration>>>,
    failing: Arc<AtomicBool>,
}

impl FakeTimer {
    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::Relaxed) {
            Err(io::Error::other("injected"))
        } else {
            Ok(())
        }
    }
}

impl AlarmTimer for FakeTimer {
    fn arm(&mut self, after: Duration) -> io::Result<()> {
        self.check()?;
        *self.armed.lock().unwrap() = Some(after);
        Ok(())
    }
    fn disarm(&mut self) -> io::Result<()> {
        self.check()?;
        *self.armed.lock().unwrap() = None;
        Ok(())
    }
    fn acknowledge(&mut self) -> io::Result<()> {
        *self.armed.lock().unwrap() = None;
        Ok(())
    }
}

fn offset(input: &mut Input) -> Option<u64> {
    let selector = input.u8()?;
    if selector < 0x80 {
        Some(OFFSETS[usize::from(selector) % OFFSETS.len()])
    } else {
        input.u64()
    }
}

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(start) = input.u64() else { return };
    let clock = ManualClock::new(Duration::from_secs(start % (1 << 40)));
    let timer = FakeTimer::default();
    let irq = Arc::new(RecordingIrqLine::new());
    let mut rtc = Pl031Rtc::new(irq.clone(), clock.clone(), timer.clone());
    let mut irq_failing = false;
    let mut irq_ever_failed = false;
    for _ in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        match op % 8 {
            0 => {
                let Some((offset, value)) = write_access(&mut input, offset) else {
                    break;
                };
                rtc.write(offset, value);
            }
            1 => {
                let Some((offset, mut data)) = read_access(&mut input, offset) else {
                    break;
                };
                rtc.read(offset, &mut data);
                if data.len() != 4 || offset % 4 != 0 {
                    assert!(data.iter().all(|&b| b == 0), "{data:?} at {offset:#x}");
                }
            }
            2 => {
                let Some(millis) = input.u32() else { break };
                let by = Duration::from_millis(u64::from(millis));
                clock.advance(by);
                let due = {
                    let mut armed = timer.armed.lock().unwrap();
                    match *armed {
                        Some(after) if by >= after => true,
                        Some(after) => {
                            *armed = Some(after - by);
                            false
                        }
                        None => false,
                    }
                };
                if due {
                    let _ = rtc.on_alarm_timer();
                }
            }
            3 => {
                let Some(nanos) = input.u64() else { break };
                clock.set(Duration::from_nanos(nanos));
            }
            4 => {
                let _ = rtc.on_alarm_timer();
            }
            5 => {
                irq_failing = !irq_failing;
                irq_ever_failed = true;
                irq.set_failing(irq_failing);
            }
            6 => {
                let failing = &timer.failing;
                failing.store(!failing.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            _ => {
                let state = rtc.state();
                match Pl031Rtc::from_state(&state, irq.clone(), clock.clone(), timer.clone()) {
                    Ok(restored) => {
                        let now = restored.state();
                        assert_eq!(
                            (now.offset, now.lr, now.mr),
                            (state.offset, state.lr, state.mr)
                        );
                        assert_eq!(now.imsc, state.imsc);
                        // Only a match that came due may change the state.
                        if now.alarm_at != state.alarm_at {
                            assert_eq!(now.alarm_at, None);
                            assert_eq!(now.ris, 1);
                        } else {
                            assert_eq!(now.ris, state.ris);
                        }
                        rtc = restored;
                    }
                    Err(_) => assert!(irq_failing || timer.failing.load(Ordering::Relaxed)),
                }
            }
        }
        if !irq_ever_failed {
            let state = rtc.state();
            assert_eq!(
                irq.is_high(),
                state.ris & state.imsc & 1 != 0,
                "line level does not follow RIS & IMSC: {state:?}"
            );
        }
    }
}
