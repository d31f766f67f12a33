//! Virtio devices on the virtio-mmio transport (version 2, modern only).
//!
//! [`MmioTransport`] is the register file the guest's `virtio_mmio` driver talks to: feature
//! negotiation, queue set-up and the status state machine, including a reset at any time.
//! A device ([`VirtioDevice`]) only sees activation (the driver set DRIVER_OK: here are the
//! queues) and reset. Each activation runs the device's queues on a worker thread of its own
//! ([`QueueWorker`]), woken by one eventfd per queue (KVM's ioeventfd on QueueNotify), and
//! the device interrupts the guest by writing an eventfd (KVM's irqfd). A reset stops and
//! joins that thread, so once it returns nothing touches guest memory for the device.
//!
//! Linux's `virtio_mmio` driver resets every device when the guest suspends to RAM
//! (`virtio_device_freeze`) and negotiates again on resume, so that path runs on every
//! suspend cycle.

pub mod block;
/// Fuzzing entry points (feature `fuzzing`, off by default); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod tap;
pub mod vsock;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use block::{BlockDevice, DiskImage, DiskImageError};
pub use mmio::{MmioTransport, VirtioMmioState, VirtioStateError};
pub use net::NetDevice;
pub use rng::RngDevice;
pub use vsock::{VsockDevice, VsockError};
pub use worker::{QueueHandler, QueueWorker, ThreadStartHook, WorkerError, WorkerIo};

/// `VIRTIO_F_VERSION_1`: every device here is a modern (1.0+) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: used/avail event indices suppress needless notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// The largest queue any device here offers.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// The interrupt of one virtio-mmio device: the InterruptStatus bits and the eventfd that KVM
/// turns into an edge on the device's SPI (irqfd).
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    event: EventFd,
}

impl VirtioInterrupt {
    /// `VIRTIO_MMIO_INT_VRING`: a used ring was updated.
    pub const USED_RING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
    /// `VIRTIO_MMIO_INT_CONFIG`: the configuration space changed.
    pub const CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

    /// An interrupt that signals `event`.
    pub fn new(event: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            event,
        }
    }

    /// The eventfd to register as the device's irqfd.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn signal(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.event.write(1)
    }

    /// InterruptStatus as the guest reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// What a device is, for `vm.info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// virtio-blk.
    Block,
    /// virtio-rng.
    Rng,
    /// virtio-net.
    Net,
    /// virtio-vsock.
    Vsock,
}

/// Counters a device keeps across its activations, readable from any thread.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    activations: AtomicU64,
    resets: AtomicU64,
    features: AtomicU64,
}

impl DeviceCounters {
    /// Counts one request served; `ok` is false when the guest got an error status.
    pub fn request(&self, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn activated(&self, features: u64) {
        self.activations.fetch_add(1, Ordering::Relaxed);
        self.features.store(features, Ordering::Relaxed);
    }

    fn was_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> DeviceStats {
        DeviceStats {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            activations: self.activations.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            features: self.features.load(Ordering::Relaxed),
        }
    }
}

/// A device's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// Requests (descriptor chains) served, errors included.
    pub requests: u64,
    /// Requests answered with an error status or dropped as malformed.
    pub errors: u64,
    /// Times the driver set DRIVER_OK and the device started serving its queues.
    pub activations: u64,
    /// Times the driver reset the device (status 0) while it was active or being set up.
    pub resets: u64,
    /// The feature bits the driver accepted last.
    pub features: u64,
}

/// Failures activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not made ready by the driver.
    #[error("Queue {0} is not ready")]
    QueueNotReady(usize),
    /// A queue's size or ring addresses do not fit in guest memory.
    #[error("Queue {0} is invalid (size or ring addresses)")]
    QueueInvalid(usize),
    /// The worker thread could not be started.
    #[error("Cannot start the device worker")]
    Worker(#[source] WorkerError),
}

/// A queue handed to a device on activation, with the eventfd the guest's notifications
/// for it arrive on.
pub struct ActiveQueue {
    /// The queue, as the driver configured it.
    pub queue: Queue,
    /// Readable when the driver notified the queue.
    pub event: EventFd,
}

/// One virtqueue as the transport holds it, for save/restore (virtio-queue's `QueueState`,
/// which is not serde-serialisable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioQueueState {
    /// The largest size the device offers (QueueNumMax).
    pub max_size: u16,
    /// The size the driver chose (QueueNum).
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available ring.
    pub avail_ring: u64,
    /// Guest physical address of the used ring.
    pub used_ring: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` is in use on this queue.
    pub event_idx: bool,
}

impl From<QueueState> for VirtioQueueState {
    fn from(state: QueueState) -> Self {
        Self {
            max_size: state.max_size,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx: state.event_idx_enabled,
        }
    }
}

impl From<VirtioQueueState> for QueueState {
    fn from(state: VirtioQueueState) -> Self {
        Self {
            max_size: state.max_size,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx_enabled: state.event_idx,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
        }
    }
}

/// A virtio device behind an [`MmioTransport`].
pub trait VirtioDevice: Send {
    /// The virtio device id (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// What it is, for `vm.info`.
    fn kind(&self) -> DeviceKind;
    /// The maximum size of each of its queues; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits it offers, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Its configuration space (read-only to the driver), as the guest reads it.
    fn config_space(&self) -> &[u8];
    /// Reads its configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.config_space(), offset, data);
    }
    /// Starts serving `queues` with the `features` the driver accepted.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        features: u64,
    ) -> Result<(), ActivateError>;
    /// Stops serving its queues. Once it returns, the device no longer reads or writes guest
    /// memory and every request it took from a queue was completed.
    fn reset(&mut self);
    /// Its counters.
    fn counters(&self) -> &Arc<DeviceCounters>;
}

/// Reads `data.len()` bytes at `offset` of `config`, zeros past its end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let len = available.len().min(data.len());
        data[..len].copy_from_slice(&available[..len]);
    }
}

#[cfg(test)]
mod tests;
