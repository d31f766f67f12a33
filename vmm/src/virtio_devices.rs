//! The VM's virtio devices as the host sees them: disk images opened and locked once, before
//! KVM is touched and for the VM's whole life (reboots included), and what `vm.info`
//! reports about each device.

use std::path::PathBuf;
use std::sync::Arc;

use devices::virtio::{DeviceCounters, DeviceKind, DeviceStats, DiskImage, DiskImageError};
use serde::Serialize;

use crate::config::{VmConfig, disk_id};

/// A disk image opened for the VM, with the serial the guest sees.
#[derive(Debug)]
pub struct OpenedDisk {
    /// The serial (`--disk id=`, or `diskN`).
    pub id: String,
    /// The locked image.
    pub image: Arc<DiskImage>,
}

/// Opens and locks every disk of `config`, in order; the first failure is returned.
pub fn open_disks(config: &VmConfig) -> Result<Vec<OpenedDisk>, DiskImageError> {
    config
        .disks
        .iter()
        .enumerate()
        .map(|(index, disk)| {
            Ok(OpenedDisk {
                id: disk_id(disk, index),
                image: Arc::new(DiskImage::open(&disk.path, disk.readonly)?),
            })
        })
        .collect()
}

/// One virtio device in `vm.info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// `block` or `rng`.
    pub kind: DeviceKind,
    /// A disk's serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A disk's image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Whether the guest may only read the disk.
    pub readonly: bool,
    /// Its virtio-mmio window.
    pub mmio_base: u64,
    /// Its interrupt (SPI number).
    pub spi: u32,
    /// Features, activations, resets and requests of this boot.
    #[serde(flatten)]
    pub stats: DeviceStats,
}

/// A device of the running boot: what it is, and its live counters.
#[derive(Clone, Debug)]
pub(crate) struct AttachedDevice {
    pub info: DeviceInfo,
    pub counters: Arc<DeviceCounters>,
}

impl AttachedDevice {
    /// Its info with the counters as they are now.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            stats: self.counters.snapshot(),
            ..self.info.clone()
        }
    }
}
