//! virtio-blk on a raw image file: read, write, flush (`fdatasync`), GET_ID, read-only.
//!
//! Every descriptor chain comes from the guest and is checked before any byte moves: a
//! chain that is too short, loops, points outside guest RAM, has a buffer in the wrong
//! direction or a data length that is not whole sectors gets `VIRTIO_BLK_S_IOERR` (when its
//! status byte can be found) and always a used entry, so the driver never waits forever.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::worker::{WorkerSlot, drain_queue};
use super::{
    ActivateError, ActiveQueue, DeviceCounters, DeviceKind, QUEUE_MAX_SIZE, QueueHandler,
    ThreadStartHook, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
    WorkerIo,
};

/// Bytes in a virtio-blk sector, whatever the image's block size.
pub const SECTOR_SIZE: u64 = 512;
/// The request header: type (u32), reserved (u32), sector (u64).
const HEADER_LEN: u32 = 16;
/// Data segments per request: the queue's descriptors minus header and status.
const SEG_MAX: u32 = QUEUE_MAX_SIZE as u32 - 2;

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    /// The file could not be opened or inspected.
    #[error("Cannot open disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A writable disk whose file the host only lets us read.
    #[error("Cannot open disk image {path} for writing (add readonly=on to use it read-only)")]
    ReadOnlyOnHost {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file or block device.
    #[error("Disk image {0} is not a regular file or a block device")]
    NotAFile(PathBuf),
    /// Its size is not whole sectors.
    #[error("Disk image {path} is {size} bytes, not a multiple of 512")]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Another process holds a conflicting lock on it.
    #[error("Disk image {0} is in use by another process (locked)")]
    Locked(PathBuf),
}

/// An opened, locked disk image. The lock lives as long as the file: writable images are
/// locked exclusively, read-only ones shared, as QEMU and Cloud Hypervisor do.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    readonly: bool,
    size: u64,
}

impl DiskImage {
    /// Opens and locks `path`; `readonly` opens it for reading only.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskImageError> {
        let open_error = |source| DiskImageError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            // A FIFO or a tty must not block the open.
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EACCES | libc::EROFS | libc::EPERM) if !readonly && path.exists() => {
                    DiskImageError::ReadOnlyOnHost {
                        path: path.to_owned(),
                        source,
                    }
                }
                Some(libc::EISDIR) => DiskImageError::NotAFile(path.to_owned()),
                _ => open_error(source),
            })?;
        let file_type = file.metadata().map_err(open_error)?.file_type();
        if !(file_type.is_file() || file_type.is_block_device()) {
            return Err(DiskImageError::NotAFile(path.to_owned()));
        }
        let size = file.seek(SeekFrom::End(0)).map_err(open_error)?;
        if size % SECTOR_SIZE != 0 {
            return Err(DiskImageError::Size {
                path: path.to_owned(),
                size,
            });
        }
        let operation = if readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor this function owns; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DiskImageError::Locked(path.to_owned())
            } else {
                open_error(err)
            });
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            readonly,
            size,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the guest may only read it.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes what the host still caches of the image to its storage (`fsync`): before a
    /// snapshot refers to the image, so that a crash of the host afterwards cannot lose what
    /// the saved guest believes is on disk.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// A virtio-blk device serving one [`DiskImage`].
pub struct BlockDevice {
    disk: Arc<DiskImage>,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: Vec<u8>,
    counters: Arc<DeviceCounters>,
    worker: WorkerSlot,
    name: String,
}

