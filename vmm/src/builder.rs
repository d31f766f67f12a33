//! Builds one boot of the VM on KVM: guest memory with the kernel, initramfs and FDT in it,
//! the vCPUs, the vGIC, and the devices on the MMIO bus.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arch_aarch64::boot::boot_regs;
use arch_aarch64::cpu_power::FORWARDED_RANGES;
use arch_aarch64::fdt::{FdtConfig, GpioKey, VirtioMmioNode, create_fdt};
use arch_aarch64::layout::{
    self, BOOT_TIMER_BASE, BootLayout, GPIO_BASE, GPIO_SPI, GuestRegion, MMIO_SLOT_SIZE, RAM_START,
    RTC_BASE, RTC_SPI, UART_BASE, UART_SPI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SLOTS,
    VIRTIO_MMIO_WINDOW, VIRTIO_SPI_BASE,
};
use arch_aarch64::psci::PsciVersion;
use arch_aarch64::regs::{self, MPIDR_AFFINITY_MASK, MPIDR_EL1};
use devices::bus::MmioBus;
use devices::irq::{IrqError, IrqLine};
use devices::rtc_pl031::{SystemClock, TimerFdAlarm};
use devices::virtio::{
    BlockDevice, DeviceKind, MmioTransport, NetDevice, RngDevice, ThreadStartHook, VirtioDevice,
    VirtioMmioState,
};
use devices::{BootTimer, Pl061Gpio, Serial16550};
use hypervisor::kvm::{KvmGicV3, KvmHypervisor, KvmVcpu, KvmVm, KvmVmOptions};
use hypervisor::{MpState, Vcpu, VcpuError};
use linux_loader::loader::{KernelLoader, pe::PE};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::boot_images::BootImages;
use crate::config::{CpuPowerMode, VmConfig};
use crate::control_loop::Rtc;
use crate::events::{WakeSource, WakeSourceIrqLine, WakeSourceTracker};
use crate::handle::{POWER_BUTTON_PIN, SLEEP_BUTTON_PIN, WAKE_BUTTON_PIN};
use crate::snapshot::{
    self,
    state::{SuspendedVcpu, VmSnapshot},
};
use crate::virtio_devices::{AttachedDevice, DeviceInfo, HostBackends};

