//! The vsock device against a test playing Linux's driver (mock rings in guest memory) and
//! host programs (real Unix sockets in a temporary directory): packets and malformed chains,
//! both ways of connecting, credit, shutdown, reset, and the worker through the transport.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

use super::connection::BUF_ALLOC;
use super::fuzz::VsockPackets;
use super::packet::*;
use super::*;
use crate::bus::MmioDevice;
use crate::virtio::MmioTransport;
use crate::virtio::tests::{negotiate, read_reg, set_up_queue, write_reg};

const CID: u64 = 42;
const MEMORY_SIZE: usize = 0x80_0000;
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x40_0000;
const SLOT: u64 = 0x1_2000;
const OUT_OF_RAM: u64 = 0x1000_0000;
const RING_SIZE: u16 = 16;
/// What Linux's driver offers: a header and a 4 KiB page.
const RX_BUFFER_LEN: u32 = HEADER_LEN as u32 + 4096;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
/// Only a deadlock reaches it.
const DEADLINE: Duration = Duration::from_secs(20);

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap()
}

/// The driver's side of one split queue: the descriptor table at `base`, the available ring
/// 4 KiB above and the used ring 8 KiB above. (virtio-queue's mock puts its used ring over the
/// end of its available ring: fine for a few chains, not for a driver that goes round.)
struct Ring<'m> {
    memory: &'m GuestMemoryMmap,
    base: u64,
    avail: u16,
    used_seen: u16,
    next_desc: u16,
}

impl<'m> Ring<'m> {
    fn new(memory: &'m GuestMemoryMmap, base: u64) -> Self {
        for offset in [0x1000, 0x2000] {
            memory
                .write_slice(&[0u8; 0x100], GuestAddress(base + offset))
                .unwrap();
        }
        Self {
            memory,
            base,
            avail: 0,
            used_seen: 0,
            next_desc: 0,
        }
    }

    fn desc_table(&self) -> u64 {
        self.base
    }

    fn avail_ring(&self) -> u64 {
        self.base + 0x1000
    }

    fn used_ring(&self) -> u64 {
        self.base + 0x2000
    }

    fn queue(&self) -> Queue {
        use virtio_queue::QueueT;
        let mut queue = Queue::new(RING_SIZE).unwrap();
        queue.set_size(RING_SIZE);
        let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
        let (low, high) = split(self.desc_table());
        queue.set_desc_table_address(low, high);
        let (low, high) = split(self.avail_ring());
        queue.set_avail_ring_address(low, high);
        let (low, high) = split(self.used_ring());
        queue.set_used_ring_address(low, high);
        queue.set_ready(true);
        assert!(queue.is_valid(self.memory));
        queue
    }

    fn store_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.memory
            .write_obj(
                desc,
                GuestAddress(self.desc_table() + 16 * u64::from(index)),
            )
            .unwrap();
    }

    /// Makes a chain of `(address, length, flags)` available (NEXT is added); returns its head.
    fn offer(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % RING_SIZE;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | N };
            self.store_desc(index, addr, len, flags, (index + 1) % RING_SIZE);
        }
        self.next_desc = (head + descs.len() as u16) % RING_SIZE;
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        let slot = self.avail_ring() + 4 + 2 * u64::from(self.avail % RING_SIZE);
        self.memory.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.memory
            .write_obj(self.avail, GuestAddress(self.avail_ring() + 2))
            .unwrap();
    }

    /// The used entries added since the last call: (head, length).
    fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx: u16 = self
            .memory
            .read_obj(GuestAddress(self.used_ring() + 2))
            .unwrap();
        let mut used = Vec::new();
        while self.used_seen != idx {
            let slot = self.used_ring() + 4 + 8 * u64::from(self.used_seen % RING_SIZE);
            let id: u32 = self.memory.read_obj(GuestAddress(slot)).unwrap();
            let len: u32 = self.memory.read_obj(GuestAddress(slot + 4)).unwrap();
            used.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        used
    }
}

type Packet = (Header, Vec<u8>);

/// The guest's driver and the backend, driven by hand.
struct Bench<'m> {
    memory: &'m GuestMemoryMmap,
    rx: Ring<'m>,
    tx: Ring<'m>,
    rxq: Queue,
    txq: Queue,
    vsock: VsockPackets,
    /// Receive buffer of each head.
    rx_heads: std::collections::HashMap<u16, u64>,
    rx_slot: u64,
    tx_slot: u64,
    /// Give a new receive buffer for each one used.
    refill: bool,
    received: std::collections::VecDeque<Packet>,
    /// The guest's credit for what it receives.
    buf_alloc: u32,
    fwd_cnt: u32,
    _dir: TempDir,
}

impl<'m> Bench<'m> {
    fn new(memory: &'m GuestMemoryMmap) -> Self {
        let dir = TempDir::new().unwrap();
        let vsock = VsockPackets::new(CID, dir.as_path().join("vm.sock")).unwrap();
        let rx = Ring::new(memory, 0);
        let tx = Ring::new(memory, 0x1_0000);
        let (rxq, txq) = (rx.queue(), tx.queue());
        Self {
            memory,
            rx,
            tx,
            rxq,
            txq,
            vsock,
            rx_heads: Default::default(),
            rx_slot: 0,
            tx_slot: 0,
            refill: true,
            received: Default::default(),
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
            _dir: dir,
        }
    }

