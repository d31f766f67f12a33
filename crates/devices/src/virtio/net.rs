//! virtio-net on a Linux tap: one receive and one transmit queue, the guest's MAC address and
//! link status in the configuration space, checksum and TCP segmentation offloads passed
//! through the tap's virtio-net header.
//!
//! Transmit: each chain is one frame, virtio-net header first; its buffers go to the tap in
//! one `writev` straight from guest memory. A malformed chain (a device-writable buffer, too
//! short or too long, outside guest RAM, looping) and a frame the tap refuses are counted as
//! errors and completed unsent: the driver never waits for a chain.
//!
//! Receive: a frame is read from the tap only when the driver has made a buffer available,
//! and stays in the tap's queue otherwise: the worker stops watching the tap while the
//! receive queue is empty and watches it again when the driver adds buffers, so a slow guest
//! loses no frame and an idle device costs no CPU. The frame is read into a host buffer,
//! then copied into as many chains as it needs (`num_buffers`, with `VIRTIO_NET_F_MRG_RXBUF`;
//! one chain otherwise). A frame larger than the room available now waits, in that host
//! buffer, for the driver to add more; one larger than any room the driver can give is
//! dropped and counted.
//!
//! A reset (Linux resets the device on every suspend, `virtnet_freeze`) completes the
//! transmit chains already available and reads nothing more from the tap: frames that arrive
//! meanwhile wait in the tap (and a frame already read waits in the device) for the next
//! activation. Receive buffers the device held are abandoned; the driver frees them on reset.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::epoll::EventSet;

use super::tap::{Tap, VNET_HDR_LEN};
use super::worker::{WorkerSlot, drain_queue};
use super::{
    ActivateError, ActiveQueue, DeviceCounters, DeviceKind, QUEUE_MAX_SIZE, QueueHandler,
    ThreadStartHook, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
    WorkerIo,
};
use crate::log_limit::LogLimit;

/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// The longest frame, virtio-net header included: the receive buffer size the virtio spec
/// asks of a driver that takes TSO frames without merged buffers.
pub const MAX_FRAME_LEN: usize = 65_562;
/// The shortest frame: the virtio-net header and an Ethernet header.
pub const MIN_FRAME_LEN: usize = VNET_HDR_LEN + 14;
/// The most buffers one transmitted frame may have: `writev`'s limit (IOV_MAX).
const MAX_TX_SEGMENTS: usize = 1024;
/// Frames one round of receiving moves at most, so that a flood from the host cannot keep the
/// worker from its other queue or from a reset.
const RX_FRAMES_PER_ROUND: usize = 256;
/// The key of the tap's descriptor in the worker's epoll set.
const TAP_KEY: u64 = 0;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// What every device offers.
const BASE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF);
/// The offloads, offered when the tap takes `TUNSETOFFLOAD`.
const OFFLOAD_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN);

/// Tap warnings the guest can cause (a frame the tap refuses), rate-limited.
static TAP_LOG: LogLimit = LogLimit::new(5);

/// The `TUN_F_*` offloads for the guest's accepted `features`: what the tap may hand over
/// unfinished (checksum, segmentation) because the guest finishes it.
pub fn tap_offloads(features: u64) -> u32 {
    if features & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        // The tap ignores the segmentation flags without TUN_F_CSUM, and so does the spec.
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
    ] {
        if features & bit(feature) != 0 {
            flags |= flag;
        }
    }
    flags
}

/// A virtio-net device on a tap.
pub struct NetDevice {
    tap: Arc<Tap>,
    mac: [u8; 6],
    features: u64,
    config: [u8; 8],
    counters: Arc<DeviceCounters>,
    worker: WorkerSlot,
    /// A frame read from the tap and not yet delivered when the device was reset: the next
    /// activation delivers it first.
    pending_rx: Arc<Mutex<Vec<u8>>>,
}