/// Failures building the machine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// More vCPUs than KVM allows.
    #[error("Invalid vCPU count {cpus}: KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// Requested.
        cpus: u32,
        /// KVM's limit.
        max: usize,
    },
    /// Guest memory could not be allocated.
    #[error("Cannot allocate {memory_mib} MiB of guest memory")]
    Memory {
        /// The configured memory.
        memory_mib: u64,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The kernel file could not be read again.
    #[error("Cannot read kernel {path}")]
    KernelRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel.
    #[error("Cannot load kernel {path}")]
    LoadKernel {
        /// The file.
        path: PathBuf,
        /// The loader error.
        #[source]
        source: LoaderError,
    },
    /// Copying the initramfs or FDT into guest memory failed.
    #[error("Cannot write the {what} into guest memory")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// The error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// KVM refused to create the VM or a part of it.
    #[error(transparent)]
    KvmVm(#[from] hypervisor::kvm::VmError),
    /// A vCPU register could not be read or written.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The device tree could not be built.
    #[error("Cannot build the device tree")]
    Fdt(#[source] arch_aarch64::fdt::FdtError),
    /// The boot registers are invalid.
    #[error("Invalid boot registers")]
    BootRegs(#[source] arch_aarch64::boot::BootRegsError),
    /// `--cpu-power vmm` on a host whose KVM cannot forward PSCI calls.
    #[error(
        "Cannot keep the vCPU power states in vmm: KVM on this host has no SMCCC filter (Linux 6.4 or later); use --cpu-power auto or kvm"
    )]
    NoSmcccFilter,
    /// `--psci-version` above what KVM implements.
    #[error("Cannot offer PSCI {asked}: KVM on this host implements PSCI {offered} at most")]
    PsciVersion {
        /// The version asked for.
        asked: PsciVersion,
        /// KVM's version.
        offered: PsciVersion,
    },
    /// The snapshot does not fit this host or this VM.
    #[error("Cannot restore the snapshot")]
    Restore(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A device could not be created or mapped.
    #[error("Cannot set up device {what}")]
    Device {
        /// Which device.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A linux-loader error, told once: its messages already repeat their sources
/// ("Kernel Loader: failed to load PE kernel image: PE Kernel Loader: invalid Image"), so
/// this shows only the innermost and ends the chain there.
#[derive(Debug)]
pub struct LoaderError(linux_loader::loader::Error);

impl std::fmt::Display for LoaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut innermost: &dyn std::error::Error = &self.0;
        while let Some(source) = innermost.source() {
            innermost = source;
        }
        write!(f, "{innermost}")
    }
}

impl std::error::Error for LoaderError {}

/// A built VM, ready to run.
pub struct Machine {
    /// The KVM VM.
    pub vm: Arc<KvmVm>,
    /// The vCPUs, vCPU 0 set up to enter the kernel.
    pub vcpus: Vec<KvmVcpu>,
    /// The vGIC, kept for the VM's lifetime (and read by snapshots).
    pub gic: Arc<KvmGicV3>,
    /// The MMIO devices.
    pub bus: Arc<MmioBus>,
    /// The console UART.
    pub serial: Arc<Mutex<Serial16550>>,
    /// Raised when the UART's receive FIFO empties.
    pub serial_rx_space: EventFd,
    /// The RTC.
    pub rtc: Arc<Mutex<Rtc>>,
    /// The GPIO controller with the wake and power buttons.
    pub gpio: Arc<Mutex<Pl061Gpio>>,
    /// The boot timer.
    pub boot_timer: Arc<Mutex<BootTimer>>,
    /// The virtio devices, in their slot order.
    pub devices: Vec<AttachedDevice>,
    /// Their transports with a name for messages, in the same order.
    pub transports: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    /// Guest RAM.
    pub ram: GuestRegion,
    /// Where the boot images went; `None` for a guest restored from a snapshot.
    pub layout: Option<BootLayout>,
    /// For a guest restored from a snapshot: the vCPU that is SUSPENDED, all others off.
    pub restored: Option<SuspendedVcpu>,
    /// `MPIDR_EL1` of each vCPU, by index.
    pub vcpu_mpidrs: Vec<u64>,
    /// Whether KVM forwards CPU_ON, CPU_OFF and AFFINITY_INFO, for the VMM to keep the vCPU
    /// power states.
    pub power_calls_forwarded: bool,
    /// The PSCI version the guest gets.
    pub psci_version: PsciVersion,
}

/// An SPI driven through `KVM_IRQ_LINE`.
struct KvmIrqLine {
    vm: Arc<KvmVm>,
    spi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) -> Result<(), IrqError> {
        self.vm
            .set_spi_level(self.spi, high)
            .map_err(|err| IrqError::set_level(self.spi, high, std::io::Error::other(err)))
    }
}

/// Wraps a failure setting up the device `what`.
fn device_error<E>(what: &'static str) -> impl FnOnce(E) -> BuildError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |err| BuildError::Device {
        what,
        source: Box::new(err),
    }
}

/// What a boot starts from.
pub enum BootFrom<'a> {
    /// The kernel and initramfs: a fresh boot.
    Images(BootImages),
    /// A snapshot of a suspended guest, already checked, its memory file in the snapshot's
    /// directory.
    Snapshot(&'a VmSnapshot),
}

