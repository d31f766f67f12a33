//! Builds the guest's flattened device tree (DTB) from the fixed map in [`crate::layout`].
//!
//! The node set follows Firecracker and Cloud Hypervisor (`linux,dummy-virt`, GICv3, PSCI
//! over HVC, armv8 timer, 24 MHz APB clock), plus what suspend-to-RAM needs: a PL031 with
//! an interrupt and a PL061 with gpio-keys that may carry `wakeup-source`.
//!
//! vm-fdt requires every property of a node to come before its first child, so each
//! node writes its properties first.

use std::collections::HashSet;

use vm_fdt::{FdtWriter, FdtWriterNode};

use crate::layout::{
    FDT_MAX_SIZE, GIC_DIST_BASE, GIC_DIST_SIZE, GIC_MAINTENANCE_PPI, GIC_REDIST_BASE, GPIO_BASE,
    GPIO_SPI, GuestRegion, IrqTrigger, MAX_VCPUS, MMIO_SLOT_SIZE, RTC_BASE, RTC_SPI, Spi,
    TIMER_HYP_PPI, TIMER_PHYS_PPI, TIMER_SEC_PHYS_PPI, TIMER_VIRT_PPI, UART_BASE, UART_SPI,
    gic_redist_size,
};
use crate::psci::PsciVersion;
use crate::regs::MPIDR_AFFINITY_MASK;

/// Linux input event code `KEY_POWER`: the guest powers off (or suspends, per logind).
pub const KEY_POWER: u32 = 116;
/// Linux input event code `KEY_WAKEUP`: wakes a suspended guest and is otherwise ignored.
pub const KEY_WAKEUP: u32 = 143;
/// Linux input event code `KEY_SLEEP`: the guest suspends itself (logind's
/// `HandleSuspendKey=suspend`, or a handler of its own).
pub const KEY_SLEEP: u32 = 142;
/// Number of lines on a PL061.
pub const PL061_PINS: u32 = 8;
/// Longest kernel command line, including its NUL (`COMMAND_LINE_SIZE` on arm64).
pub const CMDLINE_MAX_SIZE: usize = 2048;

// Phandles are ours to choose; fixed values keep the DTB reproducible.
const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
const GPIO_PHANDLE: u32 = 3;
// Interrupt specifier types of the GIC binding.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
const GPIO_ACTIVE_HIGH: u32 = 0;

/// A button on a PL061 line, exposed to the guest through `gpio-keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpioKey {
    /// Node name; the gpio-keys schema wants `key`, `key-…` or `…-key` (or button/switch/event).
    pub name: String,
    /// Human-readable label, shown by the guest's input layer.
    pub label: String,
    /// Linux input event code, e.g. [`KEY_POWER`].
    pub code: u32,
    /// The PL061 line, below [`PL061_PINS`]. Active high.
    pub pin: u32,
    /// Whether the guest arms the key to wake it from suspend (`wakeup-source`).
    pub wakeup: bool,
}

impl GpioKey {
    /// A `KEY_WAKEUP` button that wakes the guest from suspend.
    pub fn wake(pin: u32) -> Self {
        Self {
            name: "key-wake".into(),
            label: "wake".into(),
            code: KEY_WAKEUP,
            pin,
            wakeup: true,
        }
    }

    /// A `KEY_POWER` button, for an orderly guest shutdown.
    pub fn power(pin: u32) -> Self {
        Self {
            name: "key-power".into(),
            label: "power".into(),
            code: KEY_POWER,
            pin,
            wakeup: false,
        }
    }

    /// A `KEY_SLEEP` button: the host asks the guest to suspend itself.
    pub fn sleep(pin: u32) -> Self {
        Self {
            name: "key-sleep".into(),
            label: "sleep".into(),
            code: KEY_SLEEP,
            pin,
            wakeup: false,
        }
    }
}

/// What the guest's device tree describes. Addresses and interrupts come from
/// [`crate::layout`]; this says what is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdtConfig {
    /// `MPIDR_EL1` of each vCPU, in vCPU order; one GIC redistributor is described per vCPU.
    pub vcpu_mpidrs: Vec<u64>,
    /// Guest RAM.
    pub ram: GuestRegion,
    /// The kernel command line (`/chosen/bootargs`).
    pub cmdline: String,
    /// The initrd, if one was loaded.
    pub initrd: Option<GuestRegion>,
    /// Describe the 16550 UART and make it `stdout-path`.
    pub serial: bool,
    /// Describe the PL031 RTC.
    pub rtc: bool,
    /// Describe the PL061 GPIO controller.
    pub gpio: bool,
    /// Buttons on the PL061; needs `gpio`. No `gpio-keys` node when empty.
    pub gpio_keys: Vec<GpioKey>,
    /// virtio-mmio devices, one `virtio,mmio` node each.
    pub virtio_mmio: Vec<VirtioMmioNode>,
    /// The PSCI version the guest gets, for the `psci` node's `compatible`.
    pub psci_version: PsciVersion,
}

