//! The guest physical memory map and where the boot images go in RAM.
//!
//! The map follows QEMU's `virt` machine below 1 GiB (GIC at 128 MiB, devices at 144 MiB)
//! so guest kernels and device trees written for `virt` feel at home, and RAM starts at
//! 1 GiB. Everything in the device area must agree with the FDT, which `fdt.rs` builds
//! from these constants.
//!
//! ```text
//! 0x0000_0000 ..0x0800_0000  unused (QEMU keeps flash here)
//! 0x0800_0000 ..0x0801_0000  GICv3 distributor
//! 0x0801_0000 ..0x080A_0000  reserved (QEMU: ITS, GICv2m)
//! 0x080A_0000 ..0x0900_0000  GICv3 redistributors, 128 KiB per vCPU
//! 0x0900_0000 ..0x0905_0000  MMIO device slots, 4 KiB each
//! 0x0A00_0000 ..0x0A02_0000  virtio-mmio windows, 4 KiB each, SPIs 16 to 47
//! 0x4000_0000 ..             RAM
//! ```

/// Size of a 4 KiB page, the initrd's alignment.
pub const PAGE_SIZE: u64 = 0x1000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Base of the GICv3 distributor.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the GICv3 distributor frame (64 KiB, fixed by the architecture).
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Base of the first GICv3 redistributor; vCPU `n`'s frame is at `base + n * size`.
pub const GIC_REDIST_BASE: u64 = 0x080A_0000;
/// Size of one redistributor: RD_base plus SGI_base frames, 64 KiB each.
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// End of the redistributor region; the first device slot starts here.
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// The most vCPUs whose redistributors fit below [`GIC_REDIST_END`] (123, as on QEMU `virt`).
pub const MAX_VCPUS: usize = ((GIC_REDIST_END - GIC_REDIST_BASE) / GIC_REDIST_SIZE) as usize;
/// The GIC maintenance interrupt, as a PPI number (INTID 16 + 9 = 25).
pub const GIC_MAINTENANCE_PPI: u32 = 9;
/// SPIs the vGIC is created with. KVM wants a multiple of 32, and 64 leaves room for
/// virtio devices beyond the fixed slots below.
pub const GIC_NR_SPIS: u32 = 64;
/// All interrupt ids the vGIC is created with: 32 private (SGI + PPI) plus the SPIs.
pub const GIC_NR_IRQS: u32 = 32 + GIC_NR_SPIS;

/// The bytes of redistributor space `vcpus` vCPUs need, starting at [`GIC_REDIST_BASE`].
pub const fn gic_redist_size(vcpus: usize) -> u64 {
    vcpus as u64 * GIC_REDIST_SIZE
}

/// Architected timer PPI: secure physical timer (INTID 29).
pub const TIMER_SEC_PHYS_PPI: u32 = 13;
/// Architected timer PPI: non-secure physical timer (INTID 30).
pub const TIMER_PHYS_PPI: u32 = 14;
/// Architected timer PPI: virtual timer (INTID 27), the one Linux uses in a VM.
pub const TIMER_VIRT_PPI: u32 = 11;
/// Architected timer PPI: hypervisor timer (INTID 26).
pub const TIMER_HYP_PPI: u32 = 10;

/// How an interrupt line signals. The discriminant is the FDT interrupt-specifier flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqTrigger {
    /// Rising edge (`IRQ_TYPE_EDGE_RISING`): one pulse per event.
    EdgeRising = 1,
    /// Active-high level (`IRQ_TYPE_LEVEL_HIGH`): held while the device wants service.
    LevelHigh = 4,
}

impl IrqTrigger {
    /// The flag cell of an FDT interrupt specifier.
    pub const fn fdt_flags(self) -> u32 {
        self as u32
    }
}

/// A shared peripheral interrupt of a device slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spi {
    /// The SPI number: the FDT's interrupt number and KVM's GSI (irqfd, default routing).
    pub gsi: u32,
    /// How the device drives the line.
    pub trigger: IrqTrigger,
}

impl Spi {
    /// The GIC INTID, as `KVM_IRQ_LINE` wants it: SPIs start at 32.
    pub const fn intid(self) -> u32 {
        32 + self.gsi
    }
}

