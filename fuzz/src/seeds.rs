//! The seed corpora, written by `VMM_FUZZ_WRITE_SEEDS=1 cargo test` to `fuzz/seeds/<target>/`
//! and otherwise checked against those files and run through each harness.
//!
//! Each seed is a meaningful input: real requests for every API endpoint, the programs a
//! Linux driver runs against each device, a real arm64 `Image` header, the example configs.

/// One seed: its target, its file name and its bytes.
pub struct Seed {
    /// The fuzz target.
    pub target: &'static str,
    /// Its file name under `fuzz/seeds/<target>/`.
    pub name: &'static str,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// Every target's name, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: [&str; 11] = [
    "http_request",
    "serial",
    "rtc_pl031",
    "gpio_pl061",
    "virtio_mmio",
    "virtio_blk_request",
    "virtio_net",
    "virtio_vsock",
    "image_header",
    "vm_config",
    "psci_decode",
];

/// Runs `data` through `target`'s harness.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "http_request" => crate::http_request::run(data),
        "serial" => crate::serial::run(data),
        "rtc_pl031" => crate::rtc_pl031::run(data),
        "gpio_pl061" => crate::gpio_pl061::run(data),
        "virtio_mmio" => crate::virtio_mmio::run(data),
        "virtio_blk_request" => crate::virtio_blk_request::run(data),
        "virtio_net" => crate::virtio_net::run(data),
        "virtio_vsock" => crate::virtio_vsock::run(data),
        "image_header" => crate::image_header::run(data),
        "vm_config" => crate::vm_config::run(data),
        "psci_decode" => crate::psci_decode::run(data),
        _ => panic!("no target {target}"),
    }
}

/// A program of operations, built with the harnesses' encodings.
#[derive(Default)]
struct Program(Vec<u8>);

impl Program {
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
}

fn le16(value: u16) -> [u8; 2] {
    value.to_le_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Every seed.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target, name, bytes| {
        seeds.push(Seed {
            target,
            name,
            bytes,
        })
    };
    for (name, bytes) in http() {
        add("http_request", name, bytes);
    }
    for (name, bytes) in serial() {
        add("serial", name, bytes);
    }
    for (name, bytes) in rtc() {
        add("rtc_pl031", name, bytes);
    }
    for (name, bytes) in gpio() {
        add("gpio_pl061", name, bytes);
    }
    for (name, bytes) in virtio_mmio() {
        add("virtio_mmio", name, bytes);
    }
    for (name, bytes) in virtio_blk() {
        add("virtio_blk_request", name, bytes);
    }
    for (name, bytes) in virtio_net() {
        add("virtio_net", name, bytes);
    }
    for (name, bytes) in virtio_vsock() {
        add("virtio_vsock", name, bytes);
    }
    for (name, bytes) in image() {
        add("image_header", name, bytes);
    }
    for (name, bytes) in config() {
        add("vm_config", name, bytes);
    }
    for (name, bytes) in psci() {
        add("psci_decode", name, bytes);
    }
    seeds
}

