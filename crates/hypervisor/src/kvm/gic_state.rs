//! Saving and restoring the vGICv3 through KVM's device attributes (Linux
//! `Documentation/virt/kvm/devices/arm-vgic-v3.rst`), as Firecracker's `gicv3/regs` and Cloud
//! Hypervisor's `kvm/aarch64/gic` do, plus the line levels they leave out. There is no ITS, so
//! there are no LPI tables to flush into guest memory first.
//!
//! KVM takes every vCPU's lock for each access and fails with `EBUSY` while any vCPU is inside
//! `KVM_RUN`, a suspended one waiting there for its wakeup included.

use std::io;

use kvm_bindings::{
    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, VGIC_LEVEL_INFO_LINE_LEVEL, kvm_device_attr,
};
use kvm_ioctls::DeviceFd;

use super::KvmGicV3;
use crate::gic_state::regs::*;
use crate::gic_state::{
    GicCpuInterfaceState, GicDistributorState, GicRedistributorState, GicState, GicVcpuState,
    active_priority_registers,
};

/// Failures saving or restoring the vGIC's state.
#[derive(Debug, thiserror::Error)]
pub enum GicStateError {
    /// `KVM_GET_DEVICE_ATTR` failed; `EBUSY` means a vCPU was in `KVM_RUN`.
    #[error("Cannot read {register} of the vGIC (attribute {attr:#x})")]
    Read {
        /// The register's name.
        register: &'static str,
        /// The attribute: the MPIDR in bits 63..32, the offset or encoding below.
        attr: u64,
        /// KVM's errno.
        #[source]
        source: io::Error,
    },
    /// `KVM_SET_DEVICE_ATTR` failed: `EBUSY` as for reads, `EINVAL` for a value this host's
    /// vGIC cannot take (a newer GICD_IIDR revision, more ICC_CTLR_EL1 priority bits).
    #[error("Cannot write {register} of the vGIC (attribute {attr:#x})")]
    Write {
        /// The register's name.
        register: &'static str,
        /// The attribute, as for reads.
        attr: u64,
        /// KVM's errno.
        #[source]
        source: io::Error,
    },
    /// A register array of the state does not fit this vGIC: another SPI count, or active
    /// priority registers that disagree with the saved ICC_CTLR_EL1.
    #[error("Cannot restore {register} from {len} values: this vGIC has {expected}")]
    Shape {
        /// The register array.
        register: &'static str,
        /// Its length in the state.
        len: usize,
        /// The length this vGIC needs.
        expected: usize,
    },
    /// The state is of a VM with another number of vCPUs.
    #[error("Cannot restore the vGIC state of {saved} vCPUs into {vcpus} vCPUs")]
    VcpuCount {
        /// vCPUs in the state.
        saved: usize,
        /// vCPUs given to restore.
        vcpus: usize,
    },
    /// No vCPU of the state has this vCPU's affinity.
    #[error("Cannot restore the vGIC: the state has no vCPU with MPIDR {mpidr:#x}")]
    MissingVcpu {
        /// The affinity looked for.
        mpidr: u64,
    },
}

type Result<T> = std::result::Result<T, GicStateError>;

