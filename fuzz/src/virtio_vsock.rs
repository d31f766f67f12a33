//! The virtio-vsock packet and connection logic (`devices::virtio::fuzzing::VsockPackets`:
//! what the device's worker runs, with an epoll set of its own and no thread) on guest-built
//! transmit chains and receive buffers over 128 KiB of guest memory at 0, with real host
//! programs on Unix sockets in a private temporary directory: the device's socket, and a
//! service listening on `<socket>_1024` (guest port 1024; other ports have no listener).
//!
//! Input:
//! - a configuration byte: bits 0-2 the queue size (`1 << (bits % 5)`, 1 to 16), bit 3
//!   VIRTIO_RING_F_EVENT_IDX; the receive rings are at 0x0000, 0x0100, 0x0200, the transmit
//!   rings at 0x0400, 0x0500, 0x0600;
//! - then operations until the input ends, an op byte each (modulo 9):
//!   0 a packet from the guest, built: op byte (op `% 9`; bit 7: header and data in one
//!   buffer), variant byte (bits 0-1 source CID: guest, guest, host, any; bits 2-3
//!   destination CID: host, host, guest, any; bit 4 a non-stream type; bits 5-6 SHUTDOWN
//!   flags; bit 7 a `len` field of its own instead of the data's length), source port byte
//!   (1000 + `% 4`), destination port byte (`% 4`: 1024 the service, 2^30 + `/4 % 4` a host
//!   port the device allocates, 5 nothing, or a u32), then the CIDs and `len` asked for,
//!   a `buf_alloc` byte (0, 16, 4 KiB, 256 KiB, u32::MAX ...), a u16 `fwd_cnt`, a data
//!   length byte (bit 7: that many KiB of a pattern) and the data;
//!   1 a raw transmit chain: a count byte (1 to 4 descriptors: flags byte, bit 0 WRITE, bit 1
//!   no NEXT on the last; u16 address; u16 length), then a length byte and bytes written at
//!   0x1000;
//!   2 receive buffers: a byte, bits 0-1 the count - 1, bits 2-4 the size (43, 44, 45, 60,
//!   300, 4140, 64 KiB + 44, 16 bytes), bit 5 the header in a buffer of its own, bit 6 one
//!   device-readable buffer;
//!   3 a host program connects (at most 4 at once): a byte, bits 0-1 the guest port (1000 +),
//!   bit 2 a line from the input (length byte, bytes) instead of `CONNECT <port>\n`, bit 3
//!   nothing written;
//!   4 a host program writes: index byte, length byte, bytes;
//!   5 a host program reads what it has, shuts down its write or read half, or closes: index
//!   byte, action byte;
//!   6 host sockets are handled: rounds byte (1 to 4), each without waiting;
//!   7 the service accepts a guest connection, writes to one (length byte, bytes) or closes
//!   one: action byte;
//!   8 a guest memory write: u16 address, length byte, bytes (rings and buffers rewritten).
//!
//! Every input ends with a device reset (what Linux's freeze does), then the host programs'
//! connections still in the socket's backlog are served and reset too, so that nothing is
//! left for the next input.
//!
//! Checks: no panic, hang or stray access; the errors counted never exceed the packets; no
//! used receive buffer is longer than a header and 64 KiB (while no guest memory write
//! rewrote the rings); every connection is closed on reset.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use devices::virtio::fuzzing::VsockPackets;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::Input;

const CID: u64 = 3;
const MEMORY_SIZE: usize = 0x2_0000;
const SERVICE_PORT: u32 = 1024;
const MAX_PEERS: usize = 4;
const TX_HEADER: u64 = 0x1000;
const TX_DATA: u64 = 0x1100;
const TX_DATA_MAX: usize = 0x7000 - 0x100;
const RX_BUFFERS: u64 = 0x8000;
const RX_SLOT: u64 = 0x4000;
const HEADER_LEN: usize = 44;

struct Harness {
    vsock: VsockPackets,
    service: UnixListener,
    socket: PathBuf,
}

