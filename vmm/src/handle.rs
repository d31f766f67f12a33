//! The embeddable VM: check a [`VmConfig`], start it on its own thread, and drive it through a
//! cloneable [`VmHandle`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devices::{Pl061Gpio, Serial16550};

use crate::boot_images::BootImages;
use crate::config::CpuPowerMode;
use crate::console::Console;
use crate::events::WakeSource;
use crate::events::{EventBus, EventReceiver};
use crate::exit::{ExitControl, ExitReason};
use crate::snapshot::state::VmSnapshot;
use crate::snapshot::{SnapshotError, SnapshotPort, SnapshotRequest, SnapshotTaken};
use crate::suspend::{PauseError, SuspendCoordinator, SuspendState, SuspendStats};
use crate::virtio_devices::{AttachedDevice, DeviceInfo, HostBackends};
use crate::{VmConfig, VmmError};
use hypervisor::MpState;

/// How long a button stays pressed: long enough for gpio-keys' debounce (5 ms by default) to
/// see the key down.
const BUTTON_HOLD: Duration = Duration::from_millis(100);

/// GPIO pin of the wake button (KEY_WAKEUP, a wakeup source).
pub const WAKE_BUTTON_PIN: u32 = 0;
/// GPIO pin of the power button (KEY_POWER).
pub const POWER_BUTTON_PIN: u32 = 1;
/// GPIO pin of the sleep button (KEY_SLEEP): the guest suspends itself.
pub const SLEEP_BUTTON_PIN: u32 = 2;

/// Failures of requests made through a [`VmHandle`].
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The VM is not running (not booted yet, rebooting, or stopped).
    #[error("The VM is not running")]
    NotRunning,
    /// The VM is stopping or has stopped.
    #[error("The VM is shutting down")]
    ShuttingDown,
    /// The GPIO controller refused the button.
    #[error("Cannot press the button")]
    Button(#[source] devices::GpioError),
    /// Pausing or resuming was refused.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The snapshot was refused or failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A vCPU's power state as `vm.info` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VcpuPower {
    /// Running or runnable.
    On,
    /// Powered off (never started, or PSCI CPU_OFF).
    Off,
    /// Suspended by SYSTEM_SUSPEND until a wakeup.
    Suspended,
    /// Not known: the VM is not running, or its state could not be read.
    Unknown,
}

/// One vCPU in [`VmInfo`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VcpuInfo {
    /// Its index.
    pub index: u32,
    /// Its power state.
    pub power: VcpuPower,
}

/// A snapshot of the VM for `GET /api/v1/vm.info`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VmInfo {
    /// The VM-wide state.
    pub state: VmState,
    /// Every vCPU's power state.
    pub vcpus: Vec<VcpuInfo>,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Seconds since the VM started.
    pub uptime_s: f64,
    /// How many times the guest booted (reboots included).
    pub boots: u32,
    /// Suspends accepted since the last boot.
    pub suspend_count: u64,
    /// What woke the guest last.
    pub last_wake_source: Option<WakeSource>,
    /// VMM-side latency of the last suspend: suspend exit to `Suspended`.
    pub last_suspend_latency_us: Option<u64>,
    /// VMM-side latency of the last resume: wakeup exit to the vCPU ready to run.
    pub last_resume_latency_us: Option<u64>,
    /// The virtio devices of the running boot, with their counters since it started; once it
    /// ended, its final figures.
    pub devices: Vec<DeviceInfo>,
    /// Guest console bytes dropped because the console's reader did not keep up.
    pub console_dropped_bytes: u64,
    /// Who keeps the vCPU power states in this boot: `vmm` (KVM forwards the PSCI calls) or
    /// `kvm` (each suspend decision stops every vCPU to read them); `null` when not running.
    pub cpu_power: Option<CpuPowerMode>,
    /// The PSCI version the guest gets, `"1.3"`; `null` when not running.
    pub psci_version: Option<String>,
    /// vCPU kicks by suspend decisions, censuses (this very request's included) and pauses
    /// since the boot started.
    pub vcpu_kicks: u64,
    /// The snapshot directory this VM was restored from, if it was.
    pub restored_from: Option<PathBuf>,
}

/// A VM that was checked and is ready to start.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    /// The snapshot the first boot restores, if any.
    restore: Option<Arc<VmSnapshot>>,
    backends: HostBackends,
    console: Console,
    kvm_path: PathBuf,
    shared: Arc<HandleShared>,
}

