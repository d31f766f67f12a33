//! ARM PrimeCell PL031 real-time clock, with the match alarm that vm-superio's model lacks.
//!
//! The counter is host wall-clock seconds plus a guest-chosen offset (set through RTCLR).
//! RTCRIS bit 0 is set when the counter *equals* RTCMR, as in hardware: the match is
//! scheduled when MR or LR is written, for the moment the counter next reaches MR. A match
//! value already behind the counter therefore fires only after the 32-bit counter wraps
//! (about 136 years), never straight away; MR equal to the counter fires at once. This is
//! QEMU's `pl031_set_alarm`. A scheduled match fires once; if host time has passed it by the
//! time it is checked (a late timer, a clock step forward, a restore after a long pause) it
//! still fires, because the counter went through MR on the way.
//!
//! The interrupt output is level: high while RIS & IMSC, until the guest writes RTCICR or
//! masks it. The device never sleeps or spawns threads: it asks an [`AlarmTimer`] to wake
//! the event loop at the match time, and the loop calls [`Pl031Rtc::on_alarm_timer`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::timerfd::TimerFd;

use crate::amba;
use crate::bus::MmioDevice;
use crate::irq::{IrqError, IrqLine, LevelIrq};

const RTCDR: u64 = 0x000;
const RTCMR: u64 = 0x004;
const RTCLR: u64 = 0x008;
const RTCCR: u64 = 0x00C;
const RTCIMSC: u64 = 0x010;
const RTCRIS: u64 = 0x014;
const RTCMIS: u64 = 0x018;
const RTCICR: u64 = 0x01C;

/// The only interrupt source of the ARM PL031: the match alarm.
const ALARM_BIT: u32 = 1;

/// PeriphID0..3: Linux's amba bus matches 0x00141031 against the pl031 entry (id 0x00041031,
/// mask 0x000fffff). Revision 1 in PeriphID2, as QEMU reports.
const PERIPH_ID: [u8; 4] = [0x31, 0x10, 0x14, 0x00];

