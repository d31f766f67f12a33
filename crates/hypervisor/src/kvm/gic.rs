//! The in-kernel vGICv3 (KVM_DEV_TYPE_ARM_VGIC_V3).

use kvm_bindings::{
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
};
use kvm_ioctls::{DeviceFd, VmFd};

/// Failures creating the vGIC.
#[derive(Debug, thiserror::Error)]
pub enum GicError {
    /// `KVM_CREATE_DEVICE` failed: the host has no GICv3.
    #[error("Cannot create the vGICv3 device")]
    Create(#[source] std::io::Error),
    /// Setting a device attribute failed.
    #[error("Cannot set vGIC attribute {what}")]
    Attribute {
        /// Which attribute.
        what: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The SPI count is not a multiple of 32 up to 988.
    #[error("Invalid SPI count {0}: must be a multiple of 32 up to 988")]
    SpiCount(u32),
}

/// The in-kernel vGICv3, created after all vCPUs. [`KvmGicV3::save`] and [`KvmGicV3::restore`] move
/// its state in and out.
#[derive(Debug)]
pub struct KvmGicV3 {
    fd: DeviceFd,
    spis: u32,
}

impl KvmGicV3 {
    pub(crate) fn new(
        vm: &VmFd,
        distributor: u64,
        redistributors: u64,
        spis: u32,
    ) -> Result<Self, GicError> {
        if spis == 0 || spis % 32 != 0 || spis > 988 {
            return Err(GicError::SpiCount(spis));
        }
        let mut device = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let fd = vm
            .create_device(&mut device)
            .map_err(|err| GicError::Create(err.into()))?;
        let set = |what, group, attr: u32, addr: u64| {
            let attribute = kvm_device_attr {
                flags: 0,
                group,
                attr: u64::from(attr),
                addr,
            };
            fd.set_device_attr(&attribute)
                .map_err(|err| GicError::Attribute {
                    what,
                    source: err.into(),
                })
        };
        // KVM reads these through the pointers while the ioctl runs.
        set(
            "distributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST,
            &distributor as *const u64 as u64,
        )?;
        set(
            "redistributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST,
            &redistributors as *const u64 as u64,
        )?;
        let nr_irqs: u32 = 32 + spis;
        set(
            "interrupt count",
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
        )?;
        set(
            "init",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT,
            0,
        )?;
        Ok(Self { fd, spis })
    }

    /// The number of shared peripheral interrupts (INTIDs 32 and up).
    pub fn spis(&self) -> u32 {
        self.spis
    }

    pub(super) fn fd(&self) -> &DeviceFd {
        &self.fd
    }
}