/// Size of every MMIO device slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// 16550A UART.
pub const UART_BASE: u64 = 0x0900_0000;
/// The UART's interrupt. Edge, as Firecracker wires its 16550 with an eventfd pulse.
pub const UART_SPI: Spi = Spi {
    gsi: 1,
    trigger: IrqTrigger::EdgeRising,
};
/// PL031 real-time clock.
pub const RTC_BASE: u64 = 0x0901_0000;
/// The RTC alarm interrupt; level, as the PL031 holds RTCMIS until cleared.
pub const RTC_SPI: Spi = Spi {
    gsi: 2,
    trigger: IrqTrigger::LevelHigh,
};
/// PL061 GPIO controller, for gpio-keys (power and wake buttons).
pub const GPIO_BASE: u64 = 0x0903_0000;
/// The PL061's combined interrupt; level, as GPIOMIS holds it until cleared.
pub const GPIO_SPI: Spi = Spi {
    gsi: 7,
    trigger: IrqTrigger::LevelHigh,
};
/// Reserved for a boot-timer device (guest writes a marker when it reaches userspace).
/// It has no interrupt and no FDT node yet.
pub const BOOT_TIMER_BASE: u64 = 0x0904_0000;

/// Start of the virtio-mmio area (as on QEMU `virt`); the VMM allocates one window of
/// [`VIRTIO_MMIO_WINDOW`] bytes per device from it.
pub const VIRTIO_MMIO_BASE: u64 = 0x0A00_0000;
/// One virtio-mmio device's register window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// How many virtio-mmio devices fit: one window and one SPI each.
pub const VIRTIO_MMIO_SLOTS: u32 = 32;
/// The size of the virtio-mmio area.
pub const VIRTIO_MMIO_SIZE: u64 = VIRTIO_MMIO_SLOTS as u64 * VIRTIO_MMIO_WINDOW;
/// The first SPI for virtio-mmio devices; they use `VIRTIO_SPI_BASE..VIRTIO_SPI_BASE +
/// VIRTIO_MMIO_SLOTS`, edge-triggered (an irqfd pulse), as on QEMU `virt`.
pub const VIRTIO_SPI_BASE: u32 = 16;

// The virtio area lies between the fixed slots and RAM, and its SPIs exist on the vGIC.
const _: () = assert!(BOOT_TIMER_BASE + MMIO_SLOT_SIZE <= VIRTIO_MMIO_BASE);
const _: () = assert!(VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE <= RAM_START);
const _: () = assert!(VIRTIO_SPI_BASE + VIRTIO_MMIO_SLOTS <= GIC_NR_SPIS);
const _: () = assert!(VIRTIO_SPI_BASE > GPIO_SPI.gsi);

/// Guest physical address of the start of RAM.
pub const RAM_START: u64 = 0x4000_0000;
/// The smallest RAM accepted: the 2 MiB below the kernel, a few MiB for a tiny kernel
/// and the 2 MiB FDT region. Less is almost surely a unit mistake.
pub const RAM_MIN_SIZE: u64 = 8 * MIB;
/// The largest RAM accepted: RAM then ends at 256 GiB, well inside KVM's default 40-bit
/// (1 TiB) IPA space, which leaves room for a high MMIO region later.
pub const RAM_MAX_SIZE: u64 = 255 * GIB;
/// RAM size granule: the kernel base and the FDT region are 2 MiB aligned, and this
/// lets the host back RAM with huge pages.
pub const RAM_ALIGN: u64 = 2 * MIB;
/// Offset of the kernel load base from [`RAM_START`]. The Image must load at a 2 MiB
/// aligned base; the first 2 MiB stay free for firmware tables later, as on Firecracker.
pub const KERNEL_OFFSET: u64 = 2 * MIB;
/// The FDT's region at the end of RAM; booting.rst caps the DTB at 2 MiB.
pub const FDT_MAX_SIZE: u64 = 2 * MIB;
/// booting.rst: the initrd must lie in the 1 GiB aligned 32 GiB window holding the kernel.
const INITRD_WINDOW: u64 = 32 * GIB;

/// Why a boot layout cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM size is not a multiple of [`RAM_ALIGN`].
    #[error("RAM size {0:#x} is not a multiple of 2 MiB")]
    RamUnaligned(u64),
    /// RAM is smaller than [`RAM_MIN_SIZE`].
    #[error("RAM size {0:#x} is below the 8 MiB minimum")]
    RamTooSmall(u64),
    /// RAM is larger than [`RAM_MAX_SIZE`].
    #[error("RAM size {0:#x} is above the 255 GiB maximum")]
    RamTooLarge(u64),
    /// The kernel has no bytes.
    #[error("Kernel is empty")]
    EmptyKernel,
    /// The initrd has no bytes; pass `None` instead.
    #[error("Initrd is empty")]
    EmptyInitrd,
    /// The initrd does not fit between the kernel base and the FDT.
    #[error("Initrd of {size:#x} bytes does not fit in RAM ({available:#x} bytes free)")]
    InitrdTooLarge {
        /// The initrd's size.
        size: u64,
        /// The bytes available to it.
        available: u64,
    },
    /// The kernel does not fit below the initrd (or the FDT).
    #[error("Kernel of {size:#x} bytes does not fit in RAM ({available:#x} bytes free)")]
    KernelTooLarge {
        /// The kernel's size.
        size: u64,
        /// The bytes available to it.
        available: u64,
    },
}

