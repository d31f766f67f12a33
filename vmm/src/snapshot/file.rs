//! The state file: one header line with the format's name, version, checksum and length, then
//! the state as JSON.
//!
//! ```text
//! vmm-snapshot v1 crc32=1c291ca3 bytes=18342
//! {"config":{...},...}
//! ```
//!
//! The header is checked before the JSON is parsed, so a truncated, corrupted or newer file
//! is named as such instead of surfacing as a JSON syntax error.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first word of every state file.
const MAGIC: &str = "vmm-snapshot";
/// The version this `vmm` writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Far above any real state (a few hundred KiB with 8 vCPUs), so that a wrong file is not
/// read whole into memory.
const MAX_STATE_BYTES: u64 = 64 << 20;

/// Failures reading or writing a state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file could not be read or written.
    #[error("Cannot access the state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the format's header.
    #[error("Invalid state file {0}: not a vmm snapshot")]
    NotASnapshot(PathBuf),
    /// Written by a `vmm` with another format.
    #[error(
        "Cannot restore {path}: it is a version {found} snapshot, and this vmm reads version {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("Invalid state file {path}: truncated ({found} of {expected} bytes)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes after the header.
        found: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// Longer than its header says, or larger than any state file.
    #[error("Invalid state file {0}: longer than its header says")]
    TooLong(PathBuf),
    /// The checksum does not match.
    #[error(
        "Invalid state file {path}: corrupted (checksum {found:08x}, header says {expected:08x})"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum of the content.
        found: u32,
        /// The checksum in the header.
        expected: u32,
    },
    /// The JSON does not describe a state this `vmm` knows.
    #[error("Invalid state file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The state could not be turned into JSON.
    #[error("Cannot encode the VM state")]
    Encode(#[source] serde_json::Error),
}

/// The header line for `body`.
fn header(body: &[u8]) -> String {
    format!(
        "{MAGIC} v{FORMAT_VERSION} crc32={:08x} bytes={}\n",
        crc32fast::hash(body),
        body.len()
    )
}

/// The whole file for `state`.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, StateFileError> {
    let body = serde_json::to_vec(state).map_err(StateFileError::Encode)?;
    let mut bytes = header(&body).into_bytes();
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Writes `state` to a new file at `path` and syncs it.
pub fn write<T: Serialize>(path: &Path, state: &T) -> Result<(), StateFileError> {
    let bytes = encode(state)?;
    let io = |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads and checks the state file at `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, StateFileError> {
    use std::io::Read;
    let io = |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StateFileError::TooLong(path.to_owned()));
    }
    decode(path, &bytes)
}

/// Checks and parses a state file's bytes; `path` is for the errors.
pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, StateFileError> {
    let not_a_snapshot = || StateFileError::NotASnapshot(path.to_owned());
    let end = bytes
        .iter()
        .take(128)
        .position(|&b| b == b'\n')
        .ok_or_else(not_a_snapshot)?;
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| not_a_snapshot())?;
    let body = &bytes[end + 1..];
    let mut words = line.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(not_a_snapshot());
    }
    let version: u32 = words
        .next()
        .and_then(|word| word.strip_prefix('v'))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(not_a_snapshot)?;
    if version != FORMAT_VERSION {
        return Err(StateFileError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let mut field = |name: &str| {
        words
            .next()
            .and_then(|word| word.strip_prefix(name))
            .ok_or_else(not_a_snapshot)
    };
    let crc = u32::from_str_radix(field("crc32=")?, 16).map_err(|_| not_a_snapshot())?;
    let length: u64 = field("bytes=")?.parse().map_err(|_| not_a_snapshot())?;
    let found = body.len() as u64;
    if found < length {
        return Err(StateFileError::Truncated {
            path: path.to_owned(),
            found,
            expected: length,
        });
    }
    if found > length {
        return Err(StateFileError::TooLong(path.to_owned()));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(StateFileError::Checksum {
            path: path.to_owned(),
            found: actual,
            expected: crc,
        });
    }
    serde_json::from_slice(body).map_err(|source| StateFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "guest".into(),
            values: vec![1, u64::MAX, 0],
        }
    }

    fn decoded(bytes: &[u8]) -> Result<Sample, StateFileError> {
        decode(Path::new("state"), bytes)
    }

    #[test]
    fn a_state_reads_back_through_a_file() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("state");
        write(&path, &sample()).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap(), sample());
        // Never over an existing file.
        assert!(matches!(
            write(&path, &sample()),
            Err(StateFileError::Io { .. })
        ));
    }

    #[test]
    fn the_header_names_format_version_checksum_and_length() {
        let bytes = encode(&sample()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let (line, body) = text.split_once('\n').unwrap();
        assert_eq!(
            line,
            format!(
                "vmm-snapshot v1 crc32={:08x} bytes={}",
                crc32fast::hash(body.as_bytes()),
                body.len()
            )
        );
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let good = encode(&sample()).unwrap();
        let truncated = &good[..good.len() - 3];
        assert!(matches!(
            decoded(truncated),
            Err(StateFileError::Truncated { found, expected, .. }) if expected == found + 3
        ));
        let mut longer = good.clone();
        longer.push(b' ');
        assert!(matches!(decoded(&longer), Err(StateFileError::TooLong(_))));
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert!(matches!(
            decoded(&flipped),
            Err(StateFileError::Checksum { .. })
        ));
        let newer = String::from_utf8(good.clone()).unwrap().replacen(
            "vmm-snapshot v1 ",
            "vmm-snapshot v2 ",
            1,
        );
        assert!(matches!(
            decoded(newer.as_bytes()),
            Err(StateFileError::Version { found: 2, .. })
        ));
        for other in [
            &b""[..],
            b"\x7fELF",
            b"{\"name\":\"guest\"}\n",
            b"vmm-snapshot v1\n",
        ] {
            assert!(
                matches!(decoded(other), Err(StateFileError::NotASnapshot(_))),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_well_formed_file_of_another_shape_is_a_parse_error() {
        let bytes = encode(&vec![1u8, 2, 3]).unwrap();
        assert!(matches!(decoded(&bytes), Err(StateFileError::Parse { .. })));
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let err = read::<Sample>(Path::new("/nonexistent/state")).unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "Cannot access the state file /nonexistent/state: No such file or directory (os error 2)"
        );
    }
}