impl BlockDevice {
    /// A device for `disk`; `serial` (at most 20 bytes are used) is what GET_ID returns and
    /// Linux shows in `/sys/block/vdX/serial`.
    pub fn new(disk: Arc<DiskImage>, serial: &str) -> Self {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let bytes = serial.as_bytes();
        let len = bytes.len().min(id.len());
        id[..len].copy_from_slice(&bytes[..len]);
        // struct virtio_blk_config: capacity (le64) at 0, size_max (le32) at 8, seg_max
        // (le32) at 12; the rest is for features not offered.
        let mut config = vec![0u8; 16];
        config[..8].copy_from_slice(&(disk.size / SECTOR_SIZE).to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Self {
            disk,
            serial: id,
            config,
            counters: Arc::default(),
            worker: WorkerSlot::default(),
            name: format!("virtio-blk-{serial}"),
        }
    }

    /// Runs `hook` first on each of its worker threads (the VMM's seccomp filter).
    pub fn with_worker_hook(mut self, hook: Option<ThreadStartHook>) -> Self {
        self.worker.set_hook(hook);
        self
    }

    /// The image it serves.
    pub fn disk(&self) -> &Arc<DiskImage> {
        &self.disk
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Block
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.disk.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        let handler = BlockHandler {
            disk: Arc::clone(&self.disk),
            serial: self.serial,
            counters: Arc::clone(&self.counters),
        };
        self.worker
            .start(self.name.clone(), memory, queues, interrupt, handler)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }
}

/// Serves the request queue on the worker thread.
pub(crate) struct BlockHandler {
    pub(crate) disk: Arc<DiskImage>,
    pub(crate) serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    pub(crate) counters: Arc<DeviceCounters>,
}

impl QueueHandler for BlockHandler {
    fn process(&mut self, index: usize, io: &mut WorkerIo<'_>) -> bool {
        let memory = io.memory;
        let Some(queue) = io.queues.get_mut(index) else {
            return false;
        };
        drain_queue(queue, memory, |chain| self.serve(chain, memory).0)
    }
}

/// A request that cannot be served as the driver built it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// No header and status descriptors.
    TooShort,
    /// The chain loops or is longer than the queue.
    Unterminated,
    /// The header is write-only or shorter than 16 bytes, or not in guest RAM.
    Header,
    /// The status descriptor is not a writable byte.
    Status,
    /// A data buffer goes the wrong way for the request.
    Direction,
    /// A data length that is not whole sectors.
    Length,
}

impl BlockHandler {
    /// Serves and counts one chain: returns the bytes written into the guest's buffers and
    /// whether the request succeeded.
    pub(crate) fn serve(
        &self,
        chain: &mut DescriptorChain<&GuestMemoryMmap>,
        memory: &GuestMemoryMmap,
    ) -> (u32, bool) {
        let (written, ok) = self.serve_chain(chain, memory);
        self.counters.request(ok);
        (written, ok)
    }

    fn serve_chain(
        &self,
        chain: &mut DescriptorChain<&GuestMemoryMmap>,
        memory: &GuestMemoryMmap,
    ) -> (u32, bool) {
        let descriptors: Vec<Descriptor> = chain.by_ref().collect();
        match self.parse(&descriptors, memory) {
            Ok(request) => {
                let (status, data_written) = self.execute(&request, memory);
                let status_ok = memory
                    .write_obj(status as u8, request.status.addr())
                    .is_ok();
                if !status_ok {
                    return (0, false);
                }
                (data_written + 1, status == VIRTIO_BLK_S_OK)
            }
            Err(reason) => {
                log::debug!("virtio-blk: malformed request: {reason:?}");
                // Report IOERR if the last buffer can hold the status byte.
                let written = descriptors
                    .last()
                    .filter(|last| last.is_write_only() && last.len() >= 1 && !last.has_next())
                    .and_then(|last| memory.write_obj(VIRTIO_BLK_S_IOERR as u8, last.addr()).ok())
                    .map_or(0, |()| 1);
                (written, false)
            }
        }
    }

