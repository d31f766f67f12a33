//! The VM's configuration: what the CLI flags and the `--config` JSON file describe.

use std::path::PathBuf;

use arch_aarch64::fdt::CMDLINE_MAX_SIZE;
use arch_aarch64::layout::{MAX_VCPUS, RAM_ALIGN, RAM_MAX_SIZE, RAM_MIN_SIZE};
use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// Invalid configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("Cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON for a [`VmConfig`].
    #[error("Invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// No kernel was given.
    #[error("No kernel given: pass --kernel or set \"kernel\" in the config file")]
    NoKernel,
    /// The vCPU count is out of range.
    #[error("Invalid vCPU count {cpus}: must be 1 to {MAX_VCPUS}")]
    Cpus {
        /// The count given.
        cpus: u32,
    },
    /// The memory size is out of range or not a multiple of 2 MiB.
    #[error("Invalid memory size {mib} MiB: must be a multiple of {align} MiB from {min} to {max}", align = RAM_ALIGN / MIB, min = RAM_MIN_SIZE / MIB, max = RAM_MAX_SIZE / MIB)]
    Memory {
        /// The size given.
        mib: u64,
    },
    /// The command line does not fit.
    #[error("Kernel command line is {len} bytes; the limit is {}", CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
}

/// Everything needed to build and run a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// An uncompressed arm64 kernel `Image`.
    pub kernel: PathBuf,
    /// An initramfs (cpio, optionally compressed in a format the kernel understands).
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// The number of vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib", rename = "memory")]
    pub memory_mib: u64,
    /// Exit when the guest reboots instead of booting it again.
    #[serde(default)]
    pub no_reboot: bool,
    /// Offer PSCI SYSTEM_SUSPEND (suspend-to-RAM, "deep") to the guest when the host's KVM
    /// has `KVM_CAP_ARM_SYSTEM_SUSPEND`. Without it the guest only has s2idle.
    #[serde(default = "default_suspend")]
    pub suspend: bool,
}

fn default_suspend() -> bool {
    true
}

fn default_cmdline() -> String {
    "console=ttyS0".to_owned()
}

fn default_cpus() -> u32 {
    1
}

fn default_memory_mib() -> u64 {
    512
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: default_cmdline(),
            cpus: default_cpus(),
            memory_mib: default_memory_mib(),
            no_reboot: false,
            suspend: default_suspend(),
        }
    }

    /// Reads a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks what can be checked without touching files or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.cpus == 0 || self.cpus as usize > MAX_VCPUS {
            return Err(ConfigError::Cpus { cpus: self.cpus });
        }
        let bytes = self.memory_mib.saturating_mul(MIB);
        if !(RAM_MIN_SIZE..=RAM_MAX_SIZE).contains(&bytes) || bytes % RAM_ALIGN != 0 {
            return Err(ConfigError::Memory {
                mib: self.memory_mib,
            });
        }
        if self.cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
            });
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MIB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_takes_defaults_and_rejects_unknown_fields() {
        let config: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(config, VmConfig::new("/k"));
        let config: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "cpus": 4, "memory": 256, "no_reboot": true, "suspend": false}"#,
        )
        .unwrap();
        assert_eq!(
            (config.cpus, config.memory_mib, config.no_reboot),
            (4, 256, true)
        );
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "vcpus": 4}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpus`"), "{err}");
    }

    #[test]
    fn validates_cpus_memory_and_cmdline() {
        let ok = VmConfig::new("/k");
        assert!(ok.validate().is_ok());
        let with = |change: fn(&mut VmConfig)| {
            let mut config = ok.clone();
            change(&mut config);
            config.validate().unwrap_err().to_string()
        };
        assert_eq!(
            with(|c| c.cpus = 0),
            "Invalid vCPU count 0: must be 1 to 123"
        );
        assert_eq!(
            with(|c| c.cpus = 124),
            "Invalid vCPU count 124: must be 1 to 123"
        );
        assert!(with(|c| c.memory_mib = 4).starts_with("Invalid memory size 4 MiB"));
        assert!(with(|c| c.memory_mib = 255).starts_with("Invalid memory size 255 MiB"));
        assert!(with(|c| c.memory_mib = u64::MAX).starts_with("Invalid memory size"));
        assert_eq!(
            with(|c| c.cmdline = "x".repeat(2048)),
            "Kernel command line is 2048 bytes; the limit is 2047"
        );
        assert_eq!(
            with(|c| c.kernel = PathBuf::new()),
            ConfigError::NoKernel.to_string()
        );
    }
}
