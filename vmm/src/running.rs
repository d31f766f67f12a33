//! Runs the VM on the calling thread: one thread per vCPU and the event loop here, until the
//! VM exits; then stops and joins every vCPU thread. Guest resets reboot in-process.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch_aarch64::cpu_power::CpuPowerTable;
use hypervisor::kvm::{KvmHypervisor, KvmVcpuKicker};
use hypervisor::{Vcpu, VcpuKick};
use vmm_sys_util::eventfd::EventFd;

use crate::boot_images::BootImages;
use crate::builder::{self, BootFrom, Machine};
use crate::config::VmConfig;
use crate::console::{Console, OUTPUT_QUEUE_BYTES, OutputQueue, QueueWriter};
use crate::control_loop::{ConsoleInput, ControlLoop, RtcAlarm};
use crate::events::VmEventKind;
use crate::events::WakeSourceTracker;
use crate::exit::{ExitControl, ExitReason, VmFailureKind};
use crate::handle::{BootControls, HandleShared};
use crate::seccomp::{Thread, VmFilters};
use crate::snapshot::SnapshotPort;
use crate::snapshot::state::VmSnapshot;
use crate::snapshot::take::{SnapshotSource, SnapshotTaker};
use crate::suspend::SuspendCoordinator;
use crate::terminal::RawTerminal;
use crate::vcpu::{VcpuContext, run_vcpu_guarded};
use crate::virtio_devices::HostBackends;
use crate::{VmmError, signals};

/// Boots `config` on the KVM device at `kvm_path` until it stops for good.
pub(crate) fn run(
    config: &VmConfig,
    backends: &HostBackends,
    kvm_path: &Path,
    console: &Console,
    shared: &HandleShared,
    mut restore: Option<Arc<VmSnapshot>>,
) -> Result<ExitReason, VmmError> {
    // This thread's filter comes first, before anything is opened: it covers building the
    // machine at every boot, and every thread started from here on inherits it.
    let filters = VmFilters::new(config.seccomp)?;
    filters.apply(Thread::Vmm)?;
    // Only the terminal console owns the process: an embedder keeps its own signals.
    let signals = match console {
        Console::Terminal => Some(signals::install().map_err(VmmError::Signals)?),
        _ => None,
    };
    let output = OutputQueue::start(
        console.output(),
        OUTPUT_QUEUE_BYTES,
        filters.hook(Thread::Console),
    )
    .map_err(VmmError::ConsoleThread)?;
    let _flush = FlushOnExit(Arc::clone(&output));
    let mut terminal = None;
    let mut boots = 0u32;
    loop {
        if shared.shutdown_requested() {
            return Ok(ExitReason::Shutdown);
        }
        let started = Instant::now();
        // The first boot only: a guest reset after the restore boots the kernel afresh.
        let snapshot = restore.take();
        let from = match &snapshot {
            Some(snapshot) => BootFrom::Snapshot(snapshot),
            None => BootFrom::Images(BootImages::open(config)?),
        };
        let hypervisor = KvmHypervisor::open(kvm_path)?;
        let wake = Arc::new(WakeSourceTracker::new());
        let machine = builder::build(
            &hypervisor,
            config,
            from,
            backends,
            Box::new(QueueWriter(Arc::clone(&output))),
            Arc::clone(&wake),
            filters.hook(Thread::VirtioWorker),
        )?;
        if console.reads_stdin() && terminal.is_none() {
            // Only now: a VM that fails to build leaves the terminal untouched.
            terminal = Some(RawTerminal::enter().map_err(VmmError::Terminal)?);
        }
        boots += 1;
        let restored = snapshot.map(|snapshot| Restored {
            path: snapshot.path.clone(),
            started,
        });
        match &restored {
            Some(restored) => log::info!(
                "Restored from {} ({} vCPUs, {} MiB), suspended",
                restored.path.display(),
                config.cpus,
                config.memory_mib
            ),
            None => log::info!(
                "Booting ({} vCPUs, {} MiB), boot {boots}",
                config.cpus,
                config.memory_mib
            ),
        }
        let reason = run_machine(
            machine, config, backends, wake, signals, console, &output, shared, &filters, restored,
        )?;
        let signal = signals.and_then(|_| signals::received());
        match reason.after_boot(config.no_reboot, signal) {
            None => log::info!("Guest reset: rebooting"),
            Some(reason) => {
                if let ExitReason::Signal(signal) = reason {
                    log::warn!("Terminating on signal {signal}");
                }
                return Ok(reason);
            }
        }
    }
}

/// A boot that restores a snapshot: where from, and since when, for its `restored` event.
struct Restored {
    path: std::path::PathBuf,
    started: Instant,
}