/// Builds the VM described by `config`, which must have been validated.
pub fn build(
    hypervisor: &KvmHypervisor,
    config: &VmConfig,
    from: BootFrom<'_>,
    backends: &HostBackends,
    console_output: devices::SerialOutput,
    wake: Arc<WakeSourceTracker>,
    worker_hook: Option<ThreadStartHook>,
) -> Result<Machine, BuildError> {
    let max = hypervisor.max_vcpus();
    if config.cpus as usize > max {
        return Err(BuildError::TooManyVcpus {
            cpus: config.cpus,
            max,
        });
    }

    let (memory, boot) = match from {
        BootFrom::Images(images) => {
            let ram_bytes = config.memory_bytes() as usize;
            let memory =
                GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_START), ram_bytes)])
                    .map_err(|source| BuildError::Memory {
                        memory_mib: config.memory_mib,
                        source,
                    })?;
            let (layout, kernel_load) = load_images(&memory, images)?;
            (
                memory,
                Start::Fresh {
                    layout,
                    kernel_load,
                },
            )
        }
        BootFrom::Snapshot(snapshot) => {
            let memory = snapshot::memory::map(
                &snapshot.path.join(snapshot::dir::MEMORY_FILE),
                snapshot.ram_start,
                snapshot.ram_size,
            )
            .map_err(|err| BuildError::Restore(Box::new(err)))?;
            (memory, Start::Restore(snapshot))
        }
    };
    let ram = GuestRegion {
        start: RAM_START,
        size: config.memory_bytes(),
    };

    let vm = Arc::new(KvmVm::new(
        hypervisor,
        memory,
        KvmVmOptions {
            system_suspend: config.suspend,
            forward_smccc: match config.cpu_power {
                CpuPowerMode::Auto | CpuPowerMode::Vmm => &FORWARDED_RANGES,
                CpuPowerMode::Kvm => &[],
            },
        },
    )?);
    if config.suspend && !vm.system_suspend_enabled() {
        log::warn!("KVM on this host lacks KVM_CAP_ARM_SYSTEM_SUSPEND: the guest gets s2idle only");
    }
    let power_calls_forwarded = vm.smccc_forwarded();
    match (config.cpu_power, power_calls_forwarded) {
        (CpuPowerMode::Vmm, false) => return Err(BuildError::NoSmcccFilter),
        (_, true) => log::info!("vCPU power states kept by vmm (PSCI calls forwarded)"),
        (CpuPowerMode::Kvm, false) => log::info!("vCPU power states kept by KVM, as asked"),
        (_, false) => log::info!(
            "vCPU power states kept by KVM (no SMCCC filter on this host): each SYSTEM_SUSPEND stops every vCPU to read them"
        ),
    }
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    let mut mpidrs = Vec::with_capacity(config.cpus as usize);
    for index in 0..config.cpus {
        let vcpu = vm.create_vcpu(index)?;
        mpidrs.push(vcpu.reg(MPIDR_EL1)? & MPIDR_AFFINITY_MASK);
        vcpus.push(vcpu);
    }
    let asked_psci = match &boot {
        Start::Fresh { .. } => config.psci_version,
        Start::Restore(snapshot) => Some(PsciVersion::from_raw(snapshot.psci_version)),
    };
    let psci_version = set_psci_version(&vcpus[0], asked_psci)?;
    if config.suspend && !psci_version.has_system_suspend() {
        log::warn!("PSCI {psci_version} has no SYSTEM_SUSPEND: the guest gets s2idle only");
    }
    let gic = Arc::new(vm.create_gic(
        layout::GIC_DIST_BASE,
        layout::GIC_REDIST_BASE,
        layout::GIC_NR_SPIS,
    )?);

    let saved = match boot {
        Start::Restore(snapshot) => {
            // The vGIC and the counter before any device raises a line, and before any vCPU
            // runs.
            restore_vcpus(&vm, &gic, &vcpus, &mpidrs, snapshot)?;
            Some(snapshot)
        }
        Start::Fresh { .. } => None,
    };
    let virtio = attach_virtio(
        &vm,
        backends,
        config.rng,
        worker_hook,
        saved.map(|snapshot| &snapshot.devices.virtio[..]),
    )?;
    let layout = match boot {
        Start::Fresh {
            layout,
            kernel_load,
        } => {
            write_boot_state(
                &vm,
                config,
                &vcpus[0],
                &mpidrs,
                &virtio,
                &layout,
                kernel_load,
                psci_version,
            )?;
            Some(layout)
        }
        Start::Restore(_) => None,
    };

    // Every device line notes its source, so a wakeup can say what woke the guest.
    let irq = |spi: layout::Spi, source: WakeSource| -> Arc<dyn IrqLine> {
        let line = Arc::new(KvmIrqLine {
            vm: Arc::clone(&vm),
            spi: spi.gsi,
        });
        WakeSourceIrqLine::wrap(line, Arc::clone(&wake), source)
    };
    let serial_rx_space = EventFd::new(EFD_NONBLOCK).map_err(device_error("serial"))?;
    let rx_space_for_serial = serial_rx_space
        .try_clone()
        .map_err(device_error("serial"))?;
    let serial_irq = irq(UART_SPI, WakeSource::Serial);
    let alarm = TimerFdAlarm::new().map_err(device_error("rtc"))?;
    let rtc_irq = irq(RTC_SPI, WakeSource::Rtc);
    let gpio_irq = irq(GPIO_SPI, WakeSource::Gpio);
    let (serial, rtc, gpio, boot_timer) = match saved {
        None => (
            Serial16550::with_rx_space_event(serial_irq, console_output, rx_space_for_serial),
            Rtc::new(rtc_irq, SystemClock, alarm),
            Pl061Gpio::new(gpio_irq),
            BootTimer::new(),
        ),
        Some(snapshot) => {
            let saved = &snapshot.devices;
            (
                Serial16550::from_state(
                    &saved.serial,
                    serial_irq,
                    console_output,
                    Some(rx_space_for_serial),
                )
                .map_err(device_error("serial"))?,
                Rtc::from_state(&saved.rtc, rtc_irq, SystemClock, alarm)
                    .map_err(device_error("rtc"))?,
                Pl061Gpio::from_state(&saved.gpio, gpio_irq).map_err(device_error("gpio"))?,
                BootTimer::from_state(&saved.boot_timer),
            )
        }
    };
    let serial = Arc::new(Mutex::new(serial));
    let rtc = Arc::new(Mutex::new(rtc));
    let gpio = Arc::new(Mutex::new(gpio));
    // Logs `Guest boot time: N us since vmm start` when the guest's init writes its magic.
    let boot_timer = Arc::new(Mutex::new(boot_timer));

    let mut bus = MmioBus::new();
    bus.insert(UART_BASE, MMIO_SLOT_SIZE, serial.clone())
        .map_err(device_error("serial"))?;
    bus.insert(RTC_BASE, MMIO_SLOT_SIZE, rtc.clone())
        .map_err(device_error("rtc"))?;
    bus.insert(GPIO_BASE, MMIO_SLOT_SIZE, gpio.clone())
        .map_err(device_error("gpio"))?;
    bus.insert(BOOT_TIMER_BASE, MMIO_SLOT_SIZE, boot_timer.clone())
        .map_err(device_error("boot timer"))?;
    let mut attached = Vec::with_capacity(virtio.len());
    let mut transports = Vec::with_capacity(virtio.len());
    for device in virtio {
        bus.insert(device.node.base, device.node.size, device.transport.clone())
            .map_err(device_error("virtio"))?;
        let info = &device.attached.info;
        let name = match &info.id {
            Some(id) => format!("{:?} {id}", info.kind).to_lowercase(),
            None => format!("{:?}", info.kind).to_lowercase(),
        };
        transports.push((name, device.transport));
        attached.push(device.attached);
    }

    Ok(Machine {
        vm,
        vcpus,
        gic,
        bus: Arc::new(bus),
        serial,
        serial_rx_space,
        rtc,
        gpio,
        boot_timer,
        devices: attached,
        transports,
        ram,
        layout,
        restored: saved.map(|snapshot| snapshot.suspended),
        vcpu_mpidrs: mpidrs,
        power_calls_forwarded,
        psci_version,
    })
}

