//! Opening `/dev/kvm` and telling the user, in one line, why a host cannot run arm64 guests.

use std::path::{Path, PathBuf};

/// The usual KVM device.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// Why this host cannot run the VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The KVM device does not exist.
    #[error("{0} does not exist: this host has no KVM")]
    NoKvmDevice(PathBuf),
    /// The KVM device exists but could not be opened.
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// The file is not a KVM device.
    #[error("{0} is not a KVM device")]
    NotKvm(PathBuf),
    /// KVM exists but runs guests of another architecture.
    #[error("KVM on this host runs {arch} guests; this VMM needs an arm64 (aarch64) host")]
    WrongArchitecture {
        /// The host architecture.
        arch: &'static str,
    },
    /// KVM lacks a capability an arm64 guest with PSCI needs.
    #[error("KVM on this host lacks arm64 support: no {missing}")]
    MissingCapability {
        /// The first missing capability.
        missing: &'static str,
    },
}

/// Checks that `path` exists; on a host that is not aarch64, also that it is KVM, and then
/// reports the architecture mismatch, which is the only thing left to say there.
pub fn check_kvm_device(path: &Path) -> Result<(), HypervisorError> {
    if !path.exists() {
        return Err(HypervisorError::NoKvmDevice(path.to_owned()));
    }
    if cfg!(target_arch = "aarch64") {
        return Ok(());
    }
    let kvm =
        crate::host::open_kvm(path).map_err(|err| HypervisorError::Open(path.to_owned(), err))?;
    if kvm.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(HypervisorError::NotKvm(path.to_owned()));
    }
    Err(HypervisorError::WrongArchitecture {
        arch: std::env::consts::ARCH,
    })
}

/// Opens a KVM device at an arbitrary path.
pub(crate) fn open_kvm(path: &Path) -> Result<kvm_ioctls::Kvm, std::io::Error> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    kvm_ioctls::Kvm::new_with_path(path).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_named() {
        let err = check_kvm_device(Path::new("/nonexistent/kvm")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/kvm does not exist: this host has no KVM"
        );
    }

    #[cfg(not(target_arch = "aarch64"))]
    #[test]
    fn a_file_that_is_not_kvm_is_named() {
        let err = check_kvm_device(Path::new("/dev/null")).unwrap_err();
        assert_eq!(err.to_string(), "/dev/null is not a KVM device");
    }
}
