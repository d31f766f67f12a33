//! One connection between a guest `AF_VSOCK` stream socket and a host Unix stream: its
//! state, both directions of flow control, and the packets it owes the guest.
//!
//! Host to guest, data is read from the host stream straight into a guest receive buffer,
//! never more than the guest's credit (`buf_alloc - (rx_cnt - fwd_cnt)` from its last
//! header): nothing is buffered on this side. Guest to host, a transmitted packet must be
//! taken whole, so what the host stream does not accept at once is kept, at most
//! [`BUF_ALLOC`] bytes (the space advertised, which a driver that honours its credit never
//! exceeds; one that does is reset), and flushed when the stream is writable again.
//!
//! Closing without a timer: a host program that closes its stream (EOF and, once the
//! stream's both halves are shut, `EPOLLHUP`) gets the guest a SHUTDOWN with both flags and
//! an RST right after, so the connection is gone at once rather than after a kill timeout.
//! A host half-close (`shutdown(SHUT_WR)`, no hang-up) is a SHUTDOWN with only the SEND flag:
//! the guest can still answer. A guest SHUTDOWN is passed on as `shutdown(2)` of the host
//! stream once its buffered bytes are written, and when neither side can send any more the
//! device resets the connection itself, which Linux's `virtio_transport_close` waits for.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::HOST_CID;
use super::packet::{
    Header, MAX_PACKET_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The receive space advertised to the guest for each connection (`buf_alloc`): what the
/// device buffers at most for a host program that reads slower than the guest writes.
pub(crate) const BUF_ALLOC: u32 = 256 * 1024;
/// Bytes written to the host since the guest last heard our `fwd_cnt` that make the device
/// send a credit update unasked, so a guest waiting for credit is not left waiting.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// A connection's address: the host-side port and the guest's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) local_port: u32,
    pub(crate) peer_port: u32,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: REQUEST owed or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows (in the directions not shut down).
    Established,
    /// The host stream is closed; the SHUTDOWN and RST still owed to the guest remain.
    Closing,
}

/// Packets owed to the guest, as bits of `Connection::pending`.
const PENDING_REQUEST: u8 = 1 << 0;
const PENDING_RESPONSE: u8 = 1 << 1;
const PENDING_SHUTDOWN: u8 = 1 << 2;
const PENDING_CREDIT_REQUEST: u8 = 1 << 3;
const PENDING_CREDIT_UPDATE: u8 = 1 << 4;
const PENDING_RST: u8 = 1 << 5;

/// What a guest packet did to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handled.
    Ok,
    /// Not valid in this state or beyond the credit given: the connection is reset.
    Refused,
    /// The guest reset the connection: forget it now.
    Remove,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Connection {
    key: Key,
    guest_cid: u64,
    local_init: bool,
    token: u64,
    stream: Option<UnixStream>,
    state: State,
    pending: u8,
    shutdown_flags: u32,
    /// The host stream has data (or its EOF) not read yet.
    readable: bool,
    /// `EPOLLHUP` or `EPOLLERR` was seen: both halves of the stream are shut.
    hup: bool,
    /// The host stream reached EOF: the host sends no more.
    host_eof: bool,
    /// The device shut the host stream's write half (the guest sends no more).
    host_write_shut: bool,
    guest_shut_send: bool,
    guest_shut_recv: bool,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_requested: bool,
    /// Guest bytes the host stream has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Guest bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// What the stream is registered for in the worker's epoll set (`None`: not at all).
    pub(crate) watched: Option<EventSet>,
    /// Whether the key is in the muxer's queue of connections with something for the guest.
    pub(crate) queued: bool,
    /// The part of `tx_buf` counted in the muxer's total.
    pub(crate) accounted: usize,
}

impl Connection {
    fn new(key: Key, guest_cid: u64, token: u64, stream: UnixStream, local_init: bool) -> Self {
        Self {
            key,
            guest_cid,
            local_init,
            token,
            stream: Some(stream),
            state: if local_init {
                State::LocalInit
            } else {
                State::Established
            },
            pending: if local_init {
                PENDING_REQUEST
            } else {
                PENDING_RESPONSE
            },
            shutdown_flags: 0,
            readable: false,
            hup: false,
            host_eof: false,
            host_write_shut: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            watched: None,
            queued: false,
            accounted: 0,
        }
    }

