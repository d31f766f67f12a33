//! The VM: guest memory, capabilities, vCPU creation and interrupt lines.

use kvm_bindings::{
    KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2,
    KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER, KVM_CAP_ARM_SYSTEM_SUSPEND, kvm_device_attr,
    kvm_enable_cap, kvm_smccc_filter, kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER,
    kvm_userspace_memory_region, kvm_vcpu_init,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{KvmGicV3, KvmHypervisor, KvmVcpu, KvmVcpuKicker, gic::GicError};

/// Failures creating or configuring a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `KVM_CREATE_VM` failed.
    #[error("Cannot create the VM")]
    Create(#[source] std::io::Error),
    /// A guest memory region could not be registered.
    #[error("Cannot register guest memory at {guest_addr:#x}")]
    Memory {
        /// Start of the region.
        guest_addr: u64,
        /// The errno, or the reason the host address is unknown.
        #[source]
        source: std::io::Error,
    },
    /// `KVM_ARM_PREFERRED_TARGET` failed.
    #[error("Cannot query the preferred vCPU target")]
    PreferredTarget(#[source] std::io::Error),
    /// Enabling `KVM_CAP_ARM_SYSTEM_SUSPEND` failed although KVM reported it.
    #[error("Cannot enable KVM_CAP_ARM_SYSTEM_SUSPEND")]
    EnableSystemSuspend(#[source] std::io::Error),
    /// Installing the SMCCC filter failed although KVM reported it.
    #[error("Cannot forward SMCCC functions {first:#x}..{end:#x} to the VMM")]
    SmcccFilter {
        /// The first function id of the range.
        first: u32,
        /// One past the last.
        end: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `KVM_CREATE_VCPU` or `KVM_ARM_VCPU_INIT` failed.
    #[error("Cannot create vCPU {index}")]
    CreateVcpu {
        /// The vCPU index.
        index: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The vGIC could not be created.
    #[error("Cannot create the vGICv3")]
    Gic(#[source] GicError),
    /// `KVM_IRQFD` failed.
    #[error("Cannot register an irqfd for SPI {spi}")]
    Irqfd {
        /// The SPI number.
        spi: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("Cannot register an ioeventfd at {addr:#x}")]
    Ioeventfd {
        /// The guest-physical address.
        addr: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `KVM_IRQ_LINE` failed.
    #[error("Cannot set SPI {spi}")]
    IrqLine {
        /// The SPI number (INTID - 32).
        spi: u32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// `KVM_CREATE_VM`'s machine type 0: KVM's default 40-bit guest physical address space
/// (1 TiB), which holds the whole layout (RAM ends at 256 GiB at most). kvm-ioctls'
/// `create_vm()` asks for the largest the host offers instead (52 bits under QEMU's
/// `-cpu max`), and Linux 7.x walks all of it in 1 GiB steps when the VM is destroyed: 40 s
/// per VM in the testbed's emulated host, against 24 ms at 40 bits.
pub const VM_TYPE_40_BIT_IPA: u64 = 0;

/// How to create a VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmVmOptions {
    /// Enable `KVM_CAP_ARM_SYSTEM_SUSPEND` if the host has it.
    pub system_suspend: bool,
    /// SMCCC function ranges `(first id, count)` to forward to the VMM as
    /// [`VmExit::Hypercall`](crate::VmExit::Hypercall) exits, if the host has the SMCCC filter
    /// (Linux 6.4 and later).
    pub forward_smccc: &'static [(u32, u32)],
}

/// A KVM VM with its guest memory registered.
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
    // Held so the mappings KVM points at live as long as the VM.
    memory: GuestMemoryMmap,
    vcpu_init: kvm_vcpu_init,
    system_suspend: bool,
    smccc_forwarded: bool,
}

impl KvmVm {
    /// Creates a VM, registers every region of `memory`, and enables SYSTEM_SUSPEND exits when
    /// asked and available. Check [`KvmVm::system_suspend_enabled`] for the outcome.
    pub fn new(
        hypervisor: &KvmHypervisor,
        memory: GuestMemoryMmap,
        options: KvmVmOptions,
    ) -> Result<Self, VmError> {
        let fd = hypervisor
            .kvm()
            .create_vm_with_type(VM_TYPE_40_BIT_IPA)
            .map_err(|err| VmError::Create(err.into()))?;
        for (slot, region) in memory.iter().enumerate() {
            let guest_addr = region.start_addr().0;
            let host_addr = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|err| VmError::Memory {
                    guest_addr,
                    source: std::io::Error::other(err),
                })?;
            let descriptor = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: guest_addr,
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `memory`,
            // which the VM keeps until it is dropped, so KVM never sees a dangling address.
            unsafe { fd.set_user_memory_region(descriptor) }.map_err(|err| VmError::Memory {
                guest_addr,
                source: err.into(),
            })?;
        }

        let mut vcpu_init = kvm_vcpu_init::default();
        fd.get_preferred_target(&mut vcpu_init)
            .map_err(|err| VmError::PreferredTarget(err.into()))?;
        // PSCI 0.2+ makes KVM implement PSCI 1.x in-kernel, which SYSTEM_SUSPEND needs.
        vcpu_init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;

        let mut system_suspend = false;
        if options.system_suspend && hypervisor.supports_system_suspend() {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_ARM_SYSTEM_SUSPEND,
                ..Default::default()
            };
            fd.enable_cap(&cap)
                .map_err(|err| VmError::EnableSystemSuspend(err.into()))?;
            system_suspend = true;
        }
        let smccc_forwarded = !options.forward_smccc.is_empty() && has_smccc_filter(&fd);
        if smccc_forwarded {
            for &(first, count) in options.forward_smccc {
                forward_smccc(&fd, first, count)?;
            }
        }
        Ok(Self {
            fd,
            memory,
            vcpu_init,
            system_suspend,
            smccc_forwarded,
        })
    }

    /// Whether the guest can use PSCI SYSTEM_SUSPEND.
    pub fn system_suspend_enabled(&self) -> bool {
        self.system_suspend
    }

    /// Whether the ranges of [`KvmVmOptions::forward_smccc`] exit to the VMM; false when none were
    /// asked for or the host has no SMCCC filter, and KVM handles those calls itself.
    pub fn smccc_forwarded(&self) -> bool {
        self.smccc_forwarded
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub(super) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Creates and initialises vCPU `index` with PSCI 0.2. vCPU 0 starts runnable; the others
    /// start powered off, for the guest to start with PSCI CPU_ON.
    pub fn create_vcpu(&self, index: u32) -> Result<KvmVcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|err| VmError::CreateVcpu {
                index,
                source: err.into(),
            })?;
        let mut init = self.vcpu_init;
        if index > 0 {
            init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        let kicker = KvmVcpuKicker::new(&self.fd, &fd).map_err(|err| VmError::CreateVcpu {
            index,
            source: std::io::Error::other(err),
        })?;
        KvmVcpu::new(fd, index, init, kicker).map_err(|source| VmError::CreateVcpu {
            index,
            source: match source {
                crate::VcpuError::Init { source, .. } => source,
                other => std::io::Error::other(other),
            },
        })
    }

    /// Creates the in-kernel vGICv3. Call it after every vCPU exists.
    pub fn create_gic(
        &self,
        distributor: u64,
        redistributors: u64,
        spis: u32,
    ) -> Result<KvmGicV3, VmError> {
        KvmGicV3::new(&self.fd, distributor, redistributors, spis).map_err(VmError::Gic)
    }

    /// Drives the level of shared peripheral interrupt `spi` (INTID `32 + spi`). An edge-
    /// triggered SPI latches on the rising edge; a level one follows the line.
    pub fn set_spi_level(&self, spi: u32, high: bool) -> Result<(), VmError> {
        let irq = (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (32 + spi);
        self.fd
            .set_irq_line(irq, high)
            .map_err(|err| VmError::IrqLine {
                spi,
                source: err.into(),
            })
    }

    /// Makes every write of `event` raise SPI `spi` (an edge: irqfd has no deassert), so a
    /// device thread interrupts the guest without a trip through this process's vCPU threads.
    pub fn register_irqfd(&self, event: &EventFd, spi: u32) -> Result<(), VmError> {
        // With the vGIC's default routing, GSI n is SPI n (INTID 32 + n).
        self.fd
            .register_irqfd(event, spi)
            .map_err(|err| VmError::Irqfd {
                spi,
                source: err.into(),
            })
    }

    /// Makes a 4-byte guest write of `value` at `addr` signal `event` inside KVM instead of
    /// exiting to the vCPU thread (virtio's QueueNotify).
    pub fn register_ioeventfd(
        &self,
        event: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), value)
            .map_err(|err| VmError::Ioeventfd {
                addr,
                source: err.into(),
            })
    }
}

/// The SMCCC filter attribute of the VM, pointing at `filter` when one is given.
fn smccc_filter_attr(filter: Option<&kvm_smccc_filter>) -> kvm_device_attr {
    kvm_device_attr {
        group: KVM_ARM_VM_SMCCC_CTRL,
        attr: u64::from(KVM_ARM_VM_SMCCC_FILTER),
        addr: filter.map_or(0, |filter| filter as *const kvm_smccc_filter as u64),
        flags: 0,
    }
}

/// Whether KVM has the SMCCC filter (Linux 6.4 and later).
fn has_smccc_filter(fd: &VmFd) -> bool {
    fd.has_device_attr(&smccc_filter_attr(None)).is_ok()
}

/// Makes the SMCCC functions `first..first + count` exit to userspace. KVM only accepts it
/// before any vCPU has run.
fn forward_smccc(fd: &VmFd, first: u32, count: u32) -> Result<(), VmError> {
    let filter = kvm_smccc_filter {
        base: first,
        nr_functions: count,
        action: kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER as u8,
        pad: [0; 15],
    };
    fd.set_device_attr(&smccc_filter_attr(Some(&filter)))
        .map_err(|err| VmError::SmcccFilter {
            first,
            end: first + count,
            source: err.into(),
        })
}
