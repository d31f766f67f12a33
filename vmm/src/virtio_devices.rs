//! The VM's virtio devices as the host sees them: disk images opened and locked once, before
//! KVM is touched and for the VM's whole life (reboots included), and what `vm.info`
//! reports about each device.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::virtio::tap::{Tap, TapError};
use devices::virtio::{
    DeviceCounters, DeviceKind, DeviceStats, DiskImage, DiskImageError, VsockDevice, VsockError,
};
use serde::Serialize;

use crate::config::{MacAddress, VmConfig, VsockConfig, disk_id};

/// A disk image opened for the VM, with the serial the guest sees.
#[derive(Debug)]
pub struct OpenedDisk {
    /// The serial (`--disk id=`, or `diskN`).
    pub id: String,
    /// The locked image.
    pub image: Arc<DiskImage>,
}

/// A tap opened for the VM (created if it was missing, and then removed when the VM ends),
/// with the guest's MAC address.
#[derive(Debug)]
pub struct OpenedTap {
    /// The tap.
    pub tap: Arc<Tap>,
    /// The guest's address.
    pub mac: MacAddress,
}

/// What the VM's devices use on the host, opened once for the VM's whole life.
#[derive(Debug, Default)]
pub struct HostBackends {
    /// The disks, in order.
    pub disks: Vec<OpenedDisk>,
    /// The network devices' taps, in order.
    pub nets: Vec<OpenedTap>,
    /// The vsock device, listening on its socket from the start so that a path in use is
    /// refused before the VM starts; the first boot takes it, and a reboot listens again.
    pub vsock: Option<VsockBackend>,
}

/// The vsock device's settings, and the device itself until the first boot takes it.
pub struct VsockBackend {
    /// The guest's CID and the socket.
    pub config: VsockConfig,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    listening: Mutex<Option<VsockDevice>>,
}

impl std::fmt::Debug for VsockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VsockBackend {
    /// The device for a boot: the one made when the VM was created, then a new one (the old
    /// one, dropped with its boot's machine, removed its socket).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn device(&self) -> Result<VsockDevice, VsockError> {
        let made = self
            .listening
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match made {
            Some(device) => Ok(device),
            None => VsockDevice::new(self.config.cid, self.config.socket.clone()),
        }
    }
}

impl HostBackends {
    /// Opens and locks every disk of `config`, opens (or creates) and configures every tap, in
    /// order; the first failure is returned.
    pub fn open(config: &VmConfig) -> Result<Self, crate::VmmError> {
        let disks = config
            .disks
            .iter()
            .enumerate()
            .map(|(index, disk)| {
                Ok(OpenedDisk {
                    id: disk_id(disk, index),
                    image: Arc::new(DiskImage::open(&disk.path, disk.readonly)?),
                })
            })
            .collect::<Result<_, DiskImageError>>()?;
        let nets = config
            .nets
            .iter()
            .map(|net| {
                let tap = Tap::open(&net.tap)?;
                match net.host_address() {
                    Some((ip, mask)) => tap.configure_host(ip, mask)?,
                    None => tap.up()?,
                }
                Ok(OpenedTap {
                    tap: Arc::new(tap),
                    mac: net.mac(),
                })
            })
            .collect::<Result<_, TapError>>()?;
        let vsock = match &config.vsock {
            Some(vsock) => Some(VsockBackend {
                listening: Mutex::new(Some(VsockDevice::new(vsock.cid, vsock.socket.clone())?)),
                config: vsock.clone(),
            }),
            None => None,
        };
        Ok(Self { disks, nets, vsock })
    }
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
    /// A network device's tap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// A network device's guest MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddress>,
    /// The vsock device's guest context id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<u64>,
    /// The vsock device's Unix socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Its virtio-mmio window.
    pub mmio_base: u64,
    /// Its interrupt (SPI number).
    pub spi: u32,
    /// Features, activations, resets and requests of this boot.
    #[serde(flatten)]
    pub stats: DeviceStats,
}

impl DeviceInfo {
    /// A device of `kind` not yet placed, with nothing else set.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn new(kind: DeviceKind) -> Self {
        Self {
            kind,
            id: None,
            path: None,
            readonly: false,
            tap: None,
            mac: None,
            cid: None,
            socket: None,
            mmio_base: 0,
            spi: 0,
            stats: DeviceStats::default(),
        }
    }
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