    fn path(&self) -> PathBuf {
        self.vsock.socket_path().to_owned()
    }

    fn stats(&self) -> crate::virtio::DeviceStats {
        self.vsock.stats()
    }

    /// Offers `count` receive buffers (a header and 4 KiB each, one descriptor, as Linux 6.3+).
    fn give_rx(&mut self, count: usize) {
        for _ in 0..count {
            let addr = RX_BUFFERS + (self.rx_slot % u64::from(RING_SIZE)) * SLOT;
            self.rx_slot += 1;
            let head = self.rx.offer(&[(addr, RX_BUFFER_LEN, W)]);
            self.rx_heads.insert(head, addr);
        }
        self.vsock
            .process_rx(&mut self.rxq, &mut self.txq, self.memory);
        self.collect();
    }

    fn collect(&mut self) {
        let mut used = 0;
        for (head, len) in self.rx.take_used() {
            let addr = self.rx_heads.remove(&head).unwrap_or_else(|| {
                panic!("head {head} len {len} not offered: {:?}", self.rx_heads)
            });
            let mut raw = [0u8; HEADER_LEN];
            self.memory
                .read_slice(&mut raw, GuestAddress(addr))
                .unwrap();
            let header = Header::parse(&raw);
            assert_eq!(len as usize, HEADER_LEN + header.len as usize, "{header:?}");
            let mut data = vec![0u8; header.len as usize];
            self.memory
                .read_slice(&mut data, GuestAddress(addr + HEADER_LEN as u64))
                .unwrap();
            self.received.push_back((header, data));
            used += 1;
        }
        if self.refill && used > 0 {
            self.give_rx(used);
        }
    }

    /// Transmits a packet as Linux does: the header and the data in separate buffers.
    fn send(&mut self, header: Header, data: &[u8]) {
        let addr = TX_BUFFERS + (self.tx_slot % u64::from(RING_SIZE)) * SLOT;
        self.tx_slot += 1;
        let header = Header {
            len: data.len() as u32,
            ..header
        };
        self.memory
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.memory
            .write_slice(data, GuestAddress(addr + 0x100))
            .unwrap();
        if data.is_empty() {
            self.send_chain(&[(addr, HEADER_LEN as u32, 0)]);
        } else {
            self.send_chain(&[
                (addr, HEADER_LEN as u32, 0),
                (addr + 0x100, data.len() as u32, 0),
            ]);
        }
    }

    fn send_chain(&mut self, descs: &[(u64, u32, u16)]) {
        self.tx.offer(descs);
        self.vsock
            .process_tx(&mut self.rxq, &mut self.txq, self.memory);
        assert_eq!(
            self.tx.take_used().len(),
            1,
            "every transmitted chain is used"
        );
        self.collect();
    }

    /// A header from the guest on connection (guest port, host port).
    fn header(&self, op: u16, guest_port: u32, host_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: guest_port,
            dst_port: host_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        }
    }

    /// Handles host sockets for up to `ms` milliseconds of quiet; returns how many were ready.
    fn poll(&mut self, ms: i32) -> usize {
        let (ready, _) = self
            .vsock
            .poll(&mut self.rxq, &mut self.txq, self.memory, ms)
            .unwrap();
        self.collect();
        ready
    }

    /// The next packet for the guest, handling host sockets until it comes.
    fn expect(&mut self) -> Packet {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(packet) = self.received.pop_front() {
                return packet;
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            self.poll(10);
        }
    }

    fn expect_op(&mut self, op: u16) -> Packet {
        let packet = self.expect();
        assert_eq!(packet.0.op, op, "{:?}", packet.0);
        packet
    }

    /// Once the host sockets' events are handled, nothing more comes for the guest and no
    /// host socket keeps being ready (which would make a worker spin).
    fn expect_quiet(&mut self) {
        let mut rounds = 0;
        while self.poll(50) > 0 {
            rounds += 1;
            assert!(
                rounds < 20,
                "a host socket stays ready: the worker would spin"
            );
        }
        assert!(
            self.received.is_empty(),
            "unexpected packets: {:?}",
            self.received
        );
    }

    /// A host program connects to guest port `port`; returns its stream and the host port
    /// the guest saw, after the guest accepted.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut client = client(&self.path());
        client
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let (request, _) = self.expect_op(OP_REQUEST);
        assert_eq!(
            (
                request.src_cid,
                request.dst_cid,
                request.dst_port,
                request.kind
            ),
            (HOST_CID, CID, port, TYPE_STREAM)
        );
        assert!(request.src_port >= 1 << 30, "{request:?}");
        assert_eq!(request.buf_alloc, BUF_ALLOC);
        let response = self.header(OP_RESPONSE, port, request.src_port);
        self.send(response, &[]);
        let line = read_line(&mut client);
        assert_eq!(line, format!("OK {}\n", request.src_port));
        (client, request.src_port)
    }
}