impl Vm {
    /// Checks `config`, its boot images and the KVM device, without touching KVM otherwise.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        drop(BootImages::open(&config)?);
        // Opened (disks locked, taps and sockets claimed) for the VM's whole life, so another
        // process cannot take them between two boots.
        let backends = HostBackends::open(&config)?;
        let kvm_path = crate::kvm_path();
        hypervisor::check_kvm_device(&kvm_path)?;
        Ok(Self {
            backends,
            shared: Arc::new(HandleShared::new(config.cpus, config.memory_mib)),
            config,
            restore: None,
            console: Console::Terminal,
            kvm_path,
        })
    }

    /// Checks the snapshot in `dir` (state, memory file, disks, this host's counter) and the
    /// KVM device, for [`Vm::start`] to bring the guest back still suspended. Its first wakeup
    /// resumes it; a guest reset after that boots the saved configuration's kernel afresh.
    pub fn restore(dir: &std::path::Path) -> Result<Self, VmmError> {
        let snapshot = crate::snapshot::restore::open(dir, host_counter_frequency())?;
        let config = snapshot.config.clone();
        let backends = HostBackends::open(&config)?;
        let kvm_path = crate::kvm_path();
        hypervisor::check_kvm_device(&kvm_path)?;
        let shared = Arc::new(HandleShared::new(config.cpus, config.memory_mib));
        *shared
            .restored_from
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(dir.to_owned());
        Ok(Self {
            backends,
            shared,
            config,
            restore: Some(Arc::new(snapshot)),
            console: Console::Terminal,
            kvm_path,
        })
    }

    /// Subscribes to the VM's events before it starts, so that none is missed.
    pub fn subscribe(&self) -> EventReceiver {
        self.shared.events.subscribe()
    }

    /// The handle [`Vm::start`] will return, usable before the start (the VM then reports
    /// itself as booting), e.g. to serve an API socket from the first instant.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Sets the seccomp mode of the VM's threads (for a restored VM, whose configuration is
    /// otherwise the snapshot's).
    pub fn with_seccomp(mut self, seccomp: crate::seccomp::SeccompMode) -> Self {
        self.config.seccomp = seccomp;
        self
    }

    /// Sets where the guest console goes; the default is this process's terminal.
    pub fn with_console(mut self, console: Console) -> Self {
        self.console = console;
        self
    }

    /// Starts the VM on a new thread and returns its handle.
    pub fn start(self) -> Result<VmHandle, VmmError> {
        let shared = Arc::clone(&self.shared);
        let _ = shared.started.set(Instant::now());
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("vmm".to_owned())
            .spawn(move || {
                run_to_the_end(&thread_shared, || {
                    crate::run_with(
                        &self.config,
                        &self.backends,
                        &self.kvm_path,
                        &self.console,
                        &thread_shared,
                        self.restore,
                    )
                })
            });
        match spawned {
            Ok(_) => Ok(VmHandle { shared }),
            Err(source) => Err(VmmError::VmmThread(source)),
        }
    }
}

/// The host's counter frequency, which a restored guest's must equal; `None` where it cannot
/// be read (not an arm64 host: KVM is refused there anyway).
fn host_counter_frequency() -> Option<u64> {
    #[cfg(target_arch = "aarch64")]
    {
        Some(hypervisor::kvm::host_counter_frequency())
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        None
    }
}

/// Runs the VM with `run` and publishes how it ended, also when it panicked (with
/// unwinding; the release profile aborts instead), so that [`VmHandle::wait`] always returns.
fn run_to_the_end(shared: &HandleShared, run: impl FnOnce() -> Result<ExitReason, VmmError>) {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
            Err(VmmError::Panicked {
                thread: "vmm".to_owned(),
                message: crate::panic_message(payload.as_ref()),
            })
        });
    shared.finish(result);
}

/// What `vm.info` keeps of a boot that ended.
struct EndedBoot {
    stats: SuspendStats,
    devices: Vec<DeviceInfo>,
}

/// What a running boot exposes to the handle.
pub(crate) struct BootControls {
    pub control: Arc<ExitControl>,
    pub gpio: Arc<Mutex<Pl061Gpio>>,
    pub serial: Arc<Mutex<Serial16550>>,
    pub suspend: Arc<SuspendCoordinator>,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub devices: Vec<AttachedDevice>,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub console: Arc<crate::console::OutputQueue>,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub psci_version: arch_aarch64::psci::PsciVersion,
    /// Where snapshot requests go to the VM thread.
    pub snapshots: Arc<SnapshotPort>,
}

impl BootControls {
    /// Its virtio devices and their counters now.
    fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(AttachedDevice::info).collect()
    }
}

