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
use thiserror::Error;

use crate::bus::MmioDevice;
use crate::irq::{IrqError, IrqLine};

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
const ID_START: u64 = 0xFE0;
const ID_END: u64 = 0xFFC;

/// PeriphID0..3 then PCellID0..3, one byte per word: Linux's amba bus matches 0x00041061
/// (mask 0x000fffff) and cell id 0xb105f00d.
const AMBA_IDS: [u8; 8] = [0x61, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

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
    #[error("Failed to drive the GPIO interrupt")]
    Irq(#[source] IrqError),
}

/// Everything needed to rebuild a [`Pl061Gpio`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pl061State {
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
    regs: Pl061State,
    irq: Arc<dyn IrqLine>,
    /// Level last driven successfully; `None` forces the next update to drive it.
    line_level: Option<bool>,
}

impl Pl061Gpio {
    /// A controller in its reset state (all pins inputs, all interrupts off), line low.
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        Self {
            regs: Pl061State::default(),
            irq,
            line_level: Some(false),
        }
    }

    /// Rebuilds a controller from `state` and drives the line to match it.
    pub fn from_state(state: &Pl061State, irq: Arc<dyn IrqLine>) -> Result<Self, GpioError> {
        let mut gpio = Self {
            regs: *state,
            irq,
            line_level: None,
        };
        gpio.update_irq()?;
        Ok(gpio)
    }

    /// The registers and host inputs, for save/restore.
    pub fn state(&self) -> Pl061State {
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
        let level = self.raw_status() & self.regs.ie != 0;
        if self.line_level == Some(level) {
            return Ok(());
        }
        self.line_level = None;
        self.irq.set_level(level).map_err(GpioError::Irq)?;
        self.line_level = Some(level);
        Ok(())
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
            ID_START..=ID_END => AMBA_IDS[((offset - ID_START) / 4) as usize],
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
mod tests {
    use super::*;
    use crate::irq::RecordingIrqLine;

    const KEY_PIN: u32 = 3;
    const KEY_BIT: u8 = 1 << KEY_PIN;

    fn gpio() -> (Pl061Gpio, Arc<RecordingIrqLine>) {
        let irq = Arc::new(RecordingIrqLine::new());
        (Pl061Gpio::new(irq.clone()), irq)
    }

    fn readb(gpio: &mut Pl061Gpio, offset: u64) -> u8 {
        let mut data = [0xff];
        gpio.read(offset, &mut data);
        data[0]
    }

    fn writeb(gpio: &mut Pl061Gpio, offset: u64, value: u8) {
        gpio.write(offset, &[value]);
    }

    fn readl(gpio: &mut Pl061Gpio, offset: u64) -> u32 {
        let mut data = [0xff; 4];
        gpio.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Linux `pl061_get_value`: `readb(base + BIT(offset + 2))`.
    fn get_value(gpio: &mut Pl061Gpio, pin: u32) -> bool {
        readb(gpio, 1 << (pin + 2)) != 0
    }

    /// What gpio-keys makes the Linux driver do for an IRQ_TYPE_EDGE_BOTH button.
    fn linux_request_both_edges(gpio: &mut Pl061Gpio, bit: u8) {
        let dir = readb(gpio, GPIODIR);
        writeb(gpio, GPIODIR, dir & !bit);
        let is = readb(gpio, GPIOIS);
        writeb(gpio, GPIOIS, is & !bit);
        let ibe = readb(gpio, GPIOIBE);
        writeb(gpio, GPIOIBE, ibe | bit);
        let ie = readb(gpio, GPIOIE);
        writeb(gpio, GPIOIE, ie | bit);
    }

    /// Linux `pl061_irq_handler` plus `handle_edge_irq`'s ack: returns the pending pins.
    fn linux_handle_irq(gpio: &mut Pl061Gpio) -> u8 {
        let pending = readb(gpio, GPIOMIS);
        for pin in 0..PL061_PIN_COUNT {
            if pending & (1 << pin) != 0 {
                writeb(gpio, GPIOIC, 1 << pin);
            }
        }
        pending
    }

    #[test]
    fn identifies_as_pl061_to_the_amba_bus() {
        let (mut gpio, _) = gpio();
        let byte = |gpio: &mut Pl061Gpio, i: u64| readl(gpio, ID_START + 4 * i) & 0xff;
        let periph_id = (0..4).fold(0, |id, i| id | byte(&mut gpio, i) << (8 * i));
        let cell_id = (4..8).fold(0, |id, i| id | byte(&mut gpio, i) << (8 * (i - 4)));
        assert_eq!(periph_id & 0x000f_ffff, 0x0004_1061);
        assert_eq!(cell_id, 0xb105_f00d);
    }

    #[test]
    fn gpio_keys_press_and_release_each_interrupt() {
        let (mut gpio, irq) = gpio();
        linux_request_both_edges(&mut gpio, KEY_BIT);
        assert!(!irq.is_high());

        gpio.press(KEY_PIN).unwrap();
        assert!(irq.is_high(), "press wakes");
        assert_eq!(linux_handle_irq(&mut gpio), KEY_BIT);
        assert!(!irq.is_high(), "GPIOIC deasserts");
        assert!(get_value(&mut gpio, KEY_PIN), "key reads pressed");

        gpio.release(KEY_PIN).unwrap();
        assert!(irq.is_high(), "release interrupts too");
        assert_eq!(linux_handle_irq(&mut gpio), KEY_BIT);
        assert!(!get_value(&mut gpio, KEY_PIN));

        // A second press must be a new edge (Cloud Hypervisor's model never releases).
        gpio.press(KEY_PIN).unwrap();
        assert!(irq.is_high());
        assert_eq!(irq.rising_edges(), 3);
    }

    #[test]
    fn rising_edge_only_ignores_release() {
        let (mut gpio, irq) = gpio();
        writeb(&mut gpio, GPIOIEV, KEY_BIT);
        writeb(&mut gpio, GPIOIE, KEY_BIT);
        gpio.press(KEY_PIN).unwrap();
        assert_eq!(linux_handle_irq(&mut gpio), KEY_BIT);
        gpio.release(KEY_PIN).unwrap();
        assert_eq!(readb(&mut gpio, GPIORIS), 0);
        assert!(!irq.is_high());
    }

    #[test]
    fn falling_edge_only_ignores_press() {
        let (mut gpio, _) = gpio();
        writeb(&mut gpio, GPIOIE, KEY_BIT); // IEV = 0: falling
        gpio.press(KEY_PIN).unwrap();
        assert_eq!(readb(&mut gpio, GPIORIS), 0);
        gpio.release(KEY_PIN).unwrap();
        assert_eq!(readb(&mut gpio, GPIORIS), KEY_BIT);
    }

    #[test]
    fn masked_edge_is_latched_and_raised_on_unmask() {
        let (mut gpio, irq) = gpio();
        writeb(&mut gpio, GPIOIBE, KEY_BIT);
        gpio.press(KEY_PIN).unwrap();
        assert_eq!(readb(&mut gpio, GPIORIS), KEY_BIT);
        assert_eq!(readb(&mut gpio, GPIOMIS), 0);
        assert!(!irq.is_high());
        writeb(&mut gpio, GPIOIE, KEY_BIT);
        assert!(irq.is_high());
        writeb(&mut gpio, GPIOIE, 0);
        assert!(!irq.is_high(), "masking deasserts");
    }

    #[test]
    fn level_interrupt_holds_until_the_level_goes() {
        let (mut gpio, irq) = gpio();
        writeb(&mut gpio, GPIOIS, KEY_BIT);
        writeb(&mut gpio, GPIOIEV, KEY_BIT); // high level
        writeb(&mut gpio, GPIOIE, KEY_BIT);
        assert!(!irq.is_high());

        gpio.press(KEY_PIN).unwrap();
        assert!(irq.is_high());
        writeb(&mut gpio, GPIOIC, KEY_BIT);
        assert_eq!(
            readb(&mut gpio, GPIOMIS),
            KEY_BIT,
            "IC does not clear a level"
        );
        assert!(irq.is_high());

        gpio.release(KEY_PIN).unwrap();
        assert_eq!(readb(&mut gpio, GPIORIS), 0);
        assert!(!irq.is_high());
    }

    #[test]
    fn low_level_interrupt_is_active_while_low() {
        let (mut gpio, irq) = gpio();
        gpio.press(KEY_PIN).unwrap();
        writeb(&mut gpio, GPIOIS, KEY_BIT); // IEV = 0: low level
        writeb(&mut gpio, GPIOIE, KEY_BIT);
        assert!(!irq.is_high());
        gpio.release(KEY_PIN).unwrap();
        assert!(irq.is_high());
    }

    #[test]
    fn data_address_bits_mask_reads_and_writes() {
        let (mut gpio, _) = gpio();
        writeb(&mut gpio, GPIODIR, 0x0f); // pins 0-3 outputs, 4-7 inputs
        gpio.set_input(6, true).unwrap();

        // Write all ones through a mask selecting pins 1 and 5: only output pin 1 changes.
        writeb(&mut gpio, ((1 << 1) | (1 << 5)) << 2, 0xff);
        assert_eq!(readb(&mut gpio, 0x3fc), (1 << 1) | (1 << 6));
        // A read sees only the addressed pins.
        assert_eq!(readb(&mut gpio, (1 << 6) << 2), 1 << 6);
        assert_eq!(readb(&mut gpio, (1 << 1) << 2), 1 << 1);
        assert_eq!(readb(&mut gpio, 0), 0);
        // A write through mask 0 changes nothing.
        writeb(&mut gpio, 0, 0);
        assert_eq!(readb(&mut gpio, 0x3fc), (1 << 1) | (1 << 6));
    }

    #[test]
    fn linux_direction_output_sets_the_level() {
        let (mut gpio, _) = gpio();
        // pl061_direction_output(pin 2, 1): value, DIR, value again.
        writeb(&mut gpio, 1 << 4, 1 << 2);
        let dir = readb(&mut gpio, GPIODIR);
        writeb(&mut gpio, GPIODIR, dir | 1 << 2);
        writeb(&mut gpio, 1 << 4, 1 << 2);
        assert!(get_value(&mut gpio, 2));
    }

    #[test]
    fn host_input_on_an_output_pin_waits_for_input_mode() {
        let (mut gpio, _) = gpio();
        writeb(&mut gpio, GPIODIR, KEY_BIT);
        gpio.press(KEY_PIN).unwrap();
        assert!(!get_value(&mut gpio, KEY_PIN));
        writeb(&mut gpio, GPIODIR, 0);
        assert!(get_value(&mut gpio, KEY_PIN));
    }

    #[test]
    fn invalid_pin_is_an_error() {
        let (mut gpio, _) = gpio();
        assert!(matches!(
            gpio.press(PL061_PIN_COUNT),
            Err(GpioError::InvalidPin { pin: 8 })
        ));
        assert!(gpio.set_input(u32::MAX, true).is_err());
    }

    #[test]
    fn word_and_byte_accesses_agree_and_odd_ones_are_ignored() {
        let (mut gpio, _) = gpio();
        gpio.write(GPIOIE, &0x0000_00a5u32.to_le_bytes());
        assert_eq!(readb(&mut gpio, GPIOIE), 0xa5);
        assert_eq!(readl(&mut gpio, GPIOIE), 0xa5);
        assert_eq!(readb(&mut gpio, GPIOIE + 1), 0, "upper lanes are reserved");

        writeb(&mut gpio, GPIOIE + 1, 0xff);
        gpio.write(GPIOIE, &[0xff; 8]);
        gpio.write(GPIOIE + 2, &[0xff; 4]);
        gpio.write(GPIOIE, &[0xff; 3]);
        assert_eq!(readb(&mut gpio, GPIOIE), 0xa5);

        let mut wide = [0xff; 8];
        gpio.read(GPIOIE, &mut wide);
        assert_eq!(wide, [0; 8]);
    }

    #[test]
    fn reserved_and_read_only_registers_ignore_writes() {
        let (mut gpio, _) = gpio();
        writeb(&mut gpio, GPIOIBE, KEY_BIT);
        gpio.press(KEY_PIN).unwrap();
        writeb(&mut gpio, GPIORIS, 0);
        writeb(&mut gpio, GPIOMIS, 0);
        writeb(&mut gpio, 0x800, 0xff);
        writeb(&mut gpio, ID_START, 0);
        assert_eq!(readb(&mut gpio, GPIORIS), KEY_BIT);
        assert_eq!(readb(&mut gpio, GPIOIC), 0);
        assert_eq!(readb(&mut gpio, 0x800), 0);
        assert_eq!(readb(&mut gpio, ID_START), 0x61);
    }

    #[test]
    fn state_round_trip_restores_the_line() {
        let (mut gpio, _) = gpio();
        linux_request_both_edges(&mut gpio, KEY_BIT);
        gpio.press(KEY_PIN).unwrap();
        let state = gpio.state();

        let irq = Arc::new(RecordingIrqLine::new());
        let mut restored = Pl061Gpio::from_state(&state, irq.clone()).unwrap();
        assert_eq!(restored.state(), state);
        assert!(irq.is_high(), "pending press survives restore");
        assert_eq!(linux_handle_irq(&mut restored), KEY_BIT);
        assert!(!irq.is_high());
        restored.release(KEY_PIN).unwrap();
        assert!(irq.is_high());
    }

    #[test]
    fn failing_line_is_reported_and_retried() {
        let (mut gpio, irq) = gpio();
        linux_request_both_edges(&mut gpio, KEY_BIT);
        irq.set_failing(true);
        assert!(matches!(gpio.press(KEY_PIN), Err(GpioError::Irq(_))));
        writeb(&mut gpio, GPIOIC, KEY_BIT); // must not panic
        irq.set_failing(false);
        gpio.release(KEY_PIN).unwrap();
        assert!(irq.is_high());
    }
}