/// A range of guest physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRegion {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GuestRegion {
    /// One past the last address, saturating so a bogus region cannot panic.
    pub const fn end(self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// Whether `addr` is in the region.
    pub const fn contains(self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.size
    }
}

/// Where the boot images go in RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// All of RAM.
    pub ram: GuestRegion,
    /// The 2 MiB aligned base for the Image loader, which adds `text_offset` itself.
    pub kernel_load: u64,
    /// The kernel must end at or below this address (the initrd or FDT follows).
    pub kernel_limit: u64,
    /// The initrd's page-aligned region, if there is one.
    pub initrd: Option<GuestRegion>,
    /// The FDT's address: 2 MiB (hence 8-byte) aligned, with [`FDT_MAX_SIZE`] bytes free.
    pub fdt_addr: u64,
}

/// Places the kernel, initrd and FDT in `ram_size` bytes of RAM at [`RAM_START`].
///
/// `kernel_size` is the span the kernel needs from the load base: for an arm64 Image,
/// `text_offset + image_size` from its header (which counts BSS), not the file length.
/// The FDT takes the last 2 MiB of RAM and the initrd sits page-aligned just below it,
/// unless that would leave booting.rst's 32 GiB window around the kernel: then it goes
/// to the top of that window instead.
pub fn boot_layout(
    ram_size: u64,
    kernel_size: u64,
    initrd_size: Option<u64>,
) -> Result<BootLayout, LayoutError> {
    if ram_size % RAM_ALIGN != 0 {
        return Err(LayoutError::RamUnaligned(ram_size));
    }
    if ram_size < RAM_MIN_SIZE {
        return Err(LayoutError::RamTooSmall(ram_size));
    }
    if ram_size > RAM_MAX_SIZE {
        return Err(LayoutError::RamTooLarge(ram_size));
    }
    if kernel_size == 0 {
        return Err(LayoutError::EmptyKernel);
    }
    // The checks above bound every sum below well inside u64.
    let ram = GuestRegion {
        start: RAM_START,
        size: ram_size,
    };
    let kernel_load = RAM_START + KERNEL_OFFSET;
    let fdt_addr = ram.end() - FDT_MAX_SIZE;

    let initrd = match initrd_size {
        None => None,
        Some(0) => return Err(LayoutError::EmptyInitrd),
        Some(size) => {
            let window_end = kernel_load / GIB * GIB + INITRD_WINDOW;
            let top = fdt_addr.min(window_end);
            let available = top - kernel_load;
            let aligned = size.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
            if aligned > available {
                return Err(LayoutError::InitrdTooLarge { size, available });
            }
            Some(GuestRegion {
                start: top - aligned,
                size,
            })
        }
    };

    let kernel_limit = initrd.map_or(fdt_addr, |initrd| initrd.start);
    let available = kernel_limit - kernel_load;
    if kernel_size > available {
        return Err(LayoutError::KernelTooLarge {
            size: kernel_size,
            available,
        });
    }
    Ok(BootLayout {
        ram,
        kernel_load,
        kernel_limit,
        initrd,
        fdt_addr,
    })
}