/// What a boot starts from, once guest memory is there.
enum Start<'a> {
    /// The kernel is loaded at `kernel_load`; the FDT and registers are still to be written.
    Fresh {
        layout: BootLayout,
        kernel_load: u64,
    },
    /// Guest memory is the snapshot's; the vCPUs and devices take their saved state.
    Restore(&'a VmSnapshot),
}

/// Places and loads the kernel and initramfs; returns the layout and where the kernel went.
fn load_images(
    memory: &GuestMemoryMmap,
    images: BootImages,
) -> Result<(BootLayout, u64), BuildError> {
    let BootImages {
        mut kernel,
        kernel_path,
        initramfs,
        layout,
    } = images;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|source| BuildError::KernelRead {
            path: kernel_path.clone(),
            source,
        })?;
    let loaded = PE::load(
        memory,
        Some(GuestAddress(layout.kernel_load)),
        &mut kernel,
        None,
    )
    .map_err(|source| BuildError::LoadKernel {
        path: kernel_path.clone(),
        source: LoaderError(source),
    })?;
    if let (Some((mut file, len)), Some(region)) = (initramfs, layout.initrd) {
        load_initramfs(memory, region, &mut file, len)?;
    }
    Ok((layout, loaded.kernel_load.0))
}

/// A fresh boot: the device tree in guest memory and vCPU 0 at the kernel's entry.
#[allow(clippy::too_many_arguments)]
fn write_boot_state(
    vm: &KvmVm,
    config: &VmConfig,
    boot_vcpu: &KvmVcpu,
    mpidrs: &[u64],
    virtio: &[VirtioSlot],
    layout: &BootLayout,
    kernel_load: u64,
    psci_version: PsciVersion,
) -> Result<(), BuildError> {
    let fdt = create_fdt(&FdtConfig {
        vcpu_mpidrs: mpidrs.to_vec(),
        ram: layout.ram,
        cmdline: config.cmdline.clone(),
        initrd: layout.initrd,
        serial: true,
        rtc: true,
        gpio: true,
        gpio_keys: vec![
            GpioKey::wake(WAKE_BUTTON_PIN),
            GpioKey::power(POWER_BUTTON_PIN),
            GpioKey::sleep(SLEEP_BUTTON_PIN),
        ],
        virtio_mmio: virtio.iter().map(|device| device.node).collect(),
        psci_version,
    })
    .map_err(BuildError::Fdt)?;
    vm.memory()
        .write_slice(&fdt, GuestAddress(layout.fdt_addr))
        .map_err(|source| BuildError::GuestWrite {
            what: "device tree",
            source,
        })?;
    let registers = boot_regs(kernel_load, layout.fdt_addr).map_err(BuildError::BootRegs)?;
    for (id, value) in registers {
        boot_vcpu.set_reg(id, value)?;
    }
    Ok(())
}

