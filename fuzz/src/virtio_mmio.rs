//! `devices::virtio::MmioTransport` around a `RngDevice` or a `BlockDevice` (on a small image,
//! writable or read-only), over 64 KiB of guest memory at 0, driven by a program of register
//! accesses and guest memory writes, so that queues may point at rings the fuzzer wrote.
//!
//! Input: a first byte (bit 0: block rather than rng; bit 1: the disk is read-only), then
//! operations, each an opcode byte and its operands:
//! - `0` register write: register selector, u32 value.
//! - `1` register read: register selector, size selector ([`crate::access_size`]).
//! - `2` guest memory write: u16 address, length byte, that many bytes.
//! - `3` bring-up, as Linux's virtio_mmio driver does it: a flags byte (bit 0: accept the
//!   offered features instead of a u64 that follows; bit 1: stop before DRIVER_OK), u16 queue
//!   size, u16 addresses of the descriptor table, the available and the used ring.
//! - `4` a descriptor at the last bring-up's table: index byte, u16 address, u16 length,
//!   flags byte (NEXT, WRITE, INDIRECT), next byte.
//! - `5` make a head index byte available on the last bring-up's ring (and bump its idx).
//! - `6` QueueNotify with a queue index byte.
//! - `7` reset (status 0).
//! - `8` a thread yield.
//!
//! A register selector below 0xC0 picks a virtio-mmio register; otherwise a u16 offset
//! follows (the configuration space is at 0x100). Activation starts a worker thread, so an
//! input has at most [`MAX_OPS`] operations, and it always ends with a reset, which stops and
//! joins the worker: no thread outlives its input.
//!
//! Known bug (docs/fuzzing.md): the worker's `drain_queue` loops forever, and the reset that
//! joins it with it, when the available index gets more than the queue size ahead of the
//! device (`fuzz/regressions/virtio_mmio/`). Until it is fixed, the harness plays a driver
//! that keeps its available ring sane, unless `VMM_FUZZ_KNOWN_BUGS=1`:
//! - only bring-up sets the queue up (register writes to QueueNum, QueueReady and the ring
//!   addresses are dropped), with a power-of-two size and disjoint, aligned rings, the
//!   available ring not at address 0, and it zeroes the available ring as a driver's
//!   allocation does;
//! - the available ring (flags, idx, heads, used_event) is the harness's: memory writes skip
//!   it, and it never makes more than the queue size available ahead of the device, with
//!   heads below the size;
//! - before the device may run (DRIVER_OK, a notification, a reset), descriptors whose
//!   device-writable buffer overlaps the available ring, the descriptor table or an indirect
//!   table lose their WRITE flag (and an indirect table that overlaps them its INDIRECT flag);
//! - after a notification or an activation it waits for the worker to be idle (blocked in
//!   `epoll_wait` with its notification consumed), so that memory writes never race it.
//!
//! Everything else (features, status order, config space, descriptor contents, chains,
//! loops, buffers anywhere) is the fuzzer's.

use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use devices::bus::MmioDevice;
use devices::virtio::{BlockDevice, MmioTransport, RngDevice, VirtioDevice};

use crate::{Input, access_size, descriptor, disk, known_bugs_reachable};

/// Operations per input.
pub const MAX_OPS: usize = 256;
/// Guest RAM: 64 KiB at 0.
pub const MEMORY_SIZE: usize = 0x1_0000;

const REGISTERS: [u32; 24] = [
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_CONFIG,
];

/// The queue registers only bring-up writes while the guards are on.
const QUEUE_SETUP: [u32; 8] = [
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
];

const NEGOTIATED: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

