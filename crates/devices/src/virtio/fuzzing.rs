//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default).
//!
//! Not an API: it exists so that `fuzz/fuzz_targets/virtio_blk_request.rs` can drive the
//! virtio-blk request path, and `fuzz/fuzz_targets/virtio_net.rs` the virtio-net queues, with
//! guest-built descriptor chains without a worker thread.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use super::block::BlockHandler;
use super::net::{MemoryBackend, NetCore, RxWait};
use super::{DeviceCounters, DiskImage};

/// The vsock backend without a worker thread, for `fuzz/fuzz_targets/virtio_vsock.rs`.
pub use super::vsock::fuzz::VsockPackets;

/// The request side of a [`super::BlockDevice`]: what its worker thread runs.
pub struct BlockRequests(BlockHandler);

impl BlockRequests {
    /// Serves requests on `disk`, answering GET_ID with `serial`.
    pub fn new(disk: Arc<DiskImage>, serial: [u8; VIRTIO_BLK_ID_BYTES as usize]) -> Self {
        Self(BlockHandler {
            disk,
            serial,
            counters: Arc::default(),
        })
    }

    /// Serves one chain (`BlockHandler::serve`): the bytes written into the guest's buffers
    /// and whether the request succeeded.
    pub fn serve(
        &self,
        chain: &mut DescriptorChain<&GuestMemoryMmap>,
        memory: &GuestMemoryMmap,
    ) -> (u32, bool) {
        self.0.serve(chain, memory)
    }

    /// Serves every available chain of `queue` as the worker does when notified; returns
    /// whether the guest must be interrupted.
    pub fn process(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        super::worker::drain_queue(queue, memory, |chain| self.0.serve(chain, memory).0)
    }
}

/// The queue side of a [`super::NetDevice`] with a stand-in for its tap: what its worker
/// thread runs, minus the thread and the epoll set.
pub struct NetQueues {
    core: Option<NetCore<MemoryBackend>>,
    backend: Arc<MemoryBackend>,
    features: u64,
    counters: Arc<DeviceCounters>,
    pending_rx: Arc<Mutex<Vec<u8>>>,
}

impl NetQueues {
    /// Serves a driver that accepted `features` (`VIRTIO_NET_F_*` bits).
    pub fn new(features: u64) -> Self {
        let backend = Arc::new(MemoryBackend::default());
        let counters: Arc<DeviceCounters> = Arc::default();
        let pending_rx: Arc<Mutex<Vec<u8>>> = Arc::default();
        let core = NetCore::new(
            Arc::clone(&backend),
            features,
            Arc::clone(&counters),
            Arc::clone(&pending_rx),
        );
        Self {
            core: Some(core),
            backend,
            features,
            counters,
            pending_rx,
        }
    }

    /// Queues `frame` (virtio-net header first) as the tap would hand it over.
    pub fn push_incoming(&self, frame: Vec<u8>) {
        self.backend.incoming.lock().unwrap().push_back(frame);
    }

    /// Sends every available transmit chain; returns whether the guest must be interrupted.
    pub fn transmit(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        self.core().transmit(queue, memory)
    }

    /// Receives frames into `queue` until the frames or the buffers run out: whether the
    /// guest must be interrupted, and whether it stopped for lack of buffers.
    pub fn receive(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> (bool, bool) {
        let (interrupt, wait) = self.core().receive(queue, memory);
        (interrupt, wait == RxWait::Buffers)
    }

    /// A reset and a new activation: chains held are abandoned, a frame already read is
    /// carried over.
    pub fn reset(&mut self) {
        drop(self.core.take());
        self.core = Some(NetCore::new(
            Arc::clone(&self.backend),
            self.features,
            Arc::clone(&self.counters),
            Arc::clone(&self.pending_rx),
        ));
    }

    /// The frames transmitted since the last call.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.backend.sent.lock().unwrap())
    }

    /// The counters: frames moved either way, and those dropped or malformed.
    pub fn stats(&self) -> super::DeviceStats {
        self.counters.snapshot()
    }

    fn core(&mut self) -> &mut NetCore<MemoryBackend> {
        self.core.get_or_insert_with(|| {
            NetCore::new(
                Arc::clone(&self.backend),
                self.features,
                Arc::clone(&self.counters),
                Arc::clone(&self.pending_rx),
            )
        })
    }
}