/// A restore: the vGIC, the guest's counter advanced by the time the snapshot spent on disk,
/// and the vCPUs' MP states (the suspended one SUSPENDED, every other one off). Before any
/// vCPU runs and before any device raises a line.
fn restore_vcpus(
    vm: &KvmVm,
    gic: &KvmGicV3,
    vcpus: &[KvmVcpu],
    mpidrs: &[u64],
    snapshot: &VmSnapshot,
) -> Result<(), BuildError> {
    let restore_error = |err: Box<dyn std::error::Error + Send + Sync>| BuildError::Restore(err);
    if !vm.system_suspend_enabled() {
        return Err(restore_error(
            "KVM on this host has no KVM_CAP_ARM_SYSTEM_SUSPEND (Linux 5.19+) to keep the guest suspended".into(),
        ));
    }
    if mpidrs != snapshot.vcpu_mpidrs.as_slice() {
        return Err(restore_error(
            format!(
                "the vCPUs' MPIDRs are {mpidrs:x?} on this host, {:x?} in the snapshot",
                snapshot.vcpu_mpidrs
            )
            .into(),
        ));
    }
    gic.restore(mpidrs, &snapshot.gic)
        .map_err(|err| restore_error(Box::new(err)))?;
    let on_disk_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_nanos())
        .saturating_sub(snapshot.saved_at_ns);
    let ticks = on_disk_ns * u128::from(snapshot.counter.cntfrq) / 1_000_000_000;
    let counter = snapshot
        .counter
        .cntvct
        .wrapping_add(u64::try_from(ticks).unwrap_or(u64::MAX));
    let path = vm
        .set_guest_counter(vcpus, counter)
        .map_err(|err| restore_error(Box::new(err)))?;
    log::info!(
        "Guest counter advanced by {:.3} s on disk ({path:?})",
        on_disk_ns as f64 / 1e9
    );
    for (index, vcpu) in vcpus.iter().enumerate() {
        let state = if index as u32 == snapshot.suspended.index {
            MpState::Suspended
        } else {
            MpState::Stopped
        };
        vcpu.set_mp_state(state)?;
    }
    Ok(())
}

/// Reads the PSCI version KVM implements and lowers it to `asked`, which KVM accepts before
/// the first run (VM-wide, through any vCPU); returns the version the guest gets.
fn set_psci_version(vcpu: &KvmVcpu, asked: Option<PsciVersion>) -> Result<PsciVersion, BuildError> {
    let offered = PsciVersion::from_raw(vcpu.reg(regs::PSCI_VERSION)?);
    let version = match asked {
        None => offered,
        Some(asked) if asked > offered => {
            return Err(BuildError::PsciVersion { asked, offered });
        }
        Some(asked) => {
            vcpu.set_reg(regs::PSCI_VERSION, asked.to_raw())?;
            asked
        }
    };
    log::info!("PSCI {version} (KVM implements {offered})");
    Ok(version)
}

/// A virtio device placed in its window, wired to KVM, not yet on the bus.
struct VirtioSlot {
    node: VirtioMmioNode,
    transport: Arc<Mutex<MmioTransport>>,
    attached: AttachedDevice,
}