fn http() -> Vec<(&'static str, Vec<u8>)> {
    let get = |path: &str| {
        format!(
            "GET /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
        )
    };
    let put = |path: &str| {
        format!(
            "PUT /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
        )
    };
    let texts = [
        ("get-info", get("vm.info")),
        ("get-events-http10", "GET /api/v1/vm.events HTTP/1.0\r\nHost: localhost\r\n\r\n".to_owned()),
        ("put-wakeup", put("vm.wakeup")),
        ("put-power-button", put("vm.power-button")),
        ("put-pause-json", "PUT /api/v1/vm.pause HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_owned()),
        ("put-resume", put("vm.resume")),
        ("put-shutdown", put("vm.shutdown")),
        ("head-info", "HEAD /api/v1/vm.info HTTP/1.1\r\n\r\n".to_owned()),
        ("chunked", "PUT /api/v1/vm.pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_owned()),
        ("bare-lf", "GET /api/v1/vm.info HTTP/1.1\nHost: x\n\n".to_owned()),
    ];
    texts
        .into_iter()
        .map(|(name, text)| (name, text.into_bytes()))
        .collect()
}

fn serial() -> Vec<(&'static str, Vec<u8>)> {
    // (op, offset selector, size selector 0 = 1 byte, value)
    let write = |offset: u8, value: u8| [0, offset, 0, value];
    let read = |offset: u8| [1, offset, 0];
    // What Linux's 8250 driver does at probe and open: scratch test, DLAB, 115200n8, FIFO,
    // interrupts on; then it prints, gets two keys and reads them.
    let mut probe = Program::default()
        .op(&write(7, 0xA5))
        .op(&read(7))
        .op(&write(3, 0x80))
        .op(&write(0, 0x01))
        .op(&write(1, 0x00))
        .op(&write(3, 0x03))
        .op(&write(2, 0x07))
        .op(&write(1, 0x03))
        .op(&read(2))
        .op(&read(5));
    for byte in b"login: " {
        probe = probe.op(&write(0, *byte)).op(&read(5));
    }
    let probe = probe
        .op(&[2, 2, b'o', b'k'])
        .op(&read(2))
        .op(&read(5))
        .op(&read(0))
        .op(&read(0))
        .op(&[6])
        .op(&[5]);
    // A full FIFO with a failing interrupt and console, wide and far accesses.
    let mut flood = Program::default().op(&write(1, 0x01)).op(&[4]).op(&[3]);
    for _ in 0..5 {
        flood = flood.op(&[2, 63]).op(&[b'x'; 63]);
    }
    let flood = flood
        .op(&[0, 0, 2, 1, 2, 3, 4])
        .op(&[1, 0x80])
        .op(&0x107u64.to_le_bytes())
        .op(&[0])
        .op(&[5]);
    vec![("linux-probe-and-io", probe.0), ("fifo-flood", flood.0)]
}

fn rtc() -> Vec<(&'static str, Vec<u8>)> {
    let start = 1_700_000_000u64.to_le_bytes();
    // Register selectors index the harness's table: DR 0, MR 1, LR 2, CR 3, IMSC 4, RIS 5,
    // MIS 6, ICR 7; size selector 2 = 4 bytes.
    let write = |reg: u8, value: u32| cat(&[&[0, reg, 2], &value.to_le_bytes()]);
    let read = |reg: u8| [1, reg, 2];
    let advance = |millis: u32| cat(&[&[2], &millis.to_le_bytes()]);
    // Linux's pl031 driver: read the time, set an alarm 3 s ahead (MR, clear, unmask), the
    // alarm fires, the handler reads MIS and clears it; then `hwclock --systohc` (LR).
    let alarm = Program::default()
        .op(&start)
        .op(&read(9))
        .op(&read(0))
        .op(&write(1, 1_700_000_003))
        .op(&write(7, 1))
        .op(&write(4, 1))
        .op(&advance(2_500))
        .op(&read(6))
        .op(&advance(600))
        .op(&read(6))
        .op(&read(5))
        .op(&write(7, 1))
        .op(&write(4, 0))
        .op(&write(2, 1_800_000_000))
        .op(&read(0))
        .op(&[7]);
    // An alarm set behind the counter, a clock stepped back, failing timer and line, a
    // restore while an alarm is pending, odd-sized and unaligned accesses.
    let hostile = Program::default()
        .op(&start)
        .op(&write(4, 1))
        .op(&write(1, 1_699_999_000))
        .op(&[3])
        .op(&1_000_000_000u64.to_le_bytes())
        .op(&[6])
        .op(&write(2, 5))
        .op(&[6, 5])
        .op(&write(1, 7))
        .op(&[7])
        .op(&advance(u32::MAX))
        .op(&[4, 5])
        .op(&[0, 13, 0, 1])
        .op(&[1, 14, 1])
        .op(&[1, 12, 2]);
    vec![("linux-set-alarm", alarm.0), ("hostile-clock", hostile.0)]
}

fn gpio() -> Vec<(&'static str, Vec<u8>)> {
    // Register selectors: DIR 3, IS 4, IBE 5, IEV 6, IE 7, RIS 8, MIS 9, IC 10, ids 13-14.
    let write = |reg: u8, value: u8| [0, reg, 0, value];
    let read = |reg: u8| [1, reg, 0];
    // gpio-keys on pin 0 with IRQ_TYPE_EDGE_BOTH, then a press and a release, each handled
    // as Linux's pl061_irq_handler does; the id registers read as words.
    let button = Program::default()
        .op(&[1, 13, 2])
        .op(&[1, 14, 2])
        .op(&read(3))
        .op(&write(3, 0))
        .op(&write(4, 0))
        .op(&write(5, 1))
        .op(&write(7, 1))
        .op(&[2, 0])
        .op(&read(9))
        .op(&write(10, 1))
        .op(&[1, 0x40, 0x01, 0])
        .op(&[3, 0])
        .op(&read(9))
        .op(&write(10, 1))
        .op(&[5]);
    // Level-sensitive pins, outputs through the GPIODATA mask, a bad pin, a failing line.
    let levels = Program::default()
        .op(&write(4, 0xFF))
        .op(&write(6, 0x0F))
        .op(&write(7, 0xFF))
        .op(&write(3, 0xF0))
        .op(&[0, 0x40, 0xFF, 0, 0xAA])
        .op(&[2, 9])
        .op(&[4])
        .op(&[2, 1])
        .op(&[5])
        .op(&[4])
        .op(&[3, 1])
        .op(&[0, 0x13, 0, 1])
        .op(&[1, 0x22, 2]);
    vec![
        ("gpio-keys-press-release", button.0),
        ("level-pins", levels.0),
    ]
}

/// A virtio-mmio program for a device: bring-up on rings at 0, 0x1000, 0x2000 with size 16,
/// then the descriptors, an available head, a notification and a reset.
fn virtio_program(
    config: u8,
    descriptors: &[(u8, u16, u16, u8, u8)],
    memory: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut program = Program::default()
        .op(&[config])
        .op(&[1, 0, 2])
        .op(&[1, 2, 2]);
    for &(addr, bytes) in memory {
        let len = u8::try_from(bytes.len()).unwrap();
        program = program.op(&[2]).op(&le16(addr)).op(&[len]).op(bytes);
    }
    program = program
        .op(&[3, 1])
        .op(&le16(16))
        .op(&le16(0))
        .op(&le16(0x1000))
        .op(&le16(0x2000));
    for &(index, addr, len, flags, next) in descriptors {
        program = program
            .op(&[4, index])
            .op(&le16(addr))
            .op(&le16(len))
            .op(&[flags, next]);
    }
    program
        .op(&[5, 0])
        .op(&[6, 0])
        .op(&[8])
        .op(&[1, 13, 2])
        .op(&[0, 14])
        .op(&1u32.to_le_bytes())
        .op(&[7])
        .0
}

const NEXT: u8 = 1;
const WRITE: u8 = 2;

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    cat(&[&kind.to_le_bytes(), &[0; 4], &sector.to_le_bytes()])
}

fn virtio_mmio() -> Vec<(&'static str, Vec<u8>)> {
    let rng = virtio_program(0, &[(0, 0x3000, 64, WRITE, 0)], &[]);
    let read = blk_header(0, 2);
    let block_read = virtio_program(
        1,
        &[
            (0, 0x3000, 16, NEXT, 1),
            (1, 0x4000, 512, NEXT | WRITE, 2),
            (2, 0x5000, 1, WRITE, 0),
        ],
        &[(0x3000, &read)],
    );
    let write = blk_header(1, 0);
    let block_write_ro = virtio_program(
        3,
        &[
            (0, 0x3000, 16, NEXT, 1),
            (1, 0x4000, 512, NEXT, 2),
            (2, 0x5000, 1, WRITE, 0),
        ],
        &[(0x3000, &write)],
    );
    // Registers one by one: features past the first word, a queue that is not 0, config
    // space reads, status out of order, then DRIVER_OK with a queue outside RAM.
    let mut registers = Program::default().op(&[1]);
    for (reg, value) in [
        (15u8, 1u32),
        (15, 3),
        (5, 1),
        (7, 1),
        (6, 1),
        (15, 11),
        (8, 0),
        (10, 8),
        (16, 0xF000),
        (17, 1),
        (11, 1),
        (15, 15),
        (12, 0),
        (14, 3),
        (15, 0x80),
    ] {
        registers = registers.op(&[0, reg]).op(&value.to_le_bytes());
    }
    let registers = registers
        .op(&[1, 23, 2])
        .op(&[1, 0xC0])
        .op(&le16(0x108))
        .op(&[3])
        .op(&[1, 9, 2])
        .op(&[1, 13, 2]);
    vec![
        ("rng-fill", rng),
        ("block-read", block_read),
        ("block-write-readonly", block_write_ro),
        ("register-by-register", registers.0),
    ]
}

fn virtio_blk() -> Vec<(&'static str, Vec<u8>)> {
    // Queue size 16 (config bits 0-3 = 4), rings at the default addresses.
    let request = |config: u8, descriptors: &[(u8, u16, u16, u8)], header: &[u8]| {
        let mut program = Program::default().op(&[config, descriptors.len() as u8]);
        for (index, &(flags, addr, len, _)) in descriptors.iter().enumerate() {
            let next = u8::try_from(index + 1).unwrap();
            program = program
                .op(&[flags])
                .op(&le16(addr))
                .op(&le16(len))
                .op(&[next]);
        }
        let header_len = u8::try_from(header.len()).unwrap();
        program
            .op(&[1, 0])
            .op(&le16(1))
            .op(&le16(0x3000))
            .op(&[header_len])
            .op(header)
            .0
    };
    let three = |data_flags: u8| {
        [
            (NEXT, 0x3000, 16, 0),
            (NEXT | data_flags, 0x4000, 1024, 0),
            (WRITE, 0x5000, 1, 0),
        ]
    };
    vec![
        ("read", request(4, &three(WRITE), &blk_header(0, 3))),
        ("write", request(4, &three(0), &blk_header(1, 0))),
        (
            "flush-event-idx",
            request(
                0x14,
                &[(NEXT, 0x3000, 16, 0), (WRITE, 0x5000, 1, 0)],
                &blk_header(4, 0),
            ),
        ),
        (
            "get-id-process",
            request(
                0x44,
                &[
                    (NEXT, 0x3000, 16, 0),
                    (NEXT | WRITE, 0x4000, 20, 0),
                    (WRITE, 0x5000, 1, 0),
                ],
                &blk_header(8, 0),
            ),
        ),
        (
            "write-readonly",
            request(0x24, &three(0), &blk_header(1, 0)),
        ),
        (
            "read-past-end",
            request(4, &three(WRITE), &blk_header(0, 63)),
        ),
        (
            "partial-sector",
            request(
                4,
                &[
                    (NEXT, 0x3000, 16, 0),
                    (NEXT | WRITE, 0x4000, 100, 0),
                    (WRITE, 0x5000, 1, 0),
                ],
                &blk_header(0, 0),
            ),
        ),
    ]
}

/// A structured virtio-net descriptor: flags, address, length, next.
type NetDescriptor = (u8, u16, u16, u8);

/// A virtio-net program: the configuration byte, then for the receive and the transmit queue
/// the descriptors and the heads made available.
fn net_program(config: u8, queues: [(&[NetDescriptor], &[u8]); 2]) -> Program {
    let mut program = Program::default().op(&[config]);
    for (descriptors, heads) in queues {
        program = program.op(&[u8::try_from(descriptors.len()).unwrap()]);
        for &(flags, addr, len, next) in descriptors {
            program = program
                .op(&[flags])
                .op(&le16(addr))
                .op(&le16(len))
                .op(&[next]);
        }
        program = program.op(&[u8::try_from(heads.len()).unwrap()]).op(heads);
    }
    program
}

/// An Ethernet header: to the guest's usual QEMU-style MAC from a local one, with the
/// local experimental EtherType 0x88b5.
const ETHERNET: [u8; 14] = [
    0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0xb5,
];

/// The 32 first bytes of a frame from the tap: the 12-byte virtio-net header with `flags`
/// and `gso_type`, the Ethernet header and zeros (the harness's pattern follows).
fn net_frame_start(flags: u8, gso_type: u8) -> Vec<u8> {
    let mut header = [0u8; 12];
    header[0] = flags;
    header[1] = gso_type;
    cat(&[&header, &ETHERNET, &[0; 6]])
}

/// A frame of `len` bytes (at least 32) from the tap (op 2).
fn net_incoming(len: u16, start: &[u8]) -> Vec<u8> {
    assert_eq!(start.len(), usize::from(len).min(32));
    cat(&[&[2], &le16(len), start])
}

fn virtio_net() -> Vec<(&'static str, Vec<u8>)> {
    use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
    // Operations: transmit, receive, a head made available on the receive queue, a reset
    // and a new activation on emptied rings.
    const TRANSMIT: [u8; 1] = [0];
    const RECEIVE: [u8; 1] = [1];
    const RESET: [u8; 1] = [5];
    let rx_head = |head: u8| [4, 0, head];
    let memory = |addr: u16, bytes: &[u8]| {
        cat(&[
            &[3],
            &le16(addr),
            &[u8::try_from(bytes.len()).unwrap()],
            bytes,
        ])
    };
    // 256-byte receive buffers at 0x9000, 0x9400, ...
    let rx_buffers = |count: u8| -> Vec<NetDescriptor> {
        (0..count)
            .map(|i| (WRITE, 0x9000 + 0x400 * u16::from(i), 256, 0))
            .collect()
    };
    let plain = net_frame_start(0, 0);

    // Queue size 16, event index, merged receive buffers. Linux's start_xmit: the header and
    // the 100-byte frame in two descriptors of one chain.
    let frame: Vec<u8> = cat(&[&ETHERNET, &(0..86).collect::<Vec<u8>>()]);
    let transmit = net_program(
        0x34,
        [
            (&[], &[]),
            (&[(NEXT, 0x8000, 12, 1), (0, 0x8010, 100, 0)], &[0]),
        ],
    )
    .op(&memory(0x8000, &[0; 12]))
    .op(&memory(0x8010, &frame))
    .op(&TRANSMIT);

    // A 700-byte frame merged over three of four 256-byte buffers.
    let mergeable = net_program(0x34, [(&rx_buffers(4), &[0, 1, 2, 3]), (&[], &[])])
        .op(&net_incoming(700, &plain))
        .op(&RECEIVE);

    // With the receive offloads too: a 600-byte frame waits for the buffers it needs; then a
    // checksum-offloaded TSO frame, one too long, and a 700-byte one arrive while no buffer is
    // left; a reset (suspend) and a new activation, and the driver fills the ring again: the
    // first frame is received, the second dropped, the third waits for more buffers. A second
    // reset carries it over to the next activation, which receives it.
    let csum_tso = net_frame_start(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
    );
    let wait_reset = net_program(0x74, [(&rx_buffers(3), &[0]), (&[(0, 0x8000, 64, 0)], &[])])
        .op(&net_incoming(600, &plain))
        .op(&RECEIVE)
        .op(&rx_head(1))
        .op(&rx_head(2))
        .op(&RECEIVE)
        .op(&net_incoming(100, &csum_tso))
        .op(&[6, 200])
        .op(&plain)
        .op(&net_incoming(700, &plain))
        .op(&RECEIVE)
        .op(&RESET)
        .op(&rx_head(0))
        .op(&rx_head(1))
        .op(&rx_head(2))
        .op(&RECEIVE)
        .op(&RESET)
        .op(&rx_head(0))
        .op(&rx_head(1))
        .op(&rx_head(2))
        .op(&RECEIVE);

    vec![
        ("tx-header-and-frame", transmit.0),
        ("rx-mergeable", mergeable.0),
        ("rx-wait-reset-restore", wait_reset.0),
    ]
}

/// A packet from the guest (virtio_vsock's op 0).
struct VsockPacket<'a> {
    /// `VIRTIO_VSOCK_OP_*`; bit 7: the header and the data in one buffer.
    op: u8,
    /// Bits 0-3 the CIDs, bit 4 a non-stream type, bits 5-6 the SHUTDOWN flags.
    variant: u8,
    /// The source port, 1000 + `src`.
    src: u8,
    /// The destination port: 0 the service (1024), 1 the first host port the device
    /// allocated, 2 port 5 (no listener).
    dst: u8,
    /// A `len` field of its own instead of the data's length.
    len: Option<u32>,
    /// The `buf_alloc` selector: 1 is 16 bytes, 3 is 256 KiB.
    buf_alloc: u8,
    fwd_cnt: u16,
    data: &'a [u8],
}