/// The VM's state as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Building or rebooting: no guest code runs yet.
    Booting,
    /// The guest runs.
    Running,
    /// The host paused every vCPU (`vm.pause`); the guest may be running or suspended under it.
    Paused,
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
pub(crate) struct HandleShared {
    events: Arc<EventBus>,
    /// Set once, when the VM starts.
    started: OnceLock<Instant>,
    memory_mib: u64,
    vcpu_count: u32,
    boots: std::sync::atomic::AtomicU32,
    boot: Mutex<Option<BootControls>>,
    /// The final figures of the boot that ended last, for `vm.info` between boots and after
    /// the VM stopped.
    ended: Mutex<Option<EndedBoot>>,
    /// The snapshot this VM was restored from.
    restored_from: Mutex<Option<PathBuf>>,
    shutdown: AtomicBool,
    exit: Mutex<Option<Result<ExitReason, Arc<VmmError>>>>,
    exited: Condvar,
}

impl HandleShared {
    /// The shared state of a VM with `vcpu_count` vCPUs and `memory_mib` of RAM.
    fn new(vcpu_count: u32, memory_mib: u64) -> Self {
        Self {
            events: Arc::default(),
            started: OnceLock::new(),
            memory_mib,
            vcpu_count,
            boots: Default::default(),
            boot: Mutex::default(),
            ended: Mutex::default(),
            restored_from: Mutex::default(),
            shutdown: AtomicBool::default(),
            exit: Mutex::default(),
            exited: Condvar::new(),
        }
    }