impl NetDevice {
    /// A device on `tap` whose guest has the address `mac`. The offloads are offered only if
    /// the tap takes them (tried here).
    pub fn new(tap: Arc<Tap>, mac: [u8; 6]) -> Self {
        let all = tap_offloads(OFFLOAD_FEATURES);
        let features = match tap.set_offload(all).and_then(|()| tap.set_offload(0)) {
            Ok(()) => BASE_FEATURES | OFFLOAD_FEATURES,
            Err(err) => {
                log::warn!("virtio-net: no offloads: {err}");
                BASE_FEATURES
            }
        };
        // struct virtio_net_config: mac[6], status (le16); max_virtqueue_pairs and mtu are
        // for features not offered.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Self {
            tap,
            mac,
            features,
            config,
            counters: Arc::default(),
            worker: WorkerSlot::default(),
            pending_rx: Arc::default(),
        }
    }

    /// Runs `hook` first on each of its worker threads (the VMM's seccomp filter).
    pub fn with_worker_hook(mut self, hook: Option<ThreadStartHook>) -> Self {
        self.worker.set_hook(hook);
        self
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Net
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<VirtioInterrupt>,
        features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() <= TX_QUEUE {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        if self.features & OFFLOAD_FEATURES != 0 {
            // On failure the tap keeps its earlier offloads; frames the guest did not agree
            // to take are dropped on their way in (`accept_rx_header`).
            if let Err(err) = self.tap.set_offload(tap_offloads(features)) {
                log::warn!("virtio-net {}: {err}", self.tap.name());
            }
        }
        let core = NetCore::new(
            Arc::clone(&self.tap),
            features,
            Arc::clone(&self.counters),
            Arc::clone(&self.pending_rx),
        );
        let handler = NetHandler {
            core,
            fd: self.tap.as_raw_fd(),
            tap_watched: false,
        };
        self.worker
            .start("virtio-net".into(), memory, queues, interrupt, handler)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }
}

/// The host end of a device: the tap, or a stand-in for tests and fuzzing.
pub(crate) trait NetBackend: Send + Sync + 'static {
    /// Reads one frame, header first, into `buffer`: its full length (more than `buffer` if
    /// it was cut), or `WouldBlock` when none is queued.
    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame, header first, gathered from `buffers`.
    fn send(&self, buffers: &[VolatileSlice<'_>]) -> io::Result<usize>;
}

impl NetBackend for Tap {
    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        self.read_frame(buffer)
    }

    fn send(&self, buffers: &[VolatileSlice<'_>]) -> io::Result<usize> {
        self.write_frame(buffers)
    }
}

/// Serves the queues on the worker thread and watches the tap while frames can be taken.
struct NetHandler {
    core: NetCore<Tap>,
    fd: RawFd,
    tap_watched: bool,
}

impl NetHandler {
    fn receive(&mut self, io: &mut WorkerIo<'_>) -> bool {
        let memory = io.memory;
        let Some(queue) = io.queues.get_mut(RX_QUEUE) else {
            return false;
        };
        let (interrupt, wait) = self.core.receive(queue, memory);
        self.watch_tap(io, wait == RxWait::Tap);
        interrupt
    }

    /// Watches the tap (level-triggered) or stops: never while the guest has no buffer, or
    /// the worker would wake for a frame it cannot take, again and again.
    fn watch_tap(&mut self, io: &WorkerIo<'_>, watch: bool) {
        if watch == self.tap_watched {
            return;
        }
        let result = if watch {
            io.watch(self.fd, EventSet::IN, TAP_KEY)
        } else {
            io.unwatch(self.fd)
        };
        match result {
            Ok(()) => self.tap_watched = watch,
            Err(err) => log::error!("virtio-net: cannot change what the tap is watched for: {err}"),
        }
    }
}

impl QueueHandler for NetHandler {
    fn started(&mut self, io: &mut WorkerIo<'_>) -> io::Result<()> {
        io.watch(self.fd, EventSet::IN, TAP_KEY)?;
        self.tap_watched = true;
        Ok(())
    }

    fn process(&mut self, index: usize, io: &mut WorkerIo<'_>) -> bool {
        match index {
            RX_QUEUE => self.receive(io),
            TX_QUEUE => {
                let memory = io.memory;
                match io.queues.get_mut(TX_QUEUE) {
                    Some(queue) => self.core.transmit(queue, memory),
                    None => false,
                }
            }
            _ => false,
        }
    }

    fn ready(&mut self, key: u64, events: EventSet, io: &mut WorkerIo<'_>) -> bool {
        if key != TAP_KEY {
            return false;
        }
        let interrupt = self.receive(io);
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            // The tap is gone. epoll reports that whatever it is asked for, so stop watching
            // rather than wake for it forever; the next receive notification tries again.
            if TAP_LOG.allow() {
                log::error!("virtio-net: the tap failed ({events:?}); receiving stops");
            }
            self.watch_tap(io, false);
        }
        interrupt
    }

    fn stopping(&mut self, io: &mut WorkerIo<'_>) {
        // Transmit what the driver already queued; take nothing more from the tap: frames
        // wait there for the next activation.
        self.process(TX_QUEUE, io);
    }
}

