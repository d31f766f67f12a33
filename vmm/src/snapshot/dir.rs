//! Writing a snapshot directory so that a crash never leaves a half snapshot that looks
//! complete: everything goes into a hidden sibling, is synced, and only then takes the
//! destination's name, in one `rename` (or `renameat2(RENAME_EXCHANGE)` over an older
//! snapshot, which is then removed).
//!
//! Replacing an older snapshot this way also keeps a guest restored from it safe: its memory
//! file stays mapped, unlinked, until the guest ends, and is never written over in place.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The guest memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Failures creating or publishing a snapshot directory.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDirError {
    /// The destination has no parent directory or no name.
    #[error("Invalid snapshot destination {0}")]
    Destination(PathBuf),
    /// Something else than a snapshot is in the way.
    #[error("Cannot write the snapshot to {0}: it exists and is not a snapshot directory")]
    NotASnapshot(PathBuf),
    /// A file system operation failed.
    #[error("Cannot {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the content failed; the partial directory was removed.
    #[error(transparent)]
    Content(Box<dyn std::error::Error + Send + Sync>),
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotDirError + 'a {
    move |source| SnapshotDirError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Whether `dir` holds a snapshot (its state file).
fn is_snapshot(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotDirError> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io("sync", dir))
}

/// Swaps two paths atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let c = |path: &Path| {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths; no memory is written.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates the snapshot at `destination`: `write` fills a fresh directory (and syncs the
/// files it writes), which then becomes `destination`. An existing snapshot there is
/// replaced; anything else there is an error and stays untouched.
pub fn publish<E>(
    destination: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), SnapshotDirError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let (Some(parent), Some(name)) = (destination.parent(), destination.file_name()) else {
        return Err(SnapshotDirError::Destination(destination.to_owned()));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let replacing = match std::fs::symlink_metadata(destination) {
        Ok(_) if is_snapshot(destination) && destination.is_dir() => true,
        Ok(_) => return Err(SnapshotDirError::NotASnapshot(destination.to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => return Err(io("inspect", destination)(err)),
    };
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = parent.join(partial_name);
    // A partial directory of ours can only be left by an earlier failure of this process.
    let _ = std::fs::remove_dir_all(&partial);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&partial)
            .map_err(io("create", &partial))?;
    }
    let filled = write(&partial)
        .map_err(|err| SnapshotDirError::Content(Box::new(err)))
        .and_then(|()| sync_dir(&partial));
    if let Err(err) = filled {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(err);
    }
    if replacing {
        exchange(&partial, destination).map_err(io("replace", destination))?;
        // `partial` now holds the older snapshot.
        if let Err(err) = std::fs::remove_dir_all(&partial) {
            log::warn!(
                "Cannot remove the replaced snapshot {}: {err}",
                partial.display()
            );
        }
    } else {
        std::fs::rename(&partial, destination).map_err(io("rename into", destination))?;
    }
    sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn write_files(marker: &'static str) -> impl FnOnce(&Path) -> Result<(), std::io::Error> {
        move |dir| {
            std::fs::write(dir.join(STATE_FILE), marker)?;
            std::fs::write(dir.join(MEMORY_FILE), b"")
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_appears_whole_and_replaces_an_older_one() {
        let root = TempDir::new().unwrap();
        let destination = root.as_path().join("a");
        publish(&destination, write_files("first")).unwrap();
        assert_eq!(entries(&destination), ["memory", "state"]);
        // A process holding the older memory file open still reads it after the replacement.
        let older = std::fs::File::open(destination.join(STATE_FILE)).unwrap();
        publish(&destination, write_files("second")).unwrap();
        assert_eq!(
            std::fs::read_to_string(destination.join(STATE_FILE)).unwrap(),
            "second"
        );
        assert_eq!(std::io::read_to_string(older).unwrap(), "first");
        // Nothing is left beside it.
        assert_eq!(entries(root.as_path()), ["a"]);
    }

    #[test]
    fn a_failed_write_leaves_neither_a_snapshot_nor_a_partial_directory() {
        let root = TempDir::new().unwrap();
        let destination = root.as_path().join("a");
        let failed = publish(&destination, |dir: &Path| {
            std::fs::write(dir.join(STATE_FILE), "half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(matches!(failed, Err(SnapshotDirError::Content(_))));
        assert!(entries(root.as_path()).is_empty());

        // Over an existing snapshot, the older one stays as it was.
        publish(&destination, write_files("first")).unwrap();
        let failed = publish(&destination, |_: &Path| Err(std::io::Error::other("no")));
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(destination.join(STATE_FILE)).unwrap(),
            "first"
        );
        assert_eq!(entries(root.as_path()), ["a"]);
    }

    #[test]
    fn what_is_not_a_snapshot_is_never_replaced() {
        let root = TempDir::new().unwrap();
        let file = root.as_path().join("notes.txt");
        std::fs::write(&file, "keep me").unwrap();
        let dir = root.as_path().join("photos");
        std::fs::create_dir(&dir).unwrap();
        for destination in [&file, &dir] {
            assert!(matches!(
                publish(destination, write_files("x")),
                Err(SnapshotDirError::NotASnapshot(_))
            ));
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        assert_eq!(entries(root.as_path()), ["notes.txt", "photos"]);
        assert!(matches!(
            publish(Path::new("/"), write_files("x")),
            Err(SnapshotDirError::Destination(_))
        ));
        assert!(matches!(
            publish(&root.as_path().join("missing/a"), write_files("x")),
            Err(SnapshotDirError::Io { what: "create", .. })
        ));
    }
}
