//! `devices::Pl061Gpio` driven by a program of guest MMIO accesses and host button presses.
//!
//! Input: operations, each an opcode byte and its operands:
//! - `0` write: offset selector, size selector ([`crate::access_size`]), value byte(s).
//! - `1` read: offset selector, size selector.
//! - `2` press, `3` release: a pin byte (pins 8 and up must be refused).
//! - `4` the interrupt line starts or stops failing.
//! - `5` save and restore through `state()` and `from_state`.
//!
//! An offset selector below 0x80 is a register (the GPIODATA alias window, the control
//! registers, the ids) plus a lane of 0 to 3; otherwise a u64 follows. Checks: while the line
//! never failed, its level is "GPIOMIS != 0" after every operation; a restore keeps the
//! state; pins 8 and up are refused.

use std::sync::Arc;

use devices::Pl061Gpio;
use devices::bus::MmioDevice;
use devices::gpio_pl061::PL061_PIN_COUNT;
use devices::test_utils::RecordingIrqLine;

use crate::{Input, read_access, write_access};

const MAX_OPS: usize = 4096;
const GPIOMIS: u64 = 0x418;

const REGISTERS: [u64; 16] = [
    0x000, 0x004, 0x3FC, 0x400, 0x404, 0x408, 0x40C, 0x410, 0x414, 0x418, 0x41C, 0x420, 0x424,
    0xFE0, 0xFFC, 0x1000,
];

fn offset(input: &mut Input) -> Option<u64> {
    let selector = input.u8()?;
    if selector < 0x80 {
        // Bits 0-3 pick the register, bits 4-5 the byte lane, bit 6 a GPIODATA pin mask.
        let register = REGISTERS[usize::from(selector & 0xF)];
        let register = if selector & 0x40 != 0 && register == 0 {
            u64::from(input.u8()?) << 2
        } else {
            register
        };
        Some(register + u64::from((selector >> 4) & 3))
    } else {
        input.u64()
    }
}

fn interrupt_pending(gpio: &mut Pl061Gpio) -> bool {
    let mut mis = [0xA5];
    gpio.read(GPIOMIS, &mut mis);
    mis[0] != 0
}

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let irq = Arc::new(RecordingIrqLine::new());
    let mut gpio = Pl061Gpio::new(irq.clone());
    let mut irq_failing = false;
    let mut irq_ever_failed = false;
    for _ in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        match op % 6 {
            0 => {
                let Some((offset, value)) = write_access(&mut input, offset) else {
                    break;
                };
                gpio.write(offset, value);
            }
            1 => {
                let Some((offset, mut data)) = read_access(&mut input, offset) else {
                    break;
                };
                gpio.read(offset, &mut data);
            }
            op @ (2 | 3) => {
                let Some(pin) = input.u8() else { break };
                let pin = u32::from(pin % 16);
                let result = if op == 2 {
                    gpio.press(pin)
                } else {
                    gpio.release(pin)
                };
                if pin >= PL061_PIN_COUNT {
                    assert!(result.is_err(), "pin {pin} accepted");
                } else if !irq_failing {
                    result.unwrap();
                }
            }
            4 => {
                irq_failing = !irq_failing;
                irq_ever_failed = true;
                irq.set_failing(irq_failing);
            }
            _ => {
                let state = gpio.state();
                match Pl061Gpio::from_state(&state, irq.clone()) {
                    Ok(restored) => {
                        assert_eq!(restored.state(), state);
                        gpio = restored;
                    }
                    Err(_) => assert!(irq_failing),
                }
            }
        }
        if !irq_ever_failed {
            assert_eq!(irq.is_high(), interrupt_pending(&mut gpio));
        }
    }
}