fn client(path: &Path) -> UnixStream {
    let client = UnixStream::connect(path).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "EOF before a line");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

fn read_exact(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    stream.read_exact(&mut data).unwrap();
    data
}

/// Reads until the stream ends: true for EOF (or the reset a close with unread bytes gives).
fn reads_eof(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => err.kind() == ErrorKind::ConnectionReset,
    }
}

// --- packets ---

#[test]
fn headers_are_44_little_endian_bytes() {
    let header = Header {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 2,
        src_port: 0x1122_3344,
        dst_port: 1234,
        len: 5,
        kind: TYPE_STREAM,
        op: OP_RW,
        flags: SHUTDOWN_SEND,
        buf_alloc: 0x4_0000,
        fwd_cnt: 0xFFFF_FFFF,
    };
    let raw = header.to_bytes();
    assert_eq!(raw.len(), 44);
    assert_eq!(&raw[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&raw[16..20], &[0x44, 0x33, 0x22, 0x11]);
    assert_eq!(&raw[28..32], &[1, 0, 5, 0], "type then op");
    assert_eq!(&raw[40..44], &[0xFF; 4]);
    assert_eq!(Header::parse(&raw), header);
}

#[test]
fn malformed_chains_are_counted_and_reset_when_they_name_a_connection() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    let at = 0x70_0000;
    let write = |header: Header| {
        memory
            .write_slice(&header.to_bytes(), GuestAddress(at))
            .unwrap()
    };
    let base = bench.header(OP_RW, 500, 600);
    let rw = |len| Header { len, ..base };
    // (what, header written at `at`, chain, whether the guest gets an RST for 600 -> 500)
    type Case = (&'static str, Header, Vec<(u64, u32, u16)>, bool);
    let cases: Vec<Case> = vec![
        ("header too short", rw(0), vec![(at, 20, 0)], false),
        (
            "header split short",
            rw(0),
            vec![(at, 20, 0), (at + 20, 20, 0)],
            false,
        ),
        ("write-only header", rw(0), vec![(at, 44, W)], false),
        (
            "header outside RAM",
            rw(0),
            vec![(OUT_OF_RAM, 44, 0)],
            false,
        ),
        (
            "data outside RAM",
            rw(16),
            vec![(at, 44, 0), (OUT_OF_RAM, 16, 0)],
            true,
        ),
        (
            "data running off the end of RAM",
            rw(4096),
            vec![(at, 44, 0), (MEMORY_SIZE as u64 - 16, 4096, 0)],
            true,
        ),
        (
            "len beyond the buffers",
            rw(100),
            vec![(at, 44, 0), (at + 64, 10, 0)],
            true,
        ),
        (
            "len above 64 KiB",
            rw(65537),
            vec![(at, 44, 0), (at + 64, 65537, 0)],
            true,
        ),
        (
            "write-only data",
            rw(8),
            vec![(at, 44, 0), (at + 64, 8, W)],
            true,
        ),
        (
            "wrong destination CID",
            Header {
                dst_cid: 3,
                ..rw(0)
            },
            vec![(at, 44, 0)],
            false,
        ),
        (
            "wrong source CID",
            Header {
                src_cid: CID + 1,
                ..rw(0)
            },
            vec![(at, 44, 0)],
            false,
        ),
        (
            "seqpacket",
            Header { kind: 2, ..rw(0) },
            vec![(at, 44, 0)],
            true,
        ),
        ("data for no connection", rw(0), vec![(at, 44, 0)], true),
        (
            "unknown op for no connection",
            Header { op: 99, ..rw(0) },
            vec![(at, 44, 0)],
            true,
        ),
    ];
    for (name, header, chain, reset) in cases {
        write(header);
        let before = bench.stats();
        bench.send_chain(&chain);
        let after = bench.stats();
        assert_eq!(after.errors, before.errors + 1, "{name}: counted");
        if reset {
            let (rst, _) = bench.expect_op(OP_RST);
            assert_eq!(
                (rst.src_port, rst.dst_port, rst.src_cid, rst.dst_cid),
                (600, 500, HOST_CID, CID),
                "{name}"
            );
        }
        bench.expect_quiet();
    }

    // A reset for no connection is not answered (never a reset for a reset).
    let before = bench.stats();
    bench.send(bench.header(OP_RST, 500, 600), &[]);
    assert_eq!(bench.stats().errors, before.errors);
    bench.expect_quiet();

    // A looping chain (0 -> 1 -> 0 ...) ends, is refused and resets what it names.
    write(rw(8));
    let head = bench.tx.next_desc;
    for (i, next) in [(0u16, 1u16), (1, 0)] {
        let index = (head + i) % RING_SIZE;
        let next = (head + next) % RING_SIZE;
        bench.tx.store_desc(index, at, 44, N, next);
    }
    bench.tx.next_desc = (head + 2) % RING_SIZE;
    bench.tx.publish(head);
    let started = Instant::now();
    bench
        .vsock
        .process_tx(&mut bench.rxq, &mut bench.txq, &memory);
    assert!(started.elapsed() < DEADLINE);
    assert_eq!(bench.tx.take_used().len(), 1);
    bench.collect();
    bench.expect_op(OP_RST);
    bench.expect_quiet();
}

#[test]
fn a_malformed_packet_on_a_connection_resets_it_and_closes_the_host_stream() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    let (mut client, host_port) = bench.host_connect(1234);
    let at = 0x70_0000;
    let header = Header {
        len: 100,
        ..bench.header(OP_RW, 1234, host_port)
    };
    memory
        .write_slice(&header.to_bytes(), GuestAddress(at))
        .unwrap();
    let errors = bench.stats().errors;
    bench.send_chain(&[(at, 44, 0), (at + 64, 10, 0)]);
    assert_eq!(bench.stats().errors, errors + 1);
    let (rst, _) = bench.expect_op(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (host_port, 1234));
    assert!(reads_eof(&mut client));
    assert_eq!(bench.vsock.connections(), 0);
    bench.expect_quiet();
}