    /// A host program's connection to guest port `key.peer_port`, from host port
    /// `key.local_port`: a REQUEST is owed.
    pub(crate) fn host_initiated(key: Key, guest_cid: u64, token: u64, stream: UnixStream) -> Self {
        Self::new(key, guest_cid, token, stream, true)
    }

    /// The guest's connection (its `request`) to the host program listening on `stream`'s
    /// socket: a RESPONSE is owed.
    pub(crate) fn guest_initiated(
        key: Key,
        guest_cid: u64,
        token: u64,
        stream: UnixStream,
        request: &Header,
    ) -> Self {
        let mut connection = Self::new(key, guest_cid, token, stream, false);
        connection.peer_buf_alloc = request.buf_alloc;
        connection.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        connection
    }

    /// Its key in the worker's epoll set.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// Its state.
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Whether the device allocated its host port (a host-initiated connection).
    pub(crate) fn local_init(&self) -> bool {
        self.local_init
    }

    /// The host stream's descriptor, while it is open.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Takes the host stream of a connection that is closing, to close it.
    pub(crate) fn take_closed_stream(&mut self) -> Option<UnixStream> {
        if self.state == State::Closing {
            self.stream.take()
        } else {
            None
        }
    }

    /// Guest bytes held for the host.
    pub(crate) fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Closing and owing nothing more: it can be forgotten.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Closing && self.pending == 0
    }

    /// Whether it has a packet for the guest (control, or data within the guest's credit).
    pub(crate) fn has_rx(&self) -> bool {
        self.pending != 0 || (self.can_read() && self.readable && self.peer_credit() > 0)
    }

    /// What the host stream must be watched for; `None` when it must not be watched at all.
    ///
    /// A readable stream waiting for guest buffers or credit is not watched: the epoll set is
    /// level-triggered, and a hang-up (reported whatever is asked for) would wake the worker
    /// again and again. Otherwise a stream stays registered, if only for the hang-up.
    pub(crate) fn interest(&self) -> Option<EventSet> {
        match self.state {
            State::Closing => None,
            State::LocalInit => Some(EventSet::empty()),
            State::Established => {
                let mut events = EventSet::empty();
                if !self.tx_buf.is_empty() {
                    events |= EventSet::OUT;
                }
                if self.can_read() {
                    if !self.readable {
                        events |= EventSet::IN;
                    } else if events.is_empty() {
                        return None;
                    }
                }
                Some(events)
            }
        }
    }

    /// Resets the connection: the guest gets an RST, the host stream is closed, buffered
    /// bytes are dropped.
    pub(crate) fn kill(&mut self) {
        self.state = State::Closing;
        self.pending = PENDING_RST;
        self.tx_buf.clear();
        self.readable = false;
    }

    /// Ends the connection in order: the SHUTDOWN already owed (with both flags when
    /// `both_shut`: the host stream is gone) and then an RST.
    fn finish(&mut self, both_shut: bool) {
        self.state = State::Closing;
        self.pending = (self.pending & PENDING_SHUTDOWN) | PENDING_RST;
        if both_shut {
            self.shutdown_flags |= SHUTDOWN_RCV | SHUTDOWN_SEND;
            self.pending |= PENDING_SHUTDOWN;
        }
        self.tx_buf.clear();
        self.readable = false;
    }

    fn can_read(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_shut_recv
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.rx_cnt - self.peer_fwd_cnt).0)
    }

    /// Asks the guest for credit once when host data waits for it.
    fn refresh(&mut self) {
        if self.can_read() && self.readable && self.peer_credit() == 0 && !self.credit_requested {
            self.pending |= PENDING_CREDIT_REQUEST;
            self.credit_requested = true;
        }
    }

    /// Handles a packet the guest sent on this connection (`data` for OP_RW).
    pub(crate) fn on_guest(&mut self, header: &Header, data: &[u8]) -> Verdict {
        if header.op == OP_RST {
            return Verdict::Remove;
        }
        if self.state == State::Closing {
            // Sent before the guest saw our reset.
            return Verdict::Ok;
        }
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        let verdict = match (self.state, header.op) {
            (State::LocalInit, OP_RESPONSE) => {
                self.established();
                Verdict::Ok
            }
            (State::Established, OP_RW) => self.write_from_guest(data),
            (State::Established, OP_SHUTDOWN) => {
                self.guest_shutdown(header.flags);
                Verdict::Ok
            }
            (State::Established, OP_CREDIT_UPDATE) => Verdict::Ok,
            (State::Established, OP_CREDIT_REQUEST) => {
                self.pending |= PENDING_CREDIT_UPDATE;
                Verdict::Ok
            }
            _ => {
                self.kill();
                Verdict::Refused
            }
        };
        self.refresh();
        verdict
    }

    /// The guest accepted a host-initiated connection: the host program gets
    /// `OK <host port>\n`, then the stream is raw data both ways.
    fn established(&mut self) {
        let line = format!("OK {}\n", self.key.local_port);
        match self
            .stream
            .as_ref()
            .map(|stream| send(stream, line.as_bytes()))
        {
            Some(Ok(sent)) if sent == line.len() => self.state = State::Established,
            _ => self.kill(),
        }
    }

    fn write_from_guest(&mut self, data: &[u8]) -> Verdict {
        if self.guest_shut_send || self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            // Data after promising to send no more, or beyond the space advertised.
            self.kill();
            return Verdict::Refused;
        }
        if data.is_empty() {
            return Verdict::Ok;
        }
        let mut sent = 0;
        if self.tx_buf.is_empty() {
            let Some(stream) = self.stream.as_ref() else {
                self.kill();
                return Verdict::Ok;
            };
            match send(stream, data) {
                Ok(count) => sent = count,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    log::debug!(
                        "vsock: host stream of port {} failed: {err}",
                        self.key.local_port
                    );
                    self.kill();
                    return Verdict::Ok;
                }
            }
        }
        self.tx_buf.extend(&data[sent..]);
        self.forwarded(sent);
        Verdict::Ok
    }

    fn forwarded(&mut self, count: usize) {
        self.fwd_cnt += Wrapping(count as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
    }

    fn guest_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_RCV != 0 && !self.guest_shut_recv {
            self.guest_shut_recv = true;
            self.readable = false;
            self.pending &= !PENDING_CREDIT_REQUEST;
            if let Some(stream) = self.stream.as_ref() {
                // The host program's writes fail from now on; it may have gone already.
                let _ = stream.shutdown(std::net::Shutdown::Read);
            }
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.guest_shut_send = true;
        }
        self.after_flush();
    }

    /// Once the guest's last bytes are written, the host program reads EOF; once nothing
    /// can flow either way, the connection is reset.
    fn after_flush(&mut self) {
        if self.state != State::Established || !self.tx_buf.is_empty() || !self.guest_shut_send {
            return;
        }
        if !self.host_write_shut {
            self.host_write_shut = true;
            if let Some(stream) = self.stream.as_ref() {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        }
        if self.host_eof || self.guest_shut_recv {
            self.finish(false);
        }
    }

    /// Handles readiness of the host stream.
    pub(crate) fn on_host(&mut self, events: EventSet) {
        if self.state == State::Closing {
            return;
        }
        let hup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        self.hup |= hup;
        if !self.tx_buf.is_empty() && (hup || events.contains(EventSet::OUT)) {
            self.flush();
        }
        match self.state {
            // The host program gave up before the guest answered.
            State::LocalInit if hup => self.kill(),
            State::Established if self.can_read() => {
                self.readable |=
                    events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
            }
            // Not reading any more, and the host program closed its stream.
            State::Established if hup => {
                if self.tx_buf.is_empty() {
                    self.finish(true);
                } else {
                    self.kill();
                }
            }
            _ => {}
        }
        self.refresh();
    }

    fn flush(&mut self) {
        let Some(stream) = self.stream.as_ref() else {
            self.kill();
            return;
        };
        let mut flushed = 0;
        let mut failed = false;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send(stream, front) {
                Ok(0) => break,
                Ok(count) => {
                    self.tx_buf.drain(..count);
                    flushed += count;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    log::debug!(
                        "vsock: host stream of port {} failed: {err}",
                        self.key.local_port
                    );
                    failed = true;
                    break;
                }
            }
        }
        self.forwarded(flushed);
        if failed {
            self.kill();
        } else {
            self.after_flush();
        }
    }

    /// The host program sends no more: SHUTDOWN(SEND) for a half-close, or the orderly end
    /// when its stream is closed.
    fn host_closed(&mut self) {
        self.host_eof = true;
        self.readable = false;
        self.pending &= !PENDING_CREDIT_REQUEST;
        if self.hup {
            self.finish(true);
            return;
        }
        self.shutdown_flags |= SHUTDOWN_SEND;
        self.pending |= PENDING_SHUTDOWN;
        self.after_flush();
    }

    fn take(&mut self, bit: u8) -> bool {
        let owed = self.pending & bit != 0;
        self.pending &= !bit;
        owed
    }

    fn header(&mut self, op: u16, flags: u32, len: usize) -> Header {
        // Every header carries our credit: no separate update is owed after it.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !PENDING_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: len as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, in a buffer with `room` data bytes: its header, and
    /// for OP_RW the data, read from the host stream into `data`. Control packets come
    /// first, then data, so REQUEST/RESPONSE precede it and SHUTDOWN/RST follow it.
    pub(crate) fn next_packet(&mut self, room: usize, data: &mut [u8]) -> Option<Header> {
        if self.state == State::Closing {
            if self.take(PENDING_SHUTDOWN) {
                return Some(self.header(OP_SHUTDOWN, self.shutdown_flags, 0));
            }
            if self.take(PENDING_RST) {
                return Some(self.header(OP_RST, 0, 0));
            }
            return None;
        }
        if self.take(PENDING_REQUEST) {
            return Some(self.header(OP_REQUEST, 0, 0));
        }
        if self.take(PENDING_RESPONSE) {
            return Some(self.header(OP_RESPONSE, 0, 0));
        }
        let room = room.min(data.len()).min(MAX_PACKET_DATA);
        let credit = self.peer_credit() as usize;
        if self.can_read() && self.readable && credit > 0 && room > 0 {
            let want = room.min(credit);
            match self
                .stream
                .as_ref()
                .map(|stream| read(stream, &mut data[..want]))
            {
                Some(Ok(0)) => self.host_closed(),
                Some(Ok(count)) => {
                    self.rx_cnt += Wrapping(count as u32);
                    self.refresh();
                    return Some(self.header(OP_RW, 0, count));
                }
                Some(Err(err)) if err.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                _ => self.kill(),
            }
            if self.state == State::Closing {
                return self.next_packet(0, data);
            }
        }
        if self.take(PENDING_SHUTDOWN) {
            return Some(self.header(OP_SHUTDOWN, self.shutdown_flags, 0));
        }
        if self.take(PENDING_CREDIT_REQUEST) {
            return Some(self.header(OP_CREDIT_REQUEST, 0, 0));
        }
        if self.take(PENDING_CREDIT_UPDATE) {
            return Some(self.header(OP_CREDIT_UPDATE, 0, 0));
        }
        None
    }
}

/// Writes to a host stream without blocking and without `SIGPIPE` (`sendto`).
pub(crate) fn send(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `data` is a valid buffer of `data.len()` bytes for the kernel to read; the
        // descriptor is owned by `stream`, alive for the call.
        let sent = unsafe {
            libc::send(
                stream.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads from a host stream (non-blocking: it was made so) with `read`.
pub(crate) fn read(stream: &UnixStream, data: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `data` is a valid, writable buffer of `data.len()` bytes; the descriptor is
        // owned by `stream`, alive for the call.
        let got = unsafe { libc::read(stream.as_raw_fd(), data.as_mut_ptr().cast(), data.len()) };
        if got >= 0 {
            return Ok(got as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
