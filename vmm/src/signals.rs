//! SIGTERM and SIGINT become a readable eventfd, so the event loop shuts the VM down cleanly.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::register_signal_handler;

/// Failures installing the handlers.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The eventfd could not be created.
    #[error("Cannot create the signal eventfd")]
    EventFd(#[source] std::io::Error),
    /// `sigaction` failed.
    #[error("Cannot install the handler for signal {0}")]
    Handler(i32, #[source] std::io::Error),
}

static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static EVENT: OnceLock<EventFd> = OnceLock::new();

extern "C" fn on_signal(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signal, Ordering::SeqCst);
    let fd = EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes and `fd` is the
        // eventfd that lives in EVENT for the rest of the process.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Installs the handlers once and returns the eventfd they write to.
pub fn install() -> Result<&'static EventFd, SignalError> {
    if let Some(event) = EVENT.get() {
        return Ok(event);
    }
    let event = EventFd::new(EFD_NONBLOCK).map_err(SignalError::EventFd)?;
    let event = EVENT.get_or_init(|| event);
    EVENT_FD.store(event.as_raw_fd(), Ordering::SeqCst);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        register_signal_handler(signal, on_signal)
            .map_err(|err| SignalError::Handler(signal, err.into()))?;
    }
    Ok(event)
}

/// The last signal received.
pub fn last_signal() -> i32 {
    LAST_SIGNAL.load(Ordering::SeqCst)
}

/// The stop signal received so far, if any. It stays set: the process is ending.
pub fn received() -> Option<i32> {
    Some(last_signal()).filter(|&signal| signal != 0)
}
