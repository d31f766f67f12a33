//! PSCI CPU power management decided by the VMM: CPU_ON, CPU_OFF and AFFINITY_INFO (DEN0022
//! 5.1.4–5.1.6) on a table of every vCPU's power state.
//!
//! KVM answers these calls itself unless the VMM installs an SMCCC filter that forwards them
//! (Linux 6.4+). With the table in the VMM, SYSTEM_SUSPEND's rule "every other CPU is OFF" is
//! a lookup: no vCPU has to leave the guest to report its state.

use crate::layout::GuestRegion;
use crate::psci::PsciReturn;

/// `CPU_ON`, SMC32 calling convention.
pub const CPU_ON_32: u32 = 0x8400_0003;
/// `AFFINITY_INFO`, SMC32 calling convention.
pub const AFFINITY_INFO_32: u32 = 0x8400_0004;

/// The function ids a VMM that tracks power states takes over from KVM, as `(first, count)`
/// ranges: CPU_OFF, CPU_ON and AFFINITY_INFO in both calling conventions. CPU_ON and CPU_OFF
/// both have to come out: an in-kernel CPU_ON would start a vCPU inside `KVM_RUN` unseen.
pub const FORWARDED_RANGES: [(u32, u32); 2] =
    [(crate::psci::CPU_OFF, 3), (crate::psci::CPU_ON_64, 2)];

/// `MPIDR_EL1`'s affinity fields Aff3 and Aff2..Aff0, as KVM's `MPIDR_HWID_BITMASK`.
const MPIDR_HWID_MASK: u64 = 0xFF_00FF_FFFF;

/// A decoded power call, its arguments narrowed to 32 bits for the SMC32 ids as KVM's
/// `kvm_psci_narrow_to_32bit` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerCall {
    /// `CPU_ON(target_cpu, entry_point_address, context_id)`.
    CpuOn {
        /// The target's MPIDR.
        target: u64,
        /// Where the target starts, a physical address.
        entry: u64,
        /// The target's `x0` at the entry point.
        context_id: u64,
    },
    /// `CPU_OFF()`: the caller powers itself down.
    CpuOff,
    /// `AFFINITY_INFO(target_affinity, lowest_affinity_level)`.
    AffinityInfo {
        /// The affinity to look at.
        target: u64,
        /// 0 for one CPU, up to 3 for a whole cluster level.
        lowest_level: u64,
    },
}

impl PowerCall {
    /// Decodes the function id and arguments `x1..x3`; `None` for any other function.
    pub fn decode(function_id: u64, x1: u64, x2: u64, x3: u64) -> Option<Self> {
        let low = |value: u64| value & 0xFFFF_FFFF;
        Some(match function_id as u32 {
            CPU_ON_32 => Self::CpuOn {
                target: low(x1),
                entry: low(x2),
                context_id: low(x3),
            },
            crate::psci::CPU_ON_64 => Self::CpuOn {
                target: x1,
                entry: x2,
                context_id: x3,
            },
            crate::psci::CPU_OFF => Self::CpuOff,
            AFFINITY_INFO_32 => Self::AffinityInfo {
                target: low(x1),
                lowest_level: low(x2),
            },
            crate::psci::AFFINITY_INFO_64 => Self::AffinityInfo {
                target: x1,
                lowest_level: x2,
            },
            _ => return None,
        })
    }
}

/// One vCPU's power state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPower {
    /// Powered down: never started, or after CPU_OFF.
    Off,
    /// A CPU_ON was accepted; the vCPU's thread has not started it yet.
    OnPending {
        /// The entry point.
        entry: u64,
        /// The context id for `x0`.
        context_id: u64,
    },
    /// Running.
    On,
}

/// What AFFINITY_INFO reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityState {
    /// At least one matching CPU is on.
    On = 0,
    /// Every matching CPU is off.
    Off = 1,
    /// None is on, and one is being turned on.
    OnPending = 2,
}

impl AffinityState {
    /// The value written to `x0`.
    pub fn to_x0(self) -> u64 {
        self as u64
    }
}

/// Every vCPU's power state, by vCPU index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuPowerTable {
    mpidrs: Vec<u64>,
    states: Vec<CpuPower>,
}

impl CpuPowerTable {
    /// A table for vCPUs with these MPIDRs, by index: vCPU 0 boots on, the others off.
    pub fn new(mpidrs: Vec<u64>) -> Self {
        Self::with_only_on(mpidrs, 0)
    }

    /// A table where only vCPU `on` is on: at boot vCPU 0, and for a guest restored while
    /// suspended, the caller, the only vCPU SYSTEM_SUSPEND left on.
    pub fn with_only_on(mpidrs: Vec<u64>, on: usize) -> Self {
        let states = (0..mpidrs.len())
            .map(|index| {
                if index == on {
                    CpuPower::On
                } else {
                    CpuPower::Off
                }
            })
            .collect();
        let mpidrs = mpidrs.into_iter().map(|id| id & MPIDR_HWID_MASK).collect();
        Self { mpidrs, states }
    }

