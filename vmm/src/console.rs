//! Where the guest's serial console goes.

use std::io::Write;
use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;

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
