//! The arm64 `Image` header (Documentation/arch/arm64/booting.rst), read before loading so
//! that a wrong file gets a clear error and the layout knows how much room the kernel needs.

/// Length of the header.
pub const HEADER_SIZE: usize = 64;
/// `magic` at offset 56: "ARM\x64".
const ARM64_MAGIC: u32 = 0x644D_5241;
/// `b .+64`: from `code0` to the first byte after the header.
const BRANCH_OVER_HEADER: u32 = 0x1400_0000 | (HEADER_SIZE as u32 / 4);
/// The `text_offset` pre-3.17 kernels imply when `image_size` is 0.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// `text_offset` is relative to a 2 MiB aligned base, inside those 2 MiB.
const MAX_TEXT_OFFSET: u64 = 2 << 20;

/// Why a file is not a usable arm64 Image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Shorter than the header.
    #[error("Kernel is too short to be an arm64 Image ({0} bytes)")]
    TooShort(usize),
    /// A gzip stream, e.g. `Image.gz`.
    #[error("Kernel is gzip-compressed: decompress it to a plain arm64 Image first")]
    Compressed,
    /// No arm64 magic.
    #[error("Kernel is not an arm64 Image (no ARM\\x64 magic)")]
    BadMagic,
    /// A big-endian kernel.
    #[error("Kernel is big-endian, which this VMM does not run")]
    BigEndian,
    /// A `text_offset` no kernel has: it is an offset inside the first 2 MiB.
    #[error("Kernel header has text_offset {0:#x}; it must be below 2 MiB")]
    TextOffset(u64),
}

/// The fields of the header the loader needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the kernel from a 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address, BSS included.
    pub image_size: u64,
}

impl ImageHeader {
    /// Parses the first bytes of a file.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() >= 2 && bytes[..2] == [0x1F, 0x8B] {
            return Err(ImageError::Compressed);
        }
        if bytes.len() < HEADER_SIZE {
            return Err(ImageError::TooShort(bytes.len()));
        }
        let u64_at = |offset: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[offset..offset + 8]);
            u64::from_le_bytes(word)
        };
        let magic = u32::from_le_bytes([bytes[56], bytes[57], bytes[58], bytes[59]]);
        if magic != ARM64_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let flags = u64_at(24);
        if flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        let (text_offset, image_size) = match u64_at(16) {
            0 => (LEGACY_TEXT_OFFSET, 0),
            size => (u64_at(8), size),
        };
        if text_offset >= MAX_TEXT_OFFSET {
            return Err(ImageError::TextOffset(text_offset));
        }
        Ok(Self {
            text_offset,
            image_size,
        })
    }

    /// Bytes needed from the 2 MiB aligned load base: the offset plus the image, or the file
    /// length for old kernels that do not say.
    /// A header's `image_size` is guest input: a sum past `u64::MAX` saturates, and the
    /// layout then finds it too large for any RAM.
    pub fn footprint(&self, file_len: u64) -> u64 {
        self.text_offset
            .saturating_add(self.image_size.max(file_len))
    }

    /// A little-endian header with these fields whose first instruction branches over it, as
    /// a kernel's branches to its text: code placed right after it runs first. Bare-metal test
    /// guests are built this way.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[0..4].copy_from_slice(&BRANCH_OVER_HEADER.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.text_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.image_size.to_le_bytes());
        bytes[56..60].copy_from_slice(&ARM64_MAGIC.to_le_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_sizes_are_errors_not_overflows() {
        let bytes = |text_offset: u64, image_size: u64| {
            ImageHeader {
                text_offset,
                image_size,
            }
            .to_bytes()
        };
        assert_eq!(
            ImageHeader::parse(&bytes(u64::MAX - 8, 0x1000)),
            Err(ImageError::TextOffset(u64::MAX - 8))
        );
        assert_eq!(
            ImageError::TextOffset(2 << 20).to_string(),
            "Kernel header has text_offset 0x200000; it must be below 2 MiB"
        );
        let huge = ImageHeader::parse(&bytes(0x1000, u64::MAX)).unwrap();
        assert_eq!(huge.footprint(4096), u64::MAX);
    }

    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut bytes = ImageHeader {
            text_offset,
            image_size,
        }
        .to_bytes();
        bytes[24..32].copy_from_slice(&flags.to_le_bytes());
        bytes.to_vec()
    }

    #[test]
    fn written_headers_parse_back_and_branch_over_themselves() {
        let header = ImageHeader {
            text_offset: 0,
            image_size: 0x1_0000,
        };
        let bytes = header.to_bytes();
        assert_eq!(ImageHeader::parse(&bytes), Ok(header));
        assert_eq!(&bytes[56..60], b"ARM\x64");
        // b +64, as `objdump` shows the first word of a kernel Image.
        assert_eq!(bytes[0..4], 0x1400_0010u32.to_le_bytes());
    }

    #[test]
    fn reads_offset_and_size() {
        let parsed = ImageHeader::parse(&header(0, 0x240_0000, 0b1010)).unwrap();
        assert_eq!(parsed.text_offset, 0);
        assert_eq!(parsed.image_size, 0x240_0000);
        assert_eq!(parsed.footprint(0x200_0000), 0x240_0000);
    }

    #[test]
    fn old_kernels_imply_the_legacy_offset() {
        let parsed = ImageHeader::parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!(parsed.text_offset, 0x8_0000);
        assert_eq!(parsed.footprint(0x10_0000), 0x18_0000);
    }

    #[test]
    fn rejects_what_is_not_a_little_endian_arm64_image() {
        assert_eq!(
            ImageHeader::parse(&[0x1F, 0x8B, 8, 0]),
            Err(ImageError::Compressed)
        );
        assert_eq!(ImageHeader::parse(b"MZ"), Err(ImageError::TooShort(2)));
        let mut elf = header(0, 1, 0);
        elf[56..60].copy_from_slice(b"\x7fELF");
        assert_eq!(ImageHeader::parse(&elf), Err(ImageError::BadMagic));
        assert_eq!(
            ImageHeader::parse(&header(0, 1, 1)),
            Err(ImageError::BigEndian)
        );
    }
}
