//! Where the guest's serial console goes.
//!
//! The UART never writes to the host itself: it appends to a bounded [`OutputQueue`] that a
//! thread of its own drains to the real output. A reader that stops reading (a full pipe, a
//! stopped terminal) then blocks only that thread: the vCPU that wrote the byte goes on, bytes
//! past the queue's capacity are dropped and counted (Firecracker's `missed_write_count`), and
//! the VM stops on SIGTERM or `vm.shutdown` whatever the console does.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The guest console's host side.
#[derive(Clone, Default)]
pub enum Console {
    /// Output to stdout, input from stdin; stdin is in raw mode while it is a terminal. This is
    /// what the `vmm` binary uses.
    #[default]
    Terminal,
    /// Output to a shared writer. Input only through
    /// [`VmHandle::send_console_input`](crate::VmHandle::send_console_input).
    Writer(Arc<Mutex<dyn Write + Send>>),
    /// Output discarded, no input.
    Null,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Terminal => "Terminal",
            Self::Writer(_) => "Writer",
            Self::Null => "Null",
        })
    }
}

// Only the aarch64 runner builds UARTs.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
impl Console {
    /// A writer for one boot's UART.
    pub(crate) fn output(&self) -> Box<dyn Write + Send> {
        match self {
            Self::Terminal => Box::new(Stdout),
            Self::Writer(writer) => Box::new(Shared(Arc::clone(writer))),
            Self::Null => Box::new(std::io::sink()),
        }
    }

    /// Whether stdin feeds the UART.
    pub(crate) fn reads_stdin(&self) -> bool {
        matches!(self, Self::Terminal)
    }
}

/// Writes straight through, so prompts without a newline show up at once.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        let written = out.write(buf)?;
        out.flush()?;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
struct Shared(Arc<Mutex<dyn Write + Send>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
/// How many bytes of console output may wait for a slow reader.
pub const OUTPUT_QUEUE_BYTES: usize = 1 << 20;

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
#[derive(Default)]
struct QueueState {
    bytes: VecDeque<u8>,
    /// Bytes the queue had no room for.
    dropped: u64,
    /// Bytes taken by the drain thread and not yet written out.
    in_flight: usize,
    closed: bool,
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
/// Console output between the UART and the host: bounded, never blocking the writer.
pub(crate) struct OutputQueue {
    state: Mutex<QueueState>,
    capacity: usize,
    /// Signalled when bytes arrive or the queue closes.
    filled: Condvar,
    /// Signalled when the drain thread has written everything it had.
    drained: Condvar,
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
impl OutputQueue {
    /// A queue of `capacity` bytes drained into `sink` by a new thread, which runs `on_start`
    /// first (its seccomp filter).
    pub(crate) fn start(
        sink: Box<dyn Write + Send>,
        capacity: usize,
        on_start: Option<devices::virtio::ThreadStartHook>,
    ) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Self {
            state: Mutex::default(),
            capacity,
            filled: Condvar::new(),
            drained: Condvar::new(),
        });
        let drain = Arc::clone(&queue);
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                if let Some(Err(err)) = on_start.map(|hook| hook()) {
                    log::error!("The console output thread did not start: {err}");
                    return;
                }
                drain.drain_into(sink)
            })?;
        Ok(queue)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues what fits of `bytes`; drops and counts the rest. Never blocks on the reader.
    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut state = self.lock();
        let room = self.capacity.saturating_sub(state.bytes.len());
        let taken = room.min(bytes.len());
        state.bytes.extend(&bytes[..taken]);
        let dropped = (bytes.len() - taken) as u64;
        if dropped > 0 {
            if state.dropped == 0 {
                log::warn!("The console's reader is not keeping up: dropping guest console output");
            }
            state.dropped += dropped;
        }
        drop(state);
        self.filled.notify_one();
    }

    /// Bytes dropped so far because the reader did not keep up.
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Waits up to `limit` for everything queued to be written out; whether it was.
    pub(crate) fn flush_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while !state.bytes.is_empty() || state.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .drained
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Ends the drain thread once the queue is empty. One blocked on a dead reader stays
    /// blocked until the process exits; nothing waits for it.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.filled.notify_one();
    }

    fn drain_into(&self, mut sink: Box<dyn Write + Send>) {
        let mut chunk = Vec::new();
        loop {
            {
                let mut state = self.lock();
                state.in_flight = 0;
                self.drained.notify_all();
                while state.bytes.is_empty() && !state.closed {
                    state = self.filled.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.bytes.is_empty() {
                    return;
                }
                chunk.clear();
                chunk.extend(state.bytes.drain(..));
                state.in_flight = chunk.len();
            }
            // A reader that went away (EPIPE) loses the output, not the VM.
            if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
                let mut state = self.lock();
                state.dropped += chunk.len() as u64;
            }
        }
    }
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
/// The UART's side of an [`OutputQueue`].
pub(crate) struct QueueWriter(pub(crate) Arc<OutputQueue>);

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that never reads: every write blocks until the test lets go.
    struct StuckReader(std::sync::mpsc::Receiver<()>);

    impl Write for StuckReader {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_never_blocks_the_uart_and_the_excess_is_counted() {
        let (release, stuck) = std::sync::mpsc::channel();
        let queue = OutputQueue::start(Box::new(StuckReader(stuck)), 1000, None).unwrap();
        let mut uart = QueueWriter(Arc::clone(&queue));
        let started = Instant::now();
        for _ in 0..100 {
            assert_eq!(uart.write(&[b'x'; 100]).unwrap(), 100);
        }
        // Only a deadlock takes this long: the writes themselves never wait for the reader.
        assert!(started.elapsed() < Duration::from_secs(30));
        // At most the queue plus the chunk the drain thread holds got through.
        let dropped = queue.dropped();
        assert!((8000..=9000).contains(&dropped), "{dropped}");
        assert!(
            !queue.flush_within(Duration::from_millis(50)),
            "a stuck reader drained"
        );
        queue.close();
        drop(release);
    }

    #[test]
    fn everything_queued_is_written_in_order_before_flush_returns() {
        let out: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let queue = OutputQueue::start(Box::new(Shared(out.clone())), 1 << 20, None).unwrap();
        let mut uart = QueueWriter(Arc::clone(&queue));
        let text: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for piece in text.chunks(7) {
            uart.write_all(piece).unwrap();
        }
        assert!(queue.flush_within(Duration::from_secs(30)));
        assert_eq!(*out.lock().unwrap(), text);
        assert_eq!(queue.dropped(), 0);
        queue.close();
    }

    #[test]
    fn a_shared_writer_collects_every_boot() {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let console = Console::Writer(buffer.clone());
        console.output().write_all(b"first ").unwrap();
        console.output().write_all(b"second").unwrap();
        assert_eq!(buffer.lock().unwrap().as_slice(), b"first second");
        assert!(!console.reads_stdin());
        assert!(Console::Terminal.reads_stdin());
        // A clone writes to the same buffer: every boot of one VM shares its console.
        console.clone().output().write_all(b"!").unwrap();
        assert_eq!(buffer.lock().unwrap().as_slice(), b"first second!");
        Console::Null.output().write_all(b"gone").unwrap();
    }
}
