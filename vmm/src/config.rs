//! The VM's configuration: what the CLI flags and the `--config` JSON file describe.

use std::path::PathBuf;

use arch_aarch64::fdt::CMDLINE_MAX_SIZE;
use arch_aarch64::layout::{MAX_VCPUS, RAM_ALIGN, RAM_MAX_SIZE, RAM_MIN_SIZE, VIRTIO_MMIO_SLOTS};
use arch_aarch64::psci::PsciVersion;
use serde::{Deserialize, Serialize};

use crate::seccomp::SeccompMode;

mod net;

pub use net::{MacAddress, NetConfig, NetConfigError, VsockConfig};

const MIB: u64 = 1 << 20;
/// The largest config file read: far more than any VM needs.
pub const CONFIG_MAX_SIZE: u64 = MIB;

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
    /// The config file is larger than [`CONFIG_MAX_SIZE`].
    #[error("Config file {path} is larger than 1 MiB")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The command line has a NUL byte, which would cut it short in the device tree.
    #[error("Kernel command line contains a NUL byte")]
    CmdlineNul,
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
    /// Invalid network or vsock settings.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// More virtio devices than virtio-mmio slots.
    #[error(
        "Too many virtio devices: {given} given (disks, network devices, vsock and rng), at most {VIRTIO_MMIO_SLOTS} fit"
    )]
    TooManyDevices {
        /// Devices given.
        given: usize,
    },
    /// A disk without a path.
    #[error("Disk {index} has no path")]
    DiskPath {
        /// Its position among the disks, from 0.
        index: usize,
    },
    /// A disk id that cannot be a virtio-blk serial.
    #[error("Invalid disk id {id:?}: must be 1 to 20 printable ASCII characters without ','")]
    DiskId {
        /// The id.
        id: String,
    },
    /// Two disks with one id.
    #[error("Duplicate disk id {0:?}")]
    DuplicateDiskId(String),
    /// A `--disk` option that cannot be parsed.
    #[error("Invalid --disk {text:?}: {reason}")]
    DiskOption {
        /// The option's text.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// The command line does not fit.
    #[error("Kernel command line is {len} bytes; the limit is {}", CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// A PSCI version below what KVM implements with PSCI 0.2 function ids.
    #[error("Invalid PSCI version {0}: the lowest is 0.2")]
    PsciVersion(PsciVersion),
}

/// Who keeps the vCPUs' PSCI power states (CPU_ON, CPU_OFF, AFFINITY_INFO).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuPowerMode {
    /// The VMM when the host's KVM can forward the calls (the SMCCC filter, Linux 6.4 and
    /// later), KVM otherwise.
    #[default]
    Auto,
    /// The VMM; a host that cannot forward the calls is an error.
    Vmm,
    /// KVM: each SYSTEM_SUSPEND and `vm.info` then stops every vCPU to read its state.
    Kvm,
}

/// `PsciVersion` as `"MAJOR.MINOR"` in JSON.
mod psci_version_text {
    use arch_aarch64::psci::PsciVersion;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(
        version: &Option<PsciVersion>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match version {
            Some(version) => serializer.collect_str(version),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<PsciVersion>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| text.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The raw image (a regular file or a block device), a multiple of 512 bytes.
    pub path: PathBuf,
    /// Give the guest read-only access (`VIRTIO_BLK_F_RO`).
    #[serde(default)]
    pub readonly: bool,
    /// The serial the guest reads (`/sys/block/vdX/serial`), at most 20 bytes; `diskN` (N its
    /// position from 0) when unset.
    #[serde(default)]
    pub id: Option<String>,
}

impl DiskConfig {
    /// A writable disk on `path` with the default id.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readonly: false,
            id: None,
        }
    }

    /// Parses the CLI form `path=FILE[,readonly=on|off][,id=NAME]`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::DiskOption {
            text: text.to_owned(),
            reason,
        };
        let mut disk = Self::new("");
        let mut has_path = false;
        for item in text.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(format!("{item:?} is not key=value")))?;
            match key {
                "path" if !value.is_empty() => {
                    disk.path = PathBuf::from(value);
                    has_path = true;
                }
                "readonly" => {
                    disk.readonly = match value {
                        "on" | "true" => true,
                        "off" | "false" => false,
                        _ => return Err(invalid(format!("readonly={value} is not on or off"))),
                    }
                }
                "id" => disk.id = Some(value.to_owned()),
                _ => return Err(invalid(format!("unknown or empty key {key:?}"))),
            }
        }
        if !has_path {
            return Err(invalid("no path=FILE".to_owned()));
        }
        Ok(disk)
    }
}