    /// Publishes the controls of a boot that starts, or clears them when it ends, keeping its
    /// final figures.
    pub(crate) fn set_boot(&self, boot: Option<BootControls>) {
        if boot.is_some() {
            self.boots.fetch_add(1, Ordering::SeqCst);
        }
        let mut current = self.boot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ending) = current.as_ref().filter(|_| boot.is_none()) {
            let figures = EndedBoot {
                stats: ending.suspend.stats(),
                devices: ending.device_infos(),
            };
            *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(figures);
        }
        *current = boot;
    }

    /// A figure of the running boot; between boots and once the VM has stopped, the same
    /// figure of the boot that ended last; `None` before the first boot.
    fn running_or_ended<T>(
        &self,
        running: impl FnOnce(&BootControls) -> T,
        ended: impl FnOnce(&EndedBoot) -> T,
    ) -> Option<T> {
        if let Ok(figure) = self.with_boot(running) {
            return Some(figure);
        }
        let last = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref().map(ended)
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
        // Event streams end with the VM.
        self.events.close();
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
    /// A handle to a VM that never starts, for tests of its users.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self {
            shared: Arc::new(HandleShared::new(0, 0)),
        }
    }

    /// Presses and releases the wake button (a gpio-keys KEY_WAKEUP with `wakeup-source`).
    /// Blocks for the 100 ms the key is held.
    pub fn press_wake_button(&self) -> Result<(), HandleError> {
        self.press(WAKE_BUTTON_PIN)
    }

    /// Presses and releases the power button (KEY_POWER). Blocks for the 100 ms it is held.
    pub fn press_power_button(&self) -> Result<(), HandleError> {
        self.press(POWER_BUTTON_PIN)
    }

    /// Presses the sleep button (KEY_SLEEP): a guest with a handler (logind's default, or its
    /// own) suspends itself. A cooperative suspend, unlike [`VmHandle::pause`].
    pub fn press_sleep_button(&self) -> Result<(), HandleError> {
        self.press(SLEEP_BUTTON_PIN)
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
    pub fn subscribe(&self) -> EventReceiver {
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
                if boot.suspend.is_paused() {
                    return VmState::Paused;
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

    /// Suspend counters of the current boot; between boots and once the VM has stopped, the
    /// final ones of the boot that ended last. `None` before the first boot.
    pub fn suspend_stats(&self) -> Option<SuspendStats> {
        self.shared
            .running_or_ended(|boot| boot.suspend.stats(), |ended| ended.stats)
    }

    /// Stops the VM now, as SIGTERM does. Returns at once; use [`VmHandle::wait`]. Fails only
    /// when the VM has already stopped.
    pub fn shutdown(&self) -> Result<(), HandleError> {
        if self.has_exited() {
            return Err(HandleError::ShuttingDown);
        }
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _ = self
            .shared
            .with_boot(|boot| boot.control.request_exit(ExitReason::Shutdown));
        Ok(())
    }

    /// The controls of the running boot, unless the VM is stopping.
    fn running_boot<T>(&self, act: impl FnOnce(&BootControls) -> T) -> Result<T, HandleError> {
        if self.shared.shutdown_requested() || self.has_exited() {
            return Err(HandleError::ShuttingDown);
        }
        self.shared.with_boot(|boot| {
            if boot.control.stopping() {
                Err(HandleError::ShuttingDown)
            } else {
                Ok(act(boot))
            }
        })?
    }

    /// Pauses every vCPU on the host side, whether the guest runs or sleeps; distinct from a
    /// guest suspend, which the guest asks for. Returns once no vCPU is in the guest.
    pub fn pause(&self) -> Result<(), HandleError> {
        let suspend = self.running_boot(|boot| Arc::clone(&boot.suspend))?;
        suspend.pause().map_err(HandleError::from)
    }

    /// Resumes a paused VM.
    pub fn resume(&self) -> Result<(), HandleError> {
        let suspend = self.running_boot(|boot| Arc::clone(&boot.suspend))?;
        suspend.resume().map_err(HandleError::from)
    }

    /// Saves the suspended guest to a snapshot directory, then keeps it sleeping or ends the
    /// VM as `request` says. Refused unless the guest is suspended (and not paused).
    pub fn snapshot(&self, request: SnapshotRequest) -> Result<SnapshotTaken, HandleError> {
        let port = self.running_boot(|boot| Arc::clone(&boot.snapshots))?;
        Ok(port.take(request)?)
    }

    /// A snapshot of the VM: state, vCPU power states, memory, uptime and suspend figures.
    /// Reading the vCPU power states parks the vCPUs for a moment.
    pub fn info(&self) -> VmInfo {
        let suspend = self.running_boot(|boot| Arc::clone(&boot.suspend)).ok();
        let census = suspend.as_ref().and_then(|suspend| suspend.census().ok());
        let cpu_power = suspend.as_ref().map(|suspend| {
            if suspend.keeps_power_states() {
                CpuPowerMode::Vmm
            } else {
                CpuPowerMode::Kvm
            }
        });
        let psci_version = self
            .shared
            .with_boot(|boot| boot.psci_version.to_string())
            .ok();
        let vcpus = (0..self.shared.vcpu_count)
            .map(|index| {
                let state = census
                    .as_ref()
                    .and_then(|states| states.get(index as usize).copied().flatten());
                let power = match state {
                    Some(MpState::Runnable) => VcpuPower::On,
                    Some(MpState::Stopped) => VcpuPower::Off,
                    Some(MpState::Suspended) => VcpuPower::Suspended,
                    Some(MpState::Other(_)) => VcpuPower::On,
                    None => VcpuPower::Unknown,
                };
                VcpuInfo { index, power }
            })
            .collect();
        let stats = self.suspend_stats().unwrap_or_default();
        let uptime_s = self
            .shared
            .started
            .get()
            .map_or(0.0, |started| started.elapsed().as_secs_f64());
        VmInfo {
            state: self.state(),
            vcpus,
            memory_mib: self.shared.memory_mib,
            uptime_s,
            boots: self.shared.boots.load(Ordering::SeqCst),
            suspend_count: stats.suspend_count,
            last_wake_source: stats.last_wake_source,
            last_suspend_latency_us: stats.last_suspend_latency_us,
            last_resume_latency_us: stats.last_resume_latency_us,
            devices: self.devices(),
            console_dropped_bytes: self
                .shared
                .with_boot(|boot| boot.console.dropped())
                .unwrap_or_default(),
            cpu_power,
            psci_version,
            vcpu_kicks: stats.vcpu_kicks,
            restored_from: self
                .shared
                .restored_from
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The virtio devices of the running boot and their counters; between boots and once the
    /// VM has stopped, the final ones of the boot that ended last; empty before the first boot.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.shared
            .running_or_ended(BootControls::device_infos, |ended| ended.devices.clone())
            .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_the_vm_thread_still_ends_wait() {
        let handle = VmHandle::detached();
        let shared = Arc::clone(&handle.shared);
        std::thread::spawn(move || {
            run_to_the_end(&shared, || {
                std::panic::resume_unwind(Box::new("machine bug"))
            })
        });
        let err = handle
            .wait_timeout(Duration::from_secs(60))
            .expect("wait returned")
            .unwrap_err();
        assert_eq!(err.to_string(), "The vmm thread panicked: machine bug");
        assert_eq!(handle.state(), VmState::Stopped);
    }

    #[test]
    fn the_handle_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<VmHandle>();
        let handle = VmHandle::detached();
        let other = handle.clone();
        let state = std::thread::spawn(move || other.state()).join().unwrap();
        assert_eq!(state, VmState::Booting);
        assert!(matches!(
            handle.press_wake_button(),
            Err(HandleError::NotRunning)
        ));
        assert!(handle.wait_timeout(Duration::from_millis(10)).is_none());
    }
}
