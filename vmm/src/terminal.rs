//! Raw terminal mode for the serial console, restored however the VMM exits.

use std::io::IsTerminal;
use std::sync::{Mutex, Once};

/// The settings to restore, for the panic hook: the release profile aborts on a panic, and no
/// destructor runs then.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

fn restore(saved: &libc::termios) {
    // SAFETY: restores settings read from the same terminal by `enter`.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
}

/// Makes a panic restore the terminal before its message is printed and the process ends.
fn restore_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: a panic while the lock is held must not deadlock the hook.
            if let Ok(saved) = SAVED.try_lock() {
                if let Some(saved) = saved.as_ref() {
                    restore(saved);
                }
            }
            previous(info);
        }));
    });
}

/// Puts stdin in raw mode while it lives, if stdin is a terminal; restores the exact previous
/// settings when dropped.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Switches stdin to raw mode. Does nothing when stdin is not a terminal.
    pub fn enter() -> std::io::Result<Self> {
        if !std::io::stdin().is_terminal() {
            return Ok(Self { saved: None });
        }
        // SAFETY: termios is plain data; tcgetattr fills it and its result is checked.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (it is a terminal) and `saved` is a valid termios to write.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the VMM's own log lines still start at column 0.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: fd 0 is a terminal and `raw` is a valid termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        restore_on_panic();
        Ok(Self { saved: Some(saved) })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            restore(saved);
            *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}
