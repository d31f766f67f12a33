//! virtio-net over mock guest memory: malformed chains and the receive logic with an
//! in-memory backend (no thread, deterministic), then the device and its worker on real taps.
//! The tap tests create `vmmtestN` interfaces (non-persistent: closing the tap removes them)
//! and are skipped, with a message, where taps cannot be made (no `tun` module, not root),
//! except in the testbed's arm64 host, which loads `tun` so that they always run there.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::virtio::tap::TapError;

const MEMORY_SIZE: usize = 0x40_0000;
/// The receive queue's rings (16 entries); the transmit queue's at `TX_RING`.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x4000;
const DATA: u64 = 0x10_0000;
const OUT_OF_RAM: u64 = 0x1000_0000;
const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
/// The test frames' EtherType (IEEE local experimental), so that the host stack ignores them
/// and the tests find theirs among whatever else crosses a tap.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

type Mock<'a> = MockSplitQueue<'a, GuestMemoryMmap>;
/// A buffer of a chain: address, length, flags.
type Buffer = (u64, u32, u16);

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap()
}

/// Makes `buffers` (address, length, flags) one chain starting at descriptor `first`, and
/// makes it available.
fn add_chain(queue: &Mock<'_>, first: u16, buffers: &[Buffer]) {
    let last = buffers.len() - 1;
    let descs: Vec<RawDescriptor> = buffers
        .iter()
        .enumerate()
        .map(|(index, &(addr, len, flags))| {
            let (flags, next) = if index == last {
                (flags, 0)
            } else {
                (flags | NEXT, first + index as u16 + 1)
            };
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect();
    queue.add_desc_chains(&descs, first).unwrap();
}

/// Makes `count` single-buffer receive chains of `len` bytes available, from descriptor
/// `first`, with buffers from `at` on.
fn add_rx_buffers(queue: &Mock<'_>, first: u16, count: u16, len: u32, at: u64) {
    for index in 0..count {
        add_chain(
            queue,
            first + index,
            &[(at + u64::from(index) * 0x1_0000, len, W)],
        );
    }
}

/// An Ethernet frame of `len` bytes (no virtio-net header): to a locally administered
/// address, of [`ETHERTYPE`], with a payload that starts with `tag`.
fn ethernet_frame(len: usize, tag: u8) -> Vec<u8> {
    let mut frame = vec![0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&ETHERTYPE);
    frame.extend((0..len.saturating_sub(14)).map(|i| tag.wrapping_add(i as u8)));
    frame.truncate(len);
    frame
}

/// `frame` behind a virtio-net header with `flags` and `gso_type`.
fn with_header(frame: &[u8], flags: u8, gso_type: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes[0] = flags;
    bytes[1] = gso_type;
    bytes.extend_from_slice(frame);
    bytes
}

fn used(queue: &Mock<'_>, index: u16) -> (u32, u32) {
    let elem = queue
        .used()
        .ring()
        .ref_at(usize::from(index))
        .unwrap()
        .load();
    (elem.id(), elem.len())
}

fn read(memory: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    memory.read_slice(&mut bytes, GuestAddress(at)).unwrap();
    bytes
}

const MRG: u64 = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF;

struct Core {
    core: NetCore<MemoryBackend>,
    backend: Arc<MemoryBackend>,
    counters: Arc<DeviceCounters>,
    pending: Arc<Mutex<Vec<u8>>>,
}

fn core(features: u64) -> Core {
    let backend = Arc::new(MemoryBackend::default());
    let counters: Arc<DeviceCounters> = Arc::default();
    let pending: Arc<Mutex<Vec<u8>>> = Arc::default();
    Core {
        core: NetCore::new(
            Arc::clone(&backend),
            features,
            Arc::clone(&counters),
            Arc::clone(&pending),
        ),
        backend,
        counters,
        pending,
    }
}

impl Core {
    fn incoming(&self, frame: Vec<u8>) {
        self.backend.incoming.lock().unwrap().push_back(frame);
    }

    fn stats(&self) -> (u64, u64) {
        let stats = self.counters.snapshot();
        (stats.requests, stats.errors)
    }
}

#[test]
fn transmit_gathers_a_frame_from_several_buffers() {
    let memory = memory();
    let tx = Mock::create(&memory, GuestAddress(TX_RING), 16);
    let mut queue: Queue = tx.create_queue().unwrap();
    let mut net = core(MRG);
    let frame = with_header(&ethernet_frame(200, 7), 0, 0);
    memory.write_slice(&frame, GuestAddress(DATA)).unwrap();
    // The header alone, then the frame in two pieces elsewhere.
    memory
        .write_slice(&frame[..12], GuestAddress(DATA + 0x1000))
        .unwrap();
    memory
        .write_slice(&frame[12..100], GuestAddress(DATA + 0x2000))
        .unwrap();
    memory
        .write_slice(&frame[100..], GuestAddress(DATA + 0x3000))
        .unwrap();
    add_chain(&tx, 0, &[(DATA, frame.len() as u32, 0)]);
    add_chain(
        &tx,
        1,
        &[
            (DATA + 0x1000, 12, 0),
            (DATA + 0x2000, 88, 0),
            (DATA + 0x3000, frame.len() as u32 - 100, 0),
        ],
    );
    assert!(net.core.transmit(&mut queue, &memory));
    assert_eq!(tx.used().idx().load(), 2);
    assert_eq!((used(&tx, 0), used(&tx, 1)), ((0, 0), (1, 0)));
    assert_eq!(
        *net.backend.sent.lock().unwrap(),
        vec![frame.clone(), frame]
    );
    assert_eq!(net.stats(), (2, 0));
}

#[test]
fn malformed_transmit_chains_are_completed_unsent() {
    let memory = memory();
    let tx = Mock::create(&memory, GuestAddress(TX_RING), 16);
    let mut queue: Queue = tx.create_queue().unwrap();
    let mut net = core(MRG);
    let cases: Vec<(&str, Vec<Buffer>)> = vec![
        (
            "device-writable buffer",
            vec![(DATA, 12, 0), (DATA + 0x100, 60, W)],
        ),
        ("header only", vec![(DATA, 12, 0)]),
        ("shorter than an Ethernet header", vec![(DATA, 12 + 13, 0)]),
        (
            "buffer outside guest RAM",
            vec![(DATA, 12, 0), (OUT_OF_RAM, 60, 0)],
        ),
        (
            "buffer running off the end of RAM",
            vec![(DATA, 12, 0), (MEMORY_SIZE as u64 - 30, 60, 0)],
        ),
        (
            "longer than 64 KiB and a header",
            vec![(DATA, 12, 0), (DATA + 0x100, MAX_FRAME_LEN as u32, 0)],
        ),
    ];
    for (index, (name, buffers)) in cases.iter().enumerate() {
        add_chain(&tx, 0, buffers);
        net.core.transmit(&mut queue, &memory);
        assert_eq!(tx.used().idx().load(), index as u16 + 1, "{name}");
        assert_eq!(used(&tx, index as u16), (0, 0), "{name}");
        assert_eq!(net.stats(), (index as u64 + 1, index as u64 + 1), "{name}");
    }
    // A looping chain: 0 -> 1 -> 0 -> ...
    let looping = [
        RawDescriptor::from(Descriptor::new(DATA, 12, NEXT, 1)),
        RawDescriptor::from(Descriptor::new(DATA + 0x100, 60, NEXT, 0)),
    ];
    tx.add_desc_chains(&looping, 0).unwrap();
    let started = Instant::now();
    net.core.transmit(&mut queue, &memory);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deadlock bound"
    );
    let count = cases.len() as u16 + 1;
    assert_eq!(tx.used().idx().load(), count, "looping chain");
    assert_eq!(net.stats(), (u64::from(count), u64::from(count)));
    assert!(net.backend.sent.lock().unwrap().is_empty());
}

#[test]
fn a_frame_fills_one_buffer_with_num_buffers_1() {
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    add_rx_buffers(&rx, 0, 2, 2048, DATA);
    let frame = with_header(&ethernet_frame(60, 1), 0, 0);
    net.incoming(frame.clone());
    let (interrupt, wait) = net.core.receive(&mut queue, &memory);
    assert!(interrupt);
    assert_eq!(wait, RxWait::Tap, "the backend is empty");
    assert_eq!(rx.used().idx().load(), 1);
    assert_eq!(used(&rx, 0), (0, 72));
    let landed = read(&memory, DATA, 72);
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 1);
    assert_eq!(landed[12..], frame[12..]);
    assert_eq!(net.stats(), (1, 0));
}