/// Creates the disks' virtio-blk devices (in order), the taps' virtio-net devices (in order),
/// the virtio-vsock device and virtio-rng, each in a window and on
/// an SPI from the virtio area; QueueNotify writes become ioeventfds and interrupts irqfds,
/// so queue work never runs on a vCPU thread. Each device's worker threads run `worker_hook`
/// first (their seccomp filter).
fn attach_virtio(
    vm: &Arc<KvmVm>,
    backends: &HostBackends,
    rng: bool,
    worker_hook: Option<ThreadStartHook>,
    saved: Option<&[VirtioMmioState]>,
) -> Result<Vec<VirtioSlot>, BuildError> {
    let mut windows = AddressAllocator::new(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE)
        .map_err(device_error("virtio"))?;
    let mut spis = IdAllocator::new(VIRTIO_SPI_BASE, VIRTIO_SPI_BASE + VIRTIO_MMIO_SLOTS - 1)
        .map_err(device_error("virtio"))?;
    let mut devices: Vec<(Box<dyn VirtioDevice>, DeviceInfo)> = Vec::new();
    for disk in &backends.disks {
        devices.push((
            Box::new(
                BlockDevice::new(Arc::clone(&disk.image), &disk.id)
                    .with_worker_hook(worker_hook.clone()),
            ),
            DeviceInfo {
                id: Some(disk.id.clone()),
                path: Some(disk.image.path().to_owned()),
                readonly: disk.image.readonly(),
                ..DeviceInfo::new(DeviceKind::Block)
            },
        ));
    }
    for net in &backends.nets {
        devices.push((
            Box::new(
                NetDevice::new(Arc::clone(&net.tap), net.mac.0)
                    .with_worker_hook(worker_hook.clone()),
            ),
            DeviceInfo {
                tap: Some(net.tap.name().to_owned()),
                mac: Some(net.mac),
                ..DeviceInfo::new(DeviceKind::Net)
            },
        ));
    }
    if let Some(vsock) = &backends.vsock {
        let device = vsock.device().map_err(device_error("virtio-vsock"))?;
        devices.push((
            Box::new(device.with_worker_hook(worker_hook.clone())),
            DeviceInfo {
                cid: Some(vsock.config.cid),
                socket: Some(vsock.config.socket.clone()),
                ..DeviceInfo::new(DeviceKind::Vsock)
            },
        ));
    }
    if rng {
        devices.push((
            Box::new(RngDevice::new().with_worker_hook(worker_hook)),
            DeviceInfo::new(DeviceKind::Rng),
        ));
    }
    if let Some(saved) = saved {
        if saved.len() != devices.len() {
            return Err(BuildError::Restore(
                format!(
                    "the snapshot has {} virtio devices, its configuration {}",
                    saved.len(),
                    devices.len()
                )
                .into(),
            ));
        }
    }
    let mut slots = Vec::with_capacity(devices.len());
    for (slot, (device, mut info)) in devices.into_iter().enumerate() {
        let base = windows
            .allocate(
                VIRTIO_MMIO_WINDOW,
                VIRTIO_MMIO_WINDOW,
                AllocPolicy::FirstMatch,
            )
            .map_err(device_error("virtio"))?
            .start();
        let spi = spis.allocate_id().map_err(device_error("virtio"))?;
        let counters = Arc::clone(device.counters());
        let transport = match saved {
            None => {
                MmioTransport::new(device, vm.memory().clone()).map_err(device_error("virtio"))?
            }
            Some(saved) => MmioTransport::from_state(device, vm.memory().clone(), &saved[slot])
                .map_err(device_error("virtio"))?,
        };
        vm.register_irqfd(transport.interrupt().event(), spi)?;
        for (index, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioeventfd(
                event,
                base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY),
                index as u32,
            )?;
        }
        info.mmio_base = base;
        info.spi = spi;
        slots.push(VirtioSlot {
            node: VirtioMmioNode {
                base,
                size: VIRTIO_MMIO_WINDOW,
                spi,
            },
            transport: Arc::new(Mutex::new(transport)),
            attached: AttachedDevice { info, counters },
        });
    }
    Ok(slots)
}

fn load_initramfs(
    memory: &GuestMemoryMmap,
    region: GuestRegion,
    file: &mut File,
    len: u64,
) -> Result<(), BuildError> {
    memory
        .read_exact_volatile_from(GuestAddress(region.start), file, len as usize)
        .map_err(|source| BuildError::GuestWrite {
            what: "initramfs",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loader_error_is_told_once() {
        let err = BuildError::LoadKernel {
            path: "evil.img".into(),
            source: LoaderError(linux_loader::loader::Error::Pe(
                linux_loader::loader::pe::Error::InvalidImage,
            )),
        };
        assert_eq!(
            crate::error_chain(&err),
            "Cannot load kernel evil.img: PE Kernel Loader: invalid Image"
        );
    }
}
