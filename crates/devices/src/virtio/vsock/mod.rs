//! virtio-vsock with Firecracker's hybrid backend: guest `AF_VSOCK` stream sockets reach
//! host programs through Unix sockets, with no vhost-vsock in the host kernel.
//!
//! # Host side
//!
//! [`VsockDevice::new`] binds a Unix socket at a path (say `/run/vm.vsock`) right away and
//! keeps it across activations. A host program connects there and writes `CONNECT <port>\n`;
//! once the guest accepts, it reads `OK <host port>\n` and the stream carries raw bytes both
//! ways. A guest program that connects to CID 2 (the host), port P, reaches the program
//! listening on `/run/vm.vsock_P`, or gets a reset if nothing listens there. Details,
//! limits and flow control are in the `backend` and `connection` modules.
//!
//! The device has three queues (receive, transmit, event) and offers only
//! `VIRTIO_F_VERSION_1` and `VIRTIO_RING_F_EVENT_IDX`: streams, no seqpacket. Its
//! configuration space is the guest CID, a little-endian u64. The event queue is never used
//! (see below).
//!
//! # Suspend to RAM
//!
//! Linux's `virtio_mmio` resets the device on every suspend (`virtio_device_freeze`), and the
//! vsock driver's `virtio_vsock_freeze()` calls `virtio_vsock_vqs_del()`, which first runs
//! `vsock_for_each_connected_socket(&virtio_transport.transport, virtio_vsock_reset_sock)`:
//! every connected guest socket is closed with `ECONNRESET`, without a packet to the device,
//! before the queues go. (A 2025 patch, "vsock/virtio: Don't reset the created SOCKET during
//! suspend to ram", which would keep them, was refused by the vsock maintainer: the queues,
//! and any packet in them, are lost on freeze.) Listening guest sockets are not touched.
//! `virtio_vsock_restore()` calls `virtio_vsock_vqs_init()`, which reads the CID again
//! (`virtio_vsock_update_guest_cid()`) and refills the receive and event queues.
//!
//! So the device does the same on its side on every reset: each host stream is closed (its
//! program reads EOF, or `ECONNRESET` if it had written bytes the device had not read yet) and
//! every connection is forgotten. The listening socket stays: host programs that connect while
//! the guest sleeps wait in its backlog and are served after the next activation. Streams open
//! across a suspend do not survive it (Linux resets them itself); new connections work right
//! after resume, both ways.
//!
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on re-activation: not needed, and harmful, so the
//! event queue is left alone. Linux handles the event in `virtio_transport_event_work()` →
//! `virtio_vsock_event_handle()` by re-reading the CID and running the same
//! `virtio_vsock_reset_sock` over every connected socket. After a freeze there is no connected
//! socket left and the CID was just re-read: nothing to gain. But the event could only be
//! posted once `virtio_vsock_vqs_init()` has filled the event queue, which it does after
//! `virtio_device_ready()` (when the device starts) and after filling the receive queue, and
//! it is handled on the driver's (unordered) workqueue next to the receive work: by then the
//! guest may have accepted a host program that waited in the backlog across the suspend, and
//! the late event would reset that brand-new connection. The event is for a device that loses
//! its connections while the driver keeps running (Firecracker sends it around snapshots);
//! this device's connections end only with a reset, which the driver itself started.
//!
//! # Threads and system calls
//!
//! All of the work happens on the device's worker thread (`virtio-vsock`), which closes every
//! host stream before a reset returns: `epoll_ctl`/`epoll_pwait` (the worker's set, with the
//! listening socket and the streams), `accept4`, `socket` and `connect` (guest connections),
//! `read` and `sendto` (`MSG_NOSIGNAL`) on the streams, `shutdown`, `close`. [`VsockDevice::new`]
//! binds (`socket`, `bind`, `listen`, `ioctl(FIONBIO)`, a `connect` to a socket file found at
//! the path, `unlinkat` of a stale one, `statx`/`newfstatat`); dropping the device removes the
//! socket file if it is still the one it bound (`statx`/`newfstatat`, `unlinkat`).

mod backend;
mod connection;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
mod packet;
#[cfg(test)]
mod tests;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

use super::worker::WorkerSlot;
use super::{
    ActivateError, ActiveQueue, DeviceCounters, DeviceKind, QUEUE_MAX_SIZE, QueueHandler,
    ThreadStartHook, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
    WorkerIo,
};
use vm_memory::GuestMemoryMmap;

use backend::{HostSocket, Muxer, Rings};

/// The host's CID, the only destination guest packets may have.
pub const HOST_CID: u64 = 2;
/// The receive queue: packets for the guest.
pub const RX_QUEUE: usize = 0;
/// The transmit queue: packets from the guest.
pub const TX_QUEUE: usize = 1;
/// The event queue (unused: see the module documentation).
pub const EVENT_QUEUE: usize = 2;