    /// vCPU `index`'s state; `Off` for an index out of range.
    pub fn state(&self, index: usize) -> CpuPower {
        self.states.get(index).copied().unwrap_or(CpuPower::Off)
    }

    /// How many vCPUs other than `caller` are not OFF.
    pub fn others_on(&self, caller: usize) -> usize {
        let on = |(index, state): (usize, &CpuPower)| index != caller && *state != CpuPower::Off;
        self.states
            .iter()
            .enumerate()
            .filter(|&entry| on(entry))
            .count()
    }

    /// CPU_ON: marks the target ON_PENDING and returns its index, or the PSCI error:
    /// `INVALID_PARAMETERS` for an MPIDR no vCPU has, `ALREADY_ON`, `ON_PENDING`, and
    /// `INVALID_ADDRESS` for an entry point that is not 4-byte aligned guest RAM.
    pub fn cpu_on(
        &mut self,
        target: u64,
        entry: u64,
        context_id: u64,
        ram: &[GuestRegion],
    ) -> Result<usize, PsciReturn> {
        let index = self
            .mpidrs
            .iter()
            .position(|&mpidr| mpidr == target & MPIDR_HWID_MASK)
            .ok_or(PsciReturn::InvalidParameters)?;
        match self.states[index] {
            CpuPower::On => Err(PsciReturn::AlreadyOn),
            CpuPower::OnPending { .. } => Err(PsciReturn::OnPending),
            CpuPower::Off if entry % 4 != 0 || !ram.iter().any(|range| range.contains(entry)) => {
                Err(PsciReturn::InvalidAddress)
            }
            CpuPower::Off => {
                self.states[index] = CpuPower::OnPending { entry, context_id };
                Ok(index)
            }
        }
    }

    /// Takes vCPU `index`'s pending CPU_ON, marking it ON: its thread starts it at `entry` with
    /// `x0` = `context_id`. `None` when no CPU_ON is pending for it.
    pub fn start(&mut self, index: usize) -> Option<(u64, u64)> {
        match self.states.get(index).copied() {
            Some(CpuPower::OnPending { entry, context_id }) => {
                self.states[index] = CpuPower::On;
                Some((entry, context_id))
            }
            _ => None,
        }
    }

    /// CPU_OFF by vCPU `index`.
    pub fn cpu_off(&mut self, index: usize) {
        if let Some(state) = self.states.get_mut(index) {
            *state = CpuPower::Off;
        }
    }