#[test]
fn receive_buffers_the_device_cannot_use_are_returned_empty() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.refill = false;
    // Something to send: a reset for a packet to no connection.
    bench.send(bench.header(OP_RW, 1, 2), b"x");
    for (name, chain) in [
        ("read-only", vec![(RX_BUFFERS, RX_BUFFER_LEN, 0)]),
        ("too short for a header", vec![(RX_BUFFERS, 43, W)]),
        ("outside RAM", vec![(OUT_OF_RAM, RX_BUFFER_LEN, W)]),
        (
            "a read-only part",
            vec![(RX_BUFFERS, 44, W), (RX_BUFFERS + 64, 64, 0)],
        ),
    ] {
        let errors = bench.stats().errors;
        let head = bench.rx.offer(&chain);
        bench
            .vsock
            .process_rx(&mut bench.rxq, &mut bench.txq, &memory);
        assert_eq!(bench.rx.take_used(), vec![(head, 0)], "{name}");
        assert_eq!(bench.stats().errors, errors + 1, "{name}");
    }
    // A header and a data buffer apart (Linux before 6.3) serve.
    bench
        .rx
        .offer(&[(RX_BUFFERS, 44, W), (RX_BUFFERS + 0x1000, 4096, W)]);
    bench
        .vsock
        .process_rx(&mut bench.rxq, &mut bench.txq, &memory);
    assert_eq!(bench.rx.take_used().len(), 1);
    let mut raw = [0u8; HEADER_LEN];
    memory
        .read_slice(&mut raw, GuestAddress(RX_BUFFERS))
        .unwrap();
    assert_eq!(Header::parse(&raw).op, OP_RST);
}

// --- host-initiated connections ---

#[test]
fn host_connects_and_data_flows_both_ways_within_the_credit() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    // The guest socket has 1000 bytes of buffer.
    bench.buf_alloc = 1000;
    let (mut client, host_port) = bench.host_connect(1234);
    assert_eq!(bench.vsock.connections(), 1);

    // Host to guest: 3000 bytes, of which 1000 fit the guest's credit.
    let message: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&message).unwrap();
    let mut got = Vec::new();
    while got.len() < 1000 {
        let (header, data) = bench.expect_op(OP_RW);
        assert_eq!((header.src_port, header.dst_port), (host_port, 1234));
        got.extend(data);
    }
    assert_eq!(got, &message[..1000]);
    // Out of credit: the device asks for more, once, and sends no data.
    let (request, _) = bench.expect_op(OP_CREDIT_REQUEST);
    assert_eq!(request.dst_port, 1234);
    bench.give_rx(4);
    bench.expect_quiet();

    // The guest application read 600 bytes.
    bench.fwd_cnt = 600;
    bench.send(bench.header(OP_CREDIT_UPDATE, 1234, host_port), &[]);
    while got.len() < 1600 {
        got.extend(bench.expect_op(OP_RW).1);
    }
    assert_eq!(got, &message[..1600]);
    bench.expect_op(OP_CREDIT_REQUEST);
    bench.expect_quiet();
    // It read everything and has a larger buffer now.
    bench.fwd_cnt = 1600;
    bench.buf_alloc = 64 * 1024;
    bench.send(bench.header(OP_CREDIT_UPDATE, 1234, host_port), &[]);
    while got.len() < 3000 {
        got.extend(bench.expect_op(OP_RW).1);
    }
    assert_eq!(got, message);
    bench.expect_quiet();

    // Guest to host, and the device's credit in every header.
    bench.send(bench.header(OP_RW, 1234, host_port), b"hello, host");
    assert_eq!(read_exact(&mut client, 11), b"hello, host");
    bench.send(bench.header(OP_CREDIT_REQUEST, 1234, host_port), &[]);
    let (update, _) = bench.expect_op(OP_CREDIT_UPDATE);
    assert_eq!((update.buf_alloc, update.fwd_cnt), (BUF_ALLOC, 11));
    bench.expect_quiet();
    let stats = bench.stats();
    assert_eq!(stats.errors, 0);
    assert!(stats.requests > 10, "{stats:?}");
}

