//! Opens and checks the boot images before anything touches KVM, and decides where they go:
//! a wrong file or a VM too small for its images is reported first, on any host.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use arch_aarch64::image::{HEADER_SIZE, ImageError, ImageHeader};
use arch_aarch64::layout::{self, BootLayout, LayoutError};

use crate::config::VmConfig;

/// Why the boot images cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootImageError {
    /// A file could not be opened or read.
    #[error("Cannot read {what} {path}")]
    File {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not an arm64 Image.
    #[error("Invalid kernel {path}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ImageError,
    },
    /// The initramfs is empty.
    #[error("Initramfs {0} is empty")]
    EmptyInitramfs(PathBuf),
    /// The kernel, initramfs and device tree do not fit in guest memory.
    #[error("Guest memory of {memory_mib} MiB cannot hold the boot images")]
    Layout {
        /// The configured memory.
        memory_mib: u64,
        /// What does not fit.
        #[source]
        source: LayoutError,
    },
}

/// The opened kernel and initramfs, and where they go in guest memory.
#[derive(Debug)]
pub struct BootImages {
    /// The kernel, positioned anywhere.
    pub kernel: File,
    /// The kernel's path, for messages.
    pub kernel_path: PathBuf,
    /// The initramfs and its length.
    pub initramfs: Option<(File, u64)>,
    /// The placement of kernel, initramfs and FDT.
    pub layout: BootLayout,
}

fn open(what: &'static str, path: &Path) -> Result<(File, u64), BootImageError> {
    let file_error = |source| BootImageError::File {
        what,
        path: path.to_owned(),
        source,
    };
    let file = open_regular_file(path).map_err(file_error)?;
    let len = file.metadata().map_err(file_error)?.len();
    Ok((file, len))
}

/// Opens `path` for reading if it is a regular file. The open does not block, so a FIFO or a
/// terminal given by mistake is refused instead of hanging the VMM.
pub fn open_regular_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    if file_type.is_dir() {
        return Err(std::io::ErrorKind::IsADirectory.into());
    }
    if !file_type.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    // O_NONBLOCK has no effect on a regular file's reads.
    Ok(file)
}

impl BootImages {
    /// Opens the images `config` names and lays them out in its memory size.
    pub fn open(config: &VmConfig) -> Result<Self, BootImageError> {
        let (mut kernel, kernel_len) = open("kernel", &config.kernel)?;
        let mut header = Vec::with_capacity(HEADER_SIZE);
        (&mut kernel)
            .take(HEADER_SIZE as u64)
            .read_to_end(&mut header)
            .map_err(|source| BootImageError::File {
                what: "kernel",
                path: config.kernel.clone(),
                source,
            })?;
        let image = ImageHeader::parse(&header).map_err(|source| BootImageError::Image {
            path: config.kernel.clone(),
            source,
        })?;
        let initramfs = match &config.initramfs {
            Some(path) => {
                let (file, len) = open("initramfs", path)?;
                if len == 0 {
                    return Err(BootImageError::EmptyInitramfs(path.clone()));
                }
                Some((file, len))
            }
            None => None,
        };
        let layout = layout::boot_layout(
            config.memory_bytes(),
            image.footprint(kernel_len),
            initramfs.as_ref().map(|(_, len)| *len),
        )
        .map_err(|source| BootImageError::Layout {
            memory_mib: config.memory_mib,
            source,
        })?;
        Ok(Self {
            kernel,
            kernel_path: config.kernel.clone(),
            initramfs,
            layout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory, removed when dropped.
    struct Scratch(vmm_sys_util::tempdir::TempDir);

    impl Scratch {
        fn new() -> Self {
            let prefix = std::env::temp_dir().join("vmm-boot-");
            Self(vmm_sys_util::tempdir::TempDir::new_with_prefix(prefix).unwrap())
        }
        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.as_path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    /// A minimal arm64 Image header claiming `image_size` bytes.
    fn image(image_size: u64) -> Vec<u8> {
        let header = ImageHeader {
            text_offset: 0,
            image_size,
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.resize(4096, 0);
        bytes
    }

    fn error(config: &VmConfig) -> String {
        let err = BootImages::open(config).unwrap_err();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[test]
    fn places_a_valid_kernel_and_initramfs() {
        let scratch = Scratch::new();
        let mut config = VmConfig::new(scratch.file("Image", &image(0x100_0000)));
        config.initramfs = Some(scratch.file("initrd", &[7; 5000]));
        let images = BootImages::open(&config).unwrap();
        assert_eq!(images.layout.kernel_load, 0x4020_0000);
        assert_eq!(images.initramfs.as_ref().unwrap().1, 5000);
        assert!(images.layout.initrd.is_some());
    }

    #[test]
    fn names_missing_and_wrong_files() {
        let scratch = Scratch::new();
        let missing = VmConfig::new(scratch.0.as_path().join("nope"));
        assert!(
            error(&missing).starts_with("Cannot read kernel "),
            "{}",
            error(&missing)
        );

        let elf = VmConfig::new(scratch.file("vmlinux", b"\x7fELF\x02\x01\x01"));
        assert!(
            error(&elf).contains("too short to be an arm64 Image"),
            "{}",
            error(&elf)
        );

        let gz = VmConfig::new(scratch.file("Image.gz", &[0x1F, 0x8B, 8, 0, 0, 0]));
        assert!(error(&gz).contains("gzip-compressed"), "{}", error(&gz));

        let mut no_initrd = VmConfig::new(scratch.file("Image", &image(0x100_0000)));
        no_initrd.initramfs = Some(scratch.0.as_path().join("missing.cpio"));
        assert!(error(&no_initrd).starts_with("Cannot read initramfs"));

        let mut empty = no_initrd.clone();
        empty.initramfs = Some(scratch.file("empty.cpio", b""));
        assert!(
            error(&empty).ends_with("empty.cpio is empty"),
            "{}",
            error(&empty)
        );
    }

    #[test]
    fn memory_too_small_for_the_images_is_an_error() {
        let scratch = Scratch::new();
        let mut config = VmConfig::new(scratch.file("Image", &image(61 << 20)));
        config.memory_mib = 64;
        assert!(
            error(&config).starts_with("Guest memory of 64 MiB cannot hold the boot images"),
            "{}",
            error(&config)
        );
        config.memory_mib = 128;
        assert!(BootImages::open(&config).is_ok());
        config.initramfs = Some(scratch.file("big.cpio", &vec![0; 70 << 20]));
        assert!(
            error(&config).starts_with("Guest memory of 128 MiB"),
            "{}",
            error(&config)
        );
    }
}
