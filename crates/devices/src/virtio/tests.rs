//! Guest-controlled descriptor chains and the transport's state machine, over mock guest
//! memory: every malformed chain gets an error status or a used entry, never a panic, a hang
//! or a host-memory access.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::tempfile::TempFile;

use super::block::{BlockHandler, SECTOR_SIZE};
use super::*;
use crate::bus::MmioDevice;

const MEMORY_SIZE: usize = 0x40_0000;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x20_0000;
const OUT_OF_RAM: u64 = 0x1000_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// An image of `sectors` sectors whose byte i is `i % 251`.
fn image(sectors: u64) -> TempFile {
    let file = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    file.as_file().write_all(&bytes).unwrap();
    file
}

fn contents(file: &TempFile) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut handle = file.as_file();
    handle.seek(SeekFrom::Start(0)).unwrap();
    handle.read_to_end(&mut bytes).unwrap();
    bytes
}

fn handler(file: &TempFile, readonly: bool) -> BlockHandler {
    BlockHandler {
        disk: Arc::new(DiskImage::open(file.as_path(), readonly).unwrap()),
        serial: *b"disk-serial-12345678",
        counters: Arc::default(),
    }
}

fn write_header(memory: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    memory.write_slice(&header, GuestAddress(HEADER)).unwrap();
    memory.write_obj(0xFFu8, GuestAddress(STATUS)).unwrap();
}