#[test]
fn guest_bytes_the_host_does_not_read_are_held_up_to_the_credit() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    let (client, host_port) = bench.host_connect(7);
    // More than the socket buffers take: the device keeps the rest and writes it when the
    // host program reads. The guest then closes its socket.
    let chunk = vec![0x5Au8; 60 * 1024];
    let mut sent = 0;
    while sent + chunk.len() <= BUF_ALLOC as usize {
        bench.send(bench.header(OP_RW, 7, host_port), &chunk);
        sent += chunk.len();
    }
    let mut shutdown = bench.header(OP_SHUTDOWN, 7, host_port);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    bench.send(shutdown, &[]);
    let mut reader = client.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        all.len()
    });
    // Credit updates while the bytes drain, then the reset once they all went out.
    loop {
        let (header, _) = bench.expect();
        if header.op == OP_RST {
            break;
        }
        assert_eq!(header.op, OP_CREDIT_UPDATE);
    }
    assert_eq!(
        reading.join().unwrap(),
        sent,
        "every byte reached the host before EOF"
    );
    assert_eq!(bench.vsock.connections(), 0);
    drop(client);

    // A guest that ignores the credit is reset.
    let (mut client, host_port) = bench.host_connect(8);
    let errors = bench.stats().errors;
    let mut sent = 0;
    while bench.vsock.connections() == 1 {
        bench.send(bench.header(OP_RW, 8, host_port), &chunk);
        sent += chunk.len();
        assert!(sent < 16 * 1024 * 1024, "never reset");
    }
    assert_eq!(bench.stats().errors, errors + 1);
    loop {
        let (header, _) = bench.expect();
        if header.op == OP_RST {
            break;
        }
        assert_eq!(header.op, OP_CREDIT_UPDATE);
    }
    assert!(reads_eof(&mut client));
}

#[test]
fn host_half_close_then_close_reach_the_guest_as_shutdown_then_reset() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    let (mut client, host_port) = bench.host_connect(80);
    client.write_all(b"request").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(bench.expect_op(OP_RW).1, b"request");
    let (shutdown, _) = bench.expect_op(OP_SHUTDOWN);
    assert_eq!(shutdown.flags, SHUTDOWN_SEND);
    bench.expect_quiet();
    // The guest still answers.
    bench.send(bench.header(OP_RW, 80, host_port), b"response");
    assert_eq!(read_exact(&mut client, 8), b"response");
    drop(client);
    let (shutdown, _) = bench.expect_op(OP_SHUTDOWN);
    assert_eq!(shutdown.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    bench.expect_op(OP_RST);
    assert_eq!(bench.vsock.connections(), 0);
    bench.expect_quiet();

    // A close with data pending: the data, then SHUTDOWN and RST.
    let (mut client, _) = bench.host_connect(81);
    client.write_all(b"bye").unwrap();
    drop(client);
    assert_eq!(bench.expect_op(OP_RW).1, b"bye");
    let (shutdown, _) = bench.expect_op(OP_SHUTDOWN);
    assert_eq!(shutdown.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    bench.expect_op(OP_RST);
    assert_eq!(bench.vsock.connections(), 0);
    assert_eq!(bench.stats().errors, 0);
}

#[test]
fn guest_shutdown_and_reset_close_the_host_stream() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    // SHUTDOWN(SEND): the host reads EOF and can still write.
    let (mut client, host_port) = bench.host_connect(90);
    let mut shutdown = bench.header(OP_SHUTDOWN, 90, host_port);
    shutdown.flags = SHUTDOWN_SEND;
    bench.send(bench.header(OP_RW, 90, host_port), b"last");
    bench.send(shutdown, &[]);
    let mut all = Vec::new();
    client.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last");
    client.write_all(b"still").unwrap();
    assert_eq!(bench.expect_op(OP_RW).1, b"still");
    // Then the guest closes: the device resets the connection, as Linux waits for.
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    bench.send(shutdown, &[]);
    bench.expect_op(OP_RST);
    assert_eq!(bench.vsock.connections(), 0);

    // An RST from the guest: the host stream is closed, nothing is answered.
    let (mut client, host_port) = bench.host_connect(91);
    bench.send(bench.header(OP_RST, 91, host_port), &[]);
    assert!(reads_eof(&mut client));
    assert_eq!(bench.vsock.connections(), 0);
    bench.expect_quiet();

    // The guest refuses a connection (nothing listens on the port): the host reads EOF.
    let mut client = client_for(&bench, 92);
    let (request, _) = bench.expect_op(OP_REQUEST);
    bench.send(bench.header(OP_RST, 92, request.src_port), &[]);
    assert!(reads_eof(&mut client));
    assert_eq!(bench.vsock.connections(), 0);
    assert_eq!(bench.stats().errors, 0);
}

fn client_for(bench: &Bench<'_>, port: u32) -> UnixStream {
    let mut client = client(&bench.path());
    client
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    client
}