/// The directory of the sockets, removed when the fuzzer exits.
static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmm-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        DIR.set(dir.clone()).unwrap();
        // SAFETY: registers a function with no arguments that only removes a directory.
        unsafe { libc::atexit(remove_dir) };
        let socket = dir.join("v.sock");
        let vsock = VsockPackets::new(CID, socket.clone()).unwrap();
        let mut service_path = socket.clone().into_os_string();
        service_path.push(format!("_{SERVICE_PORT}"));
        let service = UnixListener::bind(&service_path).unwrap();
        service.set_nonblocking(true).unwrap();
        Mutex::new(Harness {
            vsock,
            service,
            socket,
        })
    })
}

/// The driver's side of a split queue.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    next_desc: u16,
    used_seen: u16,
}

impl Ring {
    fn new(base: u64, size: u16) -> Self {
        Self {
            desc: base,
            avail: base + 0x100,
            used: base + 0x200,
            size,
            avail_idx: 0,
            next_desc: 0,
            used_seen: 0,
        }
    }

    fn queue(&self, memory: &GuestMemoryMmap, event_idx: bool) -> Option<Queue> {
        let mut queue = Queue::new(16).ok()?;
        queue.set_size(self.size);
        let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
        let (low, high) = split(self.desc);
        queue.set_desc_table_address(low, high);
        let (low, high) = split(self.avail);
        queue.set_avail_ring_address(low, high);
        let (low, high) = split(self.used);
        queue.set_used_ring_address(low, high);
        queue.set_ready(true);
        if !queue.is_valid(memory) {
            return None;
        }
        queue.set_event_idx(event_idx);
        Some(queue)
    }

    /// Writes the chain `(address, length, flags)` (NEXT added but on the last, unless
    /// `unterminated`) and makes it available.
    fn offer(&mut self, memory: &GuestMemoryMmap, descs: &[(u64, u32, u16)], unterminated: bool) {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let more = i + 1 < descs.len() || unterminated;
            let flags = flags | if more { 1 } else { 0 };
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = memory.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(index)));
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = memory.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = memory.write_obj(self.avail_idx, GuestAddress(self.avail + 2));
    }

    /// Checks the used entries added since the last call.
    fn check_used(&mut self, memory: &GuestMemoryMmap) {
        let Ok(idx) = memory.read_obj::<u16>(GuestAddress(self.used + 2)) else {
            return;
        };
        // At most one round: the used index is guest memory the input may rewrite.
        for _ in 0..self.size {
            if self.used_seen == idx {
                break;
            }
            let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            if let Ok(len) = memory.read_obj::<u32>(GuestAddress(slot + 4)) {
                assert!(
                    len as usize <= HEADER_LEN + 64 * 1024,
                    "a receive buffer used for {len} bytes"
                );
            }
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        self.used_seen = idx;
    }
}