/// Why a round of receiving stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxWait {
    /// The tap has no frame (or the round's budget ran out): wake when it is readable.
    Tap,
    /// The guest has no room for the next frame: wake when it notifies the receive queue.
    Buffers,
    /// Reading the tap failed: wait for the guest only, not for the tap.
    TapBroken,
}

/// A chain the driver made available for the device to fill.
#[derive(Debug)]
pub(crate) struct RxChain {
    head: u16,
    /// Its device-writable buffers, in order, each inside guest RAM.
    buffers: Vec<(GuestAddress, u32)>,
    capacity: usize,
    /// The descriptors it took from the queue.
    descriptors: usize,
}

/// A chain that cannot be served as the driver built it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A buffer goes the wrong way (device-writable to transmit, readable to receive).
    Direction,
    /// Shorter than a frame (transmit) or a virtio-net header (receive).
    TooShort,
    /// A frame longer than [`MAX_FRAME_LEN`].
    TooLong,
    /// More buffers than one `writev` takes.
    TooManySegments,
    /// A buffer is not in guest RAM.
    OutsideRam,
    /// The chain loops, is longer than the queue, or its next descriptor cannot be read.
    Unterminated,
}

/// The transmit chain's frame: its buffers in guest memory, header first.
pub(crate) fn tx_buffers<'m>(
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    memory: &'m GuestMemoryMmap,
) -> Result<Vec<VolatileSlice<'m>>, Malformed> {
    let mut buffers = Vec::new();
    let mut len = 0usize;
    let mut more = false;
    for desc in chain.by_ref() {
        more = desc.has_next();
        if desc.is_write_only() {
            return Err(Malformed::Direction);
        }
        len += desc.len() as usize;
        if len > MAX_FRAME_LEN {
            return Err(Malformed::TooLong);
        }
        // A buffer across two memory regions is two iovecs.
        for slice in memory.get_slices(desc.addr(), desc.len() as usize) {
            buffers.push(slice.map_err(|_| Malformed::OutsideRam)?);
        }
        if buffers.len() > MAX_TX_SEGMENTS {
            return Err(Malformed::TooManySegments);
        }
    }
    if more {
        return Err(Malformed::Unterminated);
    }
    if len < MIN_FRAME_LEN {
        return Err(Malformed::TooShort);
    }
    Ok(buffers)
}

/// The receive chain's buffers, checked.
pub(crate) fn rx_chain(
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
) -> Result<RxChain, Malformed> {
    let head = chain.head_index();
    let mut buffers = Vec::new();
    let mut capacity = 0usize;
    let mut descriptors = 0;
    let mut more = false;
    for desc in chain.by_ref() {
        descriptors += 1;
        more = desc.has_next();
        if !desc.is_write_only() {
            return Err(Malformed::Direction);
        }
        if desc.len() == 0 {
            continue;
        }
        if !memory.check_range(desc.addr(), desc.len() as usize) {
            return Err(Malformed::OutsideRam);
        }
        buffers.push((desc.addr(), desc.len()));
        // The iterator ends a chain before it passes 4 GiB in total.
        capacity += desc.len() as usize;
    }
    if more {
        return Err(Malformed::Unterminated);
    }
    // The spec requires room for the header in every buffer (merged or not).
    if capacity < VNET_HDR_LEN {
        return Err(Malformed::TooShort);
    }
    Ok(RxChain {
        head,
        buffers,
        capacity,
        descriptors,
    })
}

