//! The API's Unix socket: created mode 0600 without a moment where it is wider, never
//! clobbering a live VMM's socket or a file that is not a socket, and removed on drop.
//!
//! Binding happens in a fresh 0700 directory next to the target, so no other user can reach
//! the socket before it is chmod-ed to 0600 (bind(2) creates it with the umask's mode); it is
//! then hard-linked onto the target, which, unlike rename(2), fails if anything appeared
//! there since the check. A stale socket (connect gets ECONNREFUSED) is removed first.
//! Two VMMs racing for the same stale path is the one window left: the loser's link fails.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

/// The longest socket path `sun_path` holds (108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Why the API socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    /// A path no Unix socket can have.
    #[error("API socket path {path} is {len} bytes; the limit is {MAX_SOCKET_PATH}")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A process accepts connections on the path.
    #[error("API socket {path} is in use by a running process")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The path holds something other than a socket.
    #[error("API socket path {path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be examined.
    #[error("Cannot inspect the API socket path {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Connecting to the existing socket failed other than with ECONNREFUSED.
    #[error("Cannot tell whether the API socket {path} is in use")]
    Probe {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The stale socket could not be removed.
    #[error("Cannot remove the stale API socket {path}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be created and published at the path.
    #[error("Cannot create the API socket {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A listening Unix socket at a path, mode 0600; the file is removed on drop.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode, so that drop never removes a successor's socket.
    id: (u64, u64),
}

impl ApiSocket {
    /// Binds a listening socket at `path`, replacing a stale socket but nothing else.
    pub fn bind(path: &Path) -> Result<Self, ApiSocketError> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ApiSocketError::PathTooLong {
                path: path.to_owned(),
                len,
            });
        }
        check_existing(path)?;
        let create = |source| ApiSocketError::Create {
            path: path.to_owned(),
            source,
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = PrivateDir::new(parent).map_err(create)?;
        let tmp = dir.0.join("s");
        // Bound through the directory's descriptor, whose /proc path is short: the temporary
        // name must not make a valid path of up to 107 bytes too long for sun_path.
        let dir_fd = fs::File::open(&dir.0).map_err(create)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}/s", dir_fd.as_raw_fd()));
        let listener = UnixListener::bind(&short).map_err(create)?;
        drop(dir_fd);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(create)?;
        let meta = fs::metadata(&tmp).map_err(create)?;
        fs::hard_link(&tmp, path).map_err(create)?;
        let _ = fs::remove_file(&tmp);
        Ok(Self {
            listener,
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// The path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                if let Err(err) = fs::remove_file(&self.path) {
                    log::warn!(
                        "Cannot remove the API socket {}: {err}",
                        self.path.display()
                    );
                }
            }
        }
    }
}

/// Refuses a live socket or a non-socket at `path`, and removes a stale socket.
fn check_existing(path: &Path) -> Result<(), ApiSocketError> {
    let path_buf = || path.to_owned();
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiSocketError::Inspect {
                path: path_buf(),
                source,
            });
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ApiSocketError::NotASocket { path: path_buf() });
        }
        Ok(_) => {}
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiSocketError::InUse { path: path_buf() }),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(ApiSocketError::RemoveStale {
                path: path_buf(),
                source: err,
            }),
            _ => Ok(()),
        },
        Err(source) => Err(ApiSocketError::Probe {
            path: path_buf(),
            source,
        }),
    }
}

/// A fresh 0700 directory, removed (with the temporary socket name) on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(parent: &Path) -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let mut last = None;
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let seed = nanos ^ std::process::id().rotate_left(16);
            let seed = seed
                ^ COUNTER
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(0x9e37_79b9);
            let dir = parent.join(format!(".api-{seed:08x}"));
            // Creation fails if the name exists, so the directory is ours alone.
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0.join("s"));
        let _ = fs::remove_dir(&self.0);
    }
}

/// Writes to a stream with MSG_NOSIGNAL: a peer that hung up is an EPIPE error, never a
/// SIGPIPE that would kill the VMM whatever the process's signal disposition.
pub(crate) struct NoSigPipe<'a>(pub(crate) &'a UnixStream);

impl Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes, and the borrowed stream keeps the fd
        // open for the call.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// poll(2) over `fds`, retrying on EINTR; `None` waits forever. Returns how many are ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    loop {
        // SAFETY: `fds` is an exclusively borrowed array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// Whether the peer closed its end entirely. A half-close (shutdown of its write side after
/// the request, as `socat` does) is not hanging up: such a client still reads the stream.
pub(crate) fn peer_closed(stream: &UnixStream) -> bool {
    // POLLHUP and POLLERR are reported without being asked for.
    let mut fds = [libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    }];
    match poll(&mut fds, Some(Duration::ZERO)) {
        Ok(_) => fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0,
        Err(_) => true,
    }
}
