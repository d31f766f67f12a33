//! The fuzz targets' harnesses, one module per target (`fuzz_targets/<name>.rs` only calls
//! `<name>::run`), so that the seeds can also run under `cargo test` without libFuzzer.
//!
//! Every harness feeds arbitrary bytes to code that takes guest or user input; a panic, an
//! abort, a hang (libFuzzer's `-timeout`) or an out-of-bounds access (AddressSanitizer) is a
//! finding. The binary inputs are small programs of operations decoded by [`Input`]: an input
//! that runs out of bytes simply ends.

pub mod gpio_pl061;
pub mod http_request;
pub mod image_header;
pub mod psci_decode;
pub mod rtc_pl031;
pub mod seeds;
pub mod serial;
pub mod virtio_blk_request;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod virtio_vsock;
pub mod vm_config;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Whether the harnesses may reach the product bugs that fuzzing found and that are not fixed
/// yet (docs/fuzzing.md, "Findings"; inputs in `fuzz/regressions/`). Off by default, so that
/// a run explores past them instead of stopping at the first one; `VMM_FUZZ_KNOWN_BUGS=1`
/// lifts the guards, to check a fix.
pub fn known_bugs_reachable() -> bool {
    static REACHABLE: OnceLock<bool> = OnceLock::new();
    *REACHABLE.get_or_init(|| std::env::var_os("VMM_FUZZ_KNOWN_BUGS").is_some_and(|v| v != "0"))
}

/// A cursor over the fuzzer's bytes. Every read returns `None` once they are used up.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Some(head)
    }

    /// The next `n` bytes, or all that is left if fewer.
    pub fn up_to(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        self.bytes(n).unwrap_or_default()
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

/// An MMIO access width picked by a byte: the 1, 2, 4 and 8 bytes KVM reports, and the 0 and
/// 3 it never does (a device must still not panic on them).
pub fn access_size(selector: u8) -> usize {
    [1, 2, 4, 8, 0, 3][usize::from(selector % 6)]
}

/// A write the program asks for: the register `offset` (each target picks its own way), a size
/// selector, then up to that many bytes of data.
pub fn write_access<'a>(
    input: &mut Input<'a>,
    offset: impl FnOnce(&mut Input<'a>) -> Option<u64>,
) -> Option<(u64, &'a [u8])> {
    let offset = offset(input)?;
    let size = input.u8()?;
    Some((offset, input.up_to(access_size(size))))
}

/// A read the program asks for: the register `offset` and a buffer of the selected size,
/// filled with 0xA5 so that bytes a device leaves unwritten show.
pub fn read_access<'a>(
    input: &mut Input<'a>,
    offset: impl FnOnce(&mut Input<'a>) -> Option<u64>,
) -> Option<(u64, Vec<u8>)> {
    let offset = offset(input)?;
    let size = input.u8()?;
    Some((offset, vec![0xA5; access_size(size)]))
}

/// A split-virtqueue descriptor as the guest lays it out in memory (virtio 1.x, 2.7.5): buffer
/// address, length, flags, next.
pub fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    raw
}

/// A `Write` sink that counts bytes and fails while `failing` is set (a console reader that
/// went away).
#[derive(Clone, Default)]
pub struct Sink {
    /// While set, every write fails.
    pub failing: Arc<AtomicBool>,
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sectors in the fuzzers' disk images.
pub const DISK_SECTORS: u64 = 64;

/// A disk image for the virtio-blk harnesses: its file is unlinked as soon as it is open, so
/// nothing is left behind, and [`Disk::restore`] puts its bytes back before each input so
/// that what one input wrote does not change what the next one reads.
pub struct Disk {
    /// The opened, locked image the device serves.
    pub image: Arc<devices::virtio::DiskImage>,
    file: std::fs::File,
}

impl Disk {
    /// Byte `i` of a fresh image is `i % 251`.
    pub fn restore(&self) {
        use std::os::unix::fs::FileExt;
        let bytes: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect();
        self.file.write_all_at(&bytes, 0).unwrap();
    }
}

/// The process's writable or read-only disk image, made on first use.
pub fn disk(readonly: bool) -> &'static Disk {
    static DISKS: [OnceLock<Disk>; 2] = [OnceLock::new(), OnceLock::new()];
    DISKS[usize::from(readonly)].get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "vmm-fuzz-{}-{}.img",
            std::process::id(),
            if readonly { "ro" } else { "rw" }
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(DISK_SECTORS * 512).unwrap();
        let image = devices::virtio::DiskImage::open(&path, readonly).unwrap();
        std::fs::remove_file(&path).unwrap();
        let disk = Disk {
            image: Arc::new(image),
            file,
        };
        disk.restore();
        disk
    })
}
