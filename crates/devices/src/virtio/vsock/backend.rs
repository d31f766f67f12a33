//! The hybrid vsock backend (Firecracker's design): guest streams to and from host programs
//! on Unix sockets, multiplexed on the device's worker thread.
//!
//! - A host program connects to the device's socket and writes `CONNECT <port>\n`; the guest
//!   gets a REQUEST from a host port the device allocates (2^30 up) to `<port>`. When the guest
//!   answers RESPONSE the program reads `OK <host port>\n`, then the stream is raw data both
//!   ways; an RST from the guest (nothing listens) closes the program's stream.
//! - A guest connection to CID 2 port P connects to the Unix socket `<socket>_P` (a
//!   non-blocking connect, which never waits for a full backlog): RESPONSE on success, RST if
//!   nothing listens there.
//!
//! Everything is bounded, whatever the guest or host programs do: [`MAX_CONNECTIONS`]
//! connections (more are refused), [`MAX_HANDSHAKES`] host programs still writing their
//! `CONNECT` line (the oldest is dropped for a new one), [`MAX_ORPHAN_RESETS`] resets owed for
//! packets that name no connection (more are dropped; the packets are counted as refused),
//! and per connection the guest bytes the host has not taken yet (`connection::BUF_ALLOC`,
//! the credit advertised), with [`MAX_BUFFERED`] for all of them together: a connection over
//! a bound is reset. Control packets owed to the guest are flags on their
//! connection, so without guest receive buffers nothing grows; host streams with data
//! waiting for buffers are not watched meanwhile (the epoll set is level-triggered) and are
//! read again when the guest adds buffers or credit.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
#[cfg(any(test, feature = "fuzzing"))]
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use super::HOST_CID;
use super::connection::{Connection, Key, State, Verdict, read};
use super::packet::{Header, MAX_PACKET_DATA, OP_REQUEST, OP_RST, RxBuffer, TYPE_STREAM, read_tx};
use crate::log_limit::LogLimit;
use crate::virtio::worker::drain_queue;
use crate::virtio::{DeviceCounters, WorkerIo};

/// Connections at once, whoever opened them.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Host programs connected to the socket whose `CONNECT` line is not complete yet.
pub(crate) const MAX_HANDSHAKES: usize = 64;
/// Resets owed for guest packets that name no connection.
pub(crate) const MAX_ORPHAN_RESETS: usize = 256;
/// Guest bytes held for slow host programs, all connections together.
pub(crate) const MAX_BUFFERED: usize = 32 * 1024 * 1024;
/// The longest `CONNECT <port>\n` line read.
const MAX_CONNECT_LINE: usize = 32;
/// Connections accepted for one readiness of the listening socket.
const ACCEPTS_PER_EVENT: usize = 16;
/// The epoll key of the listening socket; streams get keys from 1 up.
const LISTENER_KEY: u64 = 0;

/// Warnings the guest or host programs can trigger at will.
static LOG: LogLimit = LogLimit::new(5);

/// Where the backend's descriptors join an epoll set: the worker's ([`WorkerIo`]), or one of
/// its own in tests and fuzzing ([`OwnEpoll`]).
pub(crate) trait Watcher {
    /// Watches `fd` for `events` under `key`.
    fn watch(&self, fd: RawFd, events: EventSet, key: u64) -> io::Result<()>;
    /// Changes what a watched `fd` is watched for.
    fn rewatch(&self, fd: RawFd, events: EventSet, key: u64) -> io::Result<()>;
    /// Stops watching `fd`.
    fn unwatch(&self, fd: RawFd) -> io::Result<()>;
}

impl Watcher for WorkerIo<'_> {
    fn watch(&self, fd: RawFd, events: EventSet, key: u64) -> io::Result<()> {
        WorkerIo::watch(self, fd, events, key)
    }

    fn rewatch(&self, fd: RawFd, events: EventSet, key: u64) -> io::Result<()> {
        WorkerIo::rewatch(self, fd, events, key)
    }

    fn unwatch(&self, fd: RawFd) -> io::Result<()> {
        WorkerIo::unwatch(self, fd)
    }
}