    /// AFFINITY_INFO, as KVM computes it for levels 0 to 3, except that an affinity no vCPU
    /// has is `INVALID_PARAMETERS`, as DEN0022 asks, where KVM says OFF.
    pub fn affinity_info(
        &self,
        target: u64,
        lowest_level: u64,
    ) -> Result<AffinityState, PsciReturn> {
        // Aff0, Aff1, Aff2 sit at bits 0, 8, 16; Aff3 at bit 32.
        let shift = match lowest_level {
            0 => 0,
            1 => 8,
            2 => 16,
            3 => 32,
            _ => return Err(PsciReturn::InvalidParameters),
        };
        let mask = MPIDR_HWID_MASK & !((1u64 << shift) - 1);
        let target = target & mask;
        let mut matched = false;
        let mut pending = false;
        for (mpidr, state) in self.mpidrs.iter().zip(&self.states) {
            if mpidr & mask != target {
                continue;
            }
            matched = true;
            match state {
                CpuPower::On => return Ok(AffinityState::On),
                CpuPower::OnPending { .. } => pending = true,
                CpuPower::Off => {}
            }
        }
        match (matched, pending) {
            (false, _) => Err(PsciReturn::InvalidParameters),
            (true, true) => Ok(AffinityState::OnPending),
            (true, false) => Ok(AffinityState::Off),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: [GuestRegion; 1] = [GuestRegion {
        start: 0x4000_0000,
        size: 0x1000_0000,
    }];

    /// Four vCPUs as KVM numbers them: Aff0 = index.
    fn table() -> CpuPowerTable {
        CpuPowerTable::new(vec![0x8000_0000, 0x8000_0001, 0x8000_0002, 0x8000_0003])
    }

    #[test]
    fn the_boot_cpu_starts_on_and_the_others_off() {
        let table = table();
        assert_eq!(table.state(0), CpuPower::On);
        assert_eq!(table.state(3), CpuPower::Off);
        assert_eq!(table.others_on(0), 0);
    }

    #[test]
    fn cpu_on_follows_den0022() {
        let mut table = table();
        assert_eq!(table.cpu_on(2, 0x4008_0000, 7, &RAM), Ok(2));
        assert_eq!(
            table.state(2),
            CpuPower::OnPending {
                entry: 0x4008_0000,
                context_id: 7
            }
        );
        assert_eq!(
            table.cpu_on(2, 0x4008_0000, 7, &RAM),
            Err(PsciReturn::OnPending)
        );
        assert_eq!(table.others_on(0), 1, "a pending CPU counts as on");
        assert_eq!(table.start(2), Some((0x4008_0000, 7)));
        assert_eq!(table.start(2), None);
        assert_eq!(
            table.cpu_on(2, 0x4008_0000, 7, &RAM),
            Err(PsciReturn::AlreadyOn)
        );
        assert_eq!(
            table.cpu_on(0, 0x4008_0000, 0, &RAM),
            Err(PsciReturn::AlreadyOn)
        );
        assert_eq!(
            table.cpu_on(9, 0x4008_0000, 0, &RAM),
            Err(PsciReturn::InvalidParameters)
        );
        assert_eq!(
            table.cpu_on(1, 0x1000, 0, &RAM),
            Err(PsciReturn::InvalidAddress)
        );
        assert_eq!(
            table.cpu_on(1, 0x4008_0002, 0, &RAM),
            Err(PsciReturn::InvalidAddress)
        );
        assert_eq!(
            table.state(1),
            CpuPower::Off,
            "a refused CPU_ON changes nothing"
        );
        table.cpu_off(2);
        assert_eq!(table.others_on(0), 0);
        assert_eq!(table.cpu_on(2, 0x4000_0000, 0, &RAM), Ok(2));
    }

    #[test]
    fn the_u_bit_and_aff3_of_the_target_follow_kvm() {
        // KVM compares MPIDR_HWID_BITMASK bits only: bit 31 (RES1) and bit 30 (U) do not count.
        let mut table = table();
        assert_eq!(table.cpu_on(0xC000_0001, 0x4000_0000, 0, &RAM), Ok(1));
        assert_eq!(
            table.cpu_on(0x1_0000_0002, 0x4000_0000, 0, &RAM),
            Err(PsciReturn::InvalidParameters)
        );
    }

    #[test]
    fn affinity_info_reports_on_off_and_pending() {
        let mut table = table();
        assert_eq!(table.affinity_info(0, 0), Ok(AffinityState::On));
        assert_eq!(table.affinity_info(1, 0), Ok(AffinityState::Off));
        table.cpu_on(1, 0x4000_0000, 0, &RAM).unwrap();
        assert_eq!(table.affinity_info(1, 0), Ok(AffinityState::OnPending));
        table.start(1);
        assert_eq!(table.affinity_info(1, 0), Ok(AffinityState::On));
        table.cpu_off(1);
        assert_eq!(table.affinity_info(1, 0), Ok(AffinityState::Off));
        // Level 1: the cluster of Aff0 0..=255, in which vCPU 0 is on.
        assert_eq!(table.affinity_info(0x3, 1), Ok(AffinityState::On));
        assert_eq!(
            table.affinity_info(9, 0),
            Err(PsciReturn::InvalidParameters)
        );
        assert_eq!(
            table.affinity_info(0x100, 1),
            Err(PsciReturn::InvalidParameters)
        );
        assert_eq!(
            table.affinity_info(0, 4),
            Err(PsciReturn::InvalidParameters)
        );
    }

    #[test]
    fn smc32_calls_see_only_the_low_words() {
        assert_eq!(
            PowerCall::decode(
                0x8400_0003,
                0xFFFF_0000_0000_0001,
                0x1_4000_0000,
                0x2_0000_0005
            ),
            Some(PowerCall::CpuOn {
                target: 1,
                entry: 0x4000_0000,
                context_id: 5
            })
        );
        assert_eq!(
            PowerCall::decode(0xC400_0003, 1, 0x1_4000_0000, 5),
            Some(PowerCall::CpuOn {
                target: 1,
                entry: 0x1_4000_0000,
                context_id: 5
            })
        );
        assert_eq!(
            PowerCall::decode(0x8400_0004, 0x1_0000_0002, 0, 0),
            Some(PowerCall::AffinityInfo {
                target: 2,
                lowest_level: 0
            })
        );
        assert_eq!(
            PowerCall::decode(0x8400_0002, 9, 9, 9),
            Some(PowerCall::CpuOff)
        );
        assert_eq!(PowerCall::decode(0x8400_000E, 0, 0, 0), None);
    }

    #[test]
    fn the_forwarded_ranges_cover_exactly_the_power_calls() {
        let forwarded: Vec<u32> = FORWARDED_RANGES
            .iter()
            .flat_map(|&(first, count)| first..first + count)
            .collect();
        assert_eq!(
            forwarded,
            [
                0x8400_0002,
                0x8400_0003,
                0x8400_0004,
                0xC400_0003,
                0xC400_0004
            ]
        );
        for id in forwarded {
            assert!(PowerCall::decode(u64::from(id), 0, 0, 0).is_some());
        }
    }
}