#[test]
fn a_frame_is_split_across_mergeable_buffers() {
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    add_rx_buffers(&rx, 0, 6, 256, DATA);
    let first = with_header(&ethernet_frame(988, 3), 0, 0);
    let second = with_header(&ethernet_frame(288, 9), 0, 0);
    net.incoming(first.clone());
    net.incoming(second.clone());
    net.core.receive(&mut queue, &memory);
    assert_eq!(rx.used().idx().load(), 6);
    let lens: Vec<(u32, u32)> = (0..6).map(|index| used(&rx, index)).collect();
    assert_eq!(
        lens,
        [(0, 256), (1, 256), (2, 256), (3, 232), (4, 256), (5, 44)]
    );
    let gather = |chains: std::ops::Range<u16>, len: usize| {
        let mut bytes: Vec<u8> = chains
            .flat_map(|index| read(&memory, DATA + u64::from(index) * 0x1_0000, 256))
            .collect();
        bytes.truncate(len);
        bytes
    };
    let landed = gather(0..4, first.len());
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 4);
    assert_eq!(landed[12..], first[12..]);
    let landed = gather(4..6, second.len());
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 2);
    assert_eq!(landed[12..], second[12..]);
    assert_eq!(net.stats(), (2, 0));
}

#[test]
fn without_room_a_frame_waits_and_none_is_read_without_a_buffer() {
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    let frame = with_header(&ethernet_frame(988, 5), 0, 0);
    net.incoming(frame.clone());
    // No buffer: the frame stays in the backend.
    assert_eq!(
        net.core.receive(&mut queue, &memory),
        (false, RxWait::Buffers)
    );
    assert_eq!(net.backend.incoming.lock().unwrap().len(), 1);
    // Room for a quarter of it: it is read, and waits for more.
    add_rx_buffers(&rx, 0, 1, 256, DATA);
    assert_eq!(
        net.core.receive(&mut queue, &memory),
        (false, RxWait::Buffers)
    );
    assert!(net.backend.incoming.lock().unwrap().is_empty());
    assert_eq!(rx.used().idx().load(), 0);
    add_rx_buffers(&rx, 1, 3, 256, DATA + 0x1_0000);
    // Delivered; then the queue is empty again.
    assert_eq!(
        net.core.receive(&mut queue, &memory),
        (true, RxWait::Buffers)
    );
    assert_eq!(rx.used().idx().load(), 4);
    let landed = read(&memory, DATA, 12);
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 4);
    assert_eq!(net.stats(), (1, 0));
}