    fn parse(
        &self,
        descriptors: &[Descriptor],
        memory: &GuestMemoryMmap,
    ) -> Result<Request, Malformed> {
        let (Some(header), Some(status)) = (descriptors.first(), descriptors.last()) else {
            return Err(Malformed::TooShort);
        };
        if status.has_next() {
            return Err(Malformed::Unterminated);
        }
        if descriptors.len() < 2 {
            return Err(Malformed::TooShort);
        }
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Err(Malformed::Header);
        }
        if !status.is_write_only() || status.len() < 1 {
            return Err(Malformed::Status);
        }
        let raw: [u8; HEADER_LEN as usize] = memory
            .read_obj(header.addr())
            .map_err(|_| Malformed::Header)?;
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
        let data: Vec<Descriptor> = descriptors[1..descriptors.len() - 1].to_vec();
        let device_writes = match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => Some(true),
            VIRTIO_BLK_T_OUT => Some(false),
            _ => None,
        };
        if let Some(writable) = device_writes {
            if data.iter().any(|desc| desc.is_write_only() != writable) {
                return Err(Malformed::Direction);
            }
        }
        if matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT)
            && data
                .iter()
                .any(|desc| u64::from(desc.len()) % SECTOR_SIZE != 0)
        {
            return Err(Malformed::Length);
        }
        Ok(Request {
            kind,
            sector,
            data,
            status: *status,
        })
    }

    /// Runs a well-formed request: its status and the data bytes it wrote to the guest.
    fn execute(&self, request: &Request, memory: &GuestMemoryMmap) -> (u32, u32) {
        let data_len: u64 = request.data.iter().map(|desc| u64::from(desc.len())).sum();
        match request.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = request.kind == VIRTIO_BLK_T_OUT;
                if write && self.disk.readonly {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let Some(offset) = request
                    .sector
                    .checked_mul(SECTOR_SIZE)
                    .filter(|offset| offset.saturating_add(data_len) <= self.disk.size)
                else {
                    log::debug!(
                        "virtio-blk: request at sector {} for {data_len} bytes is past the end",
                        request.sector
                    );
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match transfer(&self.disk.file, offset, &request.data, memory, write) {
                    Ok(()) if write => (VIRTIO_BLK_S_OK, 0),
                    Ok(()) => (VIRTIO_BLK_S_OK, data_len as u32),
                    Err(err) => {
                        log::warn!("virtio-blk {}: I/O error: {err}", self.disk.path.display());
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.disk.readonly {
                    return (VIRTIO_BLK_S_OK, 0);
                }
                match self.disk.file.sync_data() {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(err) => {
                        log::warn!(
                            "virtio-blk {}: flush failed: {err}",
                            self.disk.path.display()
                        );
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let Some(buffer) = request.data.first() else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                let len = (buffer.len() as usize).min(self.serial.len());
                match memory.write_slice(&self.serial[..len], buffer.addr()) {
                    Ok(()) => (VIRTIO_BLK_S_OK, len as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }
}

/// A request whose descriptors have the right shape.
#[derive(Debug)]
pub(crate) struct Request {
    kind: u32,
    sector: u64,
    data: Vec<Descriptor>,
    status: Descriptor,
}

/// Moves the bytes between the image at `offset` and the guest buffers `data`, in order:
/// file to guest for a read, guest to file for a write. A buffer outside guest RAM fails
/// the whole request before any byte moves. One `preadv`/`pwritev` serves the whole request
/// (a 1 MiB read is up to 256 guest pages), resumed where a short transfer stopped.
fn transfer(
    file: &File,
    offset: u64,
    data: &[Descriptor],
    memory: &GuestMemoryMmap,
    write: bool,
) -> std::io::Result<()> {
    let mut buffers = Vec::with_capacity(data.len());
    for desc in data {
        let slice = memory
            .get_slice(GuestAddress(desc.addr().0), desc.len() as usize)
            .map_err(|err| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("buffer at {:#x}: {err}", desc.addr().0),
                )
            })?;
        buffers.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: slice.len(),
        });
    }
    let mut position = offset;
    let mut pending: &mut [libc::iovec] = &mut buffers;
    // IOV_MAX (1024) is far above the queue's 254 segments.
    while let Some(first) = pending.first() {
        if first.iov_len == 0 {
            pending = &mut pending[1..];
            continue;
        }
        let count = pending.len() as libc::c_int;
        // SAFETY: each iovec points into a guest memory mapping that `memory` keeps alive for
        // this call, and `get_slice` checked that its `iov_len` bytes are mapped; the kernel
        // reads or writes only within them. The guest may touch the same bytes concurrently,
        // which it is allowed to get wrong.
        let moved = unsafe {
            if write {
                libc::pwritev(
                    file.as_raw_fd(),
                    pending.as_ptr(),
                    count,
                    position as libc::off_t,
                )
            } else {
                libc::preadv(
                    file.as_raw_fd(),
                    pending.as_ptr(),
                    count,
                    position as libc::off_t,
                )
            }
        };
        if moved < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if moved == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        position += moved as u64;
        // Skip what was transferred: whole buffers, then part of the next one.
        let mut moved = moved as usize;
        while moved > 0 {
            let Some(first) = pending.first_mut() else {
                break;
            };
            if moved >= first.iov_len {
                moved -= first.iov_len;
                pending = &mut pending[1..];
            } else {
                // SAFETY: `moved` < `iov_len`, so the new base stays inside the same buffer.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(moved) }.cast();
                first.iov_len -= moved;
                moved = 0;
            }
        }
    }
    Ok(())
}