#[allow(clippy::too_many_arguments)]
fn run_machine(
    machine: Machine,
    config: &VmConfig,
    backends: &HostBackends,
    wake: Arc<WakeSourceTracker>,
    signals: Option<&'static EventFd>,
    console: &Console,
    output: &Arc<OutputQueue>,
    shared: &HandleShared,
    filters: &Arc<VmFilters>,
    restored: Option<Restored>,
) -> Result<ExitReason, VmmError> {
    let Machine {
        vm,
        vcpus,
        gic,
        bus,
        serial,
        serial_rx_space,
        rtc,
        gpio,
        boot_timer,
        devices,
        transports,
        ram,
        layout,
        restored: suspended,
        vcpu_mpidrs,
        power_calls_forwarded,
        psci_version,
    } = machine;
    if let Some(layout) = layout {
        log::debug!("Boot layout: {layout:x?}");
    }
    let control = Arc::new(ExitControl::new()?);
    let mut event_loop = ControlLoop::new(Arc::clone(&control), signals)?;
    if console.reads_stdin() {
        event_loop.add(Box::new(ConsoleInput::new(
            libc::STDIN_FILENO,
            Arc::clone(&serial),
            serial_rx_space,
        )));
    }
    event_loop.add(Box::new(RtcAlarm::new(Arc::clone(&rtc))));

    let kickers: Vec<Arc<dyn VcpuKick>> = vcpus
        .iter()
        .map(|vcpu| vcpu.kicker() as Arc<dyn VcpuKick>)
        .collect();
    let mut suspend = SuspendCoordinator::new(
        vcpus.len(),
        vec![ram],
        kickers,
        shared.events(),
        wake,
        Arc::clone(&control),
    );
    if power_calls_forwarded {
        let table = match &suspended {
            Some(suspended) => {
                CpuPowerTable::with_only_on(vcpu_mpidrs.clone(), suspended.index as usize)
            }
            None => CpuPowerTable::new(vcpu_mpidrs.clone()),
        };
        suspend = suspend.with_power_table(table);
    }
    if let Some(suspended) = &suspended {
        suspend = suspend.restored_suspended(suspended.index, suspended.call());
    }
    let suspend = Arc::new(suspend);
    let snapshots = Arc::new(SnapshotPort::new().map_err(VmmError::SnapshotPort)?);
    event_loop.add(Box::new(SnapshotTaker {
        port: Arc::clone(&snapshots),
        source: SnapshotSource {
            config: config.clone(),
            vm: Arc::clone(&vm),
            gic,
            counter: vcpus[0].kicker(),
            suspend: Arc::clone(&suspend),
            control: Arc::clone(&control),
            serial: Arc::clone(&serial),
            rtc,
            gpio: Arc::clone(&gpio),
            boot_timer,
            transports,
            disks: backends
                .disks
                .iter()
                .map(|disk| Arc::clone(&disk.image))
                .collect(),
            vcpu_mpidrs,
            psci_version: psci_version.to_raw(),
            ram_start: ram.start,
            anonymous_memory: restored.is_none(),
        },
    }));
    let context = Arc::new(VcpuContext {
        bus,
        control: Arc::clone(&control),
        suspend: Arc::clone(&suspend),
    });
    let mut threads: Vec<(Arc<KvmVcpuKicker>, JoinHandle<()>)> = Vec::new();
    for vcpu in vcpus {
        let index = vcpu.index();
        let kicker = vcpu.kicker();
        let thread_kicker = Arc::clone(&kicker);
        let thread_context = Arc::clone(&context);
        let thread_filters = Arc::clone(filters);
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Err(source) = thread_filters.apply(Thread::Vcpu) {
                    let reason = ExitReason::Error(VmFailureKind::Seccomp { index, source }.into());
                    thread_context.control.request_exit(reason);
                    return;
                }
                run_vcpu_guarded(vcpu, thread_kicker.as_ref(), &thread_context)
            });
        match spawned {
            Ok(handle) => threads.push((kicker, handle)),
            Err(source) => {
                control.request_exit(ExitReason::Error(
                    VmFailureKind::VcpuThread { index }.into(),
                ));
                stop_vcpus(threads, &suspend);
                return Err(VmmError::VcpuThread { index, source });
            }
        }
    }

    shared.set_boot(Some(BootControls {
        control: Arc::clone(&control),
        gpio,
        serial,
        suspend: Arc::clone(&suspend),
        devices,
        console: Arc::clone(output),
        psci_version,
        snapshots,
    }));
    if let Some(restored) = restored {
        shared.events().emit(VmEventKind::Restored {
            path: restored.path,
            ms: u64::try_from(restored.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
    if shared.shutdown_requested() {
        control.request_exit(ExitReason::Shutdown);
    }
    let reason = event_loop.run().unwrap_or_else(|err| {
        let reason = ExitReason::Error(err.into());
        control.request_exit(reason.clone());
        reason
    });
    shared.set_boot(None);
    stop_vcpus(threads, &suspend);
    Ok(reason)
}

/// Writes out what the guest printed last, for a while: a reader that stopped reading must
/// not keep the VM from ending.
struct FlushOnExit(Arc<OutputQueue>);

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        if !self.0.flush_within(Duration::from_secs(2)) {
            log::warn!("The console's reader is not reading: its last output is lost");
        }
        self.0.close();
        let dropped = self.0.dropped();
        if dropped > 0 {
            log::warn!("{dropped} bytes of console output were dropped");
        }
    }
}

/// Kicks each vCPU (out of the guest, or out of its wait while it is off) until its thread
/// has left the run loop, then joins it.
fn stop_vcpus(threads: Vec<(Arc<KvmVcpuKicker>, JoinHandle<()>)>, suspend: &SuspendCoordinator) {
    for (kicker, handle) in threads {
        while !handle.is_finished() {
            kicker.kick();
            suspend.wake_waiters();
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.join().is_err() {
            log::error!("A vCPU thread panicked");
        }
    }
}