#[test]
fn a_frame_already_read_is_carried_to_the_next_activation() {
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let net = core(MRG);
    let frame = with_header(&ethernet_frame(988, 5), 0, 0);
    net.incoming(frame.clone());
    add_rx_buffers(&rx, 0, 1, 256, DATA);
    let Core {
        mut core, pending, ..
    } = net;
    assert_eq!(core.receive(&mut queue, &memory), (false, RxWait::Buffers));
    // Reset: the worker ends, the chain it held is abandoned, the frame is kept.
    drop(core);
    assert_eq!(pending.lock().unwrap().len(), frame.len());

    let fresh = Mock::create(&memory, GuestAddress(0x8000), 16);
    let mut queue: Queue = fresh.create_queue().unwrap();
    let backend = Arc::new(MemoryBackend::default());
    let mut core = NetCore::new(backend, MRG, Arc::default(), Arc::clone(&pending));
    assert!(pending.lock().unwrap().is_empty());
    add_rx_buffers(&fresh, 0, 1, 2048, DATA + 0x10_0000);
    assert_eq!(core.receive(&mut queue, &memory), (true, RxWait::Buffers));
    assert_eq!(used(&fresh, 0), (0, frame.len() as u32));
    assert_eq!(
        read(&memory, DATA + 0x10_0000 + 12, frame.len() - 12),
        frame[12..]
    );
}

