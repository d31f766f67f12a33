//! The vsock backend driven by hand, without a worker thread: for the `virtio_vsock` fuzz
//! target (through `virtio::fuzzing`) and the unit tests. Not an API.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::backend::{HostSocket, Muxer, OwnEpoll, Rings};
use super::{VsockError, bind};
use crate::virtio::{DeviceCounters, DeviceStats};

/// What a [`super::VsockDevice`]'s worker runs, with an epoll set of its own.
pub struct VsockPackets {
    muxer: Muxer,
    epoll: OwnEpoll,
    socket: Arc<HostSocket>,
    counters: Arc<DeviceCounters>,
    guest_cid: u64,
}

impl VsockPackets {
    /// A backend for `guest_cid` (any value: the fuzzer tries them) accepting host programs
    /// on `socket`, bound as the device binds it.
    pub fn new(guest_cid: u64, socket: PathBuf) -> Result<Self, VsockError> {
        let socket = Arc::new(bind(socket)?);
        let counters = Arc::<DeviceCounters>::default();
        let (muxer, epoll) =
            Self::activate(guest_cid, &socket, &counters).map_err(|source| VsockError::Bind {
                path: socket.path.clone(),
                source,
            })?;
        Ok(Self {
            muxer,
            epoll,
            socket,
            counters,
            guest_cid,
        })
    }

    fn activate(
        guest_cid: u64,
        socket: &Arc<HostSocket>,
        counters: &Arc<DeviceCounters>,
    ) -> io::Result<(Muxer, OwnEpoll)> {
        let epoll = OwnEpoll::new()?;
        let mut muxer = Muxer::new(guest_cid, Arc::clone(socket), Arc::clone(counters));
        muxer.start(&epoll)?;
        Ok((muxer, epoll))
    }

    /// The socket host programs connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// The transmit queue was notified; returns whether the guest must be interrupted.
    pub fn process_tx(&mut self, rx: &mut Queue, tx: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let mut rings = Rings { rx, tx, memory };
        self.muxer.process_tx(&mut rings, &self.epoll)
    }

    /// The receive queue was notified; returns whether the guest must be interrupted.
    pub fn process_rx(&mut self, rx: &mut Queue, tx: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let mut rings = Rings { rx, tx, memory };
        self.muxer.process_rx(&mut rings, &self.epoll)
    }

    /// Waits up to `timeout_ms` (0: not at all) for host sockets to be ready and handles what
    /// is; returns how many were ready and whether the guest must be interrupted.
    pub fn poll(
        &mut self,
        rx: &mut Queue,
        tx: &mut Queue,
        memory: &GuestMemoryMmap,
        timeout_ms: i32,
    ) -> io::Result<(usize, bool)> {
        let ready = self.epoll.wait(timeout_ms)?;
        let mut interrupt = false;
        let mut rings = Rings { rx, tx, memory };
        for &(key, events) in &ready {
            interrupt |= self.muxer.host_event(key, events, &mut rings, &self.epoll);
        }
        Ok((ready.len(), interrupt))
    }

    /// A device reset and a new activation: the transmit chains available are taken, every
    /// host stream is closed, the listening socket stays.
    pub fn reset(
        &mut self,
        rx: &mut Queue,
        tx: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> io::Result<()> {
        let mut rings = Rings { rx, tx, memory };
        self.muxer.stop(&mut rings, &self.epoll);
        let (muxer, epoll) = Self::activate(self.guest_cid, &self.socket, &self.counters)?;
        self.muxer = muxer;
        self.epoll = epoll;
        Ok(())
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Packets handled and refused.
    pub fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }
}
