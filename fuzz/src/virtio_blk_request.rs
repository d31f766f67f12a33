//! The virtio-blk request path (`BlockHandler::serve`, through the `fuzzing` feature's
//! `devices::virtio::fuzzing::BlockRequests`) on guest-built descriptor chains over 64 KiB of
//! guest memory at 0, with no worker thread: deterministic.
//!
//! Input:
//! - a configuration byte: bits 0-3 the queue size (`1 << (bits % 9)`, 1 to 256), bit 4
//!   VIRTIO_RING_F_EVENT_IDX, bit 5 a read-only disk, bit 6 serve through `process` (the
//!   worker's `drain_queue` loop) instead of popping and serving chains one by one, bit 7 ring
//!   addresses follow (three u16: descriptor table, available ring, used ring) instead of
//!   0x0000, 0x1000 and 0x2000;
//! - a descriptor count byte, then each descriptor (index 0, 1, ...): a flags byte, then if
//!   its bit 7 is set the raw 16 bytes, else a u16 address, a u16 length and a next byte (the
//!   flags' bits 0-2 are NEXT, WRITE and INDIRECT);
//! - a head count byte, the heads (a byte each) and a u16 available index (the count if
//!   missing);
//! - then guest memory writes until the end: u16 address, length byte, bytes (request
//!   headers and data).
//!
//! Checks: no panic, hang or stray access, whatever the chains; a chain served as OK wrote
//! its status byte.
//!
//! Known bug (docs/fuzzing.md): `drain_queue` loops forever when the available index is more
//! than the queue size ahead of the device (`fuzz/regressions/virtio_blk_request/`). Until it
//! is fixed, bit 6 (`process`) is honoured only with `VMM_FUZZ_KNOWN_BUGS=1`; otherwise
//! such inputs are served chain by chain like the others.

use std::sync::Arc;

use devices::virtio::fuzzing::BlockRequests;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{Input, descriptor, disk, known_bugs_reachable};

/// Guest RAM: 64 KiB at 0.
pub const MEMORY_SIZE: usize = 0x1_0000;

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(config) = input.u8() else { return };
    let size = 1u16 << ((config & 0xF) % 9);
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap();
    let (desc, avail, used) = if config & 0x80 != 0 {
        let (Some(desc), Some(avail), Some(used)) = (input.u16(), input.u16(), input.u16()) else {
            return;
        };
        (u64::from(desc), u64::from(avail), u64::from(used))
    } else {
        (0x0000, 0x1000, 0x2000)
    };

    let Some(count) = input.u8() else { return };
    for index in 0..u64::from(count) {
        let Some(flags) = input.u8() else { break };
        let raw: [u8; 16] = if flags & 0x80 != 0 {
            let Some(bytes) = input.bytes(16) else { break };
            bytes.try_into().unwrap()
        } else {
            let (Some(addr), Some(len), Some(next)) = (input.u16(), input.u16(), input.u8()) else {
                break;
            };
            descriptor(
                u64::from(addr),
                u32::from(len),
                u16::from(flags & 7),
                u16::from(next),
            )
        };
        let _ = memory.write_slice(&raw, GuestAddress(desc + 16 * index));
    }

    let heads = input.u8().unwrap_or(0);
    for slot in 0..u64::from(heads) {
        let Some(head) = input.u8() else { break };
        let at = avail + 4 + 2 * (slot % u64::from(size));
        let _ = memory.write_obj(u16::from(head), GuestAddress(at));
    }
    let idx = input.u16().unwrap_or(u16::from(heads));
    let _ = memory.write_obj(idx, GuestAddress(avail + 2));

    while let (Some(addr), Some(len)) = (input.u16(), input.u8()) {
        let bytes = input.up_to(usize::from(len));
        let _ = memory.write_slice(bytes, GuestAddress(u64::from(addr)));
    }

    let mut queue = Queue::new(256).unwrap();
    queue.set_size(size);
    let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
    let (low, high) = split(desc);
    queue.set_desc_table_address(low, high);
    let (low, high) = split(avail);
    queue.set_avail_ring_address(low, high);
    let (low, high) = split(used);
    queue.set_used_ring_address(low, high);
    queue.set_ready(true);
    // What the transport checks before it activates the device.
    if !queue.is_valid(&memory) {
        return;
    }
    queue.set_event_idx(config & 0x10 != 0);

    let disk = disk(config & 0x20 != 0);
    disk.restore();
    let mut requests = BlockRequests::new(Arc::clone(&disk.image), *b"fuzz-serial-12345678");
    if config & 0x40 != 0 && known_bugs_reachable() {
        requests.process(&mut queue, &memory);
        return;
    }
    // At most one pass over the ring: a driver can make no more than `size` chains available.
    for _ in 0..size {
        let Some(mut chain) = queue.pop_descriptor_chain(&memory) else {
            break;
        };
        let head = chain.head_index();
        let (written, ok) = requests.serve(&mut chain, &memory);
        if ok {
            assert!(written >= 1, "an OK request must count its status byte");
        }
        if queue.add_used(&memory, head, written).is_err() {
            break;
        }
    }
}
