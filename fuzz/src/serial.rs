//! `devices::Serial16550` (vm-superio's 16550 on a 1-byte MMIO stride) driven by a program of
//! guest MMIO accesses and host input.
//!
//! Input: a sequence of operations, each an opcode byte and its operands:
//! - `0` write: offset selector, size selector ([`crate::access_size`]), value byte(s).
//! - `1` read: offset selector, size selector.
//! - `2` host input: a length byte (0 to 63) and that many bytes, through `enqueue_input`.
//! - `3` the output sink starts or stops failing (a console nobody reads).
//! - `4` the interrupt line starts or stops failing.
//! - `5` save and restore: `state()` then `from_state`, which must give the same state.
//! - `6` drain the receive-space eventfd.
//!
//! An offset selector below 0x80 is `selector % 16` (the eight registers and some beyond);
//! otherwise a u64 follows. Checks: accesses outside the registers read as zero, the FIFO
//! never takes more than its capacity, a restore gives back the state it was given.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use devices::Serial16550;
use devices::bus::MmioDevice;
use devices::test_utils::RecordingIrqLine;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::{Input, Sink, read_access, write_access};

/// Operations per input: plenty to fill the FIFO and drain it again.
const MAX_OPS: usize = 4096;

fn offset(input: &mut Input) -> Option<u64> {
    let selector = input.u8()?;
    if selector < 0x80 {
        Some(u64::from(selector % 16))
    } else {
        input.u64()
    }
}

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let irq = Arc::new(RecordingIrqLine::new());
    let sink = Sink::default();
    let rx_space = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut serial = Serial16550::with_rx_space_event(
        irq.clone(),
        Box::new(sink.clone()),
        rx_space.try_clone().unwrap(),
    );
    let mut irq_failing = false;
    for step in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        match op % 7 {
            0 => {
                let Some((offset, value)) = write_access(&mut input, offset) else {
                    break;
                };
                serial.write(offset, value);
            }
            1 => {
                let Some((offset, mut data)) = read_access(&mut input, offset) else {
                    break;
                };
                serial.read(offset, &mut data);
                if data.len() != 1 || offset >= 8 {
                    assert!(data.iter().all(|&b| b == 0), "{data:?} at {offset:#x}");
                }
            }
            2 => {
                let Some(len) = input.u8() else { break };
                let bytes = input.up_to(usize::from(len % 64));
                let room = serial.fifo_capacity();
                let taken = serial.enqueue_input(bytes);
                assert!(taken <= bytes.len() && taken <= room);
                assert_eq!(serial.fifo_capacity(), room - taken);
            }
            3 => {
                let failing = &sink.failing;
                failing.store(!failing.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            4 => {
                irq_failing = !irq_failing;
                irq.set_failing(irq_failing);
            }
            5 => {
                let state = serial.state();
                irq.set_failing(false);
                serial = Serial16550::from_state(
                    &state,
                    irq.clone(),
                    Box::new(sink.clone()),
                    Some(rx_space.try_clone().unwrap()),
                )
                .expect("a saved state must restore");
                irq.set_failing(irq_failing);
                assert_eq!(serial.state(), state);
            }
            _ => {
                let _ = rx_space.read();
            }
        }
        // The recording only grows; the harness does not need its history.
        if step % 256 == 255 {
            irq.clear();
        }
    }
}