/// Queue 0 as the last bring-up set it up.
#[derive(Clone, Copy, Default)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Ring {
    fn desc_len(self) -> u64 {
        16 * u64::from(self.size)
    }

    /// flags, idx, the heads and used_event.
    fn avail_len(self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    fn used_len(self) -> u64 {
        6 + 8 * u64::from(self.size)
    }
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// The guest: the transport, its memory and, with the guards on, what the driver knows.
struct Guest {
    transport: MmioTransport,
    memory: GuestMemoryMmap,
    guarded: bool,
    /// The queue as bring-up set it up, if it did since the last reset.
    ring: Option<Ring>,
    /// The available index the harness published, and the part of it the device consumed.
    avail_idx: u16,
    consumed: u16,
    /// Unguarded: where op 4 and op 5 write, as the last bring-up asked.
    raw_ring: Ring,
}

impl Guest {
    fn write_reg(&mut self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    /// A memory write on the fuzzer's behalf: with the guards on, the available ring is kept.
    fn write_memory(&self, addr: u64, bytes: &[u8]) {
        match self.ring.filter(|_| self.guarded) {
            Some(ring) => {
                for (offset, byte) in bytes.iter().enumerate() {
                    let at = addr + offset as u64;
                    if !overlaps(at, 1, ring.avail, ring.avail_len()) {
                        let _ = self.memory.write_obj(*byte, GuestAddress(at));
                    }
                }
            }
            None => {
                let _ = self.memory.write_slice(bytes, GuestAddress(addr));
            }
        }
    }

    /// A register write: the ones that may run the device go through [`Guest::run_device`].
    fn register_write(&mut self, offset: u64, value: u32) {
        let reg = u32::try_from(offset).unwrap_or(u32::MAX);
        if !self.guarded || !offset.is_multiple_of(4) {
            self.transport.write(offset, &value.to_le_bytes());
            return;
        }
        match reg {
            _ if QUEUE_SETUP.contains(&reg) => {}
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                self.run_device(value == 0, |guest| guest.write_reg(reg, value))
            }
            VIRTIO_MMIO_STATUS => self.run_device(false, |guest| guest.write_reg(reg, value)),
            _ => self.transport.write(offset, &value.to_le_bytes()),
        }
    }

    /// Does `write`, which may activate, notify (`notifies` queue 0) or reset the device; with
    /// the guards on, makes the descriptors safe first and waits for the worker to be idle
    /// after.
    fn run_device(&mut self, notifies: bool, write: impl FnOnce(&mut Self)) {
        if !self.guarded {
            write(self);
            return;
        }
        self.sanitize_descriptors();
        let was_running = self.transport.status() & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        write(self);
        let status = self.transport.status();
        if status == 0 {
            self.ring = None;
            (self.avail_idx, self.consumed) = (0, 0);
            return;
        }
        // DRIVER_OK without NEEDS_RESET: the device activated and its worker runs.
        let running =
            status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_NEEDS_RESET == 0;
        let woken = running && (!was_running || notifies);
        if running && wait_worker_idle(&self.transport.queue_events()[0]) && woken {
            // An idle worker that was woken served everything that was available.
            self.consumed = self.avail_idx;
        }
    }

    /// With the guards on: no device-writable buffer over the available ring, the descriptor
    /// table or an indirect table, and no indirect table over the rings or outside memory.
    fn sanitize_descriptors(&self) {
        let Some(ring) = self.ring else { return };
        let read = |at: u64| -> Option<(u64, u64, u16)> {
            let raw: [u8; 16] = self.memory.read_obj(GuestAddress(at)).ok()?;
            let addr = u64::from_le_bytes(raw[..8].try_into().unwrap());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            Some((addr, u64::from(len), flags))
        };
        let set_flags = |at: u64, flags: u16| {
            let _ = self.memory.write_obj(flags, GuestAddress(at + 12));
        };
        let write_flag = VRING_DESC_F_WRITE as u16;
        let indirect_flag = VRING_DESC_F_INDIRECT as u16;
        let rings = [
            (ring.avail, ring.avail_len()),
            (ring.desc, ring.desc_len()),
            (ring.used, ring.used_len()),
        ];
        let table_at = |index: u64| ring.desc + 16 * index;

        // Indirect tables: inside memory and clear of the rings, or not indirect.
        let mut tables = Vec::new();
        for index in 0..u64::from(ring.size) {
            let Some((addr, len, flags)) = read(table_at(index)) else {
                continue;
            };
            if flags & indirect_flag == 0 {
                continue;
            }
            let inside = addr.saturating_add(len) <= MEMORY_SIZE as u64;
            if inside && !rings.iter().any(|&(at, n)| overlaps(addr, len, at, n)) {
                tables.push((addr, len));
            } else {
                set_flags(table_at(index), flags & !indirect_flag);
            }
        }

        // Device-writable buffers: clear of the available ring and of every table.
        let mut protected = vec![rings[0], rings[1]];
        protected.extend(&tables);
        let descriptors = (0..u64::from(ring.size)).map(table_at).chain(
            tables
                .iter()
                .flat_map(|&(table, len)| (0..len / 16).map(move |entry| table + 16 * entry)),
        );
        for at in descriptors {
            let Some((addr, len, flags)) = read(at) else {
                continue;
            };
            if flags & write_flag != 0 && protected.iter().any(|&(p, n)| overlaps(addr, len, p, n))
            {
                set_flags(at, flags & !write_flag);
            }
        }
    }

    fn bring_up(&mut self, features: Option<u64>, mut ring: Ring, driver_ok: bool) {
        if self.guarded {
            ring.size = 1 << (ring.size % 9);
            ring.desc &= !15;
            ring.avail &= !1;
            ring.used &= !3;
            let disjoint = !overlaps(ring.desc, ring.desc_len(), ring.avail, ring.avail_len())
                && !overlaps(ring.desc, ring.desc_len(), ring.used, ring.used_len())
                && !overlaps(ring.avail, ring.avail_len(), ring.used, ring.used_len());
            // virtio-queue takes an available ring at guest address 0 for a queue that was
            // never set up and pops nothing from it (while `is_valid` accepts it), which
            // is the same endless loop; the VMM's RAM starts at 1 GiB, so only this harness's
            // memory at 0 has such a ring.
            if !disjoint || ring.avail == 0 {
                return;
            }
        }
        self.raw_ring = ring;
        self.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write_reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        let features = features.unwrap_or_else(|| {
            (0..2).fold(0, |features, select| {
                self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, select);
                let word = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
                features | u64::from(word) << (32 * select)
            })
        });
        for select in 0..2 {
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, select);
            self.write_reg(
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * select)) as u32,
            );
        }
        self.write_reg(VIRTIO_MMIO_STATUS, NEGOTIATED);
        if self.guarded {
            if self.read_reg(VIRTIO_MMIO_STATUS) != NEGOTIATED {
                // The queue registers would be ignored: nothing changes.
                return;
            }
            // A driver's rings start zeroed.
            let zeros = vec![0u8; ring.avail_len() as usize];
            let _ = self.memory.write_slice(&zeros, GuestAddress(ring.avail));
            self.ring = Some(ring);
            (self.avail_idx, self.consumed) = (0, 0);
        }
        self.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
        self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(ring.size));
        for (low, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, ring.used),
        ] {
            self.write_reg(low, addr as u32);
            self.write_reg(low + 4, (addr >> 32) as u32);
        }
        self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        if driver_ok {
            self.run_device(false, |guest| {
                guest.write_reg(VIRTIO_MMIO_STATUS, NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK)
            });
        }
    }

    /// Makes `head` available.
    fn push(&mut self, head: u8) {
        let Some(ring) = self.ring.filter(|_| self.guarded) else {
            // Unguarded: wherever the last bring-up asked, however far ahead.
            let ring = self.raw_ring;
            let slot =
                ring.avail + 4 + 2 * (u64::from(self.avail_idx) % u64::from(ring.size.max(1)));
            let _ = self.memory.write_obj(u16::from(head), GuestAddress(slot));
            self.avail_idx = self.avail_idx.wrapping_add(1);
            let _ = self
                .memory
                .write_obj(self.avail_idx, GuestAddress(ring.avail + 2));
            return;
        };
        if self.avail_idx.wrapping_sub(self.consumed) >= ring.size {
            return;
        }
        let slot = ring.avail + 4 + 2 * (u64::from(self.avail_idx) % u64::from(ring.size));
        let head = u16::from(head) % ring.size;
        let _ = self.memory.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = self
            .memory
            .write_obj(self.avail_idx, GuestAddress(ring.avail + 2));
    }
}

