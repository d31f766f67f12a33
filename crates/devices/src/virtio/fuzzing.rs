//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default).
//!
//! Not an API: it exists so that `fuzz/fuzz_targets/virtio_blk_request.rs` can drive the
//! virtio-blk request path with guest-built descriptor chains without a worker thread.

use std::sync::Arc;

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use super::block::BlockHandler;
use super::DiskImage;

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