/// Errors from the RTC's host side.
#[derive(Debug, Error)]
pub enum RtcError {
    /// The host timer backing the alarm could not be created.
    #[error("Cannot create the RTC alarm timer")]
    CreateTimer(#[source] io::Error),
    /// Arming, disarming or reading the host timer failed.
    #[error("Cannot program the RTC alarm timer")]
    Timer(#[source] io::Error),
    /// The alarm interrupt line could not be driven.
    #[error("Cannot drive the RTC interrupt")]
    Irq(#[source] IrqError),
}

/// A source of wall-clock time.
pub trait Clock: Send {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The host's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A host clock set before 1970 reads as the epoch rather than failing.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A one-shot host timer that makes the event loop call [`Pl031Rtc::on_alarm_timer`].
pub trait AlarmTimer: Send {
    /// Fires once, `after` from now, replacing any earlier setting.
    fn arm(&mut self, after: Duration) -> io::Result<()>;
    /// Cancels a pending expiry.
    fn disarm(&mut self) -> io::Result<()>;
    /// Consumes a reported expiry so the event loop does not see it again.
    fn acknowledge(&mut self) -> io::Result<()>;
}

/// [`AlarmTimer`] on a non-blocking `timerfd` (CLOCK_MONOTONIC) for an epoll event loop.
#[derive(Debug)]
pub struct TimerFdAlarm {
    timer: TimerFd,
}

impl TimerFdAlarm {
    /// A disarmed, non-blocking timer.
    pub fn new() -> Result<Self, RtcError> {
        let timer = TimerFd::new().map_err(|e| RtcError::CreateTimer(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(RtcError::CreateTimer)?;
        Ok(Self { timer })
    }
}

/// `acknowledge` drains the timerfd with a read, which must not block when the event
/// loop calls it without a pending expiry. vmm-sys-util creates it blocking.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own only changes its status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AlarmTimer for TimerFdAlarm {
    fn arm(&mut self, after: Duration) -> io::Result<()> {
        // A zero expiry would disarm the timerfd instead of firing it.
        let after = after.max(Duration::from_nanos(1));
        self.timer.reset(after, None).map_err(io::Error::from)
    }

    fn disarm(&mut self) -> io::Result<()> {
        self.timer.clear().map_err(io::Error::from)
    }

    fn acknowledge(&mut self) -> io::Result<()> {
        match self.timer.wait() {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsRawFd for TimerFdAlarm {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// Everything needed to rebuild a [`Pl031Rtc`], for save/restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// Counter minus host wall-clock seconds (set by RTCLR writes): the guest's time keeps
    /// following the host's while the VM is saved.
    pub offset: i64,
    /// Last value written to RTCLR.
    pub lr: u32,
    /// RTCMR, the match register.
    pub mr: u32,
    /// RTCIMSC, the interrupt mask (1 = enabled).
    pub imsc: u32,
    /// RTCRIS, the raw interrupt status.
    pub ris: u32,
    /// Host wall-clock second (since the epoch) at which the counter reaches MR, if that
    /// match is armed and has not fired yet.
    pub alarm_at: Option<u64>,
}

impl RtcState {
    fn validate(&self) -> Result<(), RtcStateError> {
        if self.imsc & !ALARM_BIT != 0 {
            return Err(RtcStateError::InvalidInterruptMask(self.imsc));
        }
        if self.ris & !ALARM_BIT != 0 {
            return Err(RtcStateError::InvalidRawStatus(self.ris));
        }
        if let Some(at) = self.alarm_at {
            // The counter at that second, as `counter_at` computes it.
            let counter = i64::try_from(at).map(|at| at.wrapping_add(self.offset) as u32);
            if counter != Ok(self.mr) {
                return Err(RtcStateError::InvalidAlarm { at, mr: self.mr });
            }
        }
        Ok(())
    }
}

/// Errors from rebuilding a [`Pl031Rtc`] from an [`RtcState`].
#[derive(Debug, Error)]
pub enum RtcStateError {
    /// RTCIMSC has bits other than the alarm's.
    #[error("Invalid RTC state: RTCIMSC {0:#x}")]
    InvalidInterruptMask(u32),
    /// RTCRIS has bits other than the alarm's.
    #[error("Invalid RTC state: RTCRIS {0:#x}")]
    InvalidRawStatus(u32),
    /// The armed alarm is not due when the counter reaches MR.
    #[error("Invalid RTC state: the counter is not {mr} at the alarm's second {at}")]
    InvalidAlarm {
        /// The saved alarm time, host seconds since the epoch.
        at: u64,
        /// The saved match register.
        mr: u32,
    },
    /// The host timer could not be re-armed for the pending alarm.
    #[error("Cannot re-arm the RTC alarm timer")]
    Timer(#[source] io::Error),
    /// The interrupt line could not be driven to the saved level.
    #[error("Cannot drive the restored RTC interrupt")]
    Irq(#[source] IrqError),
}

impl From<RtcError> for RtcStateError {
    fn from(err: RtcError) -> Self {
        match err {
            RtcError::CreateTimer(e) | RtcError::Timer(e) => Self::Timer(e),
            RtcError::Irq(e) => Self::Irq(e),
        }
    }
}

/// The PL031 RTC.
pub struct Pl031Rtc<C: Clock, T: AlarmTimer> {
    clock: C,
    timer: T,
    irq: LevelIrq,
    offset: i64,
    lr: u32,
    mr: u32,
    imsc: u32,
    ris: u32,
    alarm_at: Option<u64>,
}

impl<C: Clock, T: AlarmTimer> Pl031Rtc<C, T> {
    /// An RTC reading host wall-clock time, no alarm pending, line low.
    pub fn new(irq: Arc<dyn IrqLine>, clock: C, timer: T) -> Self {
        Self {
            clock,
            timer,
            irq: LevelIrq::new(irq),
            offset: 0,
            lr: 0,
            mr: 0,
            imsc: 0,
            ris: 0,
            alarm_at: None,
        }
    }

    /// Rebuilds an RTC from `state`: drives the line to RIS & IMSC and re-arms a pending
    /// match on `timer`. A match whose time host time passed while the guest was saved
    /// fires now: RIS is set and, if unmasked, the line goes high before this returns.
    pub fn from_state(
        state: &RtcState,
        irq: Arc<dyn IrqLine>,
        clock: C,
        timer: T,
    ) -> Result<Self, RtcStateError> {
        state.validate()?;
        let mut rtc = Self {
            clock,
            timer,
            irq: LevelIrq::unknown(irq),
            offset: state.offset,
            lr: state.lr,
            mr: state.mr,
            imsc: state.imsc,
            ris: state.ris,
            alarm_at: state.alarm_at,
        };
        rtc.update_irq()?;
        rtc.check_alarm(true)?;
        Ok(rtc)
    }

    /// The registers and the armed alarm, for save/restore.
    pub fn state(&self) -> RtcState {
        RtcState {
            offset: self.offset,
            lr: self.lr,
            mr: self.mr,
            imsc: self.imsc,
            ris: self.ris,
            alarm_at: self.alarm_at,
        }
    }

    /// The host timer, e.g. to register its fd with the event loop.
    pub fn alarm_timer(&self) -> &T {
        &self.timer
    }

    /// Called by the event loop when the alarm timer fires: raises the alarm if the match
    /// time has come, or re-arms for the rest if the timer ran ahead of the wall clock.
    pub fn on_alarm_timer(&mut self) -> Result<(), RtcError> {
        self.timer.acknowledge().map_err(RtcError::Timer)?;
        self.check_alarm(true)
    }

    fn counter_at(&self, now: Duration) -> u32 {
        // The counter is 32 bits wide and wraps; truncation is the hardware behaviour.
        (now.as_secs() as i64).wrapping_add(self.offset) as u32
    }

    fn counter(&self) -> u32 {
        self.counter_at(self.clock.now())
    }

    fn load_counter(&mut self, value: u32) {
        let now = self.clock.now().as_secs() as i64;
        self.offset = i64::from(value).wrapping_sub(now);
    }

    /// Schedules the next time the counter equals MR (after an MR or LR write).
    fn schedule_match(&mut self) -> Result<(), RtcError> {
        let now = self.clock.now();
        let ticks = self.mr.wrapping_sub(self.counter_at(now));
        if ticks == 0 {
            self.alarm_at = None;
            self.timer.disarm().map_err(RtcError::Timer)?;
            return self.raise_alarm();
        }
        let at = now.as_secs().saturating_add(u64::from(ticks));
        self.alarm_at = Some(at);
        self.arm_for(at, now)
    }

    fn arm_for(&mut self, at: u64, now: Duration) -> Result<(), RtcError> {
        let after = Duration::from_secs(at).saturating_sub(now);
        self.timer.arm(after).map_err(RtcError::Timer)
    }

    /// Fires a pending match whose time has come. With `rearm`, a match still in the
    /// future gets the timer re-armed (for when the timer, not a register access, woke us).
    fn check_alarm(&mut self, rearm: bool) -> Result<(), RtcError> {
        let Some(at) = self.alarm_at else {
            return Ok(());
        };
        let now = self.clock.now();
        if now.as_secs() >= at {
            self.alarm_at = None;
            self.raise_alarm()
        } else if rearm {
            self.arm_for(at, now)
        } else {
            Ok(())
        }
    }

    fn raise_alarm(&mut self) -> Result<(), RtcError> {
        self.ris |= ALARM_BIT;
        self.update_irq()
    }

    fn update_irq(&mut self) -> Result<(), RtcError> {
        self.irq
            .set(self.ris & self.imsc & ALARM_BIT != 0)
            .map_err(RtcError::Irq)
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            RTCDR => self.counter(),
            RTCMR => self.mr,
            RTCLR => self.lr,
            // The counter always runs (it is the host clock), so it reads as started.
            RTCCR => 1,
            RTCIMSC => self.imsc,
            RTCRIS => self.ris,
            RTCMIS => self.ris & self.imsc,
            amba::ID_START..=amba::ID_END => u32::from(amba::id_register(PERIPH_ID, offset)),
            _ => {
                debug!("pl031: read of {offset:#x} (write-only or reserved)");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) -> Result<(), RtcError> {
        match offset {
            RTCMR => {
                self.mr = value;
                self.schedule_match()
            }
            RTCLR => {
                self.lr = value;
                self.load_counter(value);
                self.schedule_match()
            }
            // RTCStart can only be set, and already is; unlike vm-superio, writing it
            // never reloads the counter.
            RTCCR => Ok(()),
            RTCIMSC => {
                self.imsc = value & ALARM_BIT;
                self.update_irq()
            }
            RTCICR => {
                self.ris &= !(value & ALARM_BIT);
                self.update_irq()
            }
            _ => {
                debug!("pl031: write of {value:#x} to {offset:#x} (read-only or reserved)");
                Ok(())
            }
        }
    }
}

impl<C: Clock, T: AlarmTimer> MmioDevice for Pl031Rtc<C, T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        let Ok(word) = <&mut [u8; 4]>::try_from(&mut *data) else {
            data.fill(0);
            debug!("pl031: ignoring {len}-byte read at {offset:#x}");
            return;
        };
        if offset % 4 != 0 {
            *word = [0; 4];
            debug!("pl031: ignoring unaligned read at {offset:#x}");
            return;
        }
        // A match that came due before the event loop noticed is still visible to a
        // guest that polls.
        if let Err(e) = self.check_alarm(false) {
            warn!("pl031: {e}");
        }
        *word = self.read_register(offset).to_le_bytes();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(&bytes) = <&[u8; 4]>::try_from(data) else {
            debug!("pl031: ignoring {}-byte write at {offset:#x}", data.len());
            return;
        };
        if offset % 4 != 0 {
            debug!("pl031: ignoring unaligned write at {offset:#x}");
            return;
        }
        // Record a match that is already due before the write moves MR or the counter.
        // A failure to drive the line must not drop the guest's write, so log and go on.
        if let Err(e) = self.check_alarm(false) {
            warn!("pl031: {e}");
        }
        if let Err(e) = self.write_register(offset, u32::from_le_bytes(bytes)) {
            warn!("pl031: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