#[test]
fn bad_connect_lines_close_the_host_stream_and_bytes_after_the_line_are_kept() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    for line in [
        &b"HELLO 12\n"[..],
        b"CONNECT\n",
        b"CONNECT x\n",
        b"CONNECT -1\n",
        b"CONNECT 4294967296\n",
        b"CONNECT 1 2\n",
        b"CONNECT 00000000000000000000000000000000001\n",
        b"\xFF\xFE\n",
    ] {
        let mut client = client(&bench.path());
        client.write_all(line).unwrap();
        let deadline = Instant::now() + DEADLINE;
        while bench.poll(10) > 0 {
            assert!(Instant::now() < deadline);
        }
        assert!(reads_eof(&mut client), "{line:?}");
    }
    // A host program that closes before its line ends.
    let mut short = client(&bench.path());
    short.write_all(b"CONN").unwrap();
    short.shutdown(std::net::Shutdown::Write).unwrap();
    bench.expect_quiet();
    assert!(reads_eof(&mut short));
    bench.expect_quiet();
    assert_eq!(bench.vsock.connections(), 0);

    // "connect" in any case, and data written before the OK reaches the guest after it.
    let mut early = client(&bench.path());
    early.write_all(b"connect 5\nearly bytes").unwrap();
    let (request, _) = bench.expect_op(OP_REQUEST);
    bench.expect_quiet();
    bench.send(bench.header(OP_RESPONSE, 5, request.src_port), &[]);
    assert_eq!(read_line(&mut early), format!("OK {}\n", request.src_port));
    assert_eq!(bench.expect_op(OP_RW).1, b"early bytes");
    assert_eq!(bench.stats().errors, 0);
}

#[test]
fn a_host_program_waiting_for_buffers_does_not_make_the_device_spin() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.refill = false;
    bench.give_rx(2);
    let (mut client, host_port) = bench.host_connect(3);
    // One buffer left, then none: the data and then its EOF wait, unwatched.
    client.write_all(&[1u8; 8192]).unwrap();
    drop(client);
    assert_eq!(bench.expect_op(OP_RW).1.len(), 4096);
    bench.expect_quiet();
    // A REQUEST waits too, with the host program still connected.
    let _waiting = client_for(&bench, 4);
    bench.expect_quiet();
    bench.refill = true;
    bench.give_rx(1);
    assert_eq!(bench.expect_op(OP_RW).1.len(), 4096);
    // Then the REQUEST, and the end of the closed connection: its hang-up came with the
    // data, so its EOF ends it at once, SHUTDOWN(both) and RST.
    let mut requested = false;
    let mut ends = Vec::new();
    while ends.last() != Some(&(OP_RST, 0)) {
        let (header, _) = bench.expect();
        match header.dst_port {
            4 => {
                assert_eq!(header.op, OP_REQUEST);
                requested = true;
            }
            3 => {
                assert_eq!(header.src_port, host_port);
                ends.push((header.op, header.flags));
            }
            other => panic!("a packet for port {other}"),
        }
    }
    assert!(requested);
    assert_eq!(
        ends,
        vec![(OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND), (OP_RST, 0)]
    );
    bench.expect_quiet();
}

// --- guest-initiated connections ---

#[test]
fn guest_connects_to_a_listening_port_and_is_reset_on_a_missing_one() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    let mut port_path = bench.path().into_os_string();
    port_path.push("_5000");
    let listener = UnixListener::bind(&port_path).unwrap();

    bench.send(bench.header(OP_REQUEST, 7000, 5000), &[]);
    let (response, _) = bench.expect_op(OP_RESPONSE);
    assert_eq!(
        (
            response.src_cid,
            response.dst_cid,
            response.src_port,
            response.dst_port
        ),
        (HOST_CID, CID, 5000, 7000)
    );
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    server.write_all(b"welcome").unwrap();
    assert_eq!(bench.expect_op(OP_RW).1, b"welcome");
    bench.send(bench.header(OP_RW, 7000, 5000), b"thanks");
    assert_eq!(read_exact(&mut server, 6), b"thanks");
    // A second connection from another guest port to the same service.
    bench.send(bench.header(OP_REQUEST, 7001, 5000), &[]);
    bench.expect_op(OP_RESPONSE);
    assert_eq!(bench.vsock.connections(), 2);
    // A duplicate REQUEST on an open connection resets it.
    bench.send(bench.header(OP_REQUEST, 7001, 5000), &[]);
    bench.expect_op(OP_RST);
    assert_eq!(bench.vsock.connections(), 1);
    assert_eq!(bench.stats().errors, 1);

    // Nothing listens on port 5001 (no socket file), nor on 5002 (a stale one).
    for port in [5001u32, 5002] {
        if port == 5002 {
            let mut path = bench.path().into_os_string();
            path.push("_5002");
            drop(UnixListener::bind(&path).unwrap());
        }
        let errors = bench.stats().errors;
        bench.send(bench.header(OP_REQUEST, 7002, port), &[]);
        let (rst, _) = bench.expect_op(OP_RST);
        assert_eq!((rst.src_port, rst.dst_port), (port, 7002));
        assert_eq!(bench.stats().errors, errors + 1);
    }
    assert_eq!(bench.vsock.connections(), 1);
    bench.expect_quiet();
}

// --- reset ---