/// An epoll set of its own, for driving the backend without a worker thread.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct OwnEpoll(Epoll);

#[cfg(any(test, feature = "fuzzing"))]
impl OwnEpoll {
    /// A new, empty set.
    pub(crate) fn new() -> io::Result<Self> {
        Epoll::new().map(Self)
    }

    /// Waits up to `timeout_ms` (-1: for ever, 0: not at all) for ready descriptors.
    pub(crate) fn wait(&self, timeout_ms: i32) -> io::Result<Vec<(u64, EventSet)>> {
        let mut events = vec![EpollEvent::default(); 64];
        let ready = loop {
            match self.0.wait(timeout_ms, &mut events) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        Ok(events[..ready]
            .iter()
            .map(|event| (event.data(), event.event_set()))
            .collect())
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Watcher for OwnEpoll {
    fn watch(&self, fd: RawFd, events: EventSet, key: u64) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, key))
    }

    fn rewatch(&self, fd: RawFd, events: EventSet, key: u64) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, key))
    }

    fn unwatch(&self, fd: RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// The device's Unix socket: bound when the device is made, kept across activations (host
/// programs that connect while the guest sleeps wait in its backlog), removed when dropped.
#[derive(Debug)]
pub(crate) struct HostSocket {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
    /// Device and inode of the socket file bound, so that a file someone put in its place
    /// is not removed.
    pub(crate) identity: Option<(u64, u64)>,
}

impl Drop for HostSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| Some((meta.dev(), meta.ino())) == self.identity);
        if ours {
            if let Err(err) = std::fs::remove_file(&self.path) {
                log::warn!("vsock: cannot remove {}: {err}", self.path.display());
            }
        }
    }
}

/// A host program connected to the socket, still writing its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The queues the backend works on.
pub(crate) struct Rings<'a> {
    pub(crate) rx: &'a mut Queue,
    pub(crate) tx: &'a mut Queue,
    pub(crate) memory: &'a GuestMemoryMmap,
}

/// The connections of one activation, and what the guest is owed.
pub(crate) struct Muxer {
    guest_cid: u64,
    socket: Arc<HostSocket>,
    counters: Arc<DeviceCounters>,
    connections: HashMap<Key, Connection>,
    /// Epoll key to connection.
    tokens: HashMap<u64, Key>,
    /// Host programs still writing their line, by epoll key (oldest first).
    handshakes: BTreeMap<u64, Handshake>,
    next_token: u64,
    /// Connections with something for the guest, in turn.
    rx_ready: VecDeque<Key>,
    /// Resets owed for packets that named no connection: (host port, guest port).
    orphan_resets: VecDeque<(u32, u32)>,
    local_ports: HashSet<u32>,
    last_local_port: u32,
    buffered: usize,
    /// The listening socket is out of the epoll set (accept failed: out of descriptors).
    listener_paused: bool,
    tx_data: Vec<u8>,
    rx_data: Vec<u8>,
}

impl Muxer {
    /// A backend with no connection, for `guest_cid`, accepting on `socket`.
    pub(crate) fn new(
        guest_cid: u64,
        socket: Arc<HostSocket>,
        counters: Arc<DeviceCounters>,
    ) -> Self {
        Self {
            guest_cid,
            socket,
            counters,
            connections: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: BTreeMap::new(),
            next_token: LISTENER_KEY + 1,
            rx_ready: VecDeque::new(),
            orphan_resets: VecDeque::new(),
            local_ports: HashSet::new(),
            last_local_port: (1 << 30) - 1,
            buffered: 0,
            listener_paused: false,
            tx_data: Vec::with_capacity(MAX_PACKET_DATA),
            rx_data: vec![0; MAX_PACKET_DATA],
        }
    }

    /// The number of open connections.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Starts accepting host programs.
    pub(crate) fn start(&mut self, watcher: &impl Watcher) -> io::Result<()> {
        watcher.watch(self.socket.listener.as_raw_fd(), EventSet::IN, LISTENER_KEY)
    }

