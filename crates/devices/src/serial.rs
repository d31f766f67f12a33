//! The 16550 UART on MMIO with a 1-byte register stride (as Firecracker maps it on arm64).
//!
//! `vm_superio::Serial` does the register work. Data arriving while the guest has the
//! received-data interrupt enabled pulses the line, so a console keypress can wake a
//! suspended guest once it armed the port for wakeup.

use std::io::Write;
use std::sync::Arc;

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_superio::serial::{Error as SuperioError, SerialEvents};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::MmioDevice;
use crate::irq::{IrqError, IrqLine, IrqLineTrigger};

/// The 16550 has eight byte-wide registers; the rest of the window reads as zero.
const REGISTER_COUNT: u64 = 8;

/// The receive FIFO of vm-superio's 16550 (its `FIFO_SIZE`).
pub const SERIAL_FIFO_SIZE: usize = 64;

/// IER bits a 16550 keeps (vm-superio masks writes to these).
const IER_VALID_BITS: u8 = 0x0f;
/// IIR values vm-superio can hold: none pending, THR empty, received data, or both.
const IIR_VALUES: [u8; 4] = [0x01, 0x02, 0x04, 0x06];

/// The registers and receive FIFO of a [`Serial16550`], for save/restore.
///
/// The fields mirror [`vm_superio::SerialState`], which is not serde-serialisable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte (DLM).
    pub baud_divisor_high: u8,
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register, without the FIFO bits reads add.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest, oldest first.
    pub in_buffer: Vec<u8>,
}

impl Default for SerialState {
    /// The state of a UART after reset.
    fn default() -> Self {
        vm_superio::SerialState::default().into()
    }
}

impl From<vm_superio::SerialState> for SerialState {
    fn from(state: vm_superio::SerialState) -> Self {
        Self {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::SerialState {
    fn from(state: &SerialState) -> Self {
        Self {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        }
    }
}

impl SerialState {
    fn validate(&self) -> Result<(), SerialStateError> {
        if self.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(SerialStateError::InvalidFifoLength(self.in_buffer.len()));
        }
        if self.interrupt_enable & !IER_VALID_BITS != 0 {
            return Err(SerialStateError::InvalidInterruptEnable(
                self.interrupt_enable,
            ));
        }
        if !IIR_VALUES.contains(&self.interrupt_identification) {
            return Err(SerialStateError::InvalidInterruptIdentification(
                self.interrupt_identification,
            ));
        }
        Ok(())
    }
}

/// Errors from rebuilding a [`Serial16550`] from a [`SerialState`].
#[derive(Debug, Error)]
pub enum SerialStateError {
    /// The saved receive FIFO holds more bytes than the UART's FIFO can.
    #[error("Invalid serial state: {0} bytes in a {SERIAL_FIFO_SIZE}-byte receive FIFO")]
    InvalidFifoLength(usize),
    /// The saved IER has bits a 16550 does not keep.
    #[error("Invalid serial state: IER {0:#04x}")]
    InvalidInterruptEnable(u8),
    /// The saved IIR is not a value the UART can hold.
    #[error("Invalid serial state: IIR {0:#04x}")]
    InvalidInterruptIdentification(u8),
    /// Re-raising an interrupt that was pending in the saved state failed.
    #[error("Cannot re-raise a pending serial interrupt")]
    Irq(#[source] IrqError),
    /// The output sink failed while restoring (the restore itself writes nothing).
    #[error("Cannot restore the serial output")]
    Output(#[source] std::io::Error),
}

/// Signals an optional eventfd when the guest has drained the receive FIFO, so the VMM
/// can resume reading host input it paused while the FIFO was full.
struct RxSpaceEvents {
    rx_space: Option<EventFd>,
}

impl SerialEvents for RxSpaceEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.rx_space {
            if let Err(e) = evt.write(1) {
                warn!("serial: failed to signal receive space: {e}");
            }
        }
    }
}

/// Where guest output goes (a terminal, a log file, `std::io::sink()`).
pub type SerialOutput = Box<dyn Write + Send>;

/// A 16550 UART whose interrupt is an edge-triggered [`IrqLine`].
pub struct Serial16550 {
    serial: vm_superio::Serial<IrqLineTrigger, RxSpaceEvents, SerialOutput>,
}

impl Serial16550 {
    /// A UART in its reset state that writes guest output to `out`.
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOutput) -> Self {
        Self {
            serial: vm_superio::Serial::with_events(
                IrqLineTrigger::new(irq),
                RxSpaceEvents { rx_space: None },
                out,
            ),
        }
    }

    /// Like [`Serial16550::new`], and writes to `rx_space` whenever the guest empties the
    /// receive FIFO.
    pub fn with_rx_space_event(
        irq: Arc<dyn IrqLine>,
        out: SerialOutput,
        rx_space: EventFd,
    ) -> Self {
        Self {
            serial: vm_superio::Serial::with_events(
                IrqLineTrigger::new(irq),
                RxSpaceEvents {
                    rx_space: Some(rx_space),
                },
                out,
            ),
        }
    }

    /// Rebuilds a UART from `state`, re-raising the interrupts it had pending (the line is
    /// an edge: the guest's handler then reads IIR and finds them). `rx_space` is as in
    /// [`Serial16550::with_rx_space_event`].
    pub fn from_state(
        state: &SerialState,
        irq: Arc<dyn IrqLine>,
        out: SerialOutput,
        rx_space: Option<EventFd>,
    ) -> Result<Self, SerialStateError> {
        state.validate()?;
        let serial = vm_superio::Serial::from_state(
            &state.into(),
            IrqLineTrigger::new(irq),
            RxSpaceEvents { rx_space },
            out,
        )
        .map_err(|err| match err {
            SuperioError::FullFifo => SerialStateError::InvalidFifoLength(state.in_buffer.len()),
            SuperioError::Trigger(e) => SerialStateError::Irq(e),
            SuperioError::IOError(e) => SerialStateError::Output(e),
        })?;
        Ok(Self { serial })
    }

    /// The registers and receive FIFO, for save/restore.
    pub fn state(&self) -> SerialState {
        self.serial.state().into()
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues host input for the guest and returns how many bytes fit.
    ///
    /// Bytes beyond the FIFO capacity are not taken; the caller keeps them and retries
    /// after the guest reads (see [`Serial16550::with_rx_space_event`]).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity().min(bytes.len());
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(taken) => taken,
            Err(SuperioError::FullFifo) => 0,
            // The bytes are queued before the interrupt is raised, so they were taken.
            Err(SuperioError::Trigger(e)) => {
                warn!("serial: input queued but interrupt failed: {e}");
                room
            }
            Err(SuperioError::IOError(e)) => {
                warn!("serial: unexpected output error while queueing input: {e}");
                0
            }
        }
    }
}