#[test]
fn reset_closes_host_streams_and_keeps_the_listening_socket() {
    let memory = memory();
    let mut bench = Bench::new(&memory);
    bench.give_rx(8);
    let (mut host_side, _) = bench.host_connect(1);
    bench.send(bench.header(OP_REQUEST, 9, 6000), &[]);
    bench.expect_op(OP_RST);
    let mut port_path = bench.path().into_os_string();
    port_path.push("_6000");
    let listener = UnixListener::bind(&port_path).unwrap();
    bench.send(bench.header(OP_REQUEST, 9, 6000), &[]);
    bench.expect_op(OP_RESPONSE);
    let (mut guest_side, _) = listener.accept().unwrap();
    guest_side.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut half_done = client_for(&bench, 2);
    bench.expect_op(OP_REQUEST);
    assert_eq!(bench.vsock.connections(), 3);

    // The guest suspends: Linux resets the device.
    bench
        .vsock
        .reset(&mut bench.rxq, &mut bench.txq, &memory)
        .unwrap();
    assert_eq!(bench.vsock.connections(), 0);
    for stream in [&mut host_side, &mut guest_side, &mut half_done] {
        assert!(reads_eof(stream));
    }
    // A host program that connects meanwhile waits in the backlog.
    let waiting = client_for(&bench, 3);
    // Resume: new rings, and the program is served.
    let rx = Ring::new(&memory, 0x2_0000);
    let tx = Ring::new(&memory, 0x3_0000);
    bench.rxq = rx.queue();
    bench.txq = tx.queue();
    bench.rx = rx;
    bench.tx = tx;
    bench.rx_heads.clear();
    bench.give_rx(8);
    let (request, _) = bench.expect_op(OP_REQUEST);
    assert_eq!(request.dst_port, 3);
    drop(waiting);
}

// --- the device ---

