//! How the vCPU threads, the event loop and signal handlers agree that the VM is ending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why a VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (PSCI SYSTEM_OFF).
    PowerOff,
    /// The guest hibernated: it wrote its memory to its swap disk and called PSCI 1.3
    /// SYSTEM_OFF2. Booting it again with the same configuration and disks resumes it.
    Hibernated,
    /// The guest asked for a reboot (PSCI SYSTEM_RESET).
    Reboot,
    /// The VMM received SIGTERM or SIGINT.
    Signal(i32),
    /// The host stopped the VM through its handle.
    Shutdown,
    /// The suspended guest was saved to this snapshot directory and the VM ended, as asked
    /// (`"then": "exit"`); `vmm --restore` brings it back.
    Snapshotted(std::path::PathBuf),
    /// The guest reported a crash.
    GuestCrash,
    /// The VM failed in a way the VMM cannot recover from; the chain says why.
    Error(VmFailure),
}

/// Why a running VM failed, as a typed error chain. Cloned to every waiter, so the error is
/// shared; two failures are equal when their chains read the same.
#[derive(Clone, Debug)]
pub struct VmFailure(Arc<VmFailureKind>);

impl VmFailure {
    /// What failed.
    pub fn kind(&self) -> &VmFailureKind {
        &self.0
    }
}

impl<E: Into<VmFailureKind>> From<E> for VmFailure {
    fn from(kind: E) -> Self {
        Self(Arc::new(kind.into()))
    }
}

impl std::fmt::Display for VmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for VmFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for VmFailure {
    fn eq(&self, other: &Self) -> bool {
        crate::error_chain(self) == crate::error_chain(other)
    }
}

impl Eq for VmFailure {}

/// What failed in a running VM.
#[derive(Debug, thiserror::Error)]
pub enum VmFailureKind {
    /// A vCPU thread panicked (with unwinding; the release profile aborts).
    #[error("vCPU {index} panicked: {message}")]
    VcpuPanicked {
        /// The vCPU.
        index: u32,
        /// The panic's message.
        message: String,
    },
    /// A vCPU left `KVM_RUN` for a reason the VMM does not handle.
    #[error("vCPU {index} stopped on an exit the VMM does not handle: {exit}")]
    UnhandledExit {
        /// The vCPU.
        index: u32,
        /// The exit, as KVM reported it.
        exit: String,
    },
    /// A vCPU operation failed (`KVM_RUN`, a register, the MP state).
    #[error(transparent)]
    Vcpu(#[from] hypervisor::VcpuError),
    /// A suspend, resume or PSCI power call could not be carried out.
    #[error(transparent)]
    Suspend(#[from] crate::suspend::SuspendError),
    /// A vCPU thread could not install its seccomp filter.
    #[error("Cannot confine the thread of vCPU {index}")]
    Seccomp {
        /// The vCPU.
        index: u32,
        /// Why.
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// A vCPU thread could not be started.
    #[error("Cannot start the thread of vCPU {index}")]
    VcpuThread {
        /// The vCPU.
        index: u32,
    },
    /// The VM thread's control loop failed.
    #[cfg(target_arch = "aarch64")]
    #[error(transparent)]
    ControlLoop(#[from] crate::control_loop::ControlLoopError),
}

impl ExitReason {
    /// The `vmm` process's exit status for [`ExitReason::Hibernated`]: not an error, but not
    /// a plain power-off either, for scripts that resume the guest later.
    pub const HIBERNATED_EXIT_CODE: u8 = 3;

    /// The process exit status for this reason.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::PowerOff
            | Self::Reboot
            | Self::Signal(_)
            | Self::Shutdown
            | Self::Snapshotted(_) => 0,
            Self::GuestCrash | Self::Error(_) => 1,
            Self::Hibernated => Self::HIBERNATED_EXIT_CODE,
        }
    }

    /// Why the VMM stops after a boot that ended for this reason, or `None` to boot again. A
    /// guest reset reboots unless rebooting is off or a stop `signal` arrived: the boot's event
    /// loop may have seen the reset first and taken the signal with it, and the signal must
    /// still win.
    pub fn after_boot(self, no_reboot: bool, signal: Option<i32>) -> Option<ExitReason> {
        match (self, signal) {
            (Self::Reboot, Some(signal)) => Some(Self::Signal(signal)),
            (Self::Reboot, None) if !no_reboot => None,
            (reason, _) => Some(reason),
        }
    }
}

/// Failures creating the control block.
#[derive(Debug, thiserror::Error)]
pub enum ExitControlError {
    /// The exit eventfd could not be created.
    #[error("Cannot create the VM exit eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Shared by every thread of one VM run.
#[derive(Debug)]
pub struct ExitControl {
    stopping: AtomicBool,
    exit: Mutex<Option<ExitReason>>,
    exit_event: EventFd,
}

impl ExitControl {
    /// A control block for a VM that is running.
    pub fn new() -> Result<Self, ExitControlError> {
        Ok(Self {
            stopping: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_event: EventFd::new(EFD_NONBLOCK).map_err(ExitControlError::EventFd)?,
        })
    }

    /// Records why the VM ends, unless a reason was recorded first, and wakes the event loop.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            log::info!("VM exit requested: {reason:?}");
            *exit = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(err) = self.exit_event.write(1) {
            log::error!("Cannot signal the VM exit: {err}");
        }
    }

    /// Whether the VM is ending; vCPU threads check it after every exit.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded exit reason.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The eventfd that becomes readable when an exit is requested.
    pub fn exit_event(&self) -> &EventFd {
        &self.exit_event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_wakes_the_loop() {
        let control = ExitControl::new().unwrap();
        assert!(!control.stopping());
        assert_eq!(control.exit_reason(), None);
        control.request_exit(ExitReason::PowerOff);
        control.request_exit(ExitReason::Error(
            VmFailureKind::VcpuThread { index: 1 }.into(),
        ));
        assert!(control.stopping());
        assert_eq!(control.exit_reason(), Some(ExitReason::PowerOff));
        assert_eq!(control.exit_event().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Hibernated.exit_code(), 3);
        assert_eq!(
            ExitReason::Hibernated.after_boot(false, None),
            Some(ExitReason::Hibernated)
        );
        assert_eq!(ExitReason::Signal(15).exit_code(), 0);
        assert_eq!(ExitReason::GuestCrash.exit_code(), 1);
        assert_eq!(
            ExitReason::Error(VmFailureKind::VcpuThread { index: 0 }.into()).exit_code(),
            1
        );
    }

    #[test]
    fn a_stop_signal_wins_over_a_guest_reset() {
        const SIGINT: i32 = 2;
        const SIGTERM: i32 = 15;
        assert_eq!(ExitReason::Reboot.after_boot(false, None), None);
        assert_eq!(
            ExitReason::Reboot.after_boot(true, None),
            Some(ExitReason::Reboot)
        );
        for no_reboot in [false, true] {
            assert_eq!(
                ExitReason::Reboot.after_boot(no_reboot, Some(SIGTERM)),
                Some(ExitReason::Signal(SIGTERM))
            );
        }
        assert_eq!(
            ExitReason::PowerOff.after_boot(false, Some(SIGINT)),
            Some(ExitReason::PowerOff)
        );
        assert_eq!(
            ExitReason::Signal(SIGINT).after_boot(false, Some(SIGINT)),
            Some(ExitReason::Signal(SIGINT))
        );
    }
}
