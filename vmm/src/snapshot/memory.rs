//! Guest memory in a snapshot: written as a sparse file whose holes are the pages that hold
//! only zeros (never touched, or cleared), and mapped back `MAP_PRIVATE`, so that a restored
//! guest loads a page from the file when it first touches it and restoring does not grow
//! with guest RAM.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Pages are compared and written in runs of at most this many bytes.
const MAX_RUN: usize = 1 << 20;
/// Pagemap entries read at a time.
const PAGEMAP_BATCH: usize = 4096;
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

/// Failures writing or mapping the memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file could not be created, written, opened or synced.
    #[error("Cannot {what} the memory file {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's length is not the guest's RAM size.
    #[error("Invalid memory file {path}: {found} bytes, the snapshot's guest has {expected}")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its length.
        found: u64,
        /// The RAM size in the state file.
        expected: u64,
    },
    /// The file could not be mapped.
    #[error("Cannot map the memory file {path}")]
    Map {
        /// The file.
        path: PathBuf,
        /// vm-memory's error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The mapping could not become guest memory.
    #[error("Cannot place the memory file at guest address {0:#x}")]
    Place(u64),
}

/// What writing the memory file stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryWritten {
    /// The file's length: the guest's RAM.
    pub size: u64,
    /// Bytes of data written; the rest are holes.
    pub stored: u64,
}

/// Which pages of a mapping were ever touched, from `/proc/self/pagemap`: a page neither
/// present nor swapped out of private anonymous memory holds zeros.
struct Pagemap {
    file: File,
    page: usize,
}

impl Pagemap {
    fn open(page: usize) -> std::io::Result<Self> {
        Ok(Self {
            file: File::open("/proc/self/pagemap")?,
            page,
        })
    }

    /// Whether each page from `address` on, for `pages` pages, was touched.
    fn touched(&self, address: usize, pages: usize, out: &mut Vec<bool>) -> std::io::Result<()> {
        let mut raw = vec![0u8; pages * 8];
        self.file
            .read_exact_at(&mut raw, (address / self.page * 8) as u64)?;
        out.clear();
        out.extend(raw.chunks_exact(8).map(|entry| {
            let entry = u64::from_le_bytes(entry.try_into().unwrap_or_default());
            entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
        }));
        Ok(())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Writes `bytes` (one guest RAM region as the host maps it) to `file` from offset 0,
/// leaving holes for the pages that hold only zeros. With `anonymous`, pages the pagemap
/// shows as never touched are skipped without being read.
fn write_region(file: &File, bytes: &[u8], anonymous: bool) -> std::io::Result<u64> {
    let page = page_size();
    let pagemap = if anonymous {
        Pagemap::open(page).ok()
    } else {
        None
    };
    let mut touched = Vec::new();
    let mut stored = 0u64;
    let mut run: Option<(usize, usize)> = None;
    let mut flush = |run: &mut Option<(usize, usize)>| -> std::io::Result<()> {
        if let Some((start, end)) = run.take() {
            file.write_all_at(&bytes[start..end], start as u64)?;
            stored += (end - start) as u64;
        }
        Ok(())
    };
    let pages = bytes.len() / page;
    let mut first = 0;
    while first < pages {
        let batch = PAGEMAP_BATCH.min(pages - first);
        let known = match &pagemap {
            Some(map) => map
                .touched(bytes.as_ptr() as usize + first * page, batch, &mut touched)
                .is_ok(),
            None => false,
        };
        for i in 0..batch {
            let start = (first + i) * page;
            let data = &bytes[start..start + page];
            let untouched = known && touched.get(i) == Some(&false);
            let zero = untouched || data.iter().all(|&b| b == 0);
            match (&mut run, zero) {
                (Some((_, end)), false) if *end == start && *end - start < MAX_RUN => {
                    *end += page;
                }
                (_, false) => {
                    flush(&mut run)?;
                    run = Some((start, start + page));
                }
                (_, true) => flush(&mut run)?,
            }
            if matches!(run, Some((s, e)) if e - s >= MAX_RUN) {
                flush(&mut run)?;
            }
        }
        first += batch;
    }
    flush(&mut run)?;
    Ok(stored)
}

/// Writes guest RAM (one region, as `vmm` lays it out) to a new sparse file at `path` and
/// syncs it. Nothing may write guest memory meanwhile: every vCPU is parked and the guest
/// has reset its devices. `anonymous` says the memory is the boot's own anonymous mapping
/// (not a restored guest's file mapping), whose untouched pages need not be read.
pub fn write(
    path: &Path,
    memory: &GuestMemoryMmap,
    anonymous: bool,
) -> Result<MemoryWritten, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("create"))?;
    // vmm lays guest RAM out as one region.
    let mut regions = memory.iter();
    let (Some(region), None) = (regions.next(), regions.next()) else {
        return Err(io("lay out")(std::io::Error::other(
            "guest RAM is not one region",
        )));
    };
    let size = region.len();
    file.set_len(size).map_err(io("size"))?;
    // SAFETY: the region maps `size` bytes at `as_ptr()` for as long as `memory` lives;
    // nothing writes them while the snapshot is taken (see above).
    let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr().cast_const(), size as usize) };
    let stored = write_region(&file, bytes, anonymous).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    Ok(MemoryWritten { size, stored })
}