impl<'a> VsockPacket<'a> {
    /// A stream packet from the guest with 256 KiB of buffer space.
    fn new(op: u8, src: u8, dst: u8) -> Self {
        Self {
            op,
            variant: 0,
            src,
            dst,
            len: None,
            buf_alloc: 3,
            fwd_cnt: 0,
            data: &[],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        assert!(self.variant & 0x8F == 0 && self.dst < 3 && self.data.len() < 0x80);
        let mut bytes = vec![0, self.op, self.variant, self.src, self.dst];
        if let Some(len) = self.len {
            bytes[2] |= 0x80;
            bytes.extend(len.to_le_bytes());
        }
        bytes.push(self.buf_alloc);
        bytes.extend(le16(self.fwd_cnt));
        bytes.push(self.data.len() as u8);
        bytes.extend(self.data);
        bytes
    }
}

fn virtio_vsock() -> Vec<(&'static str, Vec<u8>)> {
    const REQUEST: u8 = 1;
    const RESPONSE: u8 = 2;
    const RST: u8 = 3;
    const SHUTDOWN: u8 = 4;
    const RW: u8 = 5;
    const CREDIT_UPDATE: u8 = 6;
    const CREDIT_REQUEST: u8 = 7;
    /// Queue size 16, no event index.
    const CONFIG: u8 = 4;
    /// Four receive buffers of 4140 bytes (a header and 4 KiB).
    const RX_BUFFERS: [u8; 2] = [2, 0x17];
    /// Host sockets handled, four rounds.
    const POLL: [u8; 2] = [6, 3];
    let packet = |op, src, dst| VsockPacket::new(op, src, dst);
    // A host program (index `peer`) writes, reads, shuts down its write half, closes.
    let peer_write =
        |peer: u8, bytes: &[u8]| cat(&[&[4, peer, u8::try_from(bytes.len()).unwrap()], bytes]);
    let peer_read = |peer: u8| [5, peer, 0];
    let peer_shut_write = |peer: u8| [5, peer, 1];
    let peer_close = |peer: u8| [5, peer, 3];
    // A host program connects and writes `line`.
    let connect_line = |line: &[u8]| cat(&[&[3, 4, u8::try_from(line.len()).unwrap()], line]);

    // The guest connects to the service on port 1024, which accepts and says "ping"; the
    // guest answers "pong", the service closes, the guest resets the connection.
    let service = Program::default()
        .op(&[CONFIG])
        .op(&RX_BUFFERS)
        .op(&packet(REQUEST, 1, 0).bytes())
        .op(&[7, 0])
        .op(&cat(&[&[7, 2, 4], b"ping"]))
        .op(&POLL)
        .op(&VsockPacket {
            data: b"pong",
            ..packet(RW, 1, 0)
        }
        .bytes())
        .op(&[7, 3])
        .op(&POLL)
        .op(&RX_BUFFERS)
        .op(&packet(RST, 1, 0).bytes());

    // The guest connects to a port nothing listens on; then malformed transmit chains: a
    // header cut at 20 bytes, a header followed by a device-writable buffer, a `len` of
    // 64 KiB over 4 bytes of data, a datagram.
    let missing_and_malformed = Program::default()
        .op(&[CONFIG])
        .op(&RX_BUFFERS)
        .op(&packet(REQUEST, 2, 2).bytes())
        .op(&[1, 0, 0])
        .op(&le16(0x1000))
        .op(&le16(20))
        .op(&[20])
        .op(&[0; 20])
        .op(&[1, 1, 0])
        .op(&le16(0x1000))
        .op(&le16(44))
        .op(&[1])
        .op(&le16(0x1100))
        .op(&le16(100))
        .op(&[0])
        .op(&VsockPacket {
            len: Some(64 * 1024),
            data: b"data",
            ..packet(RW, 0, 2)
        }
        .bytes())
        .op(&VsockPacket {
            variant: 0x10,
            ..packet(RW, 0, 0)
        }
        .bytes());

    // A host program connects to guest port 1000 and the guest accepts; "hello" one way,
    // "bye" and a credit request the other; the host shuts down its write half, the guest
    // shuts down both.
    let host_connect = Program::default()
        .op(&[CONFIG])
        .op(&RX_BUFFERS)
        .op(&[3, 0])
        .op(&POLL)
        .op(&packet(RESPONSE, 0, 1).bytes())
        .op(&peer_read(0))
        .op(&peer_write(0, b"hello"))
        .op(&POLL)
        .op(&VsockPacket {
            fwd_cnt: 5,
            data: b"bye",
            ..packet(RW, 0, 1)
        }
        .bytes())
        .op(&VsockPacket {
            fwd_cnt: 5,
            ..packet(CREDIT_REQUEST, 0, 1)
        }
        .bytes())
        .op(&peer_shut_write(0))
        .op(&POLL)
        .op(&RX_BUFFERS)
        .op(&VsockPacket {
            variant: 0x60,
            fwd_cnt: 5,
            ..packet(SHUTDOWN, 0, 1)
        }
        .bytes())
        .op(&RX_BUFFERS)
        .op(&POLL);

    // The guest accepts a host connection on port 1001 with 16 bytes of buffer space; the
    // host writes 100 bytes, which wait for credit updates.
    let pattern: Vec<u8> = (0..100).collect();
    let small_credit = Program::default()
        .op(&[CONFIG])
        .op(&RX_BUFFERS)
        .op(&[3, 1])
        .op(&POLL)
        .op(&VsockPacket {
            buf_alloc: 1,
            ..packet(RESPONSE, 1, 1)
        }
        .bytes())
        .op(&peer_write(0, &pattern))
        .op(&POLL)
        .op(&RX_BUFFERS)
        .op(&VsockPacket {
            buf_alloc: 1,
            fwd_cnt: 16,
            ..packet(CREDIT_UPDATE, 1, 1)
        }
        .bytes())
        .op(&POLL)
        .op(&peer_close(0))
        .op(&POLL)
        .op(&RX_BUFFERS);

    // Host programs that do not follow the protocol: a line that is not CONNECT, a
    // CONNECT to no number, one that says nothing and then shuts down its write half.
    let bad_lines = Program::default()
        .op(&[CONFIG])
        .op(&RX_BUFFERS)
        .op(&connect_line(b"HELLO\n"))
        .op(&connect_line(b"CONNECT x"))
        .op(&[3, 8])
        .op(&POLL)
        .op(&peer_shut_write(2))
        .op(&POLL);

    vec![
        ("guest-connect-service", service.0),
        (
            "guest-connect-missing-and-malformed",
            missing_and_malformed.0,
        ),
        ("host-connect-data-shutdown", host_connect.0),
        ("host-connect-small-credit", small_credit.0),
        ("bad-connect-lines", bad_lines.0),
    ]
}

/// The first 64 bytes of Debian's linux-image-6.1.0-57-arm64 `vmlinuz` (an uncompressed
/// arm64 Image with an EFI stub: "MZ", text_offset 0, image_size 0x2010000, flags 0xa).
const DEBIAN_IMAGE_HEADER: [u8; 64] = [
    0x4d, 0x5a, 0x40, 0xfa, 0x56, 0xa3, 0x59, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x52, 0x4d, 0x64, 0x40, 0x00, 0x00, 0x00,
];

fn image() -> Vec<(&'static str, Vec<u8>)> {
    let sizes = |file_len: u64, ram_units: u16, initrd: Option<u32>| {
        let mut bytes = cat(&[&file_len.to_le_bytes(), &le16(ram_units)]);
        match initrd {
            Some(size) => bytes.extend(cat(&[&[1], &size.to_le_bytes()])),
            None => bytes.push(0),
        }
        bytes
    };
    // The file is 32954880 bytes; 512 MiB of RAM is 256 units of 2 MiB.
    let debian = cat(&[
        &DEBIAN_IMAGE_HEADER,
        &sizes(32_954_880, 256, Some(12 << 20)),
    ]);
    let tight = cat(&[&DEBIAN_IMAGE_HEADER, &sizes(32_954_880, 18, None)]);
    let mut legacy = DEBIAN_IMAGE_HEADER;
    legacy[16..24].fill(0);
    let legacy = cat(&[&legacy, &sizes(8 << 20, 4, Some(1))]);
    let gzip = vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03];
    vec![
        ("debian-6.1-with-initrd", debian),
        ("debian-6.1-tight-ram", tight),
        ("legacy-image-size-0", legacy),
        ("gzip", gzip),
    ]
}