impl MmioDevice for Serial16550 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 1 || offset >= REGISTER_COUNT {
            debug!("serial: ignoring {}-byte read at {offset:#x}", data.len());
            return;
        }
        // `offset` < 8, so the narrowing is exact.
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            debug!("serial: ignoring {}-byte write at {offset:#x}", data.len());
            return;
        };
        if offset >= REGISTER_COUNT {
            debug!("serial: ignoring write at {offset:#x}");
            return;
        }
        match self.serial.write(offset as u8, value) {
            Ok(()) => {}
            // A broken console sink must not stall the guest; the byte is dropped.
            Err(SuperioError::IOError(e)) => debug!("serial: output byte lost: {e}"),
            Err(e) => warn!("serial: register write at {offset:#x} failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::test_utils::RecordingIrqLine;

    // 16550 register offsets and bits the Linux 8250 driver uses.
    const RBR_THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const MSR: u64 = 6;
    const SCR: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const IIR_NO_INTERRUPT: u8 = 0x01;
    const IIR_RDA: u8 = 0x04;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const LCR_DLAB: u8 = 0x80;

    /// A `Write` whose contents the test can still see after handing it to the UART.
    #[derive(Clone, Default)]
    struct SharedOutput(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOutput {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Serial16550, Arc<RecordingIrqLine>, SharedOutput) {
        let irq = Arc::new(RecordingIrqLine::new());
        let out = SharedOutput::default();
        let serial = Serial16550::new(irq.clone(), Box::new(out.clone()));
        (serial, irq, out)
    }

    fn read_reg(serial: &mut Serial16550, offset: u64) -> u8 {
        let mut data = [0xff];
        serial.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn guest_output_reaches_the_sink() {
        let (mut serial, _, out) = uart();
        for byte in b"hi\n" {
            serial.write(RBR_THR, &[*byte]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_ne!(read_reg(&mut serial, LSR) & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn input_with_rx_interrupt_enabled_pulses_the_line() {
        let (mut serial, irq, _) = uart();
        serial.write(IER, &[IER_RDA]);
        assert_eq!(irq.rising_edges(), 0);

        assert_eq!(serial.enqueue_input(b"a"), 1);
        assert_eq!(irq.rising_edges(), 1);
        assert!(!irq.is_high(), "edge line must end low");

        assert_eq!(read_reg(&mut serial, IIR) & 0x0f, IIR_RDA);
        assert_ne!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read_reg(&mut serial, RBR_THR), b'a');
        assert_eq!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read_reg(&mut serial, IIR) & 0x0f, IIR_NO_INTERRUPT);

        // The next keypress, after the driver drained the FIFO, is a new edge.
        serial.enqueue_input(b"b");
        assert_eq!(irq.rising_edges(), 2);
    }

    #[test]
    fn input_with_rx_interrupt_masked_is_raised_when_unmasked() {
        let (mut serial, irq, _) = uart();
        serial.enqueue_input(b"x");
        assert_eq!(irq.rising_edges(), 0);
        serial.write(IER, &[IER_RDA]);
        assert_eq!(irq.rising_edges(), 1);
    }

    #[test]
    fn thr_empty_interrupt_pulses_after_output() {
        let (mut serial, irq, _) = uart();
        serial.write(IER, &[IER_THRE]);
        let after_enable = irq.rising_edges();
        read_reg(&mut serial, IIR); // acknowledge
        serial.write(RBR_THR, b"z");
        assert_eq!(irq.rising_edges(), after_enable + 1);
    }

    #[test]
    fn enqueue_respects_fifo_capacity() {
        let (mut serial, _, _) = uart();
        let capacity = serial.fifo_capacity();
        let input = vec![b'k'; capacity + 10];
        assert_eq!(serial.enqueue_input(&input), capacity);
        assert_eq!(serial.fifo_capacity(), 0);
        assert_eq!(serial.enqueue_input(b"more"), 0);
        assert_eq!(serial.enqueue_input(b""), 0);
        read_reg(&mut serial, RBR_THR);
        assert_eq!(serial.enqueue_input(b"more"), 1);
    }

    #[test]
    fn enqueue_counts_bytes_even_when_interrupt_fails() {
        let (mut serial, irq, _) = uart();
        serial.write(IER, &[IER_RDA]);
        irq.set_failing(true);
        assert_eq!(serial.enqueue_input(b"abc"), 3);
        assert_eq!(read_reg(&mut serial, RBR_THR), b'a');
    }

    #[test]
    fn drained_fifo_signals_rx_space() {
        let irq = Arc::new(RecordingIrqLine::new());
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut serial = Serial16550::with_rx_space_event(
            irq,
            Box::new(std::io::sink()),
            evt.try_clone().unwrap(),
        );
        serial.enqueue_input(b"ab");
        read_reg(&mut serial, RBR_THR);
        assert!(evt.read().is_err(), "FIFO not empty yet");
        read_reg(&mut serial, RBR_THR);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn only_single_byte_accesses_inside_the_register_file_are_honoured() {
        let (mut serial, _, out) = uart();
        serial.write(SCR, &[0x5a]);
        assert_eq!(read_reg(&mut serial, SCR), 0x5a);

        let mut wide = [0xff; 4];
        serial.read(SCR, &mut wide);
        assert_eq!(wide, [0; 4]);
        serial.write(RBR_THR, b"xy");
        assert!(out.0.lock().unwrap().is_empty());

        assert_eq!(read_reg(&mut serial, 0x8), 0);
        assert_eq!(read_reg(&mut serial, 0xfff), 0);
        serial.write(0x107, &[0x11]); // would alias SCR if the offset were truncated
        assert_eq!(read_reg(&mut serial, SCR), 0x5a);
    }

    #[test]
    fn divisor_latch_is_reachable_through_dlab() {
        let (mut serial, _, out) = uart();
        serial.write(LCR, &[LCR_DLAB]);
        serial.write(RBR_THR, &[0x0c]);
        assert_eq!(read_reg(&mut serial, RBR_THR), 0x0c);
        serial.write(LCR, &[0x03]);
        assert!(out.0.lock().unwrap().is_empty(), "DLL write is not output");
    }

    /// The registers a read does not change, as the guest sees them (DLL/DLM through DLAB).
    fn visible_registers(serial: &mut Serial16550) -> Vec<u8> {
        let mut regs: Vec<u8> = [IER, LCR, MCR, LSR, MSR, SCR]
            .iter()
            .map(|&offset| read_reg(serial, offset))
            .collect();
        let lcr = read_reg(serial, LCR);
        serial.write(LCR, &[lcr | LCR_DLAB]);
        regs.push(read_reg(serial, RBR_THR));
        regs.push(read_reg(serial, IER));
        serial.write(LCR, &[lcr]);
        regs
    }

    fn restore(state: &SerialState, irq: &Arc<RecordingIrqLine>) -> Serial16550 {
        Serial16550::from_state(state, irq.clone(), Box::new(std::io::sink()), None).unwrap()
    }

    #[test]
    fn restored_uart_reads_back_its_registers_and_pending_input() {
        let (mut serial, _, _) = uart();
        serial.write(LCR, &[LCR_DLAB]);
        serial.write(RBR_THR, &[0x01]);
        serial.write(IER, &[0x00]);
        serial.write(LCR, &[0x1b]);
        serial.write(MCR, &[0x0b]);
        serial.write(SCR, &[0x5a]);
        serial.write(IER, &[IER_RDA]);
        serial.enqueue_input(b"qr");
        let state = crate::test_utils::through_json(&serial.state());
        assert_eq!(state.interrupt_identification, IIR_RDA);

        let irq = Arc::new(RecordingIrqLine::new());
        let mut restored = restore(&state, &irq);
        assert_eq!(irq.rising_edges(), 1, "pending RX interrupt is re-raised");
        assert_eq!(
            visible_registers(&mut restored),
            visible_registers(&mut serial)
        );
        assert_eq!(read_reg(&mut restored, IIR), read_reg(&mut serial, IIR));
        for expected in [b'q', b'r'] {
            assert_eq!(read_reg(&mut restored, RBR_THR), expected);
            assert_eq!(read_reg(&mut serial, RBR_THR), expected);
        }
        assert_eq!(read_reg(&mut restored, LSR), read_reg(&mut serial, LSR));
        assert_eq!(read_reg(&mut restored, LSR) & LSR_DATA_READY, 0);
        assert_eq!(restored.fifo_capacity(), SERIAL_FIFO_SIZE);
    }

    #[test]
    fn restored_idle_uart_raises_nothing_and_takes_input() {
        let (serial, _, _) = uart();
        let state = crate::test_utils::through_json(&serial.state());
        assert_eq!(state, SerialState::default());
        let irq = Arc::new(RecordingIrqLine::new());
        let mut restored = restore(&state, &irq);
        assert_eq!(irq.rising_edges(), 0);
        restored.write(IER, &[IER_RDA]);
        restored.enqueue_input(b"z");
        assert_eq!(irq.rising_edges(), 1);
        assert_eq!(read_reg(&mut restored, RBR_THR), b'z');
    }

    fn restore_error(state: SerialState) -> SerialStateError {
        match Serial16550::from_state(
            &state,
            Arc::new(RecordingIrqLine::new()),
            Box::new(std::io::sink()),
            None,
        ) {
            Ok(_) => panic!("{state:?} was accepted"),
            Err(err) => err,
        }
    }

    #[test]
    fn a_fifo_longer_than_the_uarts_is_rejected() {
        let err = restore_error(SerialState {
            in_buffer: vec![0; SERIAL_FIFO_SIZE + 1],
            ..SerialState::default()
        });
        assert!(
            matches!(err, SerialStateError::InvalidFifoLength(65)),
            "{err}"
        );
    }

    #[test]
    fn ier_bits_a_16550_does_not_keep_are_rejected() {
        let err = restore_error(SerialState {
            interrupt_enable: 0x10,
            ..SerialState::default()
        });
        assert!(
            matches!(err, SerialStateError::InvalidInterruptEnable(0x10)),
            "{err}"
        );
    }

    #[test]
    fn an_iir_the_uart_cannot_hold_is_rejected() {
        let err = restore_error(SerialState {
            interrupt_identification: 0x00,
            ..SerialState::default()
        });
        assert!(
            matches!(err, SerialStateError::InvalidInterruptIdentification(0)),
            "{err}"
        );
    }
}