/// Maps the memory file at `path` as guest RAM of `size` bytes at `start`, copy-on-write: the
/// guest's writes never reach the file.
pub fn map(path: &Path, start: u64, size: u64) -> Result<GuestMemoryMmap, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let file = File::open(path).map_err(io("open"))?;
    let found = file.metadata().map_err(io("inspect"))?.len();
    if found != size {
        return Err(MemoryFileError::Size {
            path: path.to_owned(),
            found,
            expected: size,
        });
    }
    let region = MmapRegionBuilder::new(size as usize)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(|source| MemoryFileError::Map {
            path: path.to_owned(),
            source,
        })?;
    let region =
        GuestRegionMmap::new(region, GuestAddress(start)).ok_or(MemoryFileError::Place(start))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|_| MemoryFileError::Place(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;
    use vmm_sys_util::tempdir::TempDir;

    const MIB: usize = 1 << 20;

    fn guest(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x4000_0000), size)]).unwrap()
    }

    #[test]
    fn only_pages_with_data_are_stored_and_they_read_back_in_a_private_map() {
        let memory = guest(64 * MIB);
        let base = 0x4000_0000u64;
        // Data at the start, in the middle across a page boundary, and at the very end; a
        // page written with zeros counts as empty.
        memory.write_slice(b"kernel", GuestAddress(base)).unwrap();
        memory
            .write_slice(&[0xa5; 6000], GuestAddress(base + 32 * MIB as u64 - 100))
            .unwrap();
        memory
            .write_slice(&[0u8; 4096], GuestAddress(base + 8 * MIB as u64))
            .unwrap();
        memory
            .write_slice(b"end", GuestAddress(base + 64 * MIB as u64 - 3))
            .unwrap();
        for anonymous in [true, false] {
            let dir = TempDir::new().unwrap();
            let path = dir.as_path().join("memory");
            let written = write(&path, &memory, anonymous).unwrap();
            let page = page_size() as u64;
            assert_eq!(written.size, 64 * MIB as u64);
            // 1 + 3 (6000 bytes across a boundary) + 1 pages.
            assert_eq!(written.stored, 5 * page, "anonymous {anonymous}");
            let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
            assert!(blocks <= 5 * page + 64 * 1024, "{blocks} bytes allocated");

            let restored = map(&path, base, 64 * MIB as u64).unwrap();
            let mut check = [0u8; 6000];
            restored
                .read_slice(&mut check, GuestAddress(base + 32 * MIB as u64 - 100))
                .unwrap();
            assert!(check.iter().all(|&b| b == 0xa5));
            let mut word = [0u8; 6];
            restored.read_slice(&mut word, GuestAddress(base)).unwrap();
            assert_eq!(&word, b"kernel");
            // Writes stay in the process: the file keeps the snapshot.
            restored.write_slice(b"KERNEL", GuestAddress(base)).unwrap();
            assert_eq!(&std::fs::read(&path).unwrap()[..6], b"kernel");
        }
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_or_missing_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        assert!(matches!(
            map(&path, 0x4000_0000, 8192),
            Err(MemoryFileError::Size {
                found: 4096,
                expected: 8192,
                ..
            })
        ));
        assert!(matches!(
            map(&dir.as_path().join("gone"), 0x4000_0000, 8192),
            Err(MemoryFileError::Io { what: "open", .. })
        ));
    }

    #[test]
    fn an_existing_file_is_never_written_over() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        std::fs::write(&path, b"keep").unwrap();
        assert!(matches!(
            write(&path, &guest(MIB), true),
            Err(MemoryFileError::Io { what: "create", .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