fn config() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("disk-root.json", include_bytes!("../../resources/examples/disk-root.json").to_vec()),
        ("initramfs.json", include_bytes!("../../resources/examples/initramfs.json").to_vec()),
        ("no-suspend.json", include_bytes!("../../resources/examples/no-suspend.json").to_vec()),
        ("disk-cli", b"path=rootfs.ext4,readonly=on,id=root".to_vec()),
        (
            "bad-disk-id",
            br#"{"kernel": "Image", "cpus": 124, "disks": [{"path": "a", "id": "x,y"}, {"path": "b", "id": "x,y"}]}"#.to_vec(),
        ),
    ]
}

fn psci() -> Vec<(&'static str, Vec<u8>)> {
    let call = |x0: u64, x1: u64, x2: u64, others: u8, ram: &[(u64, u64)]| {
        let mut bytes = cat(&[
            &x0.to_le_bytes(),
            &x1.to_le_bytes(),
            &x2.to_le_bytes(),
            &[others, ram.len() as u8],
        ]);
        for (start, size) in ram {
            bytes.extend(cat(&[&start.to_le_bytes(), &size.to_le_bytes()]));
        }
        bytes
    };
    let ram = [(0x4000_0000, 512 << 20)];
    vec![
        (
            "suspend64-ok",
            call(0xC400_000E, 0x4020_1000, 0xDEAD_BEEF, 0, &ram),
        ),
        (
            "suspend32-high-bits",
            call(0x8400_000E, 0x1_4000_1000, 0xFFFF_FFFF_0000_0001, 0, &ram),
        ),
        (
            "suspend-others-on",
            call(0xC400_000E, 0x4020_1000, 0, 3, &ram),
        ),
        (
            "suspend-unaligned-entry",
            call(0xC400_000E, 0x4020_1002, 0, 0, &ram),
        ),
        ("not-suspend-psci-version", call(0x8400_0000, 0, 0, 0, &ram)),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target)
    }

    /// `VMM_FUZZ_WRITE_SEEDS=1 cargo test` writes the seeds; otherwise they must be current.
    #[test]
    fn seeds_are_current_and_pass() {
        let write = std::env::var_os("VMM_FUZZ_WRITE_SEEDS").is_some();
        let seeds = all();
        for target in TARGETS {
            assert!(
                seeds.iter().any(|seed| seed.target == target),
                "no seed for {target}"
            );
            if write {
                let _ = std::fs::remove_dir_all(dir(target));
                std::fs::create_dir_all(dir(target)).unwrap();
            }
        }
        for seed in &seeds {
            let path = dir(seed.target).join(seed.name);
            if write {
                std::fs::write(&path, &seed.bytes).unwrap();
            } else {
                let on_disk =
                    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                assert!(on_disk == seed.bytes, "{} is stale", path.display());
            }
            run(seed.target, &seed.bytes);
        }
    }

    /// The inputs that found the bugs in docs/fuzzing.md pass while the harnesses guard
    /// against those bugs (and hang with `VMM_FUZZ_KNOWN_BUGS=1` until they are fixed).
    #[test]
    fn regressions_pass_with_the_guards() {
        if crate::known_bugs_reachable() {
            return;
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions");
        for target in TARGETS {
            let Ok(entries) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                run(target, &std::fs::read(&path).unwrap());
            }
        }
    }
}
