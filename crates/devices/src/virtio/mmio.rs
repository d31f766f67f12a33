//! The virtio-mmio register file (virtio 1.2 §4.2.2), version 2 only.
//!
//! The status state machine follows the spec's driver sequence: ACKNOWLEDGE, DRIVER, feature
//! negotiation, FEATURES_OK (refused unless the driver took `VIRTIO_F_VERSION_1` and nothing
//! that was not offered), queue set-up, DRIVER_OK (the device starts). Writing 0 resets the
//! device at any point: the queues, the negotiated features and the interrupt status are
//! dropped, and the write only completes once the device's worker has stopped. Anything out
//! of sequence is ignored and logged, never fatal for the VMM.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActiveQueue, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt, VirtioQueueState};
use crate::bus::MmioDevice;

/// "virt" in little-endian ASCII.
const MAGIC: u32 = 0x7472_6976;
/// The modern transport.
const VERSION: u32 = 2;
/// Our vendor id ("VMMA"), as QEMU reports "QEMU".
const VENDOR_ID: u32 = 0x414D_4D56;

/// The status values a driver passes through in order (virtio 1.2 §3.1.1), before FAILED or
/// NEEDS_RESET is added.
const STATUS_STEPS: [u32; 5] = [
    0,
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK,
];

/// The register file of an [`MmioTransport`], with its device's type and configuration
/// space, for save/restore.
///
/// Only a device the driver has not started (no DRIVER_OK, or DRIVER_OK with NEEDS_RESET
/// after a failed activation) can be restored; a suspended Linux guest has reset every
/// device to status 0 ([`MmioTransport::is_reset`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMmioState {
    /// The virtio device id (`VIRTIO_ID_*`).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The feature bits the driver wrote to DriverFeatures.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Every queue the device has, in order, as the driver set it up.
    pub queues: Vec<VirtioQueueState>,
    /// The device status register.
    pub status: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The device's configuration space. The device owns it and the driver cannot write it:
    /// on restore it must equal the new device's.
    pub config_space: Vec<u8>,
}