/// Waits until the device's worker thread has consumed the notification on `event` and is
/// blocked in `epoll_wait`; returns whether it is idle. A worker that was just spawned may not
/// carry its name yet: it is waited for too.
fn wait_worker_idle(event: &EventFd) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if worker_idle() == Some(true) && !readable(event) {
            return true;
        }
        if Instant::now() > deadline {
            // Not idle after 5 s: let libFuzzer's timeout tell.
            return false;
        }
        std::thread::yield_now();
    }
}

/// `None` without a worker thread (named `virtio-*`), else whether it sleeps in epoll_wait.
fn worker_idle() -> Option<bool> {
    let mut idle = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with("virtio-") {
            continue;
        }
        let Ok(syscall) = std::fs::read_to_string(path.join("syscall")) else {
            continue;
        };
        // epoll_wait, epoll_pwait, epoll_pwait2 on x86-64 and aarch64 (22: epoll_pwait).
        let number = syscall.split(' ').next().unwrap_or("");
        let sleeping = matches!(number, "232" | "281" | "441" | "22");
        idle = Some(idle.unwrap_or(true) && sleeping);
    }
    idle
}

fn readable(event: &EventFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut pollfd = libc::pollfd {
        fd: event.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd that lives across the call, with no timeout.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready > 0 && pollfd.revents & libc::POLLIN != 0
}

fn register(input: &mut Input) -> Option<u64> {
    let selector = input.u8()?;
    if selector < 0xC0 {
        Some(u64::from(
            REGISTERS[usize::from(selector) % REGISTERS.len()],
        ))
    } else {
        input.u16().map(u64::from)
    }
}

/// Runs the program in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(config) = input.u8() else { return };
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap();
    let device: Box<dyn VirtioDevice> = if config & 1 == 0 {
        Box::new(RngDevice::new())
    } else {
        let disk = disk(config & 2 != 0);
        disk.restore();
        Box::new(BlockDevice::new(disk.image.clone(), "fuzz"))
    };
    let mut guest = Guest {
        transport: MmioTransport::new(device, memory.clone()).unwrap(),
        memory,
        guarded: !known_bugs_reachable(),
        ring: None,
        avail_idx: 0,
        consumed: 0,
        raw_ring: Ring::default(),
    };
    for _ in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        match op % 9 {
            0 => {
                let (Some(offset), Some(value)) = (register(&mut input), input.u32()) else {
                    break;
                };
                guest.register_write(offset, value);
            }
            1 => {
                let (Some(offset), Some(size)) = (register(&mut input), input.u8()) else {
                    break;
                };
                let mut data = vec![0xA5; access_size(size)];
                guest.transport.read(offset, &mut data);
            }
            2 => {
                let (Some(addr), Some(len)) = (input.u16(), input.u8()) else {
                    break;
                };
                let bytes = input.up_to(usize::from(len));
                guest.write_memory(u64::from(addr), bytes);
            }
            3 => {
                let Some(flags) = input.u8() else { break };
                let features = if flags & 1 != 0 {
                    None
                } else {
                    let Some(features) = input.u64() else { break };
                    Some(features)
                };
                let (Some(size), Some(desc), Some(avail), Some(used)) =
                    (input.u16(), input.u16(), input.u16(), input.u16())
                else {
                    break;
                };
                let ring = Ring {
                    size,
                    desc: u64::from(desc),
                    avail: u64::from(avail),
                    used: u64::from(used),
                };
                guest.bring_up(features, ring, flags & 2 == 0);
            }
            4 => {
                let (Some(index), Some(addr), Some(len), Some(flags), Some(next)) =
                    (input.u8(), input.u16(), input.u16(), input.u8(), input.u8())
                else {
                    break;
                };
                let raw = descriptor(
                    u64::from(addr),
                    u32::from(len),
                    u16::from(flags & 7),
                    u16::from(next),
                );
                let table = guest.ring.map_or(guest.raw_ring.desc, |ring| ring.desc);
                guest.write_memory(table + 16 * u64::from(index), &raw);
            }
            5 => {
                let Some(head) = input.u8() else { break };
                guest.push(head);
            }
            6 => {
                let Some(queue) = input.u8() else { break };
                guest.register_write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), u32::from(queue));
            }
            7 => guest.register_write(u64::from(VIRTIO_MMIO_STATUS), 0),
            _ => std::thread::yield_now(),
        }
    }
    // Stops and joins the worker, completing every chain made available.
    guest.register_write(u64::from(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(guest.read_reg(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(guest.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}