/// Copies `frame` into `chains` in order, filling each before the next; returns the bytes
/// each chain got, and whether every byte landed.
pub(crate) fn write_frame(
    frame: &[u8],
    chains: &[RxChain],
    memory: &GuestMemoryMmap,
) -> (Vec<u32>, bool) {
    let mut rest = frame;
    let mut ok = true;
    let written = chains
        .iter()
        .map(|chain| {
            let mut chain_written = 0u32;
            for &(addr, len) in &chain.buffers {
                if rest.is_empty() {
                    break;
                }
                let take = rest.len().min(len as usize);
                // Checked when the chain was taken; guest RAM does not shrink meanwhile.
                if memory.write_slice(&rest[..take], addr).is_err() {
                    ok = false;
                }
                rest = &rest[take..];
                chain_written += take as u32;
            }
            chain_written
        })
        .collect();
    (written, ok && rest.is_empty())
}

/// Whether the guest agreed to take a frame with this header (the tap may hold frames made
/// for an earlier activation's offloads); clears the flags it did not agree to.
pub(crate) fn accept_rx_header(header: &mut [u8], features: u64) -> bool {
    let [flags, gso_type, ..] = *header else {
        return false;
    };
    let has = |feature| features & bit(feature) != 0;
    let csum = has(VIRTIO_NET_F_GUEST_CSUM);
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0 && !csum {
        return false;
    }
    let ecn = gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0;
    let gso_ok = match u32::from(gso_type & !(VIRTIO_NET_HDR_GSO_ECN as u8)) {
        VIRTIO_NET_HDR_GSO_NONE => !ecn,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    };
    if !gso_ok || (ecn && !has(VIRTIO_NET_F_GUEST_ECN)) {
        return false;
    }
    let mut allowed = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    if csum {
        allowed |= VIRTIO_NET_HDR_F_DATA_VALID as u8;
    }
    header[0] = flags & allowed;
    true
}

/// The next available chain, or `None` once the queue is empty with notifications enabled
/// (so the driver's next buffer is notified).
fn pop_available<'m>(
    queue: &mut Queue,
    memory: &'m GuestMemoryMmap,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    // One recheck after enabling: a chain published meanwhile is not missed; a broken ring
    // (an index too far ahead, which virtio-queue refuses) is not retried forever.
    for _ in 0..2 {
        if let Some(chain) = queue.pop_descriptor_chain(memory) {
            return Some(chain);
        }
        match queue.enable_notification(memory) {
            Ok(true) => continue,
            Ok(false) => return None,
            Err(err) => {
                log::warn!("virtio-net: cannot enable notifications: {err}");
                return None;
            }
        }
    }
    None
}

fn add_used(queue: &mut Queue, memory: &GuestMemoryMmap, head: u16, len: u32, used: &mut bool) {
    match queue.add_used(memory, head, len) {
        Ok(()) => *used = true,
        Err(err) => log::warn!("virtio-net: cannot add a used entry: {err}"),
    }
}

/// The queues' side of a device, with no thread or epoll: what the worker runs, and what tests
/// and the fuzz target drive directly.
pub(crate) struct NetCore<B: NetBackend> {
    backend: Arc<B>,
    features: u64,
    counters: Arc<DeviceCounters>,
    /// The frame being received, read from the backend and not yet in the guest's buffers.
    frame: Vec<u8>,
    /// Its length; 0 when there is none.
    frame_len: usize,
    /// Chains taken from the receive queue and not yet filled.
    held: VecDeque<RxChain>,
    /// Their descriptors: when they are the whole queue, the driver cannot add more.
    held_descriptors: usize,
    /// Where a frame not yet delivered goes when this activation ends.
    pending_rx: Arc<Mutex<Vec<u8>>>,
}

