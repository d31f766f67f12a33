//! What a snapshot's state file holds: everything but guest RAM.

use std::path::PathBuf;

use arch_aarch64::psci::{CallWidth, SystemSuspendCall};
use devices::boot_timer::BootTimerState;
use devices::gpio_pl061::GpioState;
use devices::rtc_pl031::RtcState;
use devices::serial::SerialState;
use devices::virtio::VirtioMmioState;
use hypervisor::{CounterState, GicState};
use serde::{Deserialize, Serialize};

use super::disks::DiskFingerprint;
use crate::config::{CpuPowerMode, VmConfig};

/// The vCPU that called SYSTEM_SUSPEND, and where the guest resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendedVcpu {
    /// Its index.
    pub index: u32,
    /// Whether the call was SMC64 (else SMC32).
    pub smc64: bool,
    /// The entry point.
    pub entry: u64,
    /// The context id for `x0`.
    pub context_id: u64,
}

impl SuspendedVcpu {
    /// The record of vCPU `index`'s accepted `call`.
    pub fn new(index: u32, call: SystemSuspendCall) -> Self {
        Self {
            index,
            smc64: call.width == CallWidth::Smc64,
            entry: call.entry,
            context_id: call.context_id,
        }
    }

    /// The call to resume from.
    pub fn call(&self) -> SystemSuspendCall {
        SystemSuspendCall {
            width: if self.smc64 {
                CallWidth::Smc64
            } else {
                CallWidth::Smc32
            },
            entry: self.entry,
            context_id: self.context_id,
        }
    }
}

/// The devices on the MMIO bus, virtio in slot order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// The console UART.
    pub serial: SerialState,
    /// The PL031 RTC.
    pub rtc: RtcState,
    /// The PL061 GPIO controller.
    pub gpio: GpioState,
    /// The boot timer.
    pub boot_timer: BootTimerState,
    /// The virtio-mmio transports.
    pub virtio: Vec<VirtioMmioState>,
}

/// Everything a restore needs besides the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The VM's configuration: its shape, disks, network and vsock.
    pub config: VmConfig,
    /// Host wall time when it was saved, nanoseconds since the Unix epoch: a restore advances
    /// the guest's counter by the time since.
    pub saved_at_ns: u128,
    /// The `vmm` that wrote it.
    pub vmm_version: String,
    /// Who kept the vCPU power states in the saved VM.
    pub cpu_power: CpuPowerMode,
    /// The PSCI version the guest was given, raw.
    pub psci_version: u64,
    /// `MPIDR_EL1` of each vCPU, by index.
    pub vcpu_mpidrs: Vec<u64>,
    /// The suspended vCPU; all others were off.
    pub suspended: SuspendedVcpu,
    /// The guest's virtual counter when it was saved.
    pub counter: CounterState,
    /// The vGIC.
    pub gic: GicState,
    /// The devices.
    pub devices: DevicesState,
    /// The disk images, as flushed before the snapshot.
    pub disks: Vec<DiskFingerprint>,
    /// Guest RAM: where it starts and its size, the memory file's length.
    pub ram_start: u64,
    /// Its size in bytes.
    pub ram_size: u64,
    /// Where the snapshot was read from; not saved.
    #[serde(skip)]
    pub path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_point_keeps_the_calling_convention() {
        for width in [CallWidth::Smc32, CallWidth::Smc64] {
            let call = SystemSuspendCall {
                width,
                entry: 0x4008_0000,
                context_id: 0xdead_beef,
            };
            let saved = SuspendedVcpu::new(3, call);
            let json = serde_json::to_string(&saved).unwrap();
            let read: SuspendedVcpu = serde_json::from_str(&json).unwrap();
            assert_eq!(read.call(), call);
            assert_eq!(read.index, 3);
        }
    }
}
