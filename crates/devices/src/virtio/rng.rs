//! virtio-rng: fills the guest's buffers from the host's `getrandom`.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::worker::{WorkerSlot, drain_queue};
use super::{
    ActivateError, ActiveQueue, DeviceCounters, DeviceKind, QUEUE_MAX_SIZE, QueueHandler,
    ThreadStartHook, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt, WorkerIo,
};

/// The most bytes one request gets, so a guest cannot make the worker fill gigabytes at once.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct RngDevice {
    counters: Arc<DeviceCounters>,
    worker: WorkerSlot,
}

impl RngDevice {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `hook` first on each of its worker threads (the VMM's seccomp filter).
    pub fn with_worker_hook(mut self, hook: Option<ThreadStartHook>) -> Self {
        self.worker.set_hook(hook);
        self
    }
}

impl VirtioDevice for RngDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Rng
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config_space(&self) -> &[u8] {
        &[]
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        let handler = RngHandler {
            counters: Arc::clone(&self.counters),
        };
        self.worker
            .start("virtio-rng".into(), memory, queues, interrupt, handler)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }
}

pub(crate) struct RngHandler {
    pub(crate) counters: Arc<DeviceCounters>,
}

impl QueueHandler for RngHandler {
    fn process(&mut self, index: usize, io: &mut WorkerIo<'_>) -> bool {
        let memory = io.memory;
        let Some(queue) = io.queues.get_mut(index) else {
            return false;
        };
        drain_queue(queue, memory, |chain| {
            let (written, ok) = fill(chain, memory);
            self.counters.request(ok);
            written
        })
    }
}

/// Fills the chain's writable buffers with random bytes, up to [`MAX_REQUEST_BYTES`]; returns
/// the bytes written and whether the chain was well-formed.
pub(crate) fn fill(
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
) -> (u32, bool) {
    let mut written = 0usize;
    let mut buffer = vec![0u8; 4096];
    for desc in chain.by_ref() {
        if !desc.is_write_only() {
            return (written as u32, false);
        }
        let mut offset = 0usize;
        let len = desc.len() as usize;
        while offset < len && written < MAX_REQUEST_BYTES {
            let take = (len - offset)
                .min(buffer.len())
                .min(MAX_REQUEST_BYTES - written);
            if getrandom(&mut buffer[..take]).is_err() {
                return (written as u32, false);
            }
            let Some(at) = desc.addr().0.checked_add(offset as u64) else {
                return (written as u32, false);
            };
            if memory
                .write_slice(&buffer[..take], vm_memory::GuestAddress(at))
                .is_err()
            {
                return (written as u32, false);
            }
            offset += take;
            written += take;
        }
    }
    (written as u32, true)
}

fn getrandom(buffer: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += got as usize;
    }
    Ok(())
}