const BUF_ALLOCS: [u32; 8] = [0, 16, 4096, 256 * 1024, u32::MAX, 1000, 64 * 1024, 1];
const RX_SIZES: [u32; 8] = [43, 44, 45, 60, 300, 4140, 64 * 1024 + 44, 16];

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(config) = input.u8() else { return };
    let size = 1u16 << ((config & 7) % 5);
    let event_idx = config & 8 != 0;
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap();
    let mut rx_ring = Ring::new(0x0000, size);
    let mut tx_ring = Ring::new(0x0400, size);
    let (Some(mut rx), Some(mut tx)) = (
        rx_ring.queue(&memory, event_idx),
        tx_ring.queue(&memory, event_idx),
    ) else {
        return;
    };

    let mut harness = harness()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let harness = &mut *harness;
    let mut peers: Vec<UnixStream> = Vec::new();
    let mut servers: Vec<UnixStream> = Vec::new();
    let mut rx_slot = 0u64;
    // Whether guest memory was only written as a driver does: then the used ring holds
    // what the device wrote.
    let mut rings_intact = true;

    while let Some(op) = input.u8() {
        match op % 9 {
            0 => {
                let (Some(kind), Some(variant), Some(src), Some(dst)) =
                    (input.u8(), input.u8(), input.u8(), input.u8())
                else {
                    break;
                };
                let src_cid = match variant & 3 {
                    0 | 1 => CID,
                    2 => 2,
                    _ => input.u64().unwrap_or(0),
                };
                let dst_cid = match (variant >> 2) & 3 {
                    0 | 1 => 2,
                    2 => CID,
                    _ => input.u64().unwrap_or(0),
                };
                let src_port = 1000 + u32::from(src % 4);
                let dst_port = match dst % 4 {
                    0 => SERVICE_PORT,
                    1 => (1 << 30) + u32::from(dst / 4 % 4),
                    2 => 5,
                    _ => input.u32().unwrap_or(0),
                };
                let own_len = (variant & 0x80 != 0).then(|| input.u32().unwrap_or(0));
                let buf_alloc = BUF_ALLOCS[usize::from(input.u8().unwrap_or(3) % 8)];
                let fwd_cnt = u32::from(input.u16().unwrap_or(0));
                let length = input.u8().unwrap_or(0);
                let payload: Vec<u8> = if length & 0x80 != 0 {
                    (0..usize::from(length & 0x7F) * 1024)
                        .map(|i| i as u8)
                        .take(TX_DATA_MAX)
                        .collect()
                } else {
                    input.up_to(usize::from(length)).to_vec()
                };
                let mut header = [0u8; HEADER_LEN];
                header[0..8].copy_from_slice(&src_cid.to_le_bytes());
                header[8..16].copy_from_slice(&dst_cid.to_le_bytes());
                header[16..20].copy_from_slice(&src_port.to_le_bytes());
                header[20..24].copy_from_slice(&dst_port.to_le_bytes());
                let len = own_len.unwrap_or(payload.len() as u32);
                header[24..28].copy_from_slice(&len.to_le_bytes());
                let socket_type: u16 = if variant & 0x10 != 0 { 2 } else { 1 };
                header[28..30].copy_from_slice(&socket_type.to_le_bytes());
                header[30..32].copy_from_slice(&u16::from(kind % 9).to_le_bytes());
                header[32..36].copy_from_slice(&u32::from((variant >> 5) & 3).to_le_bytes());
                header[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
                header[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
                let _ = memory.write_slice(&header, GuestAddress(TX_HEADER));
                if kind & 0x80 != 0 {
                    // One buffer: the data right after the header.
                    let _ = memory.write_slice(&payload, GuestAddress(TX_HEADER + 44));
                    let total = (HEADER_LEN + payload.len()) as u32;
                    tx_ring.offer(&memory, &[(TX_HEADER, total, 0)], false);
                } else if payload.is_empty() {
                    tx_ring.offer(&memory, &[(TX_HEADER, 44, 0)], false);
                } else {
                    let _ = memory.write_slice(&payload, GuestAddress(TX_DATA));
                    let descs = [(TX_HEADER, 44, 0), (TX_DATA, payload.len() as u32, 0)];
                    tx_ring.offer(&memory, &descs, false);
                }
                harness.vsock.process_tx(&mut rx, &mut tx, &memory);
            }
            1 => {
                let Some(count) = input.u8() else { break };
                let mut descs = Vec::new();
                let mut unterminated = false;
                for _ in 0..1 + count % 4 {
                    let (Some(flags), Some(addr), Some(len)) =
                        (input.u8(), input.u16(), input.u16())
                    else {
                        break;
                    };
                    unterminated = flags & 2 != 0;
                    descs.push((u64::from(addr), u32::from(len), u16::from(flags & 1) << 1));
                }
                if descs.is_empty() {
                    break;
                }
                let length = input.u8().unwrap_or(0);
                let bytes = input.up_to(usize::from(length));
                let _ = memory.write_slice(bytes, GuestAddress(TX_HEADER));
                tx_ring.offer(&memory, &descs, unterminated);
                harness.vsock.process_tx(&mut rx, &mut tx, &memory);
            }
            2 => {
                let Some(shape) = input.u8() else { break };
                for _ in 0..=(shape & 3) {
                    let addr = RX_BUFFERS + (rx_slot % 6) * RX_SLOT;
                    rx_slot += 1;
                    let size = RX_SIZES[usize::from((shape >> 2) & 7)];
                    let size = size.min((MEMORY_SIZE as u64 - addr) as u32);
                    let write = if shape & 0x40 != 0 { 0 } else { 2 };
                    if shape & 0x20 != 0 && size > 44 {
                        let descs = [(addr, 44, 2), (addr + 64, size - 44, write)];
                        rx_ring.offer(&memory, &descs, false);
                    } else {
                        rx_ring.offer(&memory, &[(addr, size, write)], false);
                    }
                }
                harness.vsock.process_rx(&mut rx, &mut tx, &memory);
            }
            3 => {
                let Some(how) = input.u8() else { break };
                if peers.len() >= MAX_PEERS {
                    continue;
                }
                let Ok(peer) = UnixStream::connect(&harness.socket) else {
                    continue;
                };
                peer.set_nonblocking(true).unwrap();
                let mut peer = peer;
                if how & 8 == 0 {
                    let line = if how & 4 != 0 {
                        let length = input.u8().unwrap_or(0);
                        input.up_to(usize::from(length)).to_vec()
                    } else {
                        format!("CONNECT {}\n", 1000 + u32::from(how & 3)).into_bytes()
                    };
                    let _ = peer.write(&line);
                }
                peers.push(peer);
            }
            4 => {
                let (Some(index), Some(length)) = (input.u8(), input.u8()) else {
                    break;
                };
                let bytes = input.up_to(usize::from(length));
                if let Some(peer) = peers.get_mut(usize::from(index) % MAX_PEERS) {
                    let _ = peer.write(bytes);
                }
            }
            5 => {
                let (Some(index), Some(action)) = (input.u8(), input.u8()) else {
                    break;
                };
                let index = usize::from(index) % MAX_PEERS;
                if index >= peers.len() {
                    continue;
                }
                match action % 4 {
                    0 => {
                        let mut buffer = [0u8; 4096];
                        while matches!(peers[index].read(&mut buffer), Ok(n) if n > 0) {}
                    }
                    1 => {
                        let _ = peers[index].shutdown(std::net::Shutdown::Write);
                    }
                    2 => {
                        let _ = peers[index].shutdown(std::net::Shutdown::Read);
                    }
                    _ => {
                        peers.swap_remove(index);
                    }
                }
            }
            6 => {
                let rounds = 1 + input.u8().unwrap_or(0) % 4;
                for _ in 0..rounds {
                    if harness.vsock.poll(&mut rx, &mut tx, &memory, 0).is_err() {
                        break;
                    }
                }
            }
            7 => {
                let Some(action) = input.u8() else { break };
                match action % 4 {
                    0 | 1 => {
                        if servers.len() < MAX_PEERS
                            && let Ok((server, _)) = harness.service.accept()
                        {
                            server.set_nonblocking(true).unwrap();
                            servers.push(server);
                        }
                    }
                    2 => {
                        let length = input.u8().unwrap_or(0);
                        let bytes = input.up_to(usize::from(length));
                        if let Some(server) = servers.last_mut() {
                            let _ = server.write(bytes);
                        }
                    }
                    _ => {
                        servers.pop();
                    }
                }
            }
            _ => {
                let (Some(addr), Some(length)) = (input.u16(), input.u8()) else {
                    break;
                };
                let bytes = input.up_to(usize::from(length));
                let _ = memory.write_slice(bytes, GuestAddress(u64::from(addr)));
                rings_intact = false;
            }
        }
        if rings_intact {
            rx_ring.check_used(&memory);
        }
        let stats = harness.vsock.stats();
        assert!(stats.errors <= stats.requests, "{stats:?}");
        assert!(harness.vsock.connections() <= 1024);
    }

    // A reset, then what still waits in the socket's backlog is served and reset as well.
    drop(peers);
    drop(servers);
    harness.vsock.reset(&mut rx, &mut tx, &memory).unwrap();
    assert_eq!(harness.vsock.connections(), 0);
    for _ in 0..64 {
        match harness.vsock.poll(&mut rx, &mut tx, &memory, 0) {
            Ok((0, _)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    harness.vsock.reset(&mut rx, &mut tx, &memory).unwrap();
    assert_eq!(harness.vsock.connections(), 0);
    while harness.service.accept().is_ok() {}
}