// The fixed map must not overlap, and KVM needs NR_IRQS to be a multiple of 32.
const _: () = {
    assert!(GIC_DIST_BASE + GIC_DIST_SIZE <= GIC_REDIST_BASE);
    assert!(GIC_REDIST_END <= UART_BASE);
    assert!(UART_BASE + MMIO_SLOT_SIZE <= RTC_BASE);
    assert!(RTC_BASE + MMIO_SLOT_SIZE <= GPIO_BASE);
    assert!(GPIO_BASE + MMIO_SLOT_SIZE <= BOOT_TIMER_BASE);
    assert!(BOOT_TIMER_BASE + MMIO_SLOT_SIZE <= RAM_START);
    assert!(GIC_NR_IRQS % 32 == 0);
    assert!(UART_SPI.gsi < GIC_NR_SPIS && RTC_SPI.gsi < GIC_NR_SPIS);
    assert!(GPIO_SPI.gsi < GIC_NR_SPIS);
    assert!(RAM_MIN_SIZE >= KERNEL_OFFSET + FDT_MAX_SIZE + RAM_ALIGN);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_map_matches_the_documented_values() {
        assert_eq!(MAX_VCPUS, 123);
        assert_eq!(GIC_NR_IRQS, 96);
        assert_eq!(gic_redist_size(MAX_VCPUS), GIC_REDIST_END - GIC_REDIST_BASE);
        assert_eq!(UART_SPI.intid(), 33);
        assert_eq!(GPIO_SPI.intid(), 39);
        assert_eq!(UART_SPI.trigger.fdt_flags(), 1);
        assert_eq!(RTC_SPI.trigger.fdt_flags(), 4);
    }

    #[test]
    fn region_end_saturates() {
        assert_eq!(GuestRegion { start: 1, size: 2 }.end(), 3);
        assert_eq!(
            GuestRegion {
                start: u64::MAX,
                size: 2
            }
            .end(),
            u64::MAX
        );
    }

    #[test]
    fn places_kernel_initrd_and_fdt() {
        let layout = boot_layout(512 * MIB, 30 * MIB, Some(5000)).unwrap();
        let ram_end = RAM_START + 512 * MIB;
        assert_eq!(
            layout.ram,
            GuestRegion {
                start: RAM_START,
                size: 512 * MIB
            }
        );
        assert_eq!(layout.kernel_load, 0x4020_0000);
        assert_eq!(layout.kernel_load % (2 * MIB), 0);
        assert_eq!(layout.fdt_addr, ram_end - 2 * MIB);
        let initrd = layout.initrd.unwrap();
        assert_eq!(initrd.size, 5000);
        assert_eq!(initrd.start, layout.fdt_addr - 2 * PAGE_SIZE);
        assert_eq!(initrd.start % PAGE_SIZE, 0);
        assert!(initrd.end() <= layout.fdt_addr);
        assert_eq!(layout.kernel_limit, initrd.start);
    }

    #[test]
    fn without_initrd_the_kernel_may_reach_the_fdt() {
        let layout = boot_layout(RAM_MIN_SIZE, 4 * MIB, None).unwrap();
        assert_eq!(layout.initrd, None);
        assert_eq!(layout.kernel_limit, layout.fdt_addr);
        assert_eq!(layout.kernel_limit - layout.kernel_load, 4 * MIB);
    }

    #[test]
    fn initrd_stays_in_the_kernels_32_gib_window() {
        let layout = boot_layout(64 * GIB, 30 * MIB, Some(MIB)).unwrap();
        let initrd = layout.initrd.unwrap();
        assert_eq!(initrd.end(), 33 * GIB);
        assert_eq!(layout.fdt_addr, RAM_START + 64 * GIB - 2 * MIB);
        // At exactly 32 GiB + 2 MiB the FDT-adjacent spot is still inside the window.
        let layout = boot_layout(32 * GIB + 2 * MIB, MIB, Some(MIB)).unwrap();
        assert_eq!(layout.initrd.unwrap().end(), layout.fdt_addr);
    }

    #[test]
    fn rejects_bad_ram_sizes() {
        assert_eq!(
            boot_layout(MIB, 1, None),
            Err(LayoutError::RamUnaligned(MIB))
        );
        assert_eq!(
            boot_layout(4 * MIB, 1, None),
            Err(LayoutError::RamTooSmall(4 * MIB))
        );
        assert_eq!(
            boot_layout(256 * GIB, 1, None),
            Err(LayoutError::RamTooLarge(256 * GIB))
        );
        assert_eq!(
            boot_layout(u64::MAX - (2 * MIB - 1), 1, None),
            Err(LayoutError::RamTooLarge(u64::MAX - (2 * MIB - 1)))
        );
        assert!(boot_layout(RAM_MAX_SIZE, 1, None).is_ok());
    }

    #[test]
    fn rejects_images_that_do_not_fit() {
        assert_eq!(
            boot_layout(RAM_MIN_SIZE, 0, None),
            Err(LayoutError::EmptyKernel)
        );
        assert_eq!(
            boot_layout(RAM_MIN_SIZE, 1, Some(0)),
            Err(LayoutError::EmptyInitrd)
        );
        assert_eq!(
            boot_layout(RAM_MIN_SIZE, 4 * MIB + 1, None),
            Err(LayoutError::KernelTooLarge {
                size: 4 * MIB + 1,
                available: 4 * MIB
            })
        );
        assert_eq!(
            boot_layout(RAM_MIN_SIZE, 1, Some(u64::MAX)),
            Err(LayoutError::InitrdTooLarge {
                size: u64::MAX,
                available: 4 * MIB
            })
        );
        // Each fits alone, but not together: the kernel would run into the initrd.
        assert_eq!(
            boot_layout(RAM_MIN_SIZE, 3 * MIB, Some(2 * MIB)),
            Err(LayoutError::KernelTooLarge {
                size: 3 * MIB,
                available: 2 * MIB
            })
        );
    }
}
