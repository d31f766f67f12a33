//! The virtio-net queues (`devices::virtio::fuzzing::NetQueues`: what the device's worker
//! runs, with an in-memory stand-in for the tap) on guest-built descriptor tables and
//! available rings over 64 KiB of guest memory at 0, with no thread: deterministic.
//!
//! Input:
//! - a configuration byte: bits 0-3 the queue size (`1 << (bits % 9)`, 1 to 256), bit 4
//!   VIRTIO_RING_F_EVENT_IDX, bit 5 VIRTIO_NET_F_MRG_RXBUF, bit 6 the receive offloads
//!   (GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN);
//! - for the receive queue (rings at 0x0000, 0x1000, 0x2000), then the transmit queue (rings
//!   at 0x3000, 0x4000, 0x5000): a descriptor count byte, then each descriptor (index 0, 1,
//!   ...): a flags byte, then if its bit 7 is set the raw 16 bytes, else a u16 address, a u16
//!   length and a next byte (the flags' bits 0-2 are NEXT, WRITE and INDIRECT); then a head
//!   count byte and the heads (a byte each), which are made available;
//! - then operations until the input ends, an op byte each (modulo 7):
//!   0 transmit; 1 receive;
//!   2 a frame from the tap of a u16 length, 6 one of `MAX_FRAME_LEN - 64` plus a byte (around
//!   the limit): its first bytes (the virtio-net header first, at most 32) follow, the rest is
//!   a pattern;
//!   3 a guest memory write: u16 address, length byte, bytes (frames, and rings rewritten);
//!   4 a head made available: a byte whose bit 0 picks the queue, then the head byte;
//!   5 a reset and a new activation on the same rings, emptied (what Linux's freeze and
//!   restore do on suspend).
//!
//! Checks: no panic, hang or stray access, whatever the chains and frames; every frame
//! transmitted is a whole frame (`MIN_FRAME_LEN` to `MAX_FRAME_LEN` bytes).

use devices::virtio::fuzzing::NetQueues;
use devices::virtio::net::{MAX_FRAME_LEN, MIN_FRAME_LEN};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::Input;

/// Guest RAM: 64 KiB at 0.
const MEMORY_SIZE: usize = 0x1_0000;
/// Each queue's descriptor table; its available ring is 0x1000 after it, its used ring 0x2000.
const RINGS: [u64; 2] = [0x0000, 0x3000];
/// Operations one input runs at most.
const MAX_OPS: usize = 256;

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(config) = input.u8() else { return };
    let size = 1u16 << ((config & 0xF) % 9);
    let event_idx = config & 0x10 != 0;
    let mut features = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    if config & 0x20 != 0 {
        features |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    if config & 0x40 != 0 {
        for bit in [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
        ] {
            features |= 1 << bit;
        }
    }
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap();

    for desc_table in RINGS {
        let count = input.u8().unwrap_or(0);
        for index in 0..u64::from(count) {
            let Some(raw) = descriptor(&mut input) else {
                break;
            };
            let _ = memory.write_slice(&raw, GuestAddress(desc_table + 16 * index));
        }
        let heads = input.u8().unwrap_or(0);
        for _ in 0..heads {
            let Some(head) = input.u8() else { break };
            make_available(&memory, desc_table, size, head);
        }
    }

    let Some(mut queues) = queues(&memory, size, event_idx) else {
        return;
    };
    let mut net = NetQueues::new(features);
    for _ in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        match op % 7 {
            0 => {
                net.transmit(&mut queues[1], &memory);
                for frame in net.take_sent() {
                    assert!(
                        (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()),
                        "a {}-byte frame was transmitted",
                        frame.len()
                    );
                }
            }
            1 => {
                net.receive(&mut queues[0], &memory);
            }
            op @ (2 | 6) => {
                let len = if op == 2 {
                    let Some(len) = input.u16() else { break };
                    usize::from(len)
                } else {
                    let Some(extra) = input.u8() else { break };
                    MAX_FRAME_LEN - 64 + usize::from(extra)
                };
                let start = input.up_to(len.min(32));
                let mut frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
                frame[..start.len()].copy_from_slice(start);
                net.push_incoming(frame);
            }
            3 => {
                let (Some(addr), Some(len)) = (input.u16(), input.u8()) else {
                    break;
                };
                let bytes = input.up_to(usize::from(len));
                let _ = memory.write_slice(bytes, GuestAddress(u64::from(addr)));
            }
            4 => {
                let (Some(which), Some(head)) = (input.u8(), input.u8()) else {
                    break;
                };
                make_available(&memory, RINGS[usize::from(which & 1)], size, head);
            }
            _ => {
                net.reset();
                for desc_table in RINGS {
                    // The driver starts again on empty rings.
                    let _ = memory.write_obj(0u32, GuestAddress(desc_table + 0x1000));
                    let _ = memory.write_obj(0u32, GuestAddress(desc_table + 0x2000));
                }
                let Some(fresh) = self::queues(&memory, size, event_idx) else {
                    return;
                };
                queues = fresh;
            }
        }
    }
}

/// The next descriptor: the raw 16 bytes, or a structured one.
fn descriptor(input: &mut Input<'_>) -> Option<[u8; 16]> {
    let flags = input.u8()?;
    if flags & 0x80 != 0 {
        return input.bytes(16).map(|bytes| bytes.try_into().unwrap());
    }
    let (addr, len, next) = (input.u16()?, input.u16()?, input.u8()?);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&u64::from(addr).to_le_bytes());
    raw[8..12].copy_from_slice(&u32::from(len).to_le_bytes());
    raw[12..14].copy_from_slice(&u16::from(flags & 7).to_le_bytes());
    raw[14..16].copy_from_slice(&u16::from(next).to_le_bytes());
    Some(raw)
}

/// Puts `head` in the next slot of the available ring of the queue at `desc_table` and
/// publishes it.
fn make_available(memory: &GuestMemoryMmap, desc_table: u64, size: u16, head: u8) {
    let avail = desc_table + 0x1000;
    let idx: u16 = memory.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
    let slot = avail + 4 + 2 * u64::from(idx % size);
    let _ = memory.write_obj(u16::from(head), GuestAddress(slot));
    let _ = memory.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2));
}

/// The receive and transmit queues as the transport hands them over, if valid.
fn queues(memory: &GuestMemoryMmap, size: u16, event_idx: bool) -> Option<[Queue; 2]> {
    let queue = |desc_table: u64| {
        let mut queue = Queue::new(256).unwrap();
        queue.set_size(size);
        queue.set_desc_table_address(Some(desc_table as u32), Some(0));
        queue.set_avail_ring_address(Some((desc_table + 0x1000) as u32), Some(0));
        queue.set_used_ring_address(Some((desc_table + 0x2000) as u32), Some(0));
        queue.set_ready(true);
        // What the transport checks before it activates the device.
        if !queue.is_valid(memory) {
            return None;
        }
        queue.set_event_idx(event_idx);
        Some(queue)
    };
    Some([queue(RINGS[0])?, queue(RINGS[1])?])
}
