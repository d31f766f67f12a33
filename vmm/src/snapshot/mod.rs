//! Snapshots of a suspended guest: its state file and its memory file, in one directory.
//!
//! Only a guest that called PSCI SYSTEM_SUSPEND is saved. Then every vCPU but the caller is
//! off, the caller restarts at the entry point it gave (MMU off, context id in `x0`), so no
//! register file is saved, and the guest has reset its virtio devices (virtio-mmio's freeze).

pub mod dir;
pub mod disks;
pub mod file;
pub mod memory;
pub mod request;
pub mod restore;
pub mod state;
#[cfg(target_arch = "aarch64")]
pub(crate) mod take;

pub use request::{AfterSnapshot, SnapshotPort, SnapshotRequest, SnapshotTaken};
pub use restore::RestoreError;

use crate::suspend::SuspendState;

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Only a suspended guest can be saved.
    #[error("Cannot snapshot the VM while it is {0}: only a suspended guest can be saved")]
    NotSuspended(&'static str),
    /// The host paused the VM.
    #[error("Cannot snapshot a paused VM: resume it first")]
    Paused,
    /// Another snapshot is being taken.
    #[error("Cannot take two snapshots at once")]
    Busy,
    /// The VM ended before the snapshot was taken.
    #[error("Cannot snapshot the VM: it stopped")]
    Stopped,
    /// The VM thread could not be told.
    #[error("Cannot hand the snapshot request to the VM thread")]
    Notify(#[source] std::io::Error),
    /// A virtio device is still live: the guest's driver did not reset it when it suspended.
    #[error("Cannot snapshot: the guest did not reset virtio device {0} when it suspended")]
    LiveDevice(String),
    /// The snapshot directory could not be written.
    #[error(transparent)]
    Directory(#[from] dir::SnapshotDirError),
    /// A part of the VM's state could not be read.
    #[error("Cannot read the {what} state")]
    Read {
        /// Which part.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SnapshotError {
    /// The HTTP status the API answers with: 409 when the VM is not in a state to be saved,
    /// 400 for a destination that cannot be one, 500 for the rest.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotSuspended(_)
            | Self::Paused
            | Self::Busy
            | Self::Stopped
            | Self::LiveDevice(_) => 409,
            Self::Directory(
                dir::SnapshotDirError::Destination(_) | dir::SnapshotDirError::NotASnapshot(_),
            ) => 400,
            _ => 500,
        }
    }
}

/// Whether a VM in `state` (and paused by the host or not) may be saved: only a guest that is
/// suspended, and not paused, is. Anything else is the [`SnapshotError`] the API answers 409 to.
pub fn may_snapshot(state: SuspendState, paused: bool) -> Result<(), SnapshotError> {
    if paused {
        return Err(SnapshotError::Paused);
    }
    if state != SuspendState::Suspended {
        return Err(SnapshotError::NotSuspended(state_name(state)));
    }
    Ok(())
}

/// How a state reads in an error.
pub fn state_name(state: SuspendState) -> &'static str {
    match state {
        SuspendState::Running => "running",
        SuspendState::Suspending => "suspending",
        SuspendState::Suspended => "suspended",
        SuspendState::Resuming => "resuming",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_suspended_guest_that_is_not_paused_may_be_saved() {
        use SuspendState::*;
        assert!(may_snapshot(Suspended, false).is_ok());
        for state in [Running, Suspending, Resuming] {
            let refused = may_snapshot(state, false).unwrap_err();
            assert_eq!(refused.http_status(), 409, "{state:?}");
            assert!(refused.to_string().contains(state_name(state)), "{refused}");
        }
        for state in [Running, Suspending, Suspended, Resuming] {
            let refused = may_snapshot(state, true).unwrap_err();
            assert!(
                matches!(refused, SnapshotError::Paused),
                "{state:?}: {refused}"
            );
            assert_eq!(refused.http_status(), 409);
        }
    }
}