/// Serves the chain `descs` (NEXT flags set for all but the last); returns (used length,
/// success, status byte).
fn serve(
    handler: &BlockHandler,
    memory: &GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> (u32, bool, u8) {
    let queue = MockSplitQueue::new(memory, 16);
    let mut chain = queue.build_desc_chain(descs).unwrap();
    let (written, ok) = handler.serve(&mut chain, memory);
    (written, ok, memory.read_obj(GuestAddress(STATUS)).unwrap())
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn writes_and_reads_sectors_across_several_buffers() {
    let file = image(16);
    let handler = handler(&file, false);
    let memory = memory();
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    memory.write_slice(&data, GuestAddress(DATA)).unwrap();
    write_header(&memory, VIRTIO_BLK_T_OUT, 2);
    let result = serve(
        &handler,
        &memory,
        &[
            desc(HEADER, 16, 0),
            desc(DATA, 512, 0),
            desc(DATA + 512, 512, 0),
            desc(STATUS, 1, W),
        ],
    );
    assert_eq!(result, (1, true, OK));
    let on_disk = contents(&file);
    assert_eq!(&on_disk[1024..2048], &data[..]);
    assert_eq!(
        on_disk[1023],
        (1023 % 251) as u8,
        "the sector before is untouched"
    );
    assert_eq!(
        on_disk[2048],
        (2048 % 251) as u8,
        "the sector after is untouched"
    );

    write_header(&memory, VIRTIO_BLK_T_IN, 2);
    let result = serve(
        &handler,
        &memory,
        &[
            desc(HEADER, 16, 0),
            desc(DATA + 0x1000, 1024, W),
            desc(STATUS, 1, W),
        ],
    );
    assert_eq!(result, (1025, true, OK));
    let mut back = vec![0u8; 1024];
    memory
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, data);
    assert_eq!(handler.counters.snapshot().requests, 2);
}

#[test]
fn get_id_flush_and_unknown_requests() {
    let file = image(4);
    let handler = handler(&file, false);
    let memory = memory();
    write_header(&memory, VIRTIO_BLK_T_GET_ID, 0);
    let result = serve(
        &handler,
        &memory,
        &[desc(HEADER, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (21, true, OK));
    let mut id = [0u8; 20];
    memory.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"disk-serial-12345678");

    write_header(&memory, VIRTIO_BLK_T_FLUSH, 0);
    let result = serve(
        &handler,
        &memory,
        &[desc(HEADER, 16, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (1, true, OK));

    write_header(&memory, 0x4242, 0);
    let result = serve(
        &handler,
        &memory,
        &[desc(HEADER, 16, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (1, false, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn requests_past_the_end_and_writes_to_a_readonly_disk_get_ioerr() {
    let file = image(4);
    let before = contents(&file);
    let memory = memory();
    let writable = handler(&file, false);
    // Sector 3 is the last: two sectors from it run past the end.
    write_header(&memory, VIRTIO_BLK_T_OUT, 3);
    let result = serve(
        &writable,
        &memory,
        &[desc(HEADER, 16, 0), desc(DATA, 1024, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (1, false, IOERR));
    write_header(&memory, VIRTIO_BLK_T_IN, u64::MAX / 2);
    let result = serve(
        &writable,
        &memory,
        &[desc(HEADER, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (1, false, IOERR));
    drop(writable);

    let readonly = handler(&file, true);
    write_header(&memory, VIRTIO_BLK_T_OUT, 0);
    let result = serve(
        &readonly,
        &memory,
        &[desc(HEADER, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (1, false, IOERR));
    write_header(&memory, VIRTIO_BLK_T_IN, 0);
    let result = serve(
        &readonly,
        &memory,
        &[desc(HEADER, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
    );
    assert_eq!(result, (513, true, OK));
    assert_eq!(contents(&file), before);
    assert_eq!(readonly.counters.snapshot().errors, 1);
}

#[test]
fn malformed_chains_get_ioerr_and_never_touch_the_image() {
    let file = image(8);
    let before = contents(&file);
    let handler = handler(&file, false);
    let memory = memory();
    // (what, request type, chain, expected (used length, status byte))
    type Case = (&'static str, u32, Vec<RawDescriptor>, (u32, u8));
    let cases: Vec<Case> = vec![
        (
            "status only",
            VIRTIO_BLK_T_IN,
            vec![desc(STATUS, 1, W)],
            (1, IOERR),
        ),
        (
            "write-only header",
            VIRTIO_BLK_T_OUT,
            vec![desc(HEADER, 16, W), desc(DATA, 512, 0), desc(STATUS, 1, W)],
            (1, IOERR),
        ),
        (
            "short header",
            VIRTIO_BLK_T_OUT,
            vec![desc(HEADER, 8, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
            (1, IOERR),
        ),
        (
            "read-only status",
            VIRTIO_BLK_T_OUT,
            vec![desc(HEADER, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, 0)],
            (0, 0xFF),
        ),
        (
            "write with a device-writable buffer",
            VIRTIO_BLK_T_OUT,
            vec![desc(HEADER, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
            (1, IOERR),
        ),
        (
            "read into a device-readable buffer",
            VIRTIO_BLK_T_IN,
            vec![desc(HEADER, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
            (1, IOERR),
        ),
        (
            "partial sector",
            VIRTIO_BLK_T_OUT,
            vec![desc(HEADER, 16, 0), desc(DATA, 100, 0), desc(STATUS, 1, W)],
            (1, IOERR),
        ),
        (
            "buffer outside guest RAM",
            VIRTIO_BLK_T_OUT,
            vec![
                desc(HEADER, 16, 0),
                desc(OUT_OF_RAM, 512, 0),
                desc(STATUS, 1, W),
            ],
            (1, IOERR),
        ),
        (
            "buffer running off the end of RAM",
            VIRTIO_BLK_T_IN,
            vec![
                desc(HEADER, 16, 0),
                desc(MEMORY_SIZE as u64 - 512, 1024, W),
                desc(STATUS, 1, W),
            ],
            (1, IOERR),
        ),
        (
            "header outside guest RAM",
            VIRTIO_BLK_T_OUT,
            vec![
                desc(OUT_OF_RAM, 16, 0),
                desc(DATA, 512, 0),
                desc(STATUS, 1, W),
            ],
            (1, IOERR),
        ),
    ];
    for (name, kind, descs, expected) in cases {
        write_header(&memory, kind, 0);
        let (written, ok, status) = serve(&handler, &memory, &descs);
        assert_eq!((written, status), expected, "{name}");
        assert!(!ok, "{name}");
    }
    assert_eq!(contents(&file), before);
}

#[test]
fn a_looping_chain_ends_with_a_used_entry() {
    let file = image(8);
    let before = contents(&file);
    let handler = handler(&file, false);
    let memory = memory();
    write_header(&memory, VIRTIO_BLK_T_OUT, 0);
    let queue = MockSplitQueue::new(&memory, 16);
    let next = VRING_DESC_F_NEXT as u16;
    // 0 -> 1 -> 2 -> 1 -> 2 ...
    let descs = [
        RawDescriptor::from(Descriptor::new(HEADER, 16, next, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 512, next, 2)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, next | W, 1)),
    ];
    let mut chain = queue.build_multiple_desc_chains(&descs).unwrap();
    let started = Instant::now();
    let (written, ok) = handler.serve(&mut chain, &memory);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deadlock bound"
    );
    assert_eq!((written, ok), (0, false));
    assert_eq!(contents(&file), before);
}

#[test]
fn disk_images_are_checked_and_locked() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let err = DiskImage::open(dir.as_path(), false).unwrap_err();
    assert!(matches!(err, DiskImageError::NotAFile(_)), "{err}");
    let missing = dir.as_path().join("missing.img");
    assert!(matches!(
        DiskImage::open(&missing, true).unwrap_err(),
        DiskImageError::Open { .. }
    ));
    let odd = TempFile::new().unwrap();
    odd.as_file().write_all(&[0u8; 1000]).unwrap();
    let err = DiskImage::open(odd.as_path(), true).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Disk image {} is 1000 bytes, not a multiple of 512",
            odd.as_path().display()
        )
    );

    let file = image(4);
    let first = DiskImage::open(file.as_path(), false).unwrap();
    assert_eq!(first.size(), 2048);
    assert!(matches!(
        DiskImage::open(file.as_path(), false).unwrap_err(),
        DiskImageError::Locked(_)
    ));
    assert!(matches!(
        DiskImage::open(file.as_path(), true).unwrap_err(),
        DiskImageError::Locked(_)
    ));
    drop(first);
    let shared = DiskImage::open(file.as_path(), true).unwrap();
    let also_shared = DiskImage::open(file.as_path(), true).unwrap();
    assert!(matches!(
        DiskImage::open(file.as_path(), false).unwrap_err(),
        DiskImageError::Locked(_)
    ));
    drop((shared, also_shared));
}

// --- the transport ---

/// Reads the transport register at `offset` as the guest does.
pub(crate) fn read_reg(transport: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    transport.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

/// Writes the transport register at `offset` as the guest does.
pub(crate) fn write_reg(transport: &mut MmioTransport, offset: u32, value: u32) {
    transport.write(u64::from(offset), &value.to_le_bytes());
}

/// Takes the device to FEATURES_OK with `features`, as Linux's virtio_mmio driver does.
pub(crate) fn negotiate(transport: &mut MmioTransport, features: u64) {
    write_reg(transport, VIRTIO_MMIO_STATUS, 0);
    write_reg(transport, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        transport,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    for select in 0..2 {
        write_reg(transport, VIRTIO_MMIO_DRIVER_FEATURES_SEL, select);
        write_reg(
            transport,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * select)) as u32,
        );
    }
    write_reg(transport, VIRTIO_MMIO_STATUS, NEGOTIATED);
    assert_eq!(read_reg(transport, VIRTIO_MMIO_STATUS), NEGOTIATED);
}

/// Gives queue `index` `size` entries and its descriptor table, available and used rings at
/// `rings`, and makes it ready.
pub(crate) fn set_up_queue(transport: &mut MmioTransport, index: u32, size: u32, rings: [u64; 3]) {
    write_reg(transport, VIRTIO_MMIO_QUEUE_SEL, index);
    write_reg(transport, VIRTIO_MMIO_QUEUE_NUM, size);
    let lows = [
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_USED_LOW,
    ];
    for (low, addr) in lows.into_iter().zip(rings) {
        write_reg(transport, low, addr as u32);
        write_reg(transport, low + 4, (addr >> 32) as u32);
    }
    write_reg(transport, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// Negotiates like Linux's virtio_mmio driver and sets queue 0 up on `queue`'s rings.
fn bring_up(transport: &mut MmioTransport, queue: &MockSplitQueue<GuestMemoryMmap>, features: u64) {
    negotiate(transport, features);
    write_reg(transport, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read_reg(transport, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    let rings = [
        queue.desc_table_addr(),
        queue.avail_addr(),
        queue.used_addr(),
    ];
    set_up_queue(transport, 0, 16, rings.map(|addr| addr.0));
    write_reg(
        transport,
        VIRTIO_MMIO_STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

fn wait_interrupt(transport: &MmioTransport) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while transport.interrupt().event().read().is_err() {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn registers_identify_a_modern_device() {
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory()).unwrap();
    assert_eq!(
        read_reg(&mut transport, VIRTIO_MMIO_MAGIC_VALUE),
        0x7472_6976
    );
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_DEVICE_ID), 4);
    write_reg(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read_reg(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "VERSION_1"
    );
    // Unaligned or narrow register accesses read zero and change nothing.
    let mut narrow = [0xAAu8; 2];
    transport.read(0, &mut narrow);
    assert_eq!(narrow, [0, 0]);
    transport.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn features_ok_needs_version_1_and_nothing_unoffered() {
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory()).unwrap();
    let base = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    for features in [0u64, VIRTIO_F_VERSION_1 | 1 << 5] {
        write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
        write_reg(
            &mut transport,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
        );
        write_reg(&mut transport, VIRTIO_MMIO_STATUS, base);
        for select in 0..2 {
            write_reg(&mut transport, VIRTIO_MMIO_DRIVER_FEATURES_SEL, select);
            write_reg(
                &mut transport,
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * select)) as u32,
            );
        }
        write_reg(
            &mut transport,
            VIRTIO_MMIO_STATUS,
            base | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_eq!(
            read_reg(&mut transport, VIRTIO_MMIO_STATUS),
            base,
            "{features:#x}"
        );
    }
    // Skipping a step is ignored too.
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
    write_reg(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn rng_serves_a_queue_and_reset_stops_it_until_renegotiated() {
    let memory = memory();
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory.clone()).unwrap();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1);
    assert_eq!(transport.device().counters().snapshot().activations, 1);

    queue.add_desc_chains(&[desc(DATA, 64, W)], 0).unwrap();
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    wait_interrupt(&transport);
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    write_reg(&mut transport, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(queue.used().idx().load(), 1);
    assert_eq!(queue.used().ring().ref_at(0).unwrap().load().len(), 64);
    let mut random = [0u8; 64];
    memory.read_slice(&mut random, GuestAddress(DATA)).unwrap();
    assert!(random.iter().any(|&byte| byte != 0));

    // Reset (what Linux's freeze does on suspend): the queue is gone and a notification
    // serves nothing.
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read_reg(&mut transport, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(transport.device().counters().snapshot().resets, 1);
    queue.add_desc_chains(&[desc(DATA, 64, W)], 1).unwrap();
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        queue.used().idx().load(),
        1,
        "a reset device serves nothing"
    );

    // Restore: the driver negotiates again on fresh rings and the device serves them.
    let memory2 = memory.clone();
    let fresh = MockSplitQueue::create(&memory2, GuestAddress(0x8000), 16);
    bring_up(&mut transport, &fresh, VIRTIO_F_VERSION_1);
    fresh.add_desc_chains(&[desc(DATA, 32, W)], 0).unwrap();
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    wait_interrupt(&transport);
    assert_eq!(fresh.used().idx().load(), 1);
    let stats = transport.device().counters().snapshot();
    assert_eq!((stats.activations, stats.resets, stats.requests), (2, 1, 2));
}

#[test]
fn block_device_serves_through_the_transport_and_reports_its_config() {
    let file = image(8);
    let memory = memory();
    let disk = Arc::new(DiskImage::open(file.as_path(), false).unwrap());
    let mut transport =
        MmioTransport::new(Box::new(BlockDevice::new(disk, "data")), memory.clone()).unwrap();
    let mut capacity = [0u8; 8];
    transport.read(u64::from(VIRTIO_MMIO_CONFIG), &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 8);
    let features = u64::from(read_reg(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES));
    assert_ne!(features & 1u64 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(features & 1 << VIRTIO_BLK_F_RO, 0);

    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    bring_up(
        &mut transport,
        &queue,
        VIRTIO_F_VERSION_1 | 1u64 << VIRTIO_BLK_F_FLUSH,
    );
    memory
        .write_slice(&[0x5Au8; 512], GuestAddress(DATA))
        .unwrap();
    write_header(&memory, VIRTIO_BLK_T_OUT, 1);
    let next = VRING_DESC_F_NEXT as u16;
    queue
        .add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(HEADER, 16, next, 1)),
                RawDescriptor::from(Descriptor::new(DATA, 512, next, 2)),
                RawDescriptor::from(Descriptor::new(STATUS, 1, W, 0)),
            ],
            0,
        )
        .unwrap();
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    wait_interrupt(&transport);
    assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    assert_eq!(&contents(&file)[512..1024], &[0x5A; 512]);
    let stats = transport.device().counters().snapshot();
    assert_eq!(
        stats.features,
        VIRTIO_F_VERSION_1 | 1u64 << VIRTIO_BLK_F_FLUSH
    );
}

/// A handler that takes a while with each notification and records when it finished.
struct SlowHandler {
    started: Arc<AtomicBool>,
    finished: Arc<Mutex<bool>>,
}

impl QueueHandler for SlowHandler {
    fn process(&mut self, _: usize, _: &mut WorkerIo<'_>) -> bool {
        self.started.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        *self.finished.lock().unwrap() = true;
        false
    }
}

#[test]
fn stopping_a_worker_waits_for_the_request_in_flight() {
    let memory = memory();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(Mutex::new(false));
    let worker = QueueWorker::start(
        "test-worker".into(),
        memory.clone(),
        vec![ActiveQueue {
            queue: queue.create_queue::<Queue>().unwrap(),
            event: event.try_clone().unwrap(),
        }],
        Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        SlowHandler {
            started: Arc::clone(&started),
            finished: Arc::clone(&finished),
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the worker never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    worker.stop();
    assert!(
        *finished.lock().unwrap(),
        "stop returned while a request was being served"
    );
}

#[test]
fn stopping_a_worker_first_completes_chains_already_available_without_interrupting() {
    let memory = memory();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let counters: Arc<DeviceCounters> = Arc::default();
    let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let worker = QueueWorker::start(
        "test-worker".into(),
        memory.clone(),
        vec![ActiveQueue {
            queue: queue.create_queue::<Queue>().unwrap(),
            event: EventFd::new(EFD_NONBLOCK).unwrap(),
        }],
        Arc::clone(&interrupt),
        rng::RngHandler {
            counters: Arc::clone(&counters),
        },
    )
    .unwrap();
    // Let the worker wait for notifications, then make a chain available without one: the
    // driver froze right after publishing it.
    std::thread::sleep(Duration::from_millis(100));
    queue.add_desc_chains(&[desc(DATA, 16, W)], 0).unwrap();
    worker.stop();
    assert_eq!(queue.used().idx().load(), 1);
    assert_eq!(counters.snapshot().requests, 1);
    // The driver is resetting the device: it reclaims its buffers itself, and an interrupt
    // now would make it look for them in a used ring it is tearing down.
    assert!(
        interrupt.event().read().is_err(),
        "interrupted during the reset"
    );
    assert_eq!(interrupt.status(), 0);
}

#[test]
fn a_worker_runs_its_start_hook_first_and_a_failing_hook_keeps_it_from_serving() {
    let memory = memory();
    let start = |hook: ThreadStartHook| {
        let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
        queue.add_desc_chains(&[desc(DATA, 16, W)], 0).unwrap();
        let counters: Arc<DeviceCounters> = Arc::default();
        let worker = QueueWorker::start_with_hook(
            "hooked-worker".into(),
            memory.clone(),
            vec![ActiveQueue {
                queue: queue.create_queue::<Queue>().unwrap(),
                event: EventFd::new(EFD_NONBLOCK).unwrap(),
            }],
            Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            rng::RngHandler {
                counters: Arc::clone(&counters),
            },
            Some(hook),
        )
        .unwrap();
        worker.stop();
        counters.snapshot().requests
    };
    // The hook runs on the worker thread, before the chain already available is served.
    let ran_on = Arc::new(Mutex::new(None));
    let record = Arc::clone(&ran_on);
    let served = start(Arc::new(move || {
        *record.lock().unwrap() = std::thread::current().name().map(str::to_owned);
        Ok(())
    }));
    assert_eq!(served, 1);
    assert_eq!(ran_on.lock().unwrap().as_deref(), Some("hooked-worker"));
    let served = start(Arc::new(|| Err(std::io::Error::other("no filter"))));
    assert_eq!(served, 0, "a worker whose hook failed served the guest");
}

#[test]
fn an_available_index_too_far_ahead_neither_spins_nor_blocks_a_reset() {
    let memory = memory();
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory.clone()).unwrap();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1);
    // The driver claims 100 chains in a 16-entry ring (found by the virtio_mmio fuzz target).
    queue.avail().idx().store(100);
    write_reg(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    // The reset joins the worker: with a spinning worker it would never return.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
        let _ = done.send(read_reg(&mut transport, VIRTIO_MMIO_STATUS));
    });
    assert_eq!(
        finished.recv_timeout(Duration::from_secs(30)),
        Ok(0),
        "the reset never returned: the worker spins"
    );
    assert_eq!(queue.used().idx().load(), 0);
}

// --- save/restore of the transport ---

/// The registers a driver reads, with the queue and feature selectors as they are.
fn guest_view(transport: &mut MmioTransport) -> Vec<u32> {
    let mut view: Vec<u32> = [
        VIRTIO_MMIO_MAGIC_VALUE,
        VIRTIO_MMIO_VERSION,
        VIRTIO_MMIO_DEVICE_ID,
        VIRTIO_MMIO_VENDOR_ID,
        VIRTIO_MMIO_DEVICE_FEATURES,
        VIRTIO_MMIO_QUEUE_NUM_MAX,
        VIRTIO_MMIO_QUEUE_READY,
        VIRTIO_MMIO_INTERRUPT_STATUS,
        VIRTIO_MMIO_STATUS,
        VIRTIO_MMIO_CONFIG_GENERATION,
    ]
    .iter()
    .map(|&offset| read_reg(transport, offset))
    .collect();
    let mut config = [0u8; 16];
    transport.read(u64::from(VIRTIO_MMIO_CONFIG), &mut config);
    view.extend(
        config
            .chunks(4)
            .map(|word| u32::from_le_bytes(word.try_into().unwrap())),
    );
    view
}

/// `transport`'s state after a trip through JSON, restored around `device`.
fn restored(
    transport: &MmioTransport,
    device: Box<dyn VirtioDevice>,
    memory: &GuestMemoryMmap,
) -> MmioTransport {
    let state = crate::test_utils::through_json(&transport.state());
    MmioTransport::from_state(device, memory.clone(), &state).unwrap()
}

/// Serves one 32-byte request on `queue` (set up by `bring_up`) and checks its used entry.
fn serve_rng_request(transport: &mut MmioTransport, queue: &MockSplitQueue<GuestMemoryMmap>) {
    let before = queue.used().idx().load();
    queue.add_desc_chains(&[desc(DATA, 32, W)], 0).unwrap();
    write_reg(transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    wait_interrupt(transport);
    assert_eq!(queue.used().idx().load(), before.wrapping_add(1));
}

const NEGOTIATED: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

/// Takes a reset device to FEATURES_OK with VERSION_1, then sets queue 0 up at 16 entries
/// on `desc`, `avail` and `used` and makes it ready: `bring_up` without DRIVER_OK.
fn set_up_without_starting(transport: &mut MmioTransport, desc: u64, avail: u64, used: u64) {
    negotiate(transport, VIRTIO_F_VERSION_1);
    set_up_queue(transport, 0, 16, [desc, avail, used]);
}

#[test]
fn a_reset_device_restores_to_the_same_registers_and_renegotiates() {
    let memory = memory();
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory.clone()).unwrap();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1);
    serve_rng_request(&mut transport, &queue);
    assert!(!transport.is_reset());
    // Linux's freeze on suspend: the device is reset.
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
    write_reg(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert!(transport.is_reset());

    let mut restored = restored(&transport, Box::new(RngDevice::new()), &memory);
    assert!(restored.is_reset());
    assert_eq!(restored.state(), transport.state());
    assert_eq!(guest_view(&mut restored), guest_view(&mut transport));
    assert_eq!(
        read_reg(&mut restored, VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "the feature selector was kept"
    );
    assert_eq!(restored.device().counters().snapshot().activations, 0);

    // On resume the driver negotiates again and the restored device serves it.
    let fresh = MockSplitQueue::create(&memory, GuestAddress(0x8000), 16);
    bring_up(&mut restored, &fresh, VIRTIO_F_VERSION_1);
    assert_eq!(restored.device().counters().snapshot().activations, 1);
    serve_rng_request(&mut restored, &fresh);
}

#[test]
fn a_device_saved_mid_setup_finishes_it_after_restore() {
    let memory = memory();
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory.clone()).unwrap();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1);
    // The same writes minus DRIVER_OK, on a device that was reset first.
    write_reg(&mut transport, VIRTIO_MMIO_STATUS, 0);
    set_up_without_starting(
        &mut transport,
        queue.desc_table_addr().0,
        queue.avail_addr().0,
        queue.used_addr().0,
    );
    let state = transport.state();
    assert_eq!(state.acked_features, VIRTIO_F_VERSION_1);
    assert_eq!((state.queues[0].size, state.queues[0].ready), (16, true));
    drop(transport);

    let mut restored = MmioTransport::from_state(
        Box::new(RngDevice::new()),
        memory.clone(),
        &crate::test_utils::through_json(&state),
    )
    .unwrap();
    assert_eq!(read_reg(&mut restored, VIRTIO_MMIO_STATUS), NEGOTIATED);
    assert_eq!(read_reg(&mut restored, VIRTIO_MMIO_QUEUE_READY), 1);
    write_reg(
        &mut restored,
        VIRTIO_MMIO_STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(restored.device().counters().snapshot().activations, 1);
    serve_rng_request(&mut restored, &queue);
}

#[test]
fn a_block_device_keeps_its_config_space_through_restore() {
    let file = image(8);
    let memory = memory();
    let open = || -> Box<dyn VirtioDevice> {
        let disk = Arc::new(DiskImage::open(file.as_path(), false).unwrap());
        Box::new(BlockDevice::new(disk, "data"))
    };
    let mut transport = MmioTransport::new(open(), memory.clone()).unwrap();
    let expected = guest_view(&mut transport);
    let state = crate::test_utils::through_json(&transport.state());
    assert_eq!(state.config_space.len(), 16);
    drop(transport); // releases the image's lock

    let mut restored = MmioTransport::from_state(open(), memory.clone(), &state).unwrap();
    assert_eq!(guest_view(&mut restored), expected);
    let mut capacity = [0u8; 8];
    restored.read(u64::from(VIRTIO_MMIO_CONFIG), &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 8);
}

#[test]
fn a_failed_activation_restores_with_needs_reset_and_its_interrupt() {
    let memory = memory();
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory.clone()).unwrap();
    // Rings outside guest memory: activation fails and the device asks for a reset.
    set_up_without_starting(&mut transport, OUT_OF_RAM, OUT_OF_RAM, OUT_OF_RAM);
    write_reg(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    let status = read_reg(&mut transport, VIRTIO_MMIO_STATUS);
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);

    let mut restored = restored(&transport, Box::new(RngDevice::new()), &memory);
    assert_eq!(guest_view(&mut restored), guest_view(&mut transport));
    restored
        .interrupt()
        .event()
        .read()
        .expect("the CONFIG interrupt is raised again");
    assert_eq!(restored.device().counters().snapshot().activations, 0);
    // The driver resets it and starts over.
    let good = MockSplitQueue::create(&memory, GuestAddress(0x8000), 16);
    bring_up(&mut restored, &good, VIRTIO_F_VERSION_1);
    serve_rng_request(&mut restored, &good);
}

#[test]
fn an_active_device_reports_its_queues_but_is_not_restored() {
    let memory = memory();
    let mut transport = MmioTransport::new(Box::new(RngDevice::new()), memory.clone()).unwrap();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1);
    assert!(!transport.is_reset());
    let state = crate::test_utils::through_json(&transport.state());
    assert_eq!(state.device_type, 4);
    let saved = state.queues[0];
    assert!(saved.ready);
    assert_eq!(saved.size, 16);
    assert_eq!(saved.desc_table, queue.desc_table_addr().0);
    assert_eq!(saved.avail_ring, queue.avail_addr().0);
    assert_eq!(saved.used_ring, queue.used_addr().0);

    let err = match MmioTransport::from_state(Box::new(RngDevice::new()), memory, &state) {
        Ok(_) => panic!("an active device was restored"),
        Err(err) => err,
    };
    assert!(
        matches!(err, VirtioStateError::Active(status) if status == state.status),
        "{err}"
    );
}

// One test per way a saved state can be impossible.

fn reset_rng_state() -> VirtioMmioState {
    MmioTransport::new(Box::new(RngDevice::new()), memory())
        .unwrap()
        .state()
}

fn rng_restore_error(state: VirtioMmioState) -> VirtioStateError {
    match MmioTransport::from_state(Box::new(RngDevice::new()), memory(), &state) {
        Ok(_) => panic!("{state:?} was accepted"),
        Err(err) => err,
    }
}

#[test]
fn a_state_of_another_device_type_is_rejected() {
    let err = rng_restore_error(VirtioMmioState {
        device_type: 2,
        ..reset_rng_state()
    });
    assert!(
        matches!(
            err,
            VirtioStateError::DeviceType {
                saved: 2,
                device: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn an_unreachable_status_is_rejected() {
    for status in [
        VIRTIO_CONFIG_S_DRIVER,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
        VIRTIO_CONFIG_S_NEEDS_RESET,
        0x100,
    ] {
        let err = rng_restore_error(VirtioMmioState {
            status,
            ..reset_rng_state()
        });
        assert!(
            matches!(err, VirtioStateError::InvalidStatus(s) if s == status),
            "{err}"
        );
    }
}

#[test]
fn an_active_status_is_refused() {
    let err = rng_restore_error(VirtioMmioState {
        status: NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED,
        acked_features: VIRTIO_F_VERSION_1,
        ..reset_rng_state()
    });
    assert!(matches!(err, VirtioStateError::Active(_)), "{err}");
}

#[test]
fn features_the_device_cannot_hold_are_rejected() {
    let unoffered = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
    let err = rng_restore_error(VirtioMmioState {
        status: NEGOTIATED,
        acked_features: unoffered,
        ..reset_rng_state()
    });
    assert!(
        matches!(err, VirtioStateError::InvalidFeatures(f) if f == unoffered),
        "{err}"
    );
    let err = rng_restore_error(VirtioMmioState {
        status: VIRTIO_CONFIG_S_ACKNOWLEDGE,
        acked_features: VIRTIO_F_VERSION_1,
        ..reset_rng_state()
    });
    assert!(matches!(err, VirtioStateError::InvalidFeatures(_)), "{err}");
}

#[test]
fn an_interrupt_an_inactive_device_cannot_have_raised_is_rejected() {
    let err = rng_restore_error(VirtioMmioState {
        interrupt_status: VirtioInterrupt::USED_RING,
        ..reset_rng_state()
    });
    assert!(
        matches!(err, VirtioStateError::InvalidInterruptStatus(1)),
        "{err}"
    );
}

#[test]
fn a_state_with_another_queue_count_is_rejected() {
    let mut state = reset_rng_state();
    state.queues.push(state.queues[0]);
    let err = rng_restore_error(state);
    assert!(
        matches!(
            err,
            VirtioStateError::QueueCount {
                saved: 2,
                device: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn a_queue_with_another_maximum_size_is_rejected() {
    let mut state = reset_rng_state();
    state.queues[0].max_size = 128;
    state.queues[0].size = 128;
    let err = rng_restore_error(state);
    assert!(
        matches!(
            err,
            VirtioStateError::QueueMaxSize {
                index: 0,
                saved: 128,
                device: 256
            }
        ),
        "{err}"
    );
}

#[test]
fn a_queue_size_the_driver_cannot_set_is_rejected() {
    for size in [0, 24, 512] {
        let mut state = VirtioMmioState {
            status: NEGOTIATED,
            acked_features: VIRTIO_F_VERSION_1,
            ..reset_rng_state()
        };
        state.queues[0].size = size;
        let err = rng_restore_error(state);
        assert!(
            matches!(
                err,
                VirtioStateError::InvalidQueue {
                    index: 0,
                    source: virtio_queue::Error::InvalidSize
                }
            ),
            "{size}: {err}"
        );
    }
    let mut state = VirtioMmioState {
        status: NEGOTIATED,
        acked_features: VIRTIO_F_VERSION_1,
        ..reset_rng_state()
    };
    state.queues[0].used_ring = 0x1002;
    let err = rng_restore_error(state);
    assert!(
        matches!(
            err,
            VirtioStateError::InvalidQueue {
                index: 0,
                source: virtio_queue::Error::InvalidUsedRingAlign
            }
        ),
        "{err}"
    );
}

#[test]
fn a_queue_set_up_before_features_ok_is_rejected() {
    let mut state = reset_rng_state();
    state.queues[0].ready = true;
    let err = rng_restore_error(state);
    assert!(
        matches!(err, VirtioStateError::QueueBeforeFeaturesOk(0)),
        "{err}"
    );
}

#[test]
fn ring_indices_on_an_inactive_device_are_rejected() {
    let mut state = VirtioMmioState {
        status: NEGOTIATED,
        acked_features: VIRTIO_F_VERSION_1,
        ..reset_rng_state()
    };
    state.queues[0].next_avail = 3;
    let err = rng_restore_error(state);
    assert!(matches!(err, VirtioStateError::QueueIndices(0)), "{err}");
}

#[test]
fn a_config_space_of_another_length_is_rejected() {
    let err = rng_restore_error(VirtioMmioState {
        config_space: vec![0; 8],
        ..reset_rng_state()
    });
    assert!(
        matches!(
            err,
            VirtioStateError::ConfigLength {
                saved: 8,
                device: 0
            }
        ),
        "{err}"
    );
}

#[test]
fn a_config_space_unlike_the_devices_is_rejected() {
    let file = image(8);
    let disk = Arc::new(DiskImage::open(file.as_path(), true).unwrap());
    let transport = MmioTransport::new(
        Box::new(BlockDevice::new(Arc::clone(&disk), "data")),
        memory(),
    )
    .unwrap();
    let mut state = transport.state();
    state.config_space[0] = 9; // a disk of 9 sectors
    let err = MmioTransport::from_state(Box::new(BlockDevice::new(disk, "data")), memory(), &state)
        .err()
        .unwrap();
    assert!(matches!(err, VirtioStateError::ConfigMismatch), "{err}");
}
