//! Test doubles for the devices' host side: an interrupt line that records its levels and a
//! clock that moves only when told to. Built for this crate's unit tests and, through the
//! `test-utils` feature, for other crates' tests and the fuzz targets; never part of a normal
//! build.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::irq::{IrqError, IrqLine};
use crate::rtc_pl031::Clock;

/// An interrupt line that records every level it is driven to, and can be made to fail.
#[derive(Debug, Default)]
pub struct RecordingIrqLine {
    inner: Mutex<Recording>,
}

#[derive(Debug, Default)]
struct Recording {
    levels: Vec<bool>,
    failing: bool,
}

impl RecordingIrqLine {
    /// A line that starts low with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    fn recording(&self) -> MutexGuard<'_, Recording> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every level set so far, oldest first.
    pub fn levels(&self) -> Vec<bool> {
        self.recording().levels.clone()
    }

    /// The current level (low if never driven).
    pub fn is_high(&self) -> bool {
        self.recording().levels.last().copied().unwrap_or(false)
    }

    /// How many low-to-high transitions were recorded (a pulse counts once).
    pub fn rising_edges(&self) -> usize {
        let rec = self.recording();
        let mut previous = false;
        rec.levels
            .iter()
            .filter(|&&level| {
                let rising = level && !previous;
                previous = level;
                rising
            })
            .count()
    }

    /// Forgets the recorded levels (the current level is then reported as low).
    pub fn clear(&self) {
        self.recording().levels.clear();
    }

    /// Makes later [`IrqLine::set_level`] calls fail (and not record) while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.recording().failing = failing;
    }
}

impl IrqLine for RecordingIrqLine {
    fn set_level(&self, high: bool) -> Result<(), IrqError> {
        let mut rec = self.recording();
        if rec.failing {
            return Err(IrqError::set_level(0, high, io::Error::other("injected")));
        }
        rec.levels.push(high);
        Ok(())
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `since_epoch`.
    pub fn new(since_epoch: Duration) -> Self {
        let clock = Self::default();
        clock.set(since_epoch);
        clock
    }

    /// Jumps to `since_epoch` (backwards too). Saturates about 584 years after 1970.
    pub fn set(&self, since_epoch: Duration) {
        let nanos = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::SeqCst);
    }

    /// Moves forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.set(self.now().saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// `value` written as JSON and read back, as a snapshot file would carry it.
#[cfg(test)]
pub(crate) fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}
