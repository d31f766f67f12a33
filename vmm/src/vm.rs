//! The embeddable VM: check a [`VmConfig`], start it on its own thread, and drive it through a
//! cloneable [`VmHandle`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use devices::{Pl061Gpio, Serial16550};

use crate::boot_images::BootImages;
use crate::console::Console;
use crate::control::{ExitReason, VmControl};
use crate::events::{EventBus, VmEvent};
use crate::suspend::{SuspendCoordinator, SuspendState, SuspendStats};
use crate::{VmConfig, VmmError};

/// How long a button stays pressed: long enough for gpio-keys' debounce (5 ms by default) to
/// see the key down.
const BUTTON_HOLD: Duration = Duration::from_millis(100);

/// GPIO pin of the wake button (KEY_WAKEUP, a wakeup source).
pub const WAKE_BUTTON_PIN: u32 = 0;
/// GPIO pin of the power button (KEY_POWER).
pub const POWER_BUTTON_PIN: u32 = 1;

/// Failures of requests made through a [`VmHandle`].
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The VM is not running (not booted yet, rebooting, or stopped).
    #[error("The VM is not running")]
    NotRunning,
    /// The GPIO controller refused the button.
    #[error("Cannot press the button")]
    Button(#[source] devices::GpioError),
}

/// A VM that was checked and is ready to start.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    console: Console,
    kvm_path: PathBuf,
    shared: Arc<HandleShared>,
}

impl Vm {
    /// Checks `config`, its boot images and the KVM device, without touching KVM otherwise.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        drop(BootImages::open(&config)?);
        let kvm_path = crate::kvm_path();
        hypervisor::check_kvm_device(&kvm_path)?;
        Ok(Self {
            config,
            console: Console::Terminal,
            kvm_path,
            shared: Arc::new(HandleShared::default()),
        })
    }

    /// Subscribes to the VM's events before it starts, so that none is missed.
    pub fn subscribe(&self) -> Receiver<VmEvent> {
        self.shared.events.subscribe()
    }

    /// Sets where the guest console goes; the default is this process's terminal.
    pub fn with_console(mut self, console: Console) -> Self {
        self.console = console;
        self
    }

    /// Starts the VM on a new thread and returns its handle.
    pub fn start(self) -> Result<VmHandle, VmmError> {
        let shared = Arc::clone(&self.shared);
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("vmm".to_owned())
            .spawn(move || {
                let result =
                    crate::run_with(&self.config, &self.kvm_path, &self.console, &thread_shared);
                thread_shared.finish(result);
            });
        match spawned {
            Ok(_) => Ok(VmHandle { shared }),
            Err(source) => Err(VmmError::VmmThread(source)),
        }
    }
}

/// What a running boot exposes to the handle.
pub(crate) struct BootControls {
    pub control: Arc<VmControl>,
    pub gpio: Arc<Mutex<Pl061Gpio>>,
    pub serial: Arc<Mutex<Serial16550>>,
    pub suspend: Arc<SuspendCoordinator>,
}

/// The VM's state as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Building or rebooting: no guest code runs yet.
    Booting,
    /// The guest runs.
    Running,
    /// A vCPU called SYSTEM_SUSPEND and the VM is deciding.
    Suspending,
    /// The guest sleeps until a wakeup interrupt.
    Suspended,
    /// A wakeup arrived and the vCPU is being reset to the guest's entry point.
    Resuming,
    /// The VM is stopping.
    ShuttingDown,
    /// The VM has stopped.
    Stopped,
}

/// State shared between the handle and the VMM thread.
#[derive(Default)]
pub(crate) struct HandleShared {
    events: Arc<EventBus>,
    boot: Mutex<Option<BootControls>>,
    shutdown: AtomicBool,
    exit: Mutex<Option<Result<ExitReason, Arc<VmmError>>>>,
    exited: Condvar,
}

impl HandleShared {
    /// Publishes the controls of a boot that starts, or clears them when it ends.
    pub(crate) fn set_boot(&self, boot: Option<BootControls>) {
        *self.boot.lock().unwrap_or_else(|e| e.into_inner()) = boot;
    }