/// Errors from rebuilding an [`MmioTransport`] from a [`VirtioMmioState`].
#[derive(Debug, thiserror::Error)]
pub enum VirtioStateError {
    /// The state is of another kind of device than the one given.
    #[error("Invalid virtio state: device type {saved}, the device's is {device}")]
    DeviceType {
        /// The saved device type.
        saved: u32,
        /// The type of the device given to restore into.
        device: u32,
    },
    /// The status is not one the driver's sequence can reach.
    #[error("Invalid virtio state: status {0:#x}")]
    InvalidStatus(u32),
    /// The device was active (DRIVER_OK): its queues were being served by a worker whose
    /// progress the state does not hold.
    #[error("Cannot restore an active virtio device (status {0:#x})")]
    Active(u32),
    /// The driver features are not ones the device could hold at the saved status.
    #[error("Invalid virtio state: driver features {0:#x}")]
    InvalidFeatures(u64),
    /// InterruptStatus has bits the device could not have raised at the saved status.
    #[error("Invalid virtio state: interrupt status {0:#x}")]
    InvalidInterruptStatus(u32),
    /// The state has another number of queues than the device.
    #[error("Invalid virtio state: {saved} queues, the device has {device}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues the device has.
        device: usize,
    },
    /// A queue's maximum size is not the one the device offers.
    #[error(
        "Invalid virtio state: queue {index} has maximum size {saved}, the device's is {device}"
    )]
    QueueMaxSize {
        /// The queue.
        index: usize,
        /// Its saved maximum size.
        saved: u16,
        /// The device's maximum size for it.
        device: u16,
    },
    /// A queue's size or ring addresses are not ones the driver could have set.
    #[error("Invalid virtio state: queue {index}")]
    InvalidQueue {
        /// The queue.
        index: usize,
        /// What virtio-queue found wrong.
        #[source]
        source: virtio_queue::Error,
    },
    /// A queue differs from its reset state although the status is before FEATURES_OK.
    #[error("Invalid virtio state: queue {0} is set up before FEATURES_OK")]
    QueueBeforeFeaturesOk(usize),
    /// A queue has ring indices on a device that never served it.
    #[error("Invalid virtio state: queue {0} has ring indices on an inactive device")]
    QueueIndices(usize),
    /// The configuration space has another length than the device's.
    #[error("Invalid virtio state: {saved}-byte configuration space, the device's has {device}")]
    ConfigLength {
        /// Saved length.
        saved: usize,
        /// The device's length.
        device: usize,
    },
    /// The configuration space differs from the device's (another disk size, MAC or CID).
    #[error("Invalid virtio state: the configuration space differs from the device's")]
    ConfigMismatch,
    /// The transport's eventfds could not be created.
    #[error("Cannot create the restored virtio transport")]
    Transport(#[source] TransportError),
    /// A saved pending interrupt could not be raised again.
    #[error("Cannot re-raise the saved virtio interrupt")]
    Interrupt(#[source] std::io::Error),
}

impl VirtioMmioState {
    /// Checks the state against `device` and builds its queues.
    fn validate(&self, device: &dyn VirtioDevice) -> Result<Vec<Queue>, VirtioStateError> {
        if self.device_type != device.device_type() {
            return Err(VirtioStateError::DeviceType {
                saved: self.device_type,
                device: device.device_type(),
            });
        }
        let needs_reset = self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        let steps = self.status & !(VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET);
        let driver_ok = steps & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        // NEEDS_RESET is only ever set by a failed activation, on DRIVER_OK.
        if !STATUS_STEPS.contains(&steps) || (needs_reset && !driver_ok) {
            return Err(VirtioStateError::InvalidStatus(self.status));
        }
        if driver_ok && !needs_reset {
            return Err(VirtioStateError::Active(self.status));
        }
        let features_ok = steps & VIRTIO_CONFIG_S_FEATURES_OK != 0;
        let features_valid = if features_ok {
            features_acceptable(self.acked_features, device.features())
        } else {
            // DriverFeatures is only written once the driver set DRIVER.
            steps & VIRTIO_CONFIG_S_DRIVER != 0 || self.acked_features == 0
        };
        if !features_valid {
            return Err(VirtioStateError::InvalidFeatures(self.acked_features));
        }
        // Only a failed activation raises an interrupt on a device that is not active.
        let interrupts = if needs_reset {
            VirtioInterrupt::CONFIG
        } else {
            0
        };
        if self.interrupt_status & !interrupts != 0 {
            return Err(VirtioStateError::InvalidInterruptStatus(
                self.interrupt_status,
            ));
        }
        let max_sizes = device.queue_max_sizes();
        if self.queues.len() != max_sizes.len() {
            return Err(VirtioStateError::QueueCount {
                saved: self.queues.len(),
                device: max_sizes.len(),
            });
        }
        let queues = self
            .queues
            .iter()
            .zip(max_sizes)
            .enumerate()
            .map(|(index, (&saved, &max_size))| restore_queue(index, saved, max_size, features_ok))
            .collect::<Result<Vec<_>, _>>()?;
        let config = device.config_space();
        if self.config_space.len() != config.len() {
            return Err(VirtioStateError::ConfigLength {
                saved: self.config_space.len(),
                device: config.len(),
            });
        }
        if self.config_space != config {
            return Err(VirtioStateError::ConfigMismatch);
        }
        Ok(queues)
    }
}

/// The queue `index` of an inactive device from `saved`, checked against the device's
/// `max_size` and what the driver can have done at a status with or without FEATURES_OK.
fn restore_queue(
    index: usize,
    saved: VirtioQueueState,
    max_size: u16,
    features_ok: bool,
) -> Result<Queue, VirtioStateError> {
    if saved.max_size != max_size {
        return Err(VirtioStateError::QueueMaxSize {
            index,
            saved: saved.max_size,
            device: max_size,
        });
    }
    let saved = QueueState::from(saved);
    let queue = Queue::try_from(saved)
        .map_err(|source| VirtioStateError::InvalidQueue { index, source })?;
    // Queues are only configurable from FEATURES_OK on, and reset with the device.
    let fresh =
        Queue::new(max_size).map_err(|source| VirtioStateError::InvalidQueue { index, source })?;
    if !features_ok && saved != fresh.state() {
        return Err(VirtioStateError::QueueBeforeFeaturesOk(index));
    }
    if saved.next_avail != 0 || saved.next_used != 0 {
        return Err(VirtioStateError::QueueIndices(index));
    }
    Ok(queue)
}

/// Whether a driver may set FEATURES_OK with `acked`: nothing unoffered, VERSION_1 taken.
fn features_acceptable(acked: u64, offered: u64) -> bool {
    acked & !offered == 0 && acked & VIRTIO_F_VERSION_1 != 0
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    config_generation: u32,
    active: bool,
}

/// Failures creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd for the virtio transport")]
    EventFd(#[source] std::io::Error),
    /// The device offers a queue size virtio-queue rejects.
    #[error("Invalid queue size {0}")]
    QueueSize(u16),
}

impl MmioTransport {
    /// Wraps `device`, whose queues will live in `memory`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
    ) -> Result<Self, TransportError> {
        let interrupt = Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?,
        ));
        let queues = new_queues(device.queue_max_sizes())?;
        let queue_events = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            device,
            memory,
            interrupt,
            queues,
            queue_events,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The interrupt, whose eventfd the VMM registers as an irqfd on the device's SPI.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The eventfd of each queue, to register as an ioeventfd on QueueNotify with the queue
    /// index as data; the queue's index is its position.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is reset (status 0): nothing set up, no worker, no guest memory in
    /// use. Only then is [`MmioTransport::state`] a complete record of the device.
    pub fn is_reset(&self) -> bool {
        self.status == 0
    }

    /// The register file, the device's type and configuration space, for save/restore.
    ///
    /// For an active device (DRIVER_OK) the queues are as the driver set them up, with the
    /// ring indices handed to the device at activation: its worker's progress since is not
    /// seen by the transport, and [`MmioTransport::from_state`] refuses such a state.
    pub fn state(&self) -> VirtioMmioState {
        VirtioMmioState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_select,
            driver_features_sel: self.driver_features_select,
            acked_features: self.driver_features,
            queue_sel: self.queue_select,
            queues: self
                .queues
                .iter()
                .map(|queue| queue.state().into())
                .collect(),
            status: self.status,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            config_space: self.device.config_space().to_vec(),
        }
    }

    /// Wraps `device` as [`MmioTransport::new`] does and gives it the registers in `state`,
    /// as if the driver had written them. A pending interrupt (a failed activation's CONFIG)
    /// is raised again. The device must be built like the saved one (same type, queues
    /// and configuration space), and not have been active: a driver that reset it
    /// negotiates again as with a new device.
    pub fn from_state(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        state: &VirtioMmioState,
    ) -> Result<Self, VirtioStateError> {
        let queues = state.validate(device.as_ref())?;
        let mut transport = Self::new(device, memory).map_err(VirtioStateError::Transport)?;
        transport.queues = queues;
        transport.status = state.status;
        transport.device_features_select = state.device_features_sel;
        transport.driver_features_select = state.driver_features_sel;
        transport.driver_features = state.acked_features;
        transport.queue_select = state.queue_sel;
        transport.config_generation = state.config_generation;
        if state.interrupt_status != 0 {
            transport
                .interrupt
                .signal(state.interrupt_status)
                .map_err(VirtioStateError::Interrupt)?;
        }
        Ok(transport)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn features_negotiable(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
    }

    fn queues_configurable(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |queue| u32::from(queue.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |queue| u32::from(queue.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES if self.features_negotiable() => {
                let value = u64::from(value);
                match self.driver_features_select {
                    0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | value,
                    1 => self.driver_features = (self.driver_features & 0xFFFF_FFFF) | value << 32,
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM if self.queues_configurable() => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if self.queues_configurable() => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if self.queues_configurable() =>
            {
                if let Some(queue) = self.selected_queue() {
                    let (low, high) = if offset % 8 == 0 {
                        (Some(value), None)
                    } else {
                        (None, Some(value))
                    };
                    match offset {
                        VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                            queue.set_desc_table_address(low, high)
                        }
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                            queue.set_avail_ring_address(low, high)
                        }
                        _ => queue.set_used_ring_address(low, high),
                    }
                }
            }
            // Reached only when no ioeventfd caught the write (unit tests, or a bad index).
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Some(event) = self.queue_events.get(value as usize) {
                    if let Err(err) = event.write(1) {
                        log::warn!("virtio-mmio: cannot notify queue {value}: {err}");
                    }
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => log::debug!(
                "virtio-mmio: write of {value:#x} to register {offset:#x} ignored (status {:#x})",
                self.status
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // The driver only ever adds one bit at a time, keeping those it set before.
        if value & self.status != self.status || (value & !self.status).count_ones() != 1 {
            log::debug!(
                "virtio-mmio: status {:#x} -> {value:#x} ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        let allowed = match added {
            VIRTIO_CONFIG_S_ACKNOWLEDGE => self.status == 0,
            VIRTIO_CONFIG_S_DRIVER => self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => {
                self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
                    && self.features_acceptable()
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status
                    == VIRTIO_CONFIG_S_ACKNOWLEDGE
                        | VIRTIO_CONFIG_S_DRIVER
                        | VIRTIO_CONFIG_S_FEATURES_OK
            }
            _ => false,
        };
        if !allowed {
            log::debug!(
                "virtio-mmio: status {:#x} -> {value:#x} ignored",
                self.status
            );
            return;
        }
        self.status = value;
        if added == VIRTIO_CONFIG_S_DRIVER_OK {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        features_acceptable(self.driver_features, self.device.features())
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut active = Vec::new();
        let mut usable = true;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            if !queue.is_valid(&self.memory) {
                log::warn!("virtio-mmio: queue {index} is invalid (size or ring addresses)");
                usable = false;
                break;
            }
            queue.set_event_idx(event_idx);
            // The transport keeps the configuration; the device gets a copy to run.
            let copy = Queue::try_from(queue.state()).map_err(std::io::Error::other);
            match copy.and_then(|copy| Ok((copy, self.queue_events[index].try_clone()?))) {
                Ok((queue, event)) => active.push(ActiveQueue { queue, event }),
                Err(err) => {
                    log::error!("virtio-mmio: cannot hand queue {index} over: {err}");
                    usable = false;
                    break;
                }
            }
        }
        if !usable {
            self.needs_reset();
            return;
        }
        match self.device.activate(
            self.memory.clone(),
            active,
            Arc::clone(&self.interrupt),
            self.driver_features,
        ) {
            Ok(()) => {
                self.active = true;
                self.device.counters().activated(self.driver_features);
            }
            Err(err) => {
                log::warn!(
                    "virtio-mmio: cannot activate the {:?} device: {err}",
                    self.device.kind()
                );
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        let _ = self.interrupt.signal(VirtioInterrupt::CONFIG);
    }

    /// Status 0: stops the device and forgets everything the driver set up.
    fn reset(&mut self) {
        if self.status != 0 {
            self.device.reset();
            self.device.counters().was_reset();
        }
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
        // Notifications written before the reset belong to the queues just dropped.
        for event in &self.queue_events {
            let _ = event.read();
        }
    }
}

fn new_queues(sizes: &[u16]) -> Result<Vec<Queue>, TransportError> {
    sizes
        .iter()
        .map(|&size| Queue::new(size).map_err(|_| TransportError::QueueSize(size)))
        .collect()
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers below the config space are 32 bits wide and aligned.
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset as u32).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // No device here has a writable configuration field.
            log::debug!("virtio-mmio: config write at {offset:#x} ignored");
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}
