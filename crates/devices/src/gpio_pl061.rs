//! ARM PrimeCell PL061 GPIO controller: 8 pins, with a host-driven input for a gpio-keys
//! wake button.
//!
//! Pin levels are the data register for guest outputs and the host-driven level for
//! inputs. Edge-sensitive pins (IS=0) latch a RIS bit on a change the IBE/IEV setting
//! selects, kept until the guest writes GPIOIC. Level-sensitive pins (IS=1) show in RIS
//! only while the level IEV selects holds. The output line is level: high while
//! RIS & IE != 0.
//!
//! Linux drives this chip with byte accesses (`readb`/`writeb`) and reads the ids with
//! word accesses, so 1-, 2- and 4-byte accesses within one register word are honoured.

use std::sync::Arc;

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::amba;
use crate::bus::MmioDevice;
use crate::irq::{IrqError, IrqLine, LevelIrq};

/// How many GPIO lines a PL061 has.
pub const PL061_PIN_COUNT: u32 = 8;

/// GPIODATA is aliased over 0x000..=0x3FC; address bits [9:2] mask the pins accessed.
const GPIODATA_END: u64 = 0x3FC;
const GPIODIR: u64 = 0x400;
const GPIOIS: u64 = 0x404;
const GPIOIBE: u64 = 0x408;
const GPIOIEV: u64 = 0x40C;
const GPIOIE: u64 = 0x410;
const GPIORIS: u64 = 0x414;
const GPIOMIS: u64 = 0x418;
const GPIOIC: u64 = 0x41C;
const GPIOAFSEL: u64 = 0x420;

/// PeriphID0..3: Linux's amba bus matches 0x00041061 (mask 0x000fffff).
const PERIPH_ID: [u8; 4] = [0x61, 0x10, 0x04, 0x00];

/// Errors from driving the GPIO controller from the host.
#[derive(Debug, Error)]
pub enum GpioError {
    /// The PL061 only has pins 0 to 7.
    #[error("No GPIO pin {pin} on a PL061")]
    InvalidPin {
        /// The requested pin.
        pin: u32,
    },
    /// The interrupt line could not be driven.
    #[error("Cannot drive the GPIO interrupt")]
    Irq(#[source] IrqError),
}

/// Errors from rebuilding a [`Pl061Gpio`] from a [`GpioState`]. Every combination of
/// register values is one the guest can reach, so there is nothing to reject.
#[derive(Debug, Error)]
pub enum GpioStateError {
    /// The interrupt line could not be driven to the saved level.
    #[error("Cannot drive the restored GPIO interrupt")]
    Irq(#[source] IrqError),
}

/// Everything needed to rebuild a [`Pl061Gpio`], for save/restore. GPIORIS is `edges` plus
/// the level-sensitive pins at their active level, so only the latched part is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpioState {
    /// Data register: the levels the guest drives on its output pins.
    pub data: u8,
    /// Levels the host drives on the pins (seen by the guest where they are inputs).
    pub inputs: u8,
    /// GPIODIR: 1 = output.
    pub dir: u8,
    /// GPIOIS: 1 = level-sensitive, 0 = edge-sensitive.
    pub is: u8,
    /// GPIOIBE: 1 = both edges (edge-sensitive pins only).
    pub ibe: u8,
    /// GPIOIEV: 1 = rising edge or high level.
    pub iev: u8,
    /// GPIOIE: 1 = interrupt enabled (unmasked).
    pub ie: u8,
    /// Latched edge interrupts, cleared by GPIOIC.
    pub edges: u8,
    /// GPIOAFSEL (stored only; there is no alternate function).
    pub afsel: u8,
}

/// The PL061 GPIO controller.
pub struct Pl061Gpio {
    regs: GpioState,
    irq: LevelIrq,
}

impl Pl061Gpio {
    /// A controller in its reset state (all pins inputs, all interrupts off), line low.
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        Self {
            regs: GpioState::default(),
            irq: LevelIrq::new(irq),
        }
    }

    /// Rebuilds a controller from `state` and drives the line to match it: an interrupt
    /// pending when it was saved is pending again.
    pub fn from_state(state: &GpioState, irq: Arc<dyn IrqLine>) -> Result<Self, GpioStateError> {
        let mut gpio = Self {
            regs: *state,
            irq: LevelIrq::unknown(irq),
        };
        gpio.drive_line().map_err(GpioStateError::Irq)?;
        Ok(gpio)
    }

    /// The registers and host inputs, for save/restore.
    pub fn state(&self) -> GpioState {
        self.regs
    }

