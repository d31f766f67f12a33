//! Kicking a vCPU thread out of `KVM_RUN` from another thread.
//!
//! `VcpuFd::run` takes `&mut self`, so another thread cannot reach `immediate_exit` through the
//! running vCPU's handle. As Firecracker does, a second `VcpuFd` on a `dup` of the vCPU fd maps
//! the same `kvm_run` page: setting `immediate_exit` there and then sending a real-time signal
//! to the vCPU thread makes `KVM_RUN` return `EINTR` whether the thread is in the guest, halted
//! in WFI, suspended, or about to enter.

use std::sync::atomic::{Ordering, fence};
use std::sync::{Mutex, OnceLock};

use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::VcpuKick;

/// Failures setting up a kicker.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// The vCPU fd could not be duplicated.
    #[error("Cannot duplicate the vCPU fd")]
    Dup(#[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    SignalHandler(#[source] std::io::Error),
}

/// Kicks one vCPU thread. Shared between threads.
#[derive(Debug)]
pub struct KvmVcpuKicker {
    run_page: Mutex<VcpuFd>,
    thread: Mutex<Option<libc::pthread_t>>,
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Pairs with the release fence in `kick`: the vCPU thread sees `immediate_exit`.
    fence(Ordering::Acquire);
}

/// Installs the no-op handler once per process: without `SA_RESTART`, so `KVM_RUN` returns.
fn install_signal_handler() -> Result<(), KickError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), on_kick_signal).map_err(|err| err.errno())
        })
        .map_err(|errno| KickError::SignalHandler(std::io::Error::from_raw_os_error(errno)))
}

impl KvmVcpuKicker {
    pub(crate) fn new(vm: &VmFd, vcpu: &VcpuFd) -> Result<Self, KickError> {
        use std::os::fd::AsRawFd;
        install_signal_handler()?;
        // SAFETY: dup of an fd we own; the new fd is checked before use.
        let duplicate = unsafe { libc::dup(vcpu.as_raw_fd()) };
        if duplicate < 0 {
            return Err(KickError::Dup(std::io::Error::last_os_error()));
        }
        // SAFETY: `duplicate` is a fresh vCPU fd that nothing else owns; the new VcpuFd takes
        // ownership of it and maps the same kvm_run page as `vcpu`.
        let run_page = unsafe { vm.create_vcpu_from_rawfd(duplicate) }
            .map_err(|err| KickError::Dup(err.into()))?;
        Ok(Self {
            run_page: Mutex::new(run_page),
            thread: Mutex::new(None),
        })
    }
}

impl KvmVcpuKicker {
    /// Reads the guest's virtual counter and its frequency through the kicker's own handle on
    /// the vCPU, from any thread: for a snapshot, while the vCPU's thread is parked. KVM waits
    /// for the vCPU to leave `KVM_RUN` if it is in it.
    pub fn counter_state(&self) -> Result<crate::CounterState, std::io::Error> {
        let vcpu = self.run_page.lock().unwrap_or_else(|e| e.into_inner());
        let read = |id| {
            let mut bytes = [0u8; 8];
            vcpu.get_one_reg(id, &mut bytes)
                .map(|_| u64::from_le_bytes(bytes))
                .map_err(std::io::Error::from)
        };
        Ok(crate::CounterState {
            cntvct: read(super::counter::KVM_REG_ARM_TIMER_CNT)?,
            // KVM has no one-reg for CNTFRQ_EL0 (ENOENT): the guest reads the host's.
            cntfrq: super::counter::host_counter_frequency(),
        })
    }
}

impl VcpuKick for KvmVcpuKicker {
    fn bind_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
    }

    fn unbind_thread(&self) {
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn kick(&self) {
        self.run_page
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_kvm_immediate_exit(1);
        fence(Ordering::Release);
        // Holding the lock keeps the thread from unbinding (and being joined) meanwhile.
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(thread) = *thread {
            // SAFETY: the thread is bound, so it has not exited and been joined; the signal has
            // a handler, so it cannot terminate the process.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}
