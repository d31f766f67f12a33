//! Names a fatal memory fault on stderr before the process dies of it.
//!
//! Rust's own SIGSEGV/SIGBUS handler calls `sigaction` to restore the default action before it
//! lets the fault repeat. Under `vmm`'s seccomp filters no thread may call `sigaction`, so a
//! fault on a vCPU thread ended as "Bad system call", with no address and no thread. This
//! handler makes no forbidden call: `SA_RESETHAND` restores the default action in the kernel,
//! the handler writes one line with `write(2)`, and the faulting instruction runs again.
//!
//! The line's first words are written straight from a constant, before anything is copied or
//! formatted (which calls libc's `memcpy` and `memset`): if that faults too, the process dies
//! at once of the default action, and the words already written still name the signal.

use std::sync::Once;

/// One line in a fixed buffer: a signal handler may not allocate.
pub(crate) struct Line {
    bytes: [u8; 192],
    len: usize,
}

impl Line {
    pub(crate) const fn new() -> Self {
        Self {
            bytes: [0; 192],
            len: 0,
        }
    }

    pub(crate) fn put(&mut self, text: &[u8]) -> &mut Self {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
        self
    }

    pub(crate) fn decimal(&mut self, value: i64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.put(b"-");
        }
        self.put(&digits[start..])
    }

    pub(crate) fn hex(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; 16];
        for (i, digit) in digits.iter_mut().enumerate() {
            let nibble = (value >> (60 - 4 * i)) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        let first = digits.iter().position(|&d| d != b'0').unwrap_or(15);
        self.put(b"0x").put(&digits[first..])
    }

    #[cfg(test)]
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Writes the line to stderr; async-signal-safe.
    pub(crate) fn write_to_stderr(&self) {
        // SAFETY: writes `len` initialised bytes of the buffer.
        unsafe { libc::write(libc::STDERR_FILENO, self.bytes.as_ptr().cast(), self.len) };
    }
}

/// How far below or above the stack pointer a fault counts as running off the stack.
const STACK_SLACK: u64 = 64 * 1024;

/// The faulting thread's PC and SP, where this architecture's `ucontext_t` is known.
fn pc_and_sp(context: *mut libc::c_void) -> Option<(u64, u64)> {
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    {
        // SAFETY: the kernel passes a valid ucontext_t as the third argument of an
        // SA_SIGINFO handler.
        let context = unsafe { &*context.cast::<libc::ucontext_t>() };
        Some((context.uc_mcontext.pc, context.uc_mcontext.sp))
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    {
        let _ = context;
        None
    }
}

/// The start of the report for `signal`: a constant, written before anything is formatted.
fn report_start(signal: i32) -> &'static [u8] {
    if signal == libc::SIGBUS {
        b"vmm: fatal SIGBUS"
    } else {
        b"vmm: fatal SIGSEGV"
    }
}

/// The rest of the report for one fault, after [`report_start`].
fn describe(code: i32, address: u64, tid: i64, pc_sp: Option<(u64, u64)>) -> Line {
    let mut line = Line::new();
    line.put(b" (code ")
        .decimal(i64::from(code))
        .put(b") at address ")
        .hex(address)
        .put(b" on thread ")
        .decimal(tid);
    if let Some((pc, sp)) = pc_sp {
        line.put(b", pc ").hex(pc).put(b", sp ").hex(sp);
        if address.abs_diff(sp) < STACK_SLACK {
            line.put(b": the thread ran off its stack");
        }
    }
    line.put(b"\n");
    line
}

extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let start = report_start(signal);
    // SAFETY: writes a constant's bytes.
    unsafe { libc::write(libc::STDERR_FILENO, start.as_ptr().cast(), start.len()) };
    // SAFETY: the kernel passes a valid siginfo_t; for SIGSEGV and SIGBUS `si_addr` is set.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as u64) };
    // SAFETY: gettid has no preconditions.
    let tid = i64::from(unsafe { libc::gettid() });
    describe(code, address, tid, pc_and_sp(context)).write_to_stderr();
    if code <= 0 {
        // Sent by a process, not raised by an instruction: returning would not fault again.
        // SAFETY: async-signal-safe calls without pointers; the action is the default again.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signal) };
    }
    // Returning runs the faulting instruction again, now with the default action.
}

/// Installs the handler for SIGSEGV and SIGBUS, once per process: the `vmm` binary at start,
/// and the library when it filters a VM's threads with seccomp. It replaces Rust's handler,
/// whose stack-overflow message it replaces with the fault's PC and SP. It runs on the
/// alternate stack Rust gives every thread.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe
            // calls.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
                action.sa_flags =
                    libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND | libc::SA_NODEFER;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    log::warn!(
                        "Cannot install the fault reporter: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_report_names_the_signal_address_thread_pc_and_sp() {
        let line = describe(1, 0x10, 42, Some((0x40_1000, 0x7fff_0000)));
        assert_eq!(
            [report_start(libc::SIGSEGV), line.as_bytes()].concat(),
            b"vmm: fatal SIGSEGV (code 1) at address 0x10 on thread 42, pc 0x401000, sp 0x7fff0000\n"
        );
    }

    #[test]
    fn a_fault_just_below_the_stack_pointer_is_called_a_stack_overflow() {
        let line = describe(2, 0x7ffe_f000, -1, Some((0, 0x7fff_0000)));
        let text =
            String::from_utf8([report_start(libc::SIGBUS), line.as_bytes()].concat()).unwrap();
        assert!(text.starts_with("vmm: fatal SIGBUS (code 2) at address 0x7ffef000 on thread -1"));
        assert!(text.ends_with(": the thread ran off its stack\n"), "{text}");
    }

    #[test]
    fn the_line_is_cut_at_its_buffer_and_zero_prints_as_zero() {
        let mut line = Line::new();
        line.hex(0).put(b" ").decimal(0);
        assert_eq!(line.as_bytes(), b"0x0 0");
        let long = [b'x'; 300];
        line.put(&long);
        assert_eq!(line.as_bytes().len(), 192);
    }

    #[test]
    fn a_fault_in_a_child_process_is_reported_and_still_kills_it() {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes async-signal-safe calls before it exits or dies.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: the child's stderr becomes the pipe; then it faults on purpose.
            unsafe {
                libc::dup2(pipe[1], libc::STDERR_FILENO);
                install();
                std::ptr::null_mut::<u64>().write_volatile(1);
                libc::_exit(0);
            }
        }
        // SAFETY: the write end is ours to close; the read end becomes a File we own.
        let mut report = unsafe {
            libc::close(pipe[1]);
            std::fs::File::from_raw_fd(pipe[0])
        };
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
        let mut text = String::new();
        report.read_to_string(&mut text).unwrap();
        assert!(
            // SEGV_MAPERR is code 1.
            text.starts_with(&format!(
                "vmm: fatal SIGSEGV (code 1) at address 0x0 on thread {pid}"
            )),
            "{text}"
        );
    }
}