/// Why a vsock device cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0 to 2 are reserved (hypervisor, local, host), and the CID must fit the 32 bits
    /// Linux uses, without `VMADDR_CID_ANY`.
    #[error("Guest CID {0} is invalid: it must be 3 to 4294967294")]
    InvalidCid(u64),
    /// Another process accepts connections on the socket path.
    #[error("Socket path {0} is in use by another process")]
    SocketInUse(PathBuf),
    /// Something that is not a socket is at the path.
    #[error("Socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The path could not be inspected or connected to.
    #[error("Cannot check socket path {path}")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stale socket (nothing listens) could not be removed.
    #[error("Cannot remove stale socket {path}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be bound or set up.
    #[error("Cannot listen on socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The virtio-vsock device and its Unix socket.
pub struct VsockDevice {
    guest_cid: u64,
    config: [u8; 8],
    socket: Arc<HostSocket>,
    counters: Arc<DeviceCounters>,
    worker: WorkerSlot,
}

impl VsockDevice {
    /// A device giving the guest `guest_cid`, listening for host programs on `socket` (bound
    /// now: a stale socket file is replaced, a live one or another file is an error).
    pub fn new(guest_cid: u64, socket: PathBuf) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let socket = bind(socket)?;
        Ok(Self {
            guest_cid,
            config: guest_cid.to_le_bytes(),
            socket: Arc::new(socket),
            counters: Arc::default(),
            worker: WorkerSlot::default(),
        })
    }

    /// Runs `hook` first on each of its worker threads (the VMM's seccomp filter).
    pub fn with_worker_hook(mut self, hook: Option<ThreadStartHook>) -> Self {
        self.worker.set_hook(hook);
        self
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The Unix socket host programs connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Vsock
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
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
        // The transport hands over the ready queues only: all three are needed, in order.
        if queues.len() != 3 {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        let handler = VsockHandler {
            muxer: Muxer::new(
                self.guest_cid,
                Arc::clone(&self.socket),
                Arc::clone(&self.counters),
            ),
        };
        self.worker
            .start("virtio-vsock".into(), memory, queues, interrupt, handler)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }
}

/// Binds the device's socket at `path`, replacing a stale one.
pub(crate) fn bind(path: PathBuf) -> Result<HostSocket, VsockError> {
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(VsockError::NotASocket(path)),
        Ok(_) => match backend::connect(&path) {
            Ok(_) => return Err(VsockError::SocketInUse(path)),
            // A listener whose backlog is full.
            Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => {
                return Err(VsockError::SocketInUse(path));
            }
            Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
                log::info!("vsock: replacing stale socket {}", path.display());
                if let Err(source) = std::fs::remove_file(&path) {
                    return Err(VsockError::RemoveStale { path, source });
                }
            }
            Err(source) => return Err(VsockError::Probe { path, source }),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(VsockError::Probe { path, source }),
    }
    let bind_error = |path: &Path, source| VsockError::Bind {
        path: path.to_owned(),
        source,
    };
    // std's sockets are close-on-exec.
    let listener = UnixListener::bind(&path).map_err(|source| bind_error(&path, source))?;
    let identity = std::fs::symlink_metadata(&path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    let socket = HostSocket {
        listener,
        path,
        identity,
    };
    socket
        .listener
        .set_nonblocking(true)
        .map_err(|source| bind_error(&socket.path, source))?;
    Ok(socket)
}

/// Runs a [`Muxer`] on the device's worker thread.
pub(crate) struct VsockHandler {
    pub(crate) muxer: Muxer,
}

/// Runs `serve` with the receive and transmit queues and the worker's epoll set.
fn with_rings<R: Default>(
    io: &mut WorkerIo<'_>,
    serve: impl FnOnce(&mut Rings<'_>, &WorkerIo<'_>) -> R,
) -> R {
    let queues = std::mem::take(&mut io.queues);
    let result = match &mut *queues {
        [rx, tx, ..] => {
            let mut rings = Rings {
                rx,
                tx,
                memory: io.memory,
            };
            serve(&mut rings, io)
        }
        _ => R::default(),
    };
    io.queues = queues;
    result
}

impl QueueHandler for VsockHandler {
    fn process(&mut self, index: usize, io: &mut WorkerIo<'_>) -> bool {
        let muxer = &mut self.muxer;
        with_rings(io, |rings, watcher| match index {
            RX_QUEUE => muxer.process_rx(rings, watcher),
            TX_QUEUE => muxer.process_tx(rings, watcher),
            // The driver's event buffers stay with the device, unused.
            _ => false,
        })
    }

    fn started(&mut self, io: &mut WorkerIo<'_>) -> std::io::Result<()> {
        self.muxer.start(io)
    }

    fn ready(
        &mut self,
        key: u64,
        events: vmm_sys_util::epoll::EventSet,
        io: &mut WorkerIo<'_>,
    ) -> bool {
        let muxer = &mut self.muxer;
        with_rings(io, |rings, watcher| {
            muxer.host_event(key, events, rings, watcher)
        })
    }

    fn stopping(&mut self, io: &mut WorkerIo<'_>) {
        let muxer = &mut self.muxer;
        with_rings(io, |rings, watcher| muxer.stop(rings, watcher));
    }
}