/// A virtio-mmio device: its register window and its (edge-triggered) SPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioNode {
    /// The window's base address.
    pub base: u64,
    /// The window's size.
    pub size: u64,
    /// The SPI number.
    pub spi: u32,
}

/// Why the device tree cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt rejected a node or property.
    #[error("Cannot write the device tree")]
    Write(#[from] vm_fdt::Error),
    /// No vCPU was given.
    #[error("No vCPUs")]
    NoVcpus,
    /// More vCPUs than redistributor space.
    #[error("{0} vCPUs exceed the maximum of {MAX_VCPUS}")]
    TooManyVcpus(usize),
    /// Two vCPUs share an affinity, so their `cpu` nodes would clash.
    #[error("Duplicate vCPU affinity {0:#x}")]
    DuplicateMpidr(u64),
    /// The command line, with its NUL, exceeds [`CMDLINE_MAX_SIZE`].
    #[error("Command line of {0} bytes exceeds 2047")]
    CmdlineTooLong(usize),
    /// The initrd is not inside RAM.
    #[error("Initrd is outside RAM")]
    InitrdOutsideRam,
    /// Keys were given without the GPIO controller.
    #[error("GPIO keys need the GPIO controller")]
    KeysWithoutGpio,
    /// A key's node name breaks the gpio-keys schema.
    #[error("Invalid GPIO key name {0:?}")]
    InvalidKeyName(String),
    /// Two keys share a node name.
    #[error("Duplicate GPIO key name {0:?}")]
    DuplicateKeyName(String),
    /// A key's pin is not a PL061 line.
    #[error("GPIO pin {0} is not below {PL061_PINS}")]
    InvalidPin(u32),
    /// Two keys share a pin.
    #[error("Duplicate GPIO pin {0}")]
    DuplicatePin(u32),
    /// The DTB exceeds booting.rst's 2 MiB limit.
    #[error("Device tree of {0} bytes exceeds 2 MiB")]
    TooLarge(usize),
}

/// Builds the DTB for `config`. It is at most [`FDT_MAX_SIZE`] bytes.
pub fn create_fdt(config: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    validate(config)?;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    write_cpus(&mut fdt, &config.vcpu_mpidrs)?;
    let psci = fdt.begin_node("psci")?;
    // Linux probes the version over HVC anyway; the compatible must not promise more.
    fdt.property_string_list("compatible", strings(config.psci_version.fdt_compatible()))?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;
    let memory = fdt.begin_node(&format!("memory@{:x}", config.ram.start))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[config.ram.start, config.ram.size])?;
    fdt.end_node(memory)?;
    write_chosen(&mut fdt, config)?;
    write_gic(&mut fdt, config.vcpu_mpidrs.len())?;
    write_timer(&mut fdt)?;
    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;
    if config.serial {
        let uart = device_node(&mut fdt, "uart", UART_BASE, UART_SPI, &["ns16550a"])?;
        fdt.property_u32("reg-shift", 0)?;
        fdt.property_u32("reg-io-width", 1)?;
        fdt.end_node(uart)?;
    }
    if config.rtc {
        let rtc = device_node(
            &mut fdt,
            "rtc",
            RTC_BASE,
            RTC_SPI,
            &["arm,pl031", "arm,primecell"],
        )?;
        fdt.end_node(rtc)?;
    }
    if config.gpio {
        let gpio = device_node(
            &mut fdt,
            "gpio",
            GPIO_BASE,
            GPIO_SPI,
            &["arm,pl061", "arm,primecell"],
        )?;
        fdt.property_null("gpio-controller")?;
        fdt.property_u32("#gpio-cells", 2)?;
        // The schema requires these; the driver's irqchip serves gpio_to_irq for the keys.
        fdt.property_null("interrupt-controller")?;
        fdt.property_u32("#interrupt-cells", 2)?;
        // dtc warns about an interrupt provider without it; it has no children.
        fdt.property_u32("#address-cells", 0)?;
        fdt.property_phandle(GPIO_PHANDLE)?;
        fdt.end_node(gpio)?;
    }
    if !config.gpio_keys.is_empty() {
        write_gpio_keys(&mut fdt, &config.gpio_keys)?;
    }
    for device in &config.virtio_mmio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", device.base))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[device.base, device.size])?;
        fdt.property_array_u32(
            "interrupts",
            &[GIC_SPI, device.spi, IrqTrigger::EdgeRising.fdt_flags()],
        )?;
        // Guest memory is cache-coherent with the VMM's device threads.
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }
    fdt.end_node(root)?;

    let dtb = fdt.finish()?;
    if dtb.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(dtb.len()));
    }
    Ok(dtb)
}

