//! Taking a snapshot, on the VM thread: the event loop hands it each request from the
//! [`SnapshotPort`].
//!
//! The vCPUs are paused first (the suspended one is kicked out of `KVM_RUN` and keeps its MP
//! state), since KVM reads the vGIC only while no vCPU runs. Then the guest must still be
//! suspended (a wakeup may have won the race) with every virtio device reset. The disks are
//! flushed, the state and memory written, and the VM either sleeps on (resumed, still
//! suspended) or ends.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use devices::virtio::{DiskImage, MmioTransport};
use devices::{BootTimer, Pl061Gpio, Serial16550};
use event_manager::{EventOps, Events, MutEventSubscriber};
use hypervisor::kvm::{KvmGicV3, KvmVcpuKicker, KvmVm};
use vmm_sys_util::epoll::EventSet;

use super::dir::{MEMORY_FILE, STATE_FILE, publish};
use super::disks::DiskFingerprint;
use super::state::{DevicesState, SuspendedVcpu, VmSnapshot};
use super::{
    AfterSnapshot, SnapshotError, SnapshotPort, SnapshotRequest, SnapshotTaken, file, may_snapshot,
    memory, state_name,
};
use crate::config::{CpuPowerMode, VmConfig};
use crate::control_loop::Rtc;
use crate::events::VmEventKind;
use crate::exit::{ExitControl, ExitReason};
use crate::suspend::{PauseError, SuspendCoordinator};

/// What a snapshot reads, shared with the running VM.
pub(crate) struct SnapshotSource {
    pub config: VmConfig,
    pub vm: Arc<KvmVm>,
    pub gic: Arc<KvmGicV3>,
    /// Reads the guest's counter through vCPU 0, from this thread.
    pub counter: Arc<KvmVcpuKicker>,
    pub suspend: Arc<SuspendCoordinator>,
    pub control: Arc<ExitControl>,
    pub serial: Arc<Mutex<Serial16550>>,
    pub rtc: Arc<Mutex<Rtc>>,
    pub gpio: Arc<Mutex<Pl061Gpio>>,
    pub boot_timer: Arc<Mutex<BootTimer>>,
    /// The virtio transports, with their names for errors, in slot order.
    pub transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    pub disks: Vec<Arc<DiskImage>>,
    pub vcpu_mpidrs: Vec<u64>,
    pub psci_version: u64,
    pub ram_start: u64,
    /// Whether guest RAM is this boot's own anonymous memory (not a restored guest's file).
    pub anonymous_memory: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_error<E>(what: &'static str) -> impl FnOnce(E) -> SnapshotError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |err| SnapshotError::Read {
        what,
        source: Box::new(err),
    }
}

impl SnapshotSource {
    /// Takes the snapshot `request` asks for and does what it says next.
    pub fn take(&self, request: &SnapshotRequest) -> Result<SnapshotTaken, SnapshotError> {
        let started = Instant::now();
        may_snapshot(self.suspend.state(), self.suspend.is_paused())?;
        self.suspend.pause().map_err(|err| match err {
            PauseError::AlreadyPaused => SnapshotError::Paused,
            PauseError::Stopping => SnapshotError::Stopped,
            other => read_error("vCPU")(other),
        })?;
        let written = self.write(&request.destination);
        let exit = written.is_ok() && request.then == AfterSnapshot::Exit;
        if exit {
            // The vCPUs stay parked until the VM's end stops them.
            self.control
                .request_exit(ExitReason::Snapshotted(request.destination.clone()));
        } else if let Err(err) = self.suspend.resume() {
            log::error!("Cannot resume the VM after its snapshot: {err}");
        }
        let (bytes, memory_bytes) = written?;
        let taken = SnapshotTaken {
            path: request.destination.clone(),
            bytes,
            memory_bytes,
            ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        self.suspend.events().emit(VmEventKind::Snapshotted {
            path: taken.path.clone(),
            bytes: taken.bytes,
            ms: taken.ms,
        });
        Ok(taken)
    }

    /// With every vCPU parked: checks, reads and writes everything. Returns the bytes stored
    /// and the RAM size.
    fn write(&self, destination: &Path) -> Result<(u64, u64), SnapshotError> {
        // A wakeup that raced the pause leaves the VM running-paused.
        let Some((index, call)) = self.suspend.suspended_call() else {
            return Err(SnapshotError::NotSuspended(state_name(
                self.suspend.state(),
            )));
        };
        let mut virtio = Vec::with_capacity(self.transports.len());
        for (name, transport) in &self.transports {
            let transport = lock(transport);
            if !transport.is_reset() {
                return Err(SnapshotError::LiveDevice(name.clone()));
            }
            virtio.push(transport.state());
        }
        let gic = self
            .gic
            .save(&self.vcpu_mpidrs)
            .map_err(read_error("vGIC"))?;
        let counter = self
            .counter
            .counter_state()
            .map_err(read_error("counter"))?;
        let mut disks = Vec::with_capacity(self.disks.len());
        for disk in &self.disks {
            disk.flush().map_err(read_error("disk"))?;
            disks.push(DiskFingerprint::of(disk.path()).map_err(read_error("disk"))?);
        }
        let saved_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let ram_size = self.config.memory_bytes();
        let snapshot = VmSnapshot {
            config: self.config.clone(),
            saved_at_ns,
            vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
            cpu_power: if self.suspend.keeps_power_states() {
                CpuPowerMode::Vmm
            } else {
                CpuPowerMode::Kvm
            },
            psci_version: self.psci_version,
            vcpu_mpidrs: self.vcpu_mpidrs.clone(),
            suspended: SuspendedVcpu::new(index, call),
            counter,
            gic,
            devices: DevicesState {
                serial: lock(&self.serial).state(),
                rtc: lock(&self.rtc).state(),
                gpio: lock(&self.gpio).state(),
                boot_timer: lock(&self.boot_timer).state(),
                virtio,
            },
            disks,
            ram_start: self.ram_start,
            ram_size,
            path: destination.to_owned(),
        };
        let mut stored = 0;
        publish(destination, |dir: &Path| -> Result<(), SnapshotError> {
            let memory = memory::write(
                &dir.join(MEMORY_FILE),
                self.vm.memory(),
                self.anonymous_memory,
            )
            .map_err(read_error("memory"))?;
            let state_path = dir.join(STATE_FILE);
            file::write(&state_path, &snapshot).map_err(read_error("VM"))?;
            let state_bytes = std::fs::metadata(&state_path).map_or(0, |m| m.len());
            stored = memory.stored + state_bytes;
            Ok(())
        })?;
        Ok((stored, ram_size))
    }
}

/// The event loop's side of the [`SnapshotPort`].
pub(crate) struct SnapshotTaker {
    pub port: Arc<SnapshotPort>,
    pub source: SnapshotSource,
}

impl MutEventSubscriber for SnapshotTaker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new_raw(self.port.event().as_raw_fd(), EventSet::IN)) {
            log::error!("Snapshot requests not polled: {err:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if let Some((request, reply)) = self.port.next() {
            let result = self.source.take(&request);
            if let Err(err) = &result {
                log::warn!("{}", crate::error_chain(err));
            }
            reply(result);
        }
    }
}

impl Drop for SnapshotTaker {
    fn drop(&mut self) {
        self.port.close();
    }
}