    /// Serves the transmit queue (the guest's packets), then the receive queue with what
    /// they made owed; returns whether the guest must be interrupted.
    pub(crate) fn process_tx(&mut self, rings: &mut Rings<'_>, watcher: &impl Watcher) -> bool {
        self.resume_listener(watcher);
        let memory = rings.memory;
        let interrupt = drain_queue(rings.tx, memory, |chain| {
            let mut data = std::mem::take(&mut self.tx_data);
            let ok = match read_tx(chain, memory, &mut data) {
                Ok(header) => self.handle_packet(&header, &data, watcher),
                Err(err) => {
                    if LOG.allow() {
                        log::warn!("vsock: malformed packet from the guest: {}", err.reason);
                    }
                    if let Some(header) = err.header {
                        self.refuse(&header, watcher);
                    }
                    false
                }
            };
            self.tx_data = data;
            self.counters.request(ok);
            0
        });
        self.fill_rx(rings, watcher) | interrupt
    }

    /// Fills the guest's receive buffers with what it is owed; returns whether the guest
    /// must be interrupted.
    pub(crate) fn process_rx(&mut self, rings: &mut Rings<'_>, watcher: &impl Watcher) -> bool {
        self.fill_rx(rings, watcher)
    }

    /// A descriptor registered under `key` is ready with `events`.
    pub(crate) fn host_event(
        &mut self,
        key: u64,
        events: EventSet,
        rings: &mut Rings<'_>,
        watcher: &impl Watcher,
    ) -> bool {
        if key == LISTENER_KEY {
            self.accept(watcher);
        } else if self.handshakes.contains_key(&key) {
            self.continue_handshake(key, watcher);
        } else if let Some(&conn_key) = self.tokens.get(&key) {
            if let Some(connection) = self.connections.get_mut(&conn_key) {
                connection.on_host(events);
            }
            self.after_change(conn_key, watcher);
        }
        self.fill_rx(rings, watcher)
    }

    /// The device is reset: the transmit chains already made available are taken (their
    /// bytes go nowhere), then every host stream is closed (host programs read EOF) and
    /// every connection forgotten. The listening socket stays as it is.
    pub(crate) fn stop(&mut self, rings: &mut Rings<'_>, watcher: &impl Watcher) -> bool {
        let memory = rings.memory;
        let interrupt = drain_queue(rings.tx, memory, |chain| {
            let mut data = std::mem::take(&mut self.tx_data);
            let _ = read_tx(chain, memory, &mut data);
            self.tx_data = data;
            0
        });
        self.close_all(watcher);
        interrupt
    }

    /// Closes every host stream and forgets every connection.
    pub(crate) fn close_all(&mut self, watcher: &impl Watcher) {
        for (_, handshake) in std::mem::take(&mut self.handshakes) {
            let _ = watcher.unwatch(handshake.stream.as_raw_fd());
        }
        for (_, mut connection) in std::mem::take(&mut self.connections) {
            if let (Some(fd), Some(_)) = (connection.fd(), connection.watched) {
                let _ = watcher.unwatch(fd);
            }
            connection.kill();
            drop(connection.take_closed_stream());
        }
        self.tokens.clear();
        self.rx_ready.clear();
        self.orphan_resets.clear();
        self.local_ports.clear();
        self.buffered = 0;
    }

    // --- the guest's packets ---