fn validate(config: &FdtConfig) -> Result<(), FdtError> {
    let vcpus = config.vcpu_mpidrs.len();
    if vcpus == 0 {
        return Err(FdtError::NoVcpus);
    }
    if vcpus > MAX_VCPUS {
        return Err(FdtError::TooManyVcpus(vcpus));
    }
    let mut seen = HashSet::new();
    for &mpidr in &config.vcpu_mpidrs {
        if !seen.insert(mpidr & MPIDR_AFFINITY_MASK) {
            return Err(FdtError::DuplicateMpidr(mpidr));
        }
    }
    if config.cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(FdtError::CmdlineTooLong(config.cmdline.len()));
    }
    if let Some(initrd) = config.initrd {
        let ram = config.ram;
        let inside = initrd.start >= ram.start
            && initrd
                .start
                .checked_add(initrd.size)
                .is_some_and(|end| end <= ram.end());
        if !inside {
            return Err(FdtError::InitrdOutsideRam);
        }
    }
    if !config.gpio && !config.gpio_keys.is_empty() {
        return Err(FdtError::KeysWithoutGpio);
    }
    let (mut names, mut pins) = (HashSet::new(), HashSet::new());
    for key in &config.gpio_keys {
        if !valid_key_name(&key.name) {
            return Err(FdtError::InvalidKeyName(key.name.clone()));
        }
        if !names.insert(key.name.as_str()) {
            return Err(FdtError::DuplicateKeyName(key.name.clone()));
        }
        if key.pin >= PL061_PINS {
            return Err(FdtError::InvalidPin(key.pin));
        }
        if !pins.insert(key.pin) {
            return Err(FdtError::DuplicatePin(key.pin));
        }
    }
    Ok(())
}

/// The gpio-keys schema's child pattern:
/// `^(K|K-[a-z0-9-]+|[a-z0-9-]+-K)$` with K one of button, event, key, switch.
fn valid_key_name(name: &str) -> bool {
    const KINDS: [&str; 4] = ["button", "event", "key", "switch"];
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    };
    KINDS.iter().any(|kind| {
        name == *kind
            || name
                .strip_prefix(kind)
                .and_then(|s| s.strip_prefix('-'))
                .is_some_and(word)
            || name
                .strip_suffix(kind)
                .and_then(|s| s.strip_suffix('-'))
                .is_some_and(word)
    })
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

fn write_cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    // Aff3 is masked off, so one cell holds every reg value.
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for &mpidr in mpidrs {
        let reg = (mpidr & MPIDR_AFFINITY_MASK) as u32;
        let cpu = fdt.begin_node(&format!("cpu@{reg:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", reg)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

fn write_chosen(fdt: &mut FdtWriter, config: &FdtConfig) -> Result<(), FdtError> {
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &config.cmdline)?;
    if let Some(initrd) = config.initrd {
        fdt.property_u64("linux,initrd-start", initrd.start)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    if config.serial {
        fdt.property_string("stdout-path", &format!("/uart@{UART_BASE:x}"))?;
    }
    fdt.end_node(chosen)?;
    Ok(())
}

fn write_gic(fdt: &mut FdtWriter, vcpus: usize) -> Result<(), FdtError> {
    let gic = fdt.begin_node(&format!("intc@{GIC_DIST_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    let redist_size = gic_redist_size(vcpus);
    fdt.property_array_u64(
        "reg",
        &[GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE, redist_size],
    )?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
    )?;
    fdt.end_node(gic)?;
    Ok(())
}

fn write_timer(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    // Order fixed by the binding: secure phys, non-secure phys, virtual, hypervisor.
    let mut cells = Vec::new();
    for ppi in [
        TIMER_SEC_PHYS_PPI,
        TIMER_PHYS_PPI,
        TIMER_VIRT_PPI,
        TIMER_HYP_PPI,
    ] {
        cells.extend([GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]);
    }
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(timer)?;
    Ok(())
}

/// Opens an MMIO device node with the properties all our devices share; the caller adds
/// its own and closes it.
fn device_node(
    fdt: &mut FdtWriter,
    name: &str,
    base: u64,
    spi: Spi,
    compatible: &[&str],
) -> Result<FdtWriterNode, FdtError> {
    let node = fdt.begin_node(&format!("{name}@{base:x}"))?;
    fdt.property_string_list("compatible", strings(compatible))?;
    fdt.property_array_u64("reg", &[base, MMIO_SLOT_SIZE])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, spi.gsi, spi.trigger.fdt_flags()])?;
    // PrimeCell probing reads the peripheral id through this clock.
    fdt.property_u32("clocks", CLOCK_PHANDLE)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    Ok(node)
}

fn write_gpio_keys(fdt: &mut FdtWriter, keys: &[GpioKey]) -> Result<(), FdtError> {
    let node = fdt.begin_node("gpio-keys")?;
    fdt.property_string("compatible", "gpio-keys")?;
    for key in keys {
        let child = fdt.begin_node(&key.name)?;
        fdt.property_string("label", &key.label)?;
        fdt.property_u32("linux,code", key.code)?;
        fdt.property_array_u32("gpios", &[GPIO_PHANDLE, key.pin, GPIO_ACTIVE_HIGH])?;
        if key.wakeup {
            fdt.property_null("wakeup-source")?;
        }
        fdt.end_node(child)?;
    }
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests;