impl KvmGicV3 {
    /// Reads the vGIC's state: the distributor with every SPI, and the redistributor and CPU
    /// interface of each vCPU in `mpidrs` (their `MPIDR_EL1`, in vCPU order).
    ///
    /// Every vCPU must be out of `KVM_RUN` and stay out until this returns: KVM locks all of
    /// them for each register and fails with `EBUSY` otherwise, a suspended vCPU blocked in
    /// `KVM_RUN` included, so kick them all first. The guest cannot then change the state
    /// between two reads.
    pub fn save(&self, mpidrs: &[u64]) -> Result<GicState> {
        let distributor = self.save_distributor(mpidrs.first().copied().unwrap_or(0))?;
        let vcpus = mpidrs
            .iter()
            .map(|&mpidr| {
                let mpidr = affinity(mpidr);
                Ok(GicVcpuState {
                    mpidr,
                    redistributor: self.save_redistributor(mpidr)?,
                    cpu_interface: self.save_cpu_interface(mpidr)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(GicState { distributor, vcpus })
    }

    /// Writes `state` into this vGIC, whose vCPUs have the affinities `mpidrs`. Each vCPU gets
    /// the state saved for its affinity, so a VM restored with the same vCPU count gets its
    /// vCPUs' interrupts back whatever the order. Call it before any vCPU of this VM has run,
    /// with every vCPU out of `KVM_RUN` as for [`KvmGicV3::save`].
    ///
    /// The order follows the documentation and QEMU: GICD_IIDR first, so KVM behaves as the
    /// saving one did, then GICD_CTLR; then each interrupt's group, trigger, priority and route
    /// before its line level and pending state (KVM queues a pending interrupt on its target
    /// vCPU as it is written, and the trigger decides whether a high line is pending), then
    /// active and enabled; the CPU interfaces last, ICC_CTLR_EL1 before the active priority
    /// registers whose number its PRIbits gives.
    pub fn restore(&self, mpidrs: &[u64], state: &GicState) -> Result<()> {
        if state.vcpus.len() != mpidrs.len() {
            return Err(GicStateError::VcpuCount {
                saved: state.vcpus.len(),
                vcpus: mpidrs.len(),
            });
        }
        let vcpus = mpidrs
            .iter()
            .map(|&mpidr| {
                let mpidr = affinity(mpidr);
                state
                    .vcpus
                    .iter()
                    .find(|vcpu| affinity(vcpu.mpidr) == mpidr)
                    .map(|vcpu| (mpidr, vcpu))
                    .ok_or(GicStateError::MissingVcpu { mpidr })
            })
            .collect::<Result<Vec<_>>>()?;
        let dist = &state.distributor;
        self.check_distributor_shape(dist)?;
        for (_, vcpu) in &vcpus {
            check_cpu_interface_shape(&vcpu.cpu_interface)?;
        }

        let attrs = Attrs(self.fd());
        attrs.set32("GICD_IIDR", DIST, u64::from(GICD_IIDR), dist.iidr)?;
        attrs.set32("GICD_CTLR", DIST, u64::from(GICD_CTLR), dist.ctlr)?;
        for &(mpidr, vcpu) in &vcpus {
            self.restore_redistributor(mpidr, &vcpu.redistributor)?;
        }
        self.restore_spis(mpidrs.first().map_or(0, |&mpidr| affinity(mpidr)), dist)?;
        for &(mpidr, vcpu) in &vcpus {
            self.restore_cpu_interface(mpidr, &vcpu.cpu_interface)?;
        }
        Ok(())
    }

    fn save_distributor(&self, any_mpidr: u64) -> Result<GicDistributorState> {
        let attrs = Attrs(self.fd());
        let words = |register, base, bits| -> Result<Vec<u32>> {
            (0..self.spis() * bits / 32)
                .map(|word| {
                    attrs.get32(register, DIST, u64::from(spi_word_offset(base, bits, word)))
                })
                .collect()
        };
        let irouter = (0..self.spis())
            .map(|spi| {
                let low = u64::from(spi_word_offset(GICD_IROUTER, 64, 2 * spi));
                let low = attrs.get32("GICD_IROUTER", DIST, low)?;
                let high = u64::from(spi_word_offset(GICD_IROUTER, 64, 2 * spi + 1));
                let high = attrs.get32("GICD_IROUTER", DIST, high)?;
                Ok(u64::from(low) | (u64::from(high) << 32))
            })
            .collect::<Result<_>>()?;
        let line_level = (0..self.spis() / 32)
            .map(|word| attrs.get32("line level", LEVEL, level_attr(any_mpidr, 32 * (word + 1))))
            .collect::<Result<_>>()?;
        Ok(GicDistributorState {
            iidr: attrs.get32("GICD_IIDR", DIST, u64::from(GICD_IIDR))?,
            ctlr: attrs.get32("GICD_CTLR", DIST, u64::from(GICD_CTLR))?,
            igroupr: words("GICD_IGROUPR", GICD_IGROUPR, 1)?,
            isenabler: words("GICD_ISENABLER", GICD_ISENABLER, 1)?,
            ispendr: words("GICD_ISPENDR", GICD_ISPENDR, 1)?,
            isactiver: words("GICD_ISACTIVER", GICD_ISACTIVER, 1)?,
            line_level,
            icfgr: words("GICD_ICFGR", GICD_ICFGR, 2)?,
            ipriorityr: words("GICD_IPRIORITYR", GICD_IPRIORITYR, 8)?,
            irouter,
        })
    }

    fn check_distributor_shape(&self, dist: &GicDistributorState) -> Result<()> {
        let spis = self.spis() as usize;
        let arrays = [
            ("GICD_IGROUPR", dist.igroupr.len(), spis / 32),
            ("GICD_ISENABLER", dist.isenabler.len(), spis / 32),
            ("GICD_ISPENDR", dist.ispendr.len(), spis / 32),
            ("GICD_ISACTIVER", dist.isactiver.len(), spis / 32),
            ("the SPI line levels", dist.line_level.len(), spis / 32),
            ("GICD_ICFGR", dist.icfgr.len(), spis / 16),
            ("GICD_IPRIORITYR", dist.ipriorityr.len(), spis / 4),
            ("GICD_IROUTER", dist.irouter.len(), spis),
        ];
        for (register, len, expected) in arrays {
            if len != expected {
                return Err(GicStateError::Shape {
                    register,
                    len,
                    expected,
                });
            }
        }
        Ok(())
    }

    fn restore_spis(&self, any_mpidr: u64, dist: &GicDistributorState) -> Result<()> {
        let attrs = Attrs(self.fd());
        let put = |register, base, bits, values: &[u32]| -> Result<()> {
            for (word, &value) in (0..).zip(values) {
                let offset = u64::from(spi_word_offset(base, bits, word));
                attrs.set32(register, DIST, offset, value)?;
            }
            Ok(())
        };
        let inverted = |values: &[u32]| values.iter().map(|value| !value).collect::<Vec<_>>();
        put("GICD_IGROUPR", GICD_IGROUPR, 1, &dist.igroupr)?;
        put("GICD_ICFGR", GICD_ICFGR, 2, &dist.icfgr)?;
        put("GICD_IPRIORITYR", GICD_IPRIORITYR, 8, &dist.ipriorityr)?;
        for (spi, &route) in (0..).zip(&dist.irouter) {
            let low = u64::from(spi_word_offset(GICD_IROUTER, 64, 2 * spi));
            attrs.set32("GICD_IROUTER", DIST, low, route as u32)?;
            let high = u64::from(spi_word_offset(GICD_IROUTER, 64, 2 * spi + 1));
            attrs.set32("GICD_IROUTER", DIST, high, (route >> 32) as u32)?;
        }
        for (word, &levels) in (0..).zip(&dist.line_level) {
            let attr = level_attr(any_mpidr, 32 * (word + 1));
            attrs.set32("line level", LEVEL, attr, levels)?;
        }
        // KVM's ISPENDR user access sets and clears the latch; the ICPENDR one is ignored.
        put("GICD_ISPENDR", GICD_ISPENDR, 1, &dist.ispendr)?;
        // The set and clear registers of active and enable only act on the bits set.
        put(
            "GICD_ICACTIVER",
            GICD_ICACTIVER,
            1,
            &inverted(&dist.isactiver),
        )?;
        put("GICD_ISACTIVER", GICD_ISACTIVER, 1, &dist.isactiver)?;
        put(
            "GICD_ICENABLER",
            GICD_ICENABLER,
            1,
            &inverted(&dist.isenabler),
        )?;
        put("GICD_ISENABLER", GICD_ISENABLER, 1, &dist.isenabler)
    }

    fn save_redistributor(&self, mpidr: u64) -> Result<GicRedistributorState> {
        let attrs = Attrs(self.fd());
        let get = |register, offset: u32| {
            attrs.get32(register, REDIST, mpidr_attr(mpidr) | u64::from(offset))
        };
        let mut ipriorityr = [0; 8];
        for (offset, value) in (GICR_IPRIORITYR0..).step_by(4).zip(&mut ipriorityr) {
            *value = get("GICR_IPRIORITYR", offset)?;
        }
        Ok(GicRedistributorState {
            igroupr0: get("GICR_IGROUPR0", GICR_IGROUPR0)?,
            isenabler0: get("GICR_ISENABLER0", GICR_ISENABLER0)?,
            ispendr0: get("GICR_ISPENDR0", GICR_ISPENDR0)?,
            isactiver0: get("GICR_ISACTIVER0", GICR_ISACTIVER0)?,
            line_level: attrs.get32("line level", LEVEL, level_attr(mpidr, 0))?,
            icfgr: [
                get("GICR_ICFGR0", GICR_ICFGR0)?,
                get("GICR_ICFGR1", GICR_ICFGR0 + 4)?,
            ],
            ipriorityr,
        })
    }

    fn restore_redistributor(&self, mpidr: u64, state: &GicRedistributorState) -> Result<()> {
        let attrs = Attrs(self.fd());
        let set = |register, offset: u32, value| {
            attrs.set32(
                register,
                REDIST,
                mpidr_attr(mpidr) | u64::from(offset),
                value,
            )
        };
        set("GICR_IGROUPR0", GICR_IGROUPR0, state.igroupr0)?;
        set("GICR_ICFGR0", GICR_ICFGR0, state.icfgr[0])?;
        set("GICR_ICFGR1", GICR_ICFGR0 + 4, state.icfgr[1])?;
        for (offset, &value) in (GICR_IPRIORITYR0..).step_by(4).zip(&state.ipriorityr) {
            set("GICR_IPRIORITYR", offset, value)?;
        }
        attrs.set32("line level", LEVEL, level_attr(mpidr, 0), state.line_level)?;
        set("GICR_ISPENDR0", GICR_ISPENDR0, state.ispendr0)?;
        set("GICR_ICACTIVER0", GICR_ICACTIVER0, !state.isactiver0)?;
        set("GICR_ISACTIVER0", GICR_ISACTIVER0, state.isactiver0)?;
        set("GICR_ICENABLER0", GICR_ICENABLER0, !state.isenabler0)?;
        set("GICR_ISENABLER0", GICR_ISENABLER0, state.isenabler0)
    }

    fn save_cpu_interface(&self, mpidr: u64) -> Result<GicCpuInterfaceState> {
        let attrs = Attrs(self.fd());
        let get = |register, encoding| attrs.get64(register, mpidr_attr(mpidr) | encoding);
        let ctlr = get("ICC_CTLR_EL1", ICC_CTLR_EL1)?;
        let count = active_priority_registers(ctlr) as u64;
        Ok(GicCpuInterfaceState {
            sre: get("ICC_SRE_EL1", ICC_SRE_EL1)?,
            ctlr,
            pmr: get("ICC_PMR_EL1", ICC_PMR_EL1)?,
            bpr0: get("ICC_BPR0_EL1", ICC_BPR0_EL1)?,
            bpr1: get("ICC_BPR1_EL1", ICC_BPR1_EL1)?,
            igrpen0: get("ICC_IGRPEN0_EL1", ICC_IGRPEN0_EL1)?,
            igrpen1: get("ICC_IGRPEN1_EL1", ICC_IGRPEN1_EL1)?,
            ap0r: (0..count)
                .map(|n| get("ICC_AP0R<n>_EL1", icc_ap0r(n)))
                .collect::<Result<_>>()?,
            ap1r: (0..count)
                .map(|n| get("ICC_AP1R<n>_EL1", icc_ap1r(n)))
                .collect::<Result<_>>()?,
        })
    }

    fn restore_cpu_interface(&self, mpidr: u64, state: &GicCpuInterfaceState) -> Result<()> {
        let attrs = Attrs(self.fd());
        let set =
            |register, encoding, value| attrs.set64(register, mpidr_attr(mpidr) | encoding, value);
        set("ICC_SRE_EL1", ICC_SRE_EL1, state.sre)?;
        set("ICC_CTLR_EL1", ICC_CTLR_EL1, state.ctlr)?;
        set("ICC_PMR_EL1", ICC_PMR_EL1, state.pmr)?;
        set("ICC_BPR0_EL1", ICC_BPR0_EL1, state.bpr0)?;
        set("ICC_BPR1_EL1", ICC_BPR1_EL1, state.bpr1)?;
        set("ICC_IGRPEN0_EL1", ICC_IGRPEN0_EL1, state.igrpen0)?;
        set("ICC_IGRPEN1_EL1", ICC_IGRPEN1_EL1, state.igrpen1)?;
        for (n, &value) in (0..).zip(&state.ap0r) {
            set("ICC_AP0R<n>_EL1", icc_ap0r(n), value)?;
        }
        for (n, &value) in (0..).zip(&state.ap1r) {
            set("ICC_AP1R<n>_EL1", icc_ap1r(n), value)?;
        }
        Ok(())
    }
}

fn check_cpu_interface_shape(state: &GicCpuInterfaceState) -> Result<()> {
    let expected = active_priority_registers(state.ctlr);
    for (register, len) in [
        ("ICC_AP0R<n>_EL1", state.ap0r.len()),
        ("ICC_AP1R<n>_EL1", state.ap1r.len()),
    ] {
        if len != expected {
            return Err(GicStateError::Shape {
                register,
                len,
                expected,
            });
        }
    }
    Ok(())
}

// The attribute groups whose values are 32 bits wide.
const DIST: u32 = KVM_DEV_ARM_VGIC_GRP_DIST_REGS;
const REDIST: u32 = KVM_DEV_ARM_VGIC_GRP_REDIST_REGS;
const LEVEL: u32 = KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO;

/// The line-level attribute of the 32 interrupts from `intid` (a multiple of 32) as the vCPU
/// `mpidr` sees them: its own PPIs for 0, the shared SPIs above.
fn level_attr(mpidr: u64, intid: u32) -> u64 {
    mpidr_attr(mpidr)
        | u64::from(VGIC_LEVEL_INFO_LINE_LEVEL << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT)
        | u64::from(intid)
}

/// Register access through the vGIC device's attributes.
struct Attrs<'a>(&'a DeviceFd);

impl Attrs<'_> {
    /// Reads a 32-bit value of `group`: distributor, redistributor or line-level attributes.
    fn get32(&self, register: &'static str, group: u32, attr: u64) -> Result<u32> {
        debug_assert_ne!(group, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS);
        let mut value = 0u32;
        let mut attribute = kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr: &mut value as *mut u32 as u64,
        };
        // SAFETY: KVM writes the 32 bits that these groups hold at `addr`, which points at
        // `value`, alive and not otherwise borrowed until the ioctl returns.
        unsafe { self.0.get_device_attr(&mut attribute) }.map_err(|err| GicStateError::Read {
            register,
            attr,
            source: err.into(),
        })?;
        Ok(value)
    }

    /// Writes a 32-bit value of `group`, as for [`Attrs::get32`].
    fn set32(&self, register: &'static str, group: u32, attr: u64, value: u32) -> Result<()> {
        debug_assert_ne!(group, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS);
        // KVM reads the 32 bits at `addr` while the ioctl runs.
        let attribute = kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr: &value as *const u32 as u64,
        };
        self.0
            .set_device_attr(&attribute)
            .map_err(|err| GicStateError::Write {
                register,
                attr,
                source: err.into(),
            })
    }

    /// Reads a 64-bit CPU interface register.
    fn get64(&self, register: &'static str, attr: u64) -> Result<u64> {
        let mut value = 0u64;
        let mut attribute = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
            attr,
            addr: &mut value as *mut u64 as u64,
        };
        // SAFETY: KVM writes the 64 bits of a CPU interface register at `addr`, which points
        // at `value`, alive and not otherwise borrowed until the ioctl returns.
        unsafe { self.0.get_device_attr(&mut attribute) }.map_err(|err| GicStateError::Read {
            register,
            attr,
            source: err.into(),
        })?;
        Ok(value)
    }

    /// Writes a 64-bit CPU interface register.
    fn set64(&self, register: &'static str, attr: u64, value: u64) -> Result<()> {
        let attribute = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
            attr,
            addr: &value as *const u64 as u64,
        };
        self.0
            .set_device_attr(&attribute)
            .map_err(|err| GicStateError::Write {
                register,
                attr,
                source: err.into(),
            })
    }
}