    /// Handles one well-formed packet; returns whether it was valid.
    fn handle_packet(&mut self, header: &Header, data: &[u8], watcher: &impl Watcher) -> bool {
        if header.dst_cid != HOST_CID || header.src_cid != self.guest_cid {
            if LOG.allow() {
                log::warn!(
                    "vsock: dropped a guest packet from CID {} to CID {}",
                    header.src_cid,
                    header.dst_cid
                );
            }
            return false;
        }
        if header.kind != TYPE_STREAM {
            self.refuse(header, watcher);
            return false;
        }
        let key = Key {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        let Some(connection) = self.connections.get_mut(&key) else {
            return match header.op {
                OP_REQUEST => self.connect_to_host(key, header, watcher),
                // Nothing to reset: the connection is gone already.
                OP_RST => true,
                _ => {
                    self.owe_orphan_reset(key);
                    false
                }
            };
        };
        let verdict = connection.on_guest(header, data);
        if verdict == Verdict::Remove {
            self.remove(key, watcher);
        } else {
            self.after_change(key, watcher);
        }
        verdict != Verdict::Refused
    }

    /// Resets the connection a malformed or refused packet names, or owes the guest a reset
    /// for it (never for a reset).
    fn refuse(&mut self, header: &Header, watcher: &impl Watcher) {
        if header.op == OP_RST || header.dst_cid != HOST_CID || header.src_cid != self.guest_cid {
            return;
        }
        let key = Key {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        match self.connections.get_mut(&key) {
            Some(connection) => {
                connection.kill();
                self.after_change(key, watcher);
            }
            None => self.owe_orphan_reset(key),
        }
    }

    fn owe_orphan_reset(&mut self, key: Key) {
        if self.orphan_resets.len() < MAX_ORPHAN_RESETS {
            self.orphan_resets
                .push_back((key.local_port, key.peer_port));
        } else if LOG.allow() {
            // The packet that asked for it is counted as refused already.
            log::warn!("vsock: {MAX_ORPHAN_RESETS} resets owed to the guest; one dropped");
        }
    }

    /// The guest connects to host port `key.local_port`: connects to `<socket>_<port>`.
    fn connect_to_host(&mut self, key: Key, request: &Header, watcher: &impl Watcher) -> bool {
        if self.connections.len() >= MAX_CONNECTIONS {
            if LOG.allow() {
                log::warn!("vsock: {MAX_CONNECTIONS} connections open; guest connection refused");
            }
            self.owe_orphan_reset(key);
            return false;
        }
        let mut path = self.socket.path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let stream = match connect(Path::new(&path)) {
            Ok(stream) => stream,
            Err(err) => {
                log::debug!(
                    "vsock: guest connection to {} refused: {err}",
                    Path::new(&path).display()
                );
                self.owe_orphan_reset(key);
                return false;
            }
        };
        let token = self.token();
        let connection = Connection::guest_initiated(key, self.guest_cid, token, stream, request);
        self.connections.insert(key, connection);
        self.tokens.insert(token, key);
        self.after_change(key, watcher);
        true
    }

    // --- host programs ---

    fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn accept(&mut self, watcher: &impl Watcher) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match accept(&self.socket.listener) {
                Ok(stream) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)
                    ) =>
                {
                    continue;
                }
                Err(err) => {
                    // Out of descriptors or memory: the socket stays readable, so it leaves
                    // the (level-triggered) epoll set until a stream is closed or the guest
                    // transmits.
                    if LOG.allow() {
                        log::warn!("vsock: cannot accept a host connection: {err}");
                    }
                    if watcher.unwatch(self.socket.listener.as_raw_fd()).is_ok() {
                        self.listener_paused = true;
                    }
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                if LOG.allow() {
                    log::warn!("vsock: {MAX_CONNECTIONS} connections open; host connection closed");
                }
                continue;
            }
            if self.handshakes.len() >= MAX_HANDSHAKES {
                if let Some((_, oldest)) = self.handshakes.pop_first() {
                    if LOG.allow() {
                        log::warn!("vsock: too many host connections without a CONNECT line");
                    }
                    let _ = watcher.unwatch(oldest.stream.as_raw_fd());
                }
            }
            let token = self.token();
            if let Err(err) = watcher.watch(stream.as_raw_fd(), EventSet::IN, token) {
                log::warn!("vsock: cannot watch a host connection: {err}");
                continue;
            }
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                },
            );
        }
    }

    fn resume_listener(&mut self, watcher: &impl Watcher) {
        if self.listener_paused
            && watcher
                .watch(self.socket.listener.as_raw_fd(), EventSet::IN, LISTENER_KEY)
                .is_ok()
        {
            self.listener_paused = false;
        }
    }

    /// Reads the `CONNECT <port>\n` line a byte at a time, so that nothing after it is
    /// taken from the stream before the connection is up.
    fn continue_handshake(&mut self, token: u64, watcher: &impl Watcher) {
        let Some(handshake) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match read(&handshake.stream, &mut byte) {
                Ok(1) => {
                    handshake.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break parse_connect(&handshake.line);
                    }
                    if handshake.line.len() >= MAX_CONNECT_LINE {
                        break None;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                // EOF or an error.
                _ => break None,
            }
        };
        let Some(handshake) = self.handshakes.remove(&token) else {
            return;
        };
        let _ = watcher.unwatch(handshake.stream.as_raw_fd());
        self.resume_listener(watcher);
        let Some(port) = port else {
            if !LOG.allow() {
                return;
            }
            log::info!(
                "vsock: host connection closed: expected \"CONNECT <port>\\n\", got {:?}",
                String::from_utf8_lossy(&handshake.line)
            );
            return;
        };
        if self.connections.len() >= MAX_CONNECTIONS {
            if LOG.allow() {
                log::warn!("vsock: {MAX_CONNECTIONS} connections open; host connection closed");
            }
            return;
        }
        let Some(local_port) = self.allocate_local_port() else {
            return;
        };
        let key = Key {
            local_port,
            peer_port: port,
        };
        let connection = Connection::host_initiated(key, self.guest_cid, token, handshake.stream);
        self.connections.insert(key, connection);
        self.tokens.insert(token, key);
        self.after_change(key, watcher);
    }

    /// A host port in [2^30, 2^31) not in use, in turn.
    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            self.last_local_port = ((self.last_local_port + 1) & !(1 << 31)) | (1 << 30);
            if self.local_ports.insert(self.last_local_port) {
                return Some(self.last_local_port);
            }
        }
        None
    }

    // --- connection bookkeeping ---

    /// After a connection changed: closes its stream if it is closing, updates what its
    /// stream is watched for, its buffered bytes and its turn for the receive queue, and
    /// forgets it once it owes nothing.
    fn after_change(&mut self, key: Key, watcher: &impl Watcher) {
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        self.buffered = self.buffered.saturating_sub(connection.accounted) + connection.buffered();
        connection.accounted = connection.buffered();
        if self.buffered > MAX_BUFFERED && connection.state() != State::Closing {
            if LOG.allow() {
                log::warn!("vsock: {MAX_BUFFERED} bytes held for host programs; connection reset");
            }
            connection.kill();
            self.buffered = self.buffered.saturating_sub(connection.accounted);
            connection.accounted = 0;
        }
        let wanted = connection.interest();
        if let Some(fd) = connection.fd() {
            let result = match (connection.watched, wanted) {
                (None, Some(events)) => watcher.watch(fd, events, connection.token()),
                (Some(now), Some(events)) if now != events => {
                    watcher.rewatch(fd, events, connection.token())
                }
                (Some(_), None) => watcher.unwatch(fd),
                _ => Ok(()),
            };
            match result {
                Ok(()) => connection.watched = wanted,
                Err(err) => {
                    if LOG.allow() {
                        log::warn!("vsock: cannot watch a host stream: {err}");
                    }
                    if connection.watched.is_some() {
                        let _ = watcher.unwatch(fd);
                    }
                    connection.watched = None;
                    connection.kill();
                }
            }
        }
        if connection.take_closed_stream().is_some() {
            // Closed: the host program reads EOF.
            self.resume_listener(watcher);
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        if connection.is_done() {
            self.remove(key, watcher);
        } else if connection.has_rx() && !connection.queued {
            connection.queued = true;
            self.rx_ready.push_back(key);
        }
    }

    fn remove(&mut self, key: Key, watcher: &impl Watcher) {
        let Some(mut connection) = self.connections.remove(&key) else {
            return;
        };
        if let (Some(fd), Some(_)) = (connection.fd(), connection.watched) {
            let _ = watcher.unwatch(fd);
        }
        connection.kill();
        drop(connection.take_closed_stream());
        self.tokens.remove(&connection.token());
        if connection.local_init() {
            self.local_ports.remove(&key.local_port);
        }
        self.buffered = self.buffered.saturating_sub(connection.accounted);
        if connection.queued {
            self.rx_ready.retain(|queued| *queued != key);
        }
        self.resume_listener(watcher);
    }

    // --- the receive queue ---

    fn fill_rx(&mut self, rings: &mut Rings<'_>, watcher: &impl Watcher) -> bool {
        let memory = rings.memory;
        let rx = &mut *rings.rx;
        let mut used = false;
        let mut rechecked = false;
        while !self.orphan_resets.is_empty() || !self.rx_ready.is_empty() {
            let Some(mut chain) = rx.pop_descriptor_chain(memory) else {
                // Out of buffers: ask to be notified of new ones, and look once more for
                // one published meanwhile (once: a broken ring must not spin here).
                match rx.enable_notification(memory) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    _ => break,
                }
            };
            rechecked = false;
            let head = chain.head_index();
            let written = match RxBuffer::from_chain(&mut chain, memory) {
                Ok(buffer) => match self.next_packet(&buffer, memory, watcher) {
                    Some(written) => {
                        self.counters.request(true);
                        written
                    }
                    None => {
                        // Nothing to send after all: the buffer stays the guest's.
                        rx.go_to_previous_position();
                        break;
                    }
                },
                Err(err) => {
                    if LOG.allow() {
                        log::warn!("vsock: malformed receive buffer: {err}");
                    }
                    self.counters.request(false);
                    0
                }
            };
            if let Err(err) = rx.add_used(memory, head, written) {
                log::warn!("vsock: cannot add a used entry: {err}");
                return used;
            }
            used = true;
        }
        used && rx.needs_notification(memory).unwrap_or_else(|err| {
            log::warn!("vsock: cannot read the used event index: {err}");
            true
        })
    }

    /// Writes the next packet owed into `buffer`; returns its length, or `None` if nothing
    /// is owed after all.
    fn next_packet(
        &mut self,
        buffer: &RxBuffer,
        memory: &GuestMemoryMmap,
        watcher: &impl Watcher,
    ) -> Option<u32> {
        if let Some((local_port, peer_port)) = self.orphan_resets.pop_front() {
            let header = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local_port,
                dst_port: peer_port,
                kind: TYPE_STREAM,
                op: OP_RST,
                ..Header::default()
            };
            return Some(self.write_rx(buffer, memory, &header, 0));
        }
        // Each connection in the queue once at most: one with nothing to send after all goes
        // back only if it still has something, and is not asked again in this round.
        for _ in 0..self.rx_ready.len() {
            let key = self.rx_ready.pop_front()?;
            let Some(connection) = self.connections.get_mut(&key) else {
                continue;
            };
            connection.queued = false;
            let room = buffer.data_room().min(MAX_PACKET_DATA);
            let header = connection.next_packet(room, &mut self.rx_data);
            self.after_change(key, watcher);
            if let Some(header) = header {
                let len = header.len as usize;
                return Some(self.write_rx(buffer, memory, &header, len));
            }
        }
        None
    }

    fn write_rx(
        &self,
        buffer: &RxBuffer,
        memory: &GuestMemoryMmap,
        header: &Header,
        len: usize,
    ) -> u32 {
        match buffer.write(memory, header, &self.rx_data[..len]) {
            Ok(written) => written,
            Err(err) => {
                log::warn!("vsock: cannot write a packet for the guest: {err}");
                0
            }
        }
    }
}

/// Parses `CONNECT <port>\n` (the keyword in any case, as Firecracker accepts it).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\n')?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split_ascii_whitespace();
    let (Some(keyword), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return None;
    };
    if !keyword.eq_ignore_ascii_case("connect") || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Accepts a connection, non-blocking and close-on-exec (`accept4`).
fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    // SAFETY: accept4 with null address pointers writes no memory; the listening descriptor
    // is owned by `listener`, alive for the call.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Connects to the Unix socket at `path` without ever blocking (`socket`, `connect`): a
/// listener whose backlog is full refuses (`EAGAIN`) instead of making the worker wait.
pub(crate) fn connect(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: socket() takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let length = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `address` is a valid sockaddr_un of which the kernel reads `length` bytes, less
    // than its size; `fd` is open for the call.
    let result = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(address).cast(),
            length as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
