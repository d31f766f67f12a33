//! Opening a snapshot to restore: everything that can be checked before KVM is touched, so
//! that a bad snapshot is an error and never a half-restored guest.

use std::path::Path;

use super::dir::{MEMORY_FILE, STATE_FILE};
use super::disks::DiskCheckError;
use super::file::{self, StateFileError};
use super::memory::MemoryFileError;
use super::state::VmSnapshot;

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state file is missing, damaged or of another version.
    #[error(transparent)]
    State(#[from] StateFileError),
    /// The memory file is missing or does not match the state.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// A disk image is gone or changed since the snapshot.
    #[error(transparent)]
    Disk(#[from] DiskCheckError),
    /// The state describes a VM this `vmm` would refuse to start.
    #[error("Invalid snapshot {path}: its configuration is invalid")]
    Config {
        /// The snapshot directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: crate::ConfigError,
    },
    /// The state is not of a suspended guest this `vmm` can resume.
    #[error("Invalid snapshot {path}: {what}")]
    Inconsistent {
        /// The snapshot directory.
        path: std::path::PathBuf,
        /// What does not hold.
        what: String,
    },
    /// The host's counter runs at another frequency: the guest's clocks would run wrong.
    #[error(
        "Cannot restore on this host: its counter runs at {host} Hz, the snapshot's at {saved} Hz"
    )]
    CounterFrequency {
        /// The host's CNTFRQ.
        host: u64,
        /// The saved one.
        saved: u64,
    },
}

/// Reads and checks the snapshot in `dir`: its state file, its memory file's size, its disks,
/// and that its counter frequency is this host's (`host_frequency`, when known).
pub fn open(dir: &Path, host_frequency: Option<u64>) -> Result<VmSnapshot, RestoreError> {
    let mut snapshot: VmSnapshot = file::read(&dir.join(STATE_FILE))?;
    snapshot.path = dir.to_owned();
    let inconsistent = |what: String| RestoreError::Inconsistent {
        path: dir.to_owned(),
        what,
    };
    snapshot
        .config
        .validate()
        .map_err(|source| RestoreError::Config {
            path: dir.to_owned(),
            source,
        })?;
    let cpus = snapshot.config.cpus as usize;
    if snapshot.vcpu_mpidrs.len() != cpus || snapshot.gic.vcpus.len() != cpus {
        return Err(inconsistent(format!(
            "{cpus} vCPUs configured, {} MPIDRs and {} vGIC CPU interfaces saved",
            snapshot.vcpu_mpidrs.len(),
            snapshot.gic.vcpus.len()
        )));
    }
    if snapshot.suspended.index as usize >= cpus {
        return Err(inconsistent(format!(
            "the suspended vCPU {} is not one of its {cpus}",
            snapshot.suspended.index
        )));
    }
    if snapshot.ram_size != snapshot.config.memory_bytes() {
        return Err(inconsistent(format!(
            "{} bytes of RAM saved, {} configured",
            snapshot.ram_size,
            snapshot.config.memory_bytes()
        )));
    }
    let memory = dir.join(MEMORY_FILE);
    let found = std::fs::metadata(&memory)
        .map_err(|source| MemoryFileError::Io {
            what: "open",
            path: memory.clone(),
            source,
        })?
        .len();
    if found != snapshot.ram_size {
        return Err(MemoryFileError::Size {
            path: memory,
            found,
            expected: snapshot.ram_size,
        }
        .into());
    }
    for disk in &snapshot.disks {
        disk.check()?;
    }
    if snapshot.disks.len() != snapshot.config.disks.len() {
        return Err(inconsistent(format!(
            "{} disks configured, {} recorded",
            snapshot.config.disks.len(),
            snapshot.disks.len()
        )));
    }
    if let Some(host) = host_frequency {
        if host != snapshot.counter.cntfrq {
            return Err(RestoreError::CounterFrequency {
                host,
                saved: snapshot.counter.cntfrq,
            });
        }
    }
    Ok(snapshot)
}
