//! Interrupt lines as the devices see them.
//!
//! Devices only know "my output line is high or low". The VMM decides what that means
//! (KVM_IRQ_LINE on an SPI, an irqfd, a test double), which keeps this crate free of KVM.

use std::io;
use std::sync::Arc;

use thiserror::Error;

/// Errors from driving an interrupt line.
#[derive(Debug, Error)]
pub enum IrqError {
    /// The host refused to raise the line.
    #[error("Cannot assert interrupt line {line}")]
    Assert {
        /// The line's number as the implementation knows it (e.g. the SPI).
        line: u32,
        /// What the host reported.
        #[source]
        source: io::Error,
    },
    /// The host refused to lower the line.
    #[error("Cannot deassert interrupt line {line}")]
    Deassert {
        /// The line's number as the implementation knows it (e.g. the SPI).
        line: u32,
        /// What the host reported.
        #[source]
        source: io::Error,
    },
}

impl IrqError {
    /// Builds the error for a failed change of `line` to `high`.
    pub fn set_level(line: u32, high: bool, source: io::Error) -> Self {
        if high {
            Self::Assert { line, source }
        } else {
            Self::Deassert { line, source }
        }
    }
}

/// One interrupt output of a device, wired to the interrupt controller.
///
/// Level-triggered devices (PL031, PL061) call [`IrqLine::set_level`] whenever their
/// output changes; edge-triggered ones (16550) call [`IrqLine::pulse`].
pub trait IrqLine: Send + Sync {
    /// Drives the line to `high` (asserted) or low (deasserted).
    fn set_level(&self, high: bool) -> Result<(), IrqError>;

    /// Raises then lowers the line: one rising edge for an edge-triggered input.
    fn pulse(&self) -> Result<(), IrqError> {
        self.set_level(true)?;
        self.set_level(false)
    }
}

/// The output of a level-triggered device (PL031, PL061): drives its [`IrqLine`] only when the
/// level changes, and again after a failed attempt.
pub(crate) struct LevelIrq {
    line: Arc<dyn IrqLine>,
    /// The level last driven successfully; `None` makes the next [`LevelIrq::set`] drive it.
    driven: Option<bool>,
}

impl LevelIrq {
    /// A line that is low, as after a device's reset.
    pub(crate) fn new(line: Arc<dyn IrqLine>) -> Self {
        Self {
            line,
            driven: Some(false),
        }
    }

    /// A line whose level is not known (a device being restored): the first
    /// [`LevelIrq::set`] drives it whatever the level.
    pub(crate) fn unknown(line: Arc<dyn IrqLine>) -> Self {
        Self { line, driven: None }
    }

    /// Drives the line to `high` unless it is known to be there already.
    pub(crate) fn set(&mut self, high: bool) -> Result<(), IrqError> {
        if self.driven == Some(high) {
            return Ok(());
        }
        self.driven = None;
        self.line.set_level(high)?;
        self.driven = Some(high);
        Ok(())
    }
}

/// Adapts an [`IrqLine`] to `vm_superio::Trigger`, whose devices only ever "trigger".
///
/// Each trigger is a [`IrqLine::pulse`], so the line must be edge-triggered in the DT.
#[derive(Clone)]
pub struct IrqLineTrigger {
    line: Arc<dyn IrqLine>,
}

impl IrqLineTrigger {
    /// Wraps `line`.
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Self { line }
    }
}

impl vm_superio::Trigger for IrqLineTrigger {
    type E = IrqError;

    fn trigger(&self) -> Result<(), IrqError> {
        self.line.pulse()
    }
}

#[cfg(test)]
mod tests {
    use vm_superio::Trigger;

    use super::*;
    use crate::test_utils::RecordingIrqLine;

    #[test]
    fn pulse_is_one_rising_edge_and_ends_low() {
        let line = RecordingIrqLine::new();
        line.pulse().unwrap();
        assert_eq!(line.levels(), vec![true, false]);
        assert_eq!(line.rising_edges(), 1);
        assert!(!line.is_high());
    }

    #[test]
    fn repeated_high_counts_one_edge() {
        let line = RecordingIrqLine::new();
        line.set_level(true).unwrap();
        line.set_level(true).unwrap();
        assert!(line.is_high());
        assert_eq!(line.rising_edges(), 1);
        line.set_level(false).unwrap();
        line.set_level(true).unwrap();
        assert_eq!(line.rising_edges(), 2);
    }

    #[test]
    fn trigger_adapter_pulses_the_line() {
        let line = Arc::new(RecordingIrqLine::new());
        let trigger = IrqLineTrigger::new(line.clone());
        trigger.trigger().unwrap();
        trigger.trigger().unwrap();
        assert_eq!(line.rising_edges(), 2);
        assert!(!line.is_high());
    }

    #[test]
    fn a_level_line_is_driven_on_changes_and_again_after_a_failure() {
        let line = Arc::new(RecordingIrqLine::new());
        let mut level = LevelIrq::new(line.clone());
        level.set(false).unwrap();
        level.set(true).unwrap();
        level.set(true).unwrap();
        assert_eq!(line.levels(), [true]);
        line.set_failing(true);
        assert!(level.set(false).is_err());
        line.set_failing(false);
        level.set(false).unwrap();
        assert_eq!(line.levels(), [true, false]);

        let mut restored = LevelIrq::unknown(line.clone());
        restored.set(false).unwrap();
        assert_eq!(line.levels(), [true, false, false]);
    }

    #[test]
    fn failing_line_reports_which_direction_failed() {
        let line = RecordingIrqLine::new();
        line.set_failing(true);
        assert!(matches!(line.set_level(true), Err(IrqError::Assert { .. })));
        assert!(matches!(
            line.set_level(false),
            Err(IrqError::Deassert { .. })
        ));
        assert!(line.levels().is_empty());
        assert!(line.pulse().is_err());
    }
}