/// The serial of disk `index`: its id, or `diskN`.
pub fn disk_id(disk: &DiskConfig, index: usize) -> String {
    disk.id.clone().unwrap_or_else(|| format!("disk{index}"))
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
    /// virtio-blk disks, in the order the guest enumerates them (`vda`, `vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Give the guest a virtio-rng entropy device (`/dev/hwrng`).
    #[serde(default = "default_rng")]
    pub rng: bool,
    /// virtio-net devices on host taps, in the order the guest enumerates them (`eth0`, ...).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device (a guest has at most one).
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The seccomp filters of the VMM's threads: `on` (a system call outside a thread's list
    /// kills the process), `log`, `trap` or `off`.
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// Who keeps the vCPUs' power states.
    #[serde(default)]
    pub cpu_power: CpuPowerMode,
    /// Lower the PSCI version the guest sees (KVM's is the default and the ceiling), e.g.
    /// `"1.1"` to hide SYSTEM_OFF2 from a guest.
    #[serde(default, with = "psci_version_text")]
    pub psci_version: Option<PsciVersion>,
}

fn default_rng() -> bool {
    true
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
            disks: Vec::new(),
            rng: default_rng(),
            nets: Vec::new(),
            vsock: None,
            seccomp: SeccompMode::default(),
            cpu_power: CpuPowerMode::default(),
            psci_version: None,
        }
    }

    /// Reads a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let read_error = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = crate::boot_images::open_regular_file(path).map_err(read_error)?;
        // `/dev/zero` is refused above; a huge regular file is cut off here.
        let mut text = String::new();
        file.take(CONFIG_MAX_SIZE + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > CONFIG_MAX_SIZE {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
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
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        if let Some(version) = self.psci_version.filter(|&v| v < PsciVersion::V0_2) {
            return Err(ConfigError::PsciVersion(version));
        }
        let given = self.disks.len()
            + self.nets.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng);
        if given > VIRTIO_MMIO_SLOTS as usize {
            return Err(ConfigError::TooManyDevices { given });
        }
        net::validate(&self.nets, self.vsock.as_ref())?;
        let mut ids = std::collections::HashSet::new();
        for (index, disk) in self.disks.iter().enumerate() {
            if disk.path.as_os_str().is_empty() {
                return Err(ConfigError::DiskPath { index });
            }
            let id = disk_id(disk, index);
            if id.is_empty()
                || id.len() > 20
                || !id
                    .bytes()
                    .all(|byte| byte.is_ascii_graphic() && byte != b',')
            {
                return Err(ConfigError::DiskId { id });
            }
            if !ids.insert(id.clone()) {
                return Err(ConfigError::DuplicateDiskId(id));
            }
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
        let config: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "seccomp": "log"}"#).unwrap();
        assert_eq!(config.seccomp, SeccompMode::Log);
        assert_eq!(VmConfig::new("/k").seccomp, SeccompMode::On);
        let err =
            serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "seccomp": "yes"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `yes`"), "{err}");
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "vcpus": 4}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpus`"), "{err}");
    }

    #[test]
    fn psci_version_and_cpu_power_round_trip_through_json() {
        let config: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "psci_version": "1.1", "cpu_power": "kvm"}"#)
                .unwrap();
        assert_eq!(config.psci_version, Some(PsciVersion::new(1, 1)));
        assert_eq!(config.cpu_power, CpuPowerMode::Kvm);
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), config);
        assert_eq!(VmConfig::new("/k").cpu_power, CpuPowerMode::Auto);
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "psci_version": "1"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("Invalid PSCI version"), "{err}");
        let config = VmConfig {
            psci_version: Some(PsciVersion::new(0, 1)),
            ..VmConfig::new("/k")
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "Invalid PSCI version 0.1: the lowest is 0.2"
        );
    }

    #[test]
    fn disks_parse_from_the_cli_and_json() {
        let disk = DiskConfig::parse("path=/img/data.raw,readonly=on,id=data").unwrap();
        assert_eq!(
            disk,
            DiskConfig {
                path: "/img/data.raw".into(),
                readonly: true,
                id: Some("data".into()),
            }
        );
        assert_eq!(
            DiskConfig::parse("path=a.img").unwrap(),
            DiskConfig::new("a.img")
        );
        for (text, reason) in [
            ("a.img", "\"a.img\" is not key=value"),
            ("readonly=on", "no path=FILE"),
            ("path=a,readonly=yes", "readonly=yes is not on or off"),
            ("path=a,cache=none", "unknown or empty key \"cache\""),
            ("path=", "unknown or empty key \"path\""),
        ] {
            assert_eq!(
                DiskConfig::parse(text).unwrap_err().to_string(),
                format!("Invalid --disk {text:?}: {reason}")
            );
        }
        let config: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "disks": [{"path": "/r", "readonly": true}, {"path": "/d", "id": "data"}], "rng": false}"#,
        )
        .unwrap();
        assert_eq!(config.disks.len(), 2);
        assert!(config.disks[0].readonly && !config.rng);
        assert_eq!(disk_id(&config.disks[0], 0), "disk0");
        assert_eq!(disk_id(&config.disks[1], 1), "data");
    }

    #[test]
    fn validates_disk_count_and_ids() {
        let with_disks = |disks: Vec<DiskConfig>, rng: bool| {
            let mut config = VmConfig::new("/k");
            config.disks = disks;
            config.rng = rng;
            config.validate().map_err(|err| err.to_string())
        };
        let many = |n: usize| (0..n).map(|i| DiskConfig::new(format!("/d{i}"))).collect();
        assert!(with_disks(many(31), true).is_ok());
        assert_eq!(
            with_disks(many(32), true).unwrap_err(),
            "Too many virtio devices: 33 given (disks, network devices, vsock and rng), at most 32 fit"
        );
        assert!(with_disks(many(32), false).is_ok());
        let named = |id: &str| DiskConfig {
            id: Some(id.into()),
            ..DiskConfig::new("/d")
        };
        assert_eq!(
            with_disks(vec![named("a"), named("a")], true).unwrap_err(),
            "Duplicate disk id \"a\""
        );
        for bad in ["", "has space", "x".repeat(21).as_str()] {
            assert!(
                with_disks(vec![named(bad)], true)
                    .unwrap_err()
                    .starts_with("Invalid disk id"),
                "{bad:?}"
            );
        }
        assert_eq!(
            with_disks(vec![named("disk1"), DiskConfig::new("/e")], true).unwrap_err(),
            "Duplicate disk id \"disk1\""
        );
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
        assert_eq!(
            with(|c| c.cmdline = "console=ttyS0\0 init=/evil".into()),
            "Kernel command line contains a NUL byte"
        );
    }

    /// The example config files in `resources/examples/`, by name.
    const EXAMPLES: &[(&str, &str)] = &[
        (
            "disk-root.json",
            include_str!("../../resources/examples/disk-root.json"),
        ),
        (
            "initramfs.json",
            include_str!("../../resources/examples/initramfs.json"),
        ),
        (
            "network.json",
            include_str!("../../resources/examples/network.json"),
        ),
        (
            "no-suspend.json",
            include_str!("../../resources/examples/no-suspend.json"),
        ),
    ];

    #[test]
    fn example_configs_parse_and_validate() {
        for (name, text) in EXAMPLES {
            let config: VmConfig =
                serde_json::from_str(text).unwrap_or_else(|err| panic!("{name}: {err}"));
            config
                .validate()
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        let root: VmConfig = serde_json::from_str(EXAMPLES[0].1).unwrap();
        assert_eq!(
            root.disks,
            vec![
                DiskConfig {
                    id: Some("root".into()),
                    ..DiskConfig::new("rootfs.ext4")
                },
                DiskConfig {
                    path: "data.img".into(),
                    readonly: true,
                    id: Some("data".into()),
                },
            ]
        );
        assert!(root.cmdline.contains("root=/dev/vda") && root.rng);
        let network: VmConfig = serde_json::from_str(EXAMPLES[2].1).unwrap();
        assert_eq!(network.nets[0].mac().to_string(), "52:54:00:12:34:56");
        assert_eq!(network.vsock.map(|vsock| vsock.cid), Some(3));

        // Every example in the directory is listed above (checked where the sources are; not
        // in the emulated arm64 host, which runs this test executable without them).
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/examples");
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut found: Vec<String> = entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".json"))
                .collect();
            found.sort();
            let listed: Vec<&str> = EXAMPLES.iter().map(|(name, _)| *name).collect();
            assert_eq!(
                found, listed,
                "resources/examples/*.json and EXAMPLES differ"
            );
        }
    }
}
