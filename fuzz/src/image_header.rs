//! The arm64 `Image` header (`arch_aarch64::image::ImageHeader::parse` and `footprint`) and
//! the boot layout it feeds (`arch_aarch64::layout::boot_layout`), as `BootImages::open`
//! chains them.
//!
//! Input: the file's first bytes (the header is the first 64), and after them, when present,
//! the sizes the layout gets: a u64 file length (else the input's length); a u16 RAM size in
//! 2 MiB units, or with its top bit set a u64 of bytes that follows; an initrd byte (0: no
//! initrd, 1: a u32 size follows, else a u64 size).
//!
//! Checks: a parsed header re-encodes to itself; the footprint never wraps; an accepted
//! layout keeps the kernel, initrd and FDT inside RAM, in order and without overlap, the
//! initrd page-aligned in the kernel's 32 GiB window, the FDT in the last 2 MiB.

use arch_aarch64::image::{HEADER_SIZE, ImageHeader};
use arch_aarch64::layout::{
    BootLayout, FDT_MAX_SIZE, KERNEL_OFFSET, PAGE_SIZE, RAM_ALIGN, RAM_START, boot_layout,
};

use crate::Input;

/// The RAM size, initrd size and file length the input asks for.
fn sizes(data: &[u8]) -> (u64, Option<u64>, u64) {
    let mut input = Input::new(data.get(HEADER_SIZE..).unwrap_or_default());
    let file_len = input.u64().unwrap_or(data.len() as u64);
    // Mostly sizes the CLI would accept (multiples of 2 MiB), sometimes any u64.
    let ram = match input.u16() {
        Some(units) if units & 0x8000 != 0 => input.u64().unwrap_or(u64::from(units)),
        Some(units) => u64::from(units) * RAM_ALIGN,
        None => 512 << 20,
    };
    let initrd = match input.u8() {
        Some(0) | None => None,
        Some(1) => input.u32().map(u64::from),
        Some(_) => input.u64(),
    };
    (ram, initrd, file_len)
}

/// Parses the header in `data` and lays out its kernel.
pub fn run(data: &[u8]) {
    let header = match ImageHeader::parse(data) {
        Ok(header) => header,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    assert!(header.text_offset < 2 << 20);
    let again = ImageHeader::parse(&header.to_bytes()).unwrap();
    if header.image_size != 0 {
        assert_eq!(again, header);
    }

    let (ram, initrd, file_len) = sizes(data);
    let footprint = header.footprint(file_len);
    assert!(footprint >= header.text_offset && footprint >= header.image_size.max(file_len));
    match boot_layout(ram, footprint, initrd) {
        Ok(layout) => check(&layout, ram, footprint, initrd),
        Err(err) => {
            let _ = err.to_string();
        }
    }
}

fn check(layout: &BootLayout, ram: u64, kernel: u64, initrd: Option<u64>) {
    let ram_end = RAM_START + ram;
    assert_eq!(layout.ram.start, RAM_START);
    assert_eq!(layout.ram.size, ram);
    assert_eq!(layout.kernel_load, RAM_START + KERNEL_OFFSET);
    assert_eq!(layout.fdt_addr, ram_end - FDT_MAX_SIZE);
    assert_eq!(layout.fdt_addr % RAM_ALIGN, 0);
    assert!(layout.kernel_load + kernel <= layout.kernel_limit);
    assert!(layout.kernel_limit <= layout.fdt_addr);
    match (layout.initrd, initrd) {
        (None, None) => assert_eq!(layout.kernel_limit, layout.fdt_addr),
        (Some(region), Some(size)) => {
            assert_eq!(region.size, size);
            assert_eq!(region.start, layout.kernel_limit);
            assert_eq!(region.start % PAGE_SIZE, 0);
            assert!(region.end() <= layout.fdt_addr);
            // booting.rst: inside the 1 GiB aligned 32 GiB window that holds the kernel.
            let window = layout.kernel_load / (1 << 30) * (1 << 30);
            assert!(region.start >= window && region.end() <= window + (32 << 30));
        }
        (region, size) => panic!("initrd {size:?} laid out as {region:?}"),
    }
}