#[test]
fn frames_the_guest_cannot_take_are_dropped() {
    let memory = memory();
    // Without merged buffers: a frame takes one chain, and this one is too small for the
    // first frame; the chain stays for the next.
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(VIRTIO_F_VERSION_1);
    add_rx_buffers(&rx, 0, 1, 100, DATA);
    net.incoming(with_header(&ethernet_frame(200, 1), 0, 0));
    net.incoming(with_header(&ethernet_frame(60, 2), 0, 0));
    net.core.receive(&mut queue, &memory);
    assert_eq!(rx.used().idx().load(), 1);
    assert_eq!(used(&rx, 0), (0, 72));
    assert_eq!(read(&memory, DATA + 10, 2), [1, 0], "num_buffers is 1");
    assert_eq!(net.stats(), (2, 1));

    // Merged buffers, but the whole queue (4 entries) cannot hold it.
    let rx = Mock::create(&memory, GuestAddress(0x8000), 4);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    add_rx_buffers(&rx, 0, 4, 64, DATA);
    net.incoming(with_header(&ethernet_frame(500, 1), 0, 0));
    net.incoming(with_header(&ethernet_frame(60, 2), 0, 0));
    net.core.receive(&mut queue, &memory);
    assert_eq!(
        rx.used().idx().load(),
        2,
        "the second frame took two chains"
    );
    assert_eq!((used(&rx, 0), used(&rx, 1)), ((0, 64), (1, 8)));
    assert_eq!(net.stats(), (2, 1));

    // Offloads the guest did not accept, and runt frames.
    let rx = Mock::create(&memory, GuestAddress(0xC000), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    add_rx_buffers(&rx, 0, 2, 2048, DATA);
    let tcpv4 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let data_valid = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    net.incoming(with_header(&ethernet_frame(1000, 1), needs_csum, tcpv4));
    net.incoming(with_header(&ethernet_frame(1000, 1), needs_csum, 0));
    net.incoming(with_header(&ethernet_frame(13, 1), 0, 0));
    net.incoming(vec![0; 4]);
    net.incoming(with_header(&ethernet_frame(60, 2), data_valid, 0));
    net.core.receive(&mut queue, &memory);
    assert_eq!(rx.used().idx().load(), 1);
    let landed = read(&memory, DATA, 12);
    assert_eq!(landed[0], 0, "DATA_VALID needs GUEST_CSUM");
    assert_eq!(net.stats(), (5, 4));

    // With the offloads accepted, the same frames pass.
    let rx = Mock::create(&memory, GuestAddress(0x10000), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG | OFFLOAD_FEATURES);
    add_rx_buffers(&rx, 0, 2, 2048, DATA);
    net.incoming(with_header(&ethernet_frame(1000, 1), needs_csum, tcpv4));
    net.incoming(with_header(&ethernet_frame(60, 2), data_valid, 0));
    net.core.receive(&mut queue, &memory);
    assert_eq!(rx.used().idx().load(), 2);
    assert_eq!(read(&memory, DATA, 2), [needs_csum, tcpv4]);
    assert_eq!(read(&memory, DATA + 0x1_0000, 1), [data_valid]);
    assert_eq!(net.stats(), (2, 0));
}

#[test]
fn malformed_receive_chains_are_completed_empty() {
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    add_chain(&rx, 0, &[(DATA, 2048, 0)]);
    add_chain(&rx, 1, &[(DATA, 1024, W), (DATA + 0x1000, 1024, 0)]);
    add_chain(&rx, 3, &[(OUT_OF_RAM, 2048, W)]);
    add_chain(&rx, 4, &[(MEMORY_SIZE as u64 - 1024, 2048, W)]);
    add_chain(&rx, 5, &[(DATA, 11, W)]);
    add_chain(&rx, 6, &[(DATA, 0, W)]);
    // 7 -> 8 -> 7 -> ...
    rx.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(DATA, 1024, W | NEXT, 8)),
            RawDescriptor::from(Descriptor::new(DATA + 0x1000, 1024, W | NEXT, 7)),
        ],
        7,
    )
    .unwrap();
    add_rx_buffers(&rx, 9, 1, 2048, DATA + 0x2_0000);
    let frame = with_header(&ethernet_frame(100, 4), 0, 0);
    net.incoming(frame.clone());
    net.core.receive(&mut queue, &memory);
    assert_eq!(rx.used().idx().load(), 8);
    for index in 0..7 {
        assert_eq!(used(&rx, index).1, 0, "chain {index}");
    }
    assert_eq!(used(&rx, 7), (9, frame.len() as u32));
    assert_eq!(net.stats(), (8, 7));
}