impl<B: NetBackend> NetCore<B> {
    /// Serves the queues for a driver that accepted `features`; a frame left in
    /// `pending_rx` by the previous activation is delivered first.
    pub(crate) fn new(
        backend: Arc<B>,
        features: u64,
        counters: Arc<DeviceCounters>,
        pending_rx: Arc<Mutex<Vec<u8>>>,
    ) -> Self {
        let mut frame = vec![0u8; MAX_FRAME_LEN];
        let carried = std::mem::take(&mut *pending_rx.lock().unwrap_or_else(|e| e.into_inner()));
        let frame_len = carried.len().min(MAX_FRAME_LEN);
        frame[..frame_len].copy_from_slice(&carried[..frame_len]);
        Self {
            backend,
            features,
            counters,
            frame,
            frame_len,
            held: VecDeque::new(),
            held_descriptors: 0,
            pending_rx,
        }
    }

    /// Sends every available transmit chain; returns whether the guest must be interrupted.
    pub(crate) fn transmit(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let backend = &*self.backend;
        let counters = &self.counters;
        drain_queue(queue, memory, |chain| {
            counters.request(send_chain(backend, chain, memory));
            0
        })
    }

    /// Moves frames from the backend into the receive queue until one of them runs out;
    /// returns whether the guest must be interrupted and what to wait for next.
    pub(crate) fn receive(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> (bool, RxWait) {
        let mut used = false;
        let mut wait = RxWait::Tap;
        for _ in 0..RX_FRAMES_PER_ROUND {
            if self.frame_len == 0 {
                // A frame is taken from the tap only once a buffer is there for it.
                if self.held.is_empty() && !self.hold_chain(queue, memory, &mut used) {
                    wait = RxWait::Buffers;
                    break;
                }
                match self.read_frame() {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(stop) => {
                        wait = stop;
                        break;
                    }
                }
            }
            if !self.deliver(queue, memory, &mut used) {
                wait = RxWait::Buffers;
                break;
            }
        }
        let interrupt = used
            && queue.needs_notification(memory).unwrap_or_else(|err| {
                log::warn!("virtio-net: cannot read the used event index: {err}");
                true
            });
        (interrupt, wait)
    }

    /// Reads the next frame: `Ok(true)` when one is pending, `Ok(false)` when one was read
    /// and dropped, or why to stop.
    fn read_frame(&mut self) -> Result<bool, RxWait> {
        match self.backend.receive(&mut self.frame) {
            Ok(0) => {
                log::error!("virtio-net: the tap is closed; receiving stops");
                Err(RxWait::TapBroken)
            }
            Ok(len) if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) => {
                log::debug!("virtio-net: dropped a {len}-byte frame from the tap");
                self.counters.request(false);
                Ok(false)
            }
            Ok(len) => {
                self.frame_len = len;
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(RxWait::Tap),
            Err(err) => {
                log::error!("virtio-net: cannot read the tap; receiving stops: {err}");
                self.counters.request(false);
                Err(RxWait::TapBroken)
            }
        }
    }

    /// Takes the next available chain into `held`, completing malformed ones on the way;
    /// false when the queue has none.
    fn hold_chain(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap, used: &mut bool) -> bool {
        loop {
            let Some(mut chain) = pop_available(queue, memory) else {
                return false;
            };
            let head = chain.head_index();
            match rx_chain(&mut chain, memory) {
                Ok(rx) => {
                    self.held_descriptors += rx.descriptors;
                    self.held.push_back(rx);
                    return true;
                }
                Err(reason) => {
                    log::debug!("virtio-net: malformed receive chain: {reason:?}");
                    self.counters.request(false);
                    add_used(queue, memory, head, 0, used);
                }
            }
        }
    }

    /// Delivers the pending frame, or drops it if the guest cannot take it; false when it
    /// needs more room than the driver made available (it stays pending).
    fn deliver(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap, used: &mut bool) -> bool {
        let len = self.frame_len;
        if !accept_rx_header(&mut self.frame[..VNET_HDR_LEN], self.features) {
            log::debug!("virtio-net: dropped a frame with offloads the guest did not accept");
            self.drop_frame();
            return true;
        }
        let mergeable = self.features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let count = loop {
            if let Some(count) = chains_needed(&self.held, len, mergeable) {
                break count;
            }
            // Without merged buffers a frame takes one chain, and the first one is too small;
            // with them, every descriptor of the queue is already here.
            if !(mergeable || self.held.is_empty())
                || self.held_descriptors >= usize::from(queue.size())
            {
                log::debug!(
                    "virtio-net: dropped a {len}-byte frame larger than the guest's buffers"
                );
                self.drop_frame();
                return true;
            }
            if !self.hold_chain(queue, memory, used) {
                return false;
            }
        };
        // At most the queue size (held chains are distinct queue entries): fits.
        let num_buffers = count as u16;
        self.frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        let chains: Vec<RxChain> = self.held.drain(..count).collect();
        let (written, ok) = write_frame(&self.frame[..len], &chains, memory);
        for (chain, bytes) in chains.iter().zip(written) {
            self.held_descriptors -= chain.descriptors;
            add_used(queue, memory, chain.head, bytes, used);
        }
        self.frame_len = 0;
        self.counters.request(ok);
        true
    }

    fn drop_frame(&mut self) {
        self.frame_len = 0;
        self.counters.request(false);
    }
}

impl<B: NetBackend> Drop for NetCore<B> {
    fn drop(&mut self) {
        if self.frame_len > 0 {
            *self.pending_rx.lock().unwrap_or_else(|e| e.into_inner()) =
                self.frame[..self.frame_len].to_vec();
        }
    }
}

/// How many of `held`, from the first, the frame of `len` bytes fills; `None` if they are
/// not enough.
fn chains_needed(held: &VecDeque<RxChain>, len: usize, mergeable: bool) -> Option<usize> {
    if !mergeable {
        return held
            .front()
            .filter(|chain| chain.capacity >= len)
            .map(|_| 1);
    }
    let mut room = 0usize;
    for (index, chain) in held.iter().enumerate() {
        room += chain.capacity;
        if room >= len {
            return Some(index + 1);
        }
    }
    None
}

/// Sends the transmit chain's frame; false if the chain was malformed or the frame refused.
fn send_chain<B: NetBackend + ?Sized>(
    backend: &B,
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
) -> bool {
    let buffers = match tx_buffers(chain, memory) {
        Ok(buffers) => buffers,
        Err(reason) => {
            log::debug!("virtio-net: malformed transmit chain: {reason:?}");
            return false;
        }
    };
    // The tap takes a frame or refuses it at once (a bad header, a full host backlog, an
    // interface that is down): the frame is dropped and counted, as a NIC would, rather
    // than held back with the rest of the queue behind it.
    match backend.send(&buffers) {
        Ok(_) => true,
        Err(err) => {
            if TAP_LOG.allow() {
                log::warn!("virtio-net: the tap refused a frame: {err}");
            }
            false
        }
    }
}

/// A backend in memory: frames queued for the guest, and the frames it sent.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Default)]
pub(crate) struct MemoryBackend {
    pub(crate) incoming: Mutex<VecDeque<Vec<u8>>>,
    pub(crate) sent: Mutex<Vec<Vec<u8>>>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl NetBackend for MemoryBackend {
    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let Some(frame) = self.incoming.lock().unwrap().pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let len = frame.len().min(buffer.len());
        buffer[..len].copy_from_slice(&frame[..len]);
        Ok(frame.len())
    }

    fn send(&self, buffers: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let mut frame = Vec::new();
        for buffer in buffers {
            let start = frame.len();
            frame.resize(start + buffer.len(), 0);
            buffer.copy_to(&mut frame[start..]);
        }
        let len = frame.len();
        self.sent.lock().unwrap().push(frame);
        Ok(len)
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
pub(crate) mod tests;
