//! arm64 kernel Images of raw A64 code, for `vmm` to boot as bare-metal guests.

use std::path::{Path, PathBuf};

use arch_aarch64::image::{HEADER_SIZE, ImageHeader};
use arch_aarch64::layout::{KERNEL_OFFSET, RAM_START};

use crate::a64::Assembler;

/// Where `vmm` loads an Image whose `text_offset` is 0, as these are.
pub const LOAD: u64 = RAM_START + KERNEL_OFFSET;
/// Where the Image's code starts in guest memory, right after the header.
pub const CODE: u64 = LOAD + HEADER_SIZE as u64;

/// An Image whose header's first instruction branches over it to `main`, with each of `parts`
/// (offset from the start of the Image, ascending, past `main`) placed at its offset.
pub fn kernel_image(main: &Assembler, parts: &[(u64, &Assembler)]) -> Vec<u8> {
    let header = ImageHeader {
        text_offset: 0,
        image_size: 0x1_0000,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend(main.to_bytes());
    for &(offset, part) in parts {
        let offset = usize::try_from(offset).expect("an offset in the Image");
        assert!(
            bytes.len() <= offset,
            "the code before {offset:#x} runs into it"
        );
        bytes.resize(offset, 0);
        bytes.extend(part.to_bytes());
    }
    bytes
}

/// Writes `image` as `dir/Image`; returns its path.
pub fn write_kernel(dir: &Path, image: &[u8]) -> PathBuf {
    let kernel = dir.join("Image");
    std::fs::write(&kernel, image).expect("write the kernel Image");
    kernel
}