    /// The VM's event hub, shared by every boot.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn events(&self) -> Arc<EventBus> {
        Arc::clone(&self.events)
    }

    /// Whether the host asked the VM to stop.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn finish(&self, result: Result<ExitReason, VmmError>) {
        self.set_boot(None);
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(result.map_err(Arc::new));
        self.exited.notify_all();
    }

    fn with_boot<T>(&self, act: impl FnOnce(&BootControls) -> T) -> Result<T, HandleError> {
        let boot = self.boot.lock().unwrap_or_else(|e| e.into_inner());
        boot.as_ref().map(act).ok_or(HandleError::NotRunning)
    }
}

impl std::fmt::Debug for HandleShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleShared")
            .field("shutdown", &self.shutdown.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// Drives a started VM. Cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<HandleShared>,
}

impl VmHandle {
    /// Presses and releases the wake button (a gpio-keys KEY_WAKEUP with `wakeup-source`).
    /// Blocks for the 100 ms the key is held.
    pub fn press_wake_button(&self) -> Result<(), HandleError> {
        self.press(WAKE_BUTTON_PIN)
    }

    /// Presses and releases the power button (KEY_POWER). Blocks for the 100 ms it is held.
    pub fn press_power_button(&self) -> Result<(), HandleError> {
        self.press(POWER_BUTTON_PIN)
    }

    fn press(&self, pin: u32) -> Result<(), HandleError> {
        let gpio = self.shared.with_boot(|boot| Arc::clone(&boot.gpio))?;
        gpio.lock()
            .unwrap_or_else(|e| e.into_inner())
            .press(pin)
            .map_err(HandleError::Button)?;
        std::thread::sleep(BUTTON_HOLD);
        gpio.lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(pin)
            .map_err(HandleError::Button)
    }

    /// Queues bytes on the guest's serial input, as if typed; returns how many fit.
    pub fn send_console_input(&self, bytes: &[u8]) -> Result<usize, HandleError> {
        self.shared.with_boot(|boot| {
            boot.serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes)
        })
    }

    /// Subscribes to the VM's events (suspend requested, denied, suspended, woken, resumed).
    pub fn subscribe(&self) -> Receiver<VmEvent> {
        self.shared.events.subscribe()
    }

    /// The VM's state now.
    pub fn state(&self) -> VmState {
        if self.has_exited() {
            return VmState::Stopped;
        }
        self.shared
            .with_boot(|boot| {
                if boot.control.stopping() {
                    return VmState::ShuttingDown;
                }
                match boot.suspend.state() {
                    SuspendState::Running => VmState::Running,
                    SuspendState::Suspending => VmState::Suspending,
                    SuspendState::Suspended => VmState::Suspended,
                    SuspendState::Resuming => VmState::Resuming,
                }
            })
            .unwrap_or(if self.shared.shutdown_requested() {
                VmState::ShuttingDown
            } else {
                VmState::Booting
            })
    }

    /// Suspend counters of the current boot, if one runs.
    pub fn suspend_stats(&self) -> Option<SuspendStats> {
        self.shared.with_boot(|boot| boot.suspend.stats()).ok()
    }

    /// Stops the VM now, as SIGTERM does. Returns at once; use [`VmHandle::wait`].
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _ = self
            .shared
            .with_boot(|boot| boot.control.request_exit(ExitReason::Shutdown));
    }

    /// Whether the VM has stopped.
    pub fn has_exited(&self) -> bool {
        self.shared
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits until the VM stops and returns why.
    pub fn wait(&self) -> Result<ExitReason, Arc<VmmError>> {
        let mut exit = self.shared.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = exit.as_ref() {
                return result.clone();
            }
            exit = self
                .shared
                .exited
                .wait(exit)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits at most `timeout`; `None` if the VM is still running then.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<ExitReason, Arc<VmmError>>> {
        let deadline = Instant::now() + timeout;
        let mut exit = self.shared.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = exit.as_ref() {
                return Some(result.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            exit = self
                .shared
                .exited
                .wait_timeout(exit, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
