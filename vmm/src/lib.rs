//! The `vmm` library: an arm64 KVM virtual machine monitor whose guests can suspend to RAM.
//!
//! [`run`] boots a [`VmConfig`] and returns the [`ExitReason`]. The `vmm` binary is a thin
//! command line over it. KVM is only reached on aarch64 hosts; elsewhere [`run`] explains why
//! the host cannot run the VM.

// A VM's life, in order: `config`, then `builder` (one boot of it on KVM), `running` (its
// `vcpu` threads and its `control_loop`), the `handle` a caller drives it with, and `exit`.
#[cfg(target_arch = "aarch64")]
mod builder;
pub mod config;
#[cfg(target_arch = "aarch64")]
mod control_loop;
pub mod exit;
pub mod handle;
#[cfg(target_arch = "aarch64")]
mod running;
pub mod vcpu;

// What the running VM is made of and serves.
pub mod api;
pub mod boot_images;
pub mod console;
pub mod events;
pub mod fault_report;
pub mod seccomp;
#[cfg(target_arch = "aarch64")]
mod signals;
pub mod snapshot;
pub mod suspend;
#[cfg(target_arch = "aarch64")]
mod terminal;
pub mod virtio_devices;

use std::path::PathBuf;

pub use arch_aarch64::psci::PsciVersion;
pub use boot_images::{BootImageError, BootImages};
#[cfg(target_arch = "aarch64")]
pub use builder::BuildError;
pub use config::{
    ConfigError, CpuPowerMode, DiskConfig, MacAddress, NetConfig, NetConfigError, VmConfig,
    VsockConfig,
};
pub use console::Console;
#[cfg(target_arch = "aarch64")]
pub use control_loop::ControlLoopError;
pub use devices::virtio::DiskImageError;
pub use exit::{ExitControlError, ExitReason, VmFailure, VmFailureKind};
pub use handle::{HandleError, VcpuInfo, VcpuPower, Vm, VmHandle, VmInfo, VmState};
pub use hypervisor::HypervisorError;
#[cfg(target_arch = "aarch64")]
pub use signals::SignalError;

/// Environment variable naming the KVM device, `/dev/kvm` when unset. Tests use it to check
/// the errors for a missing device or a file that is not KVM.
pub const KVM_PATH_ENV: &str = "VMM_KVM_PATH";

/// Why the VMM could not run the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel or initramfs cannot be used.
    #[error(transparent)]
    BootImages(#[from] BootImageError),
    /// A disk image cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskImageError),
    /// A tap cannot be opened, created or configured.
    #[error(transparent)]
    Tap(#[from] devices::virtio::tap::TapError),
    /// The vsock device cannot listen on its socket.
    #[error(transparent)]
    Vsock(#[from] devices::virtio::VsockError),
    /// The host cannot run the VM.
    #[error(transparent)]
    KvmHypervisor(#[from] HypervisorError),
    /// The VM could not be built.
    #[cfg(target_arch = "aarch64")]
    #[error(transparent)]
    Machine(#[from] BuildError),
    /// The VM's control block could not be created.
    #[error(transparent)]
    Control(#[from] ExitControlError),
    /// A thread's seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The event loop failed.
    #[cfg(target_arch = "aarch64")]
    #[error(transparent)]
    ControlLoop(#[from] ControlLoopError),
    /// SIGTERM/SIGINT handling could not be installed.
    #[cfg(target_arch = "aarch64")]
    #[error("Cannot handle signals")]
    Signals(#[source] SignalError),
    /// The terminal could not be switched to raw mode.
    #[error("Cannot put the terminal in raw mode")]
    Terminal(#[source] std::io::Error),
    /// The API socket could not be served.
    #[error(transparent)]
    Api(crate::api::ApiServerError),
    /// The console's output thread could not be started.
    #[error("Cannot start the console output thread")]
    ConsoleThread(#[source] std::io::Error),
    /// A thread of the VMM panicked (only with unwinding: the release profile aborts).
    #[error("The {thread} thread panicked: {message}")]
    Panicked {
        /// Which thread.
        thread: String,
        /// What the panic said.
        message: String,
    },
    /// A snapshot cannot be restored.
    #[error(transparent)]
    Restore(#[from] snapshot::RestoreError),
    /// The snapshot request channel could not be created.
    #[error("Cannot create the snapshot request event")]
    SnapshotPort(#[source] std::io::Error),
    /// The VMM thread could not be started.
    #[error("Cannot start the VMM thread")]
    VmmThread(#[source] std::io::Error),
    /// A vCPU thread could not be started.
    #[error("Cannot start the thread of vCPU {index}")]
    VcpuThread {
        /// The vCPU.
        index: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// An error and its causes on one line, the way `vmm` reports them: `outer: inner: root`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a panic said, from its payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The KVM device to use: `$VMM_KVM_PATH` or `/dev/kvm`.
pub fn kvm_path() -> PathBuf {
    std::env::var_os(KVM_PATH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(hypervisor::DEFAULT_KVM_PATH))
}

/// Runs the VM `config` describes on this process's terminal until it powers off, rebooting
/// it in-process when the guest resets (unless `no_reboot`). Everything is checked before KVM
/// is touched. SIGTERM and SIGINT stop it cleanly.
pub fn run(config: &VmConfig) -> Result<ExitReason, std::sync::Arc<VmmError>> {
    Vm::new(config.clone())?.start()?.wait()
}

/// Runs one VM on the calling thread.
pub(crate) fn run_with(
    config: &VmConfig,
    backends: &virtio_devices::HostBackends,
    kvm_path: &std::path::Path,
    console: &Console,
    shared: &handle::HandleShared,
    restore: Option<std::sync::Arc<snapshot::state::VmSnapshot>>,
) -> Result<ExitReason, VmmError> {
    #[cfg(target_arch = "aarch64")]
    {
        running::run(config, backends, kvm_path, console, shared, restore)
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (config, backends, console, shared, restore);
        Err(hypervisor::check_kvm_device(kvm_path)
            .err()
            .unwrap_or(HypervisorError::WrongArchitecture {
                arch: std::env::consts::ARCH,
            })
            .into())
    }
}