#[test]
fn a_broken_available_ring_neither_spins_nor_loses_the_frame() {
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let mut queue: Queue = rx.create_queue().unwrap();
    let mut net = core(MRG);
    net.incoming(with_header(&ethernet_frame(100, 4), 0, 0));
    rx.avail().idx().store(100);
    assert_eq!(
        net.core.receive(&mut queue, &memory),
        (false, RxWait::Buffers)
    );
    assert_eq!(net.backend.incoming.lock().unwrap().len(), 1);
}

#[test]
fn offloads_follow_the_guest_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |all, &b| all | 1 << b);
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(
        tap_offloads(f(&[VIRTIO_NET_F_GUEST_TSO4])),
        0,
        "TSO needs CSUM"
    );
    assert_eq!(
        tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM])),
        libc::TUN_F_CSUM
    );
    assert_eq!(
        tap_offloads(OFFLOAD_FEATURES),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    assert_eq!(
        tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6])),
        libc::TUN_F_CSUM | libc::TUN_F_TSO6
    );
}

// --- On real taps ---

/// A tap made for one test, removed when it is dropped.
pub(crate) struct TestTap {
    pub(crate) tap: Tap,
    pub(crate) name: String,
}

/// A fresh tap `vmmtestN` with IPv6 off (so the host sends nothing on it by itself), or
/// `None` (the test is skipped) where taps cannot be made.
pub(crate) fn test_tap() -> Option<TestTap> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let number = std::process::id() % 100_000 * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    let name = format!("vmmtest{number}");
    match Tap::open(&name) {
        Ok(tap) => {
            // Absent without IPv6: then there is nothing to turn off.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            Some(TestTap { tap, name })
        }
        // The testbed's arm64 host (which sets VMM_TEST_KERNEL) loads `tun` and runs tests as
        // root: there these tests must run.
        Err(err @ (TapError::OpenTun(_) | TapError::Permission { .. }))
            if std::env::var_os("VMM_TEST_KERNEL").is_none() =>
        {
            eprintln!("skipped: taps cannot be made here: {err}");
            None
        }
        Err(err) => panic!("{name}: {err}"),
    }
}

/// An AF_PACKET socket on a tap: what it sends goes to the tap's reader (the device), and it
/// sees what the device writes into the tap.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bound_to(name: &str) -> Self {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        let c_name = CString::new(name).unwrap();
        // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        assert_ne!(index, 0, "{name} has no index");
        // SAFETY: plain socket creation.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just created and nothing else owns it.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: `sockaddr_ll` is plain integers; zero is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: `address` is a valid sockaddr_ll of the length given.
        let result = unsafe {
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval of the length given.
        let result = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0);
        socket
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes of `frame`.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            sent,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame of [`ETHERTYPE`] whose payload starts with `tag`.
    fn receive_tagged(&self, tag: u8) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buffer = vec![0u8; 70_000];
        loop {
            assert!(
                Instant::now() < deadline,
                "no frame tagged {tag} reached the tap"
            );
            // SAFETY: recv writes at most `buffer.len()` bytes into `buffer`.
            let got = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if got >= 15 {
                let frame = &buffer[..got as usize];
                if frame[12..14] == ETHERTYPE && frame[14] == tag {
                    return frame.to_vec();
                }
            }
        }
    }
}

/// The device's queues as the test (the driver) sees them, once activated.
struct Driver {
    rx_kick: EventFd,
    tx_kick: EventFd,
}