#[test]
fn cids_and_socket_paths_are_checked() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("vm.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32, u64::MAX] {
        let err = VsockDevice::new(cid, path.clone()).err().unwrap();
        assert!(
            matches!(err, VsockError::InvalidCid(c) if c == cid),
            "{err}"
        );
    }
    assert!(!path.exists(), "nothing bound for an invalid CID");

    let device = VsockDevice::new(3, path.clone()).unwrap();
    assert_eq!(
        (device.guest_cid(), device.socket_path()),
        (3, path.as_path())
    );
    let mut config = [0u8; 8];
    device.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), 3);
    let mut high = [0xAAu8; 4];
    device.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    assert_eq!(
        device.features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(device.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(device.device_type(), 19);
    // Someone listens there: in use.
    let err = VsockDevice::new(4, path.clone()).err().unwrap();
    assert!(matches!(err, VsockError::SocketInUse(_)), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "Socket path {} is in use by another process",
            path.display()
        )
    );
    drop(device);
    assert!(!path.exists(), "the device removes its socket");

    // A stale socket (its listener is gone) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let device = VsockDevice::new(5, path.clone()).unwrap();
    UnixStream::connect(&path).unwrap();
    drop(device);

    // Not a socket: left alone.
    std::fs::write(&path, b"data").unwrap();
    let err = VsockDevice::new(6, path.clone()).err().unwrap();
    assert!(matches!(err, VsockError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    std::fs::remove_file(&path).unwrap();

    // A directory that does not exist.
    let err = VsockDevice::new(7, dir.as_path().join("missing/vm.sock"))
        .err()
        .unwrap();
    assert!(matches!(err, VsockError::Bind { .. }), "{err}");

    // Dropped after its file was replaced: the new file stays.
    let device = VsockDevice::new(8, path.clone()).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"other").unwrap();
    drop(device);
    assert_eq!(std::fs::read(&path).unwrap(), b"other");
}

/// Negotiates like Linux's virtio_mmio driver and sets the three queues up.
fn bring_up(transport: &mut MmioTransport, rings: &[&Ring<'_>; 3]) {
    negotiate(transport, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    for (index, ring) in (0..).zip(rings) {
        let addrs = [ring.desc_table(), ring.avail_ring(), ring.used_ring()];
        set_up_queue(transport, index, u32::from(RING_SIZE), addrs);
    }
    let negotiated =
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    write_reg(
        transport,
        VIRTIO_MMIO_STATUS,
        negotiated | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(
        read_reg(transport, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
}

/// Waits for `count` used receive buffers; returns their packets (one-descriptor buffers at
/// `RX_BUFFERS + head * SLOT`).
fn wait_rx(memory: &GuestMemoryMmap, rx: &mut Ring<'_>, count: usize) -> Vec<Header> {
    let deadline = Instant::now() + DEADLINE;
    let mut headers = Vec::new();
    while headers.len() < count {
        assert!(Instant::now() < deadline, "no packet from the worker");
        for (head, _) in rx.take_used() {
            let mut raw = [0u8; HEADER_LEN];
            memory
                .read_slice(&mut raw, GuestAddress(RX_BUFFERS + u64::from(head) * SLOT))
                .unwrap();
            headers.push(Header::parse(&raw));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    headers
}

fn thread_cpu(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut now) }, 0);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[test]
fn the_worker_serves_connections_idles_without_cpu_and_a_reset_closes_them() {
    let memory = memory();
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("vm.sock");
    // The worker's CPU clock, taken by its start hook.
    let clock = Arc::new(Mutex::new(None));
    let record = Arc::clone(&clock);
    let hook: crate::virtio::ThreadStartHook = Arc::new(move || {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_getcpuclockid writes one clockid_t, which `id` is.
        let result = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        assert_eq!(result, 0);
        *record.lock().unwrap() = Some(id);
        Ok(())
    });
    let device = VsockDevice::new(CID, path.clone())
        .unwrap()
        .with_worker_hook(Some(hook));
    let mut transport = MmioTransport::new(Box::new(device), memory.clone()).unwrap();
    let mut config = [0u8; 8];
    transport.read(u64::from(VIRTIO_MMIO_CONFIG), &mut config);
    assert_eq!(u64::from_le_bytes(config), CID);

    let mut rx = Ring::new(&memory, 0);
    let mut tx = Ring::new(&memory, 0x1_0000);
    let event = Ring::new(&memory, 0x2_0000);
    bring_up(&mut transport, &[&rx, &tx, &event]);
    // One receive buffer (head 0): for the REQUEST.
    rx.offer(&[(RX_BUFFERS, RX_BUFFER_LEN, W)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, RX_QUEUE as u32);

    let mut client = client(&path);
    client.write_all(b"CONNECT 1234\n").unwrap();
    let request = wait_rx(&memory, &mut rx, 1)[0];
    assert_eq!((request.op, request.dst_port), (OP_REQUEST, 1234));
    let response = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: request.src_port,
        kind: TYPE_STREAM,
        op: OP_RESPONSE,
        buf_alloc: 4096,
        ..Header::default()
    };
    memory
        .write_slice(&response.to_bytes(), GuestAddress(TX_BUFFERS))
        .unwrap();
    tx.offer(&[(TX_BUFFERS, 44, 0)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, TX_QUEUE as u32);
    assert_eq!(read_line(&mut client), format!("OK {}\n", request.src_port));

    // The host program writes, the guest has no buffer: the worker must wait without CPU.
    client.write_all(b"ping").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let clock = clock.lock().unwrap().expect("the hook ran");
    let before = thread_cpu(clock);
    std::thread::sleep(Duration::from_millis(200));
    let spent = thread_cpu(clock) - before;
    assert!(
        spent < Duration::from_millis(5),
        "an idle worker used {spent:?} of CPU"
    );
    // A buffer: the data comes.
    rx.offer(&[(RX_BUFFERS + SLOT, RX_BUFFER_LEN, W)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, RX_QUEUE as u32);
    let data = wait_rx(&memory, &mut rx, 1)[0];
    assert_eq!((data.op, data.len), (OP_RW, 4));

    // Suspend: the driver resets the device; the host program reads EOF.
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
    assert!(reads_eof(&mut client));
    // Connected while the guest sleeps: it waits in the backlog.
    let mut waiting = client_for_path(&path, 77);
    // Resume on new rings.
    let mut rx = Ring::new(&memory, 0x3_0000);
    let tx = Ring::new(&memory, 0x4_0000);
    let event = Ring::new(&memory, 0x5_0000);
    bring_up(&mut transport, &[&rx, &tx, &event]);
    rx.offer(&[(RX_BUFFERS, RX_BUFFER_LEN, W)]);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, RX_QUEUE as u32);
    let request = wait_rx(&memory, &mut rx, 1)[0];
    assert_eq!((request.op, request.dst_port), (OP_REQUEST, 77));
    let stats = transport.device().counters().snapshot();
    assert_eq!((stats.activations, stats.resets, stats.errors), (2, 1, 0));
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
    assert!(reads_eof(&mut waiting));
    drop(transport);
    assert!(!path.exists());
}

fn client_for_path(path: &Path, port: u32) -> UnixStream {
    let mut client = client(path);
    client
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    client
}

#[test]
fn activation_needs_all_three_queues() {
    let memory = memory();
    let dir = TempDir::new().unwrap();
    let device = VsockDevice::new(CID, dir.as_path().join("vm.sock")).unwrap();
    let mut transport = MmioTransport::new(Box::new(device), memory.clone()).unwrap();
    let rx = Ring::new(&memory, 0);
    // Only the receive queue is made ready.
    write_reg(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE,
    );
    let driver = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, driver);
    write_reg(&mut transport, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write_reg(&mut transport, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    write_reg(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        driver | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_SEL, 0);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NUM, u32::from(RING_SIZE));
    for (low, addr) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, rx.desc_table()),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, rx.avail_ring()),
        (VIRTIO_MMIO_QUEUE_USED_LOW, rx.used_ring()),
    ] {
        write_reg(&mut transport, low, addr as u32);
    }
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_READY, 1);
    write_reg(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        driver | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_ne!(
        read_reg(&mut transport, VIRTIO_MMIO_STATUS)
            & virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_eq!(transport.device().counters().snapshot().activations, 0);
}