    /// Drives input `pin` to `high`. A pin the guest made an output keeps showing its
    /// output; the host level takes effect when it becomes an input again.
    pub fn set_input(&mut self, pin: u32, high: bool) -> Result<(), GpioError> {
        if pin >= PL061_PIN_COUNT {
            return Err(GpioError::InvalidPin { pin });
        }
        let bit = 1u8 << pin;
        let before = self.pins();
        if high {
            self.regs.inputs |= bit;
        } else {
            self.regs.inputs &= !bit;
        }
        self.pins_changed(before)
    }

    /// Presses an active-high button on `pin` (drives it high).
    pub fn press(&mut self, pin: u32) -> Result<(), GpioError> {
        self.set_input(pin, true)
    }

    /// Releases an active-high button on `pin` (drives it low).
    pub fn release(&mut self, pin: u32) -> Result<(), GpioError> {
        self.set_input(pin, false)
    }

    /// The level on each pin: outputs from the data register, inputs from the host.
    fn pins(&self) -> u8 {
        (self.regs.data & self.regs.dir) | (self.regs.inputs & !self.regs.dir)
    }

    /// Latches the edges IS/IBE/IEV select among the pins that changed since `before`.
    fn pins_changed(&mut self, before: u8) -> Result<(), GpioError> {
        let now = self.pins();
        let changed = before ^ now;
        // A both-edges pin takes any change; otherwise the new level must equal IEV.
        let selected = self.regs.ibe | !(now ^ self.regs.iev);
        self.regs.edges |= changed & !self.regs.is & selected;
        self.update_irq()
    }

    /// GPIORIS: latched edges plus the level-sensitive pins at their active level.
    fn raw_status(&self) -> u8 {
        let active_levels = !(self.pins() ^ self.regs.iev) & self.regs.is;
        self.regs.edges | active_levels
    }

    fn update_irq(&mut self) -> Result<(), GpioError> {
        self.drive_line().map_err(GpioError::Irq)
    }

    /// Drives the line to RIS & IE.
    fn drive_line(&mut self) -> Result<(), IrqError> {
        self.irq.set(self.raw_status() & self.regs.ie != 0)
    }

    fn read_register(&self, offset: u64) -> u8 {
        match offset {
            // Bits [9:2] of the address select the pins read; the others read 0.
            0..=GPIODATA_END => self.pins() & (offset >> 2) as u8,
            GPIODIR => self.regs.dir,
            GPIOIS => self.regs.is,
            GPIOIBE => self.regs.ibe,
            GPIOIEV => self.regs.iev,
            GPIOIE => self.regs.ie,
            GPIORIS => self.raw_status(),
            GPIOMIS => self.raw_status() & self.regs.ie,
            GPIOAFSEL => self.regs.afsel,
            amba::ID_START..=amba::ID_END => amba::id_register(PERIPH_ID, offset),
            _ => {
                debug!("pl061: read of {offset:#x} (write-only or reserved)");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u8) -> Result<(), GpioError> {
        let before = self.pins();
        match offset {
            // Only the addressed pins that are outputs take the new value.
            0..=GPIODATA_END => {
                let mask = (offset >> 2) as u8 & self.regs.dir;
                self.regs.data = (self.regs.data & !mask) | (value & mask);
            }
            GPIODIR => self.regs.dir = value,
            GPIOIS => self.regs.is = value,
            GPIOIBE => self.regs.ibe = value,
            GPIOIEV => self.regs.iev = value,
            GPIOIE => self.regs.ie = value,
            GPIOIC => self.regs.edges &= !value,
            GPIOAFSEL => self.regs.afsel = value,
            _ => {
                debug!("pl061: write of {value:#x} to {offset:#x} (read-only or reserved)");
                return Ok(());
            }
        }
        self.pins_changed(before)
    }
}

/// Splits an access into its register word and byte lane, or `None` if it is not 1, 2 or
/// 4 bytes inside one word.
fn register_lane(offset: u64, len: usize) -> Option<(u64, u32)> {
    let lane = (offset % 4) as u32;
    (matches!(len, 1 | 2 | 4) && lane as usize + len <= 4)
        .then_some((offset - u64::from(lane), lane))
}

impl MmioDevice for Pl061Gpio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some((register, lane)) = register_lane(offset, data.len()) else {
            data.fill(0);
            debug!("pl061: ignoring {}-byte read at {offset:#x}", data.len());
            return;
        };
        let word = u32::from(self.read_register(register)) >> (8 * lane);
        data.copy_from_slice(&word.to_le_bytes()[..data.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Registers are 8 bits wide and live in byte lane 0; the upper lanes are reserved.
        let (Some((register, 0)), Some(&value)) = (register_lane(offset, data.len()), data.first())
        else {
            debug!("pl061: ignoring {}-byte write at {offset:#x}", data.len());
            return;
        };
        if let Err(e) = self.write_register(register, value) {
            warn!("pl061: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
