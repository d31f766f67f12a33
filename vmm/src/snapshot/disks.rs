//! A snapshot refers to its disk images by path. Each is recorded by size and modification
//! time once flushed, and a restore refuses an image that changed since: the guest's page
//! cache and file systems in the saved memory would no longer match what is on the disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One disk image as the snapshot saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFingerprint {
    /// The image.
    pub path: PathBuf,
    /// Its length in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
}

/// A disk image that is gone or changed since the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DiskCheckError {
    /// The image cannot be read.
    #[error("Cannot restore: disk image {path} cannot be read")]
    Missing {
        /// The image.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The image changed since the snapshot.
    #[error("Cannot restore: disk image {path} changed since the snapshot ({what})")]
    Changed {
        /// The image.
        path: PathBuf,
        /// What differs.
        what: String,
    },
}

impl DiskFingerprint {
    /// The fingerprint of the image at `path` now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        })
    }

    /// Checks that the image is as the snapshot saw it.
    pub fn check(&self) -> Result<(), DiskCheckError> {
        let now = Self::of(&self.path).map_err(|source| DiskCheckError::Missing {
            path: self.path.clone(),
            source,
        })?;
        let what = if now.size != self.size {
            format!("{} bytes, {} when saved", now.size, self.size)
        } else if now.mtime_ns != self.mtime_ns {
            "written to since".to_owned()
        } else {
            return Ok(());
        };
        Err(DiskCheckError::Changed {
            path: self.path.clone(),
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_image_that_is_untouched_passes_and_a_changed_or_missing_one_is_named() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("root.img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let saved = DiskFingerprint::of(&path).unwrap();
        saved.check().unwrap();
        // Reading it changes nothing.
        drop(std::fs::read(&path).unwrap());
        saved.check().unwrap();

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"more").unwrap();
        let err = saved.check().unwrap_err();
        assert!(
            matches!(&err, DiskCheckError::Changed { what, .. } if what == "4100 bytes, 4096 when saved"),
            "{err}"
        );

        // Same size, written again later.
        let resized = DiskFingerprint::of(&path).unwrap();
        let touched = DiskFingerprint {
            mtime_ns: resized.mtime_ns - 1,
            ..resized
        };
        assert!(matches!(
            touched.check(),
            Err(DiskCheckError::Changed { what, .. }) if what == "written to since"
        ));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(saved.check(), Err(DiskCheckError::Missing { .. })));
    }
}