fn activate(
    device: &mut NetDevice,
    memory: &GuestMemoryMmap,
    rx: &Mock<'_>,
    tx: &Mock<'_>,
    features: u64,
) -> Driver {
    let rx_kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx_kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let queue = |mock: &Mock<'_>, kick: &EventFd| {
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
        ActiveQueue {
            queue,
            event: kick.try_clone().unwrap(),
        }
    };
    device
        .activate(
            memory.clone(),
            vec![queue(rx, &rx_kick), queue(tx, &tx_kick)],
            Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            features,
        )
        .unwrap();
    Driver { rx_kick, tx_kick }
}

fn wait_used(queue: &Mock<'_>, count: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.used().idx().load() < count {
        assert!(
            Instant::now() < deadline,
            "{} of {count} chains used",
            queue.used().idx().load()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A device on a fresh tap, brought up, whose worker threads record their thread id.
fn device_on_tap() -> Option<(NetDevice, String, Arc<AtomicI32>)> {
    let TestTap { tap, name } = test_tap()?;
    tap.up().unwrap();
    let worker = Arc::new(AtomicI32::new(0));
    let record = Arc::clone(&worker);
    let device = NetDevice::new(Arc::new(tap), [0x52, 0x54, 0, 0x12, 0x34, 0x56]).with_worker_hook(
        Some(Arc::new(move || {
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            record.store(tid as i32, Ordering::SeqCst);
            Ok(())
        })),
    );
    Some((device, name, worker))
}

/// CPU time the thread `tid` (of this process) has used.
fn thread_cpu_time(tid: i32) -> Duration {
    // The kernel's per-thread CPU clock id (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)), as
    // glibc's pthread_getcpuclockid makes it.
    let clock = (!tid << 3) | 6;
    // SAFETY: `timespec` is plain integers; zero is valid.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec into `now`.
    let result = unsafe { libc::clock_gettime(clock, &mut now) };
    assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[test]
fn features_and_config_space() {
    let Some((device, name, _)) = device_on_tap() else {
        return;
    };
    assert_eq!(device.device_type(), 1);
    assert_eq!(device.kind(), DeviceKind::Net);
    assert_eq!(device.queue_max_sizes(), [256, 256]);
    assert_eq!(device.tap_name(), name);
    assert_eq!(device.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    // A tap takes every offload on any kernel this runs on.
    assert_eq!(device.features(), BASE_FEATURES | OFFLOAD_FEATURES);
    let mut config = [0xAAu8; 12];
    device.read_config(0, &mut config);
    assert_eq!(config, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 0, 0, 0, 0]);
    let mut status = [0u8; 2];
    device.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP as u16);
}

#[test]
fn transmitted_frames_reach_the_tap() {
    let Some((mut device, name, _)) = device_on_tap() else {
        return;
    };
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let tx = Mock::create(&memory, GuestAddress(TX_RING), 16);
    let listener = PacketSocket::bound_to(&name);
    let driver = activate(
        &mut device,
        &memory,
        &rx,
        &tx,
        MRG | VIRTIO_RING_F_EVENT_IDX,
    );
    let frame = ethernet_frame(600, 42);
    let bytes = with_header(&frame, 0, 0);
    memory.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    add_chain(&tx, 0, &[(DATA, 12, 0), (DATA + 12, frame.len() as u32, 0)]);
    driver.tx_kick.write(1).unwrap();
    wait_used(&tx, 1);
    assert_eq!(listener.receive_tagged(42), frame);
    device.reset();
    let stats = device.counters().snapshot();
    assert_eq!((stats.requests, stats.errors), (1, 0));
}

#[test]
fn frames_from_the_tap_reach_the_guest_buffers() {
    let Some((mut device, name, _)) = device_on_tap() else {
        return;
    };
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let tx = Mock::create(&memory, GuestAddress(TX_RING), 16);
    let injector = PacketSocket::bound_to(&name);
    let driver = activate(
        &mut device,
        &memory,
        &rx,
        &tx,
        MRG | VIRTIO_RING_F_EVENT_IDX,
    );
    // One buffer of 2 KiB, then five of 512 bytes.
    add_rx_buffers(&rx, 0, 1, 2048, DATA);
    add_rx_buffers(&rx, 1, 5, 512, DATA + 0x1_0000);
    driver.rx_kick.write(1).unwrap();
    let small = ethernet_frame(100, 1);
    let large = ethernet_frame(1400, 2);
    injector.send(&small);
    wait_used(&rx, 1);
    injector.send(&large);
    wait_used(&rx, 4);
    assert_eq!(used(&rx, 0), (0, 112));
    let landed = read(&memory, DATA, 112);
    assert_eq!(landed[1], 0, "no GSO");
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 1);
    assert_eq!(landed[12..], small);
    assert_eq!(
        (used(&rx, 1), used(&rx, 2), used(&rx, 3)),
        ((1, 512), (2, 512), (3, 1412 - 1024))
    );
    let mut landed: Vec<u8> = (0..3)
        .flat_map(|index| read(&memory, DATA + 0x1_0000 * (index + 1), 512))
        .collect();
    landed.truncate(1412);
    assert_eq!(u16::from_le_bytes([landed[10], landed[11]]), 3);
    assert_eq!(landed[12..], large);
    device.reset();
    assert_eq!(device.counters().snapshot().errors, 0);
}

#[test]
fn without_buffers_the_worker_neither_spins_nor_loses_frames() {
    let Some((mut device, name, worker)) = device_on_tap() else {
        return;
    };
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let tx = Mock::create(&memory, GuestAddress(TX_RING), 16);
    let injector = PacketSocket::bound_to(&name);
    let driver = activate(
        &mut device,
        &memory,
        &rx,
        &tx,
        MRG | VIRTIO_RING_F_EVENT_IDX,
    );
    for tag in 1..=3 {
        injector.send(&ethernet_frame(200, tag));
    }
    // The tap is readable all along; the worker must not wake for it.
    std::thread::sleep(Duration::from_millis(50));
    let tid = worker.load(Ordering::SeqCst);
    assert_ne!(tid, 0, "the worker did not start");
    let before = thread_cpu_time(tid);
    std::thread::sleep(Duration::from_millis(200));
    let spent = thread_cpu_time(tid) - before;
    assert!(
        spent < Duration::from_millis(20),
        "the idle worker used {spent:?}"
    );

    add_rx_buffers(&rx, 0, 3, 2048, DATA);
    driver.rx_kick.write(1).unwrap();
    wait_used(&rx, 3);
    for index in 0..3u16 {
        assert_eq!(used(&rx, index), (u32::from(index), 212));
        let landed = read(&memory, DATA + 0x1_0000 * u64::from(index), 212);
        assert_eq!(landed[12..], ethernet_frame(200, index as u8 + 1));
    }
    device.reset();
}

#[test]
fn a_reset_leaves_frames_in_the_tap_for_the_next_activation() {
    let Some((mut device, name, _)) = device_on_tap() else {
        return;
    };
    let memory = memory();
    let rx = Mock::create(&memory, GuestAddress(RX_RING), 16);
    let tx = Mock::create(&memory, GuestAddress(TX_RING), 16);
    let injector = PacketSocket::bound_to(&name);
    let _driver = activate(
        &mut device,
        &memory,
        &rx,
        &tx,
        MRG | VIRTIO_RING_F_EVENT_IDX,
    );
    // The frames arrive while the driver has no buffer (it is freezing), then it resets.
    injector.send(&ethernet_frame(300, 7));
    injector.send(&ethernet_frame(300, 8));
    std::thread::sleep(Duration::from_millis(50));
    device.reset();
    assert_eq!(device.counters().snapshot().requests, 0);

    // Restore: fresh rings, buffers posted before DRIVER_OK, as virtnet_restore does.
    let rx = Mock::create(&memory, GuestAddress(0x8000), 16);
    let tx = Mock::create(&memory, GuestAddress(0xC000), 16);
    add_rx_buffers(&rx, 0, 4, 2048, DATA);
    let _driver = activate(
        &mut device,
        &memory,
        &rx,
        &tx,
        MRG | VIRTIO_RING_F_EVENT_IDX,
    );
    wait_used(&rx, 2);
    for (index, tag) in [(0u16, 7u8), (1, 8)] {
        let landed = read(&memory, DATA + 0x1_0000 * u64::from(index), 312);
        assert_eq!(landed[12..], ethernet_frame(300, tag));
    }
    device.reset();
    let stats = device.counters().snapshot();
    assert_eq!((stats.requests, stats.errors), (2, 0));
}
