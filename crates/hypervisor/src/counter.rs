//! The guest's virtual counter (CNTVCT_EL0) as data, for snapshots, and the offset arithmetic
//! behind `KVM_ARM_SET_COUNTER_OFFSET`. The KVM side is in `kvm::KvmVm::set_guest_counter` and
//! `kvm::KvmVcpu::counter_state`.

use serde::{Deserialize, Serialize};

/// The guest's generic timer counter when it was saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// The guest's virtual count, `CNTVCT_EL0`.
    pub cntvct: u64,
    /// Its frequency in Hz, `CNTFRQ_EL0`. KVM cannot change it, so a restore on a host whose
    /// frequency differs would run the guest's clock at the wrong rate: refuse it.
    pub cntfrq: u64,
}

/// How KVM was told the guest's counter value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterPath {
    /// `KVM_ARM_SET_COUNTER_OFFSET` (Linux 6.4 and later): one VM-wide offset, which also
    /// applies to the guest's physical counter.
    Offset {
        /// What the host's counter minus the guest's was when it was set.
        offset: u64,
    },
    /// `KVM_REG_ARM_TIMER_CNT` written on every vCPU: the virtual counter only.
    Registers,
}

/// The `counter_offset` that makes the guest's virtual counter read `guest` at the instant the
/// host's physical counter reads `host`.
///
/// KVM gives the guest `CNTVCT = CNTPCT - offset` in 64-bit wrapping arithmetic, where
/// `CNTPCT` is the counter `kvm_phys_timer_read()` returns; the host's own `CNTVCT_EL0` read
/// from userspace is that same counter (see `kvm::host_counter`). A guest ahead of the host
/// gives an offset that wraps: still exact.
pub fn counter_offset(host: u64, guest: u64) -> u64 {
    host.wrapping_sub(guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What KVM computes for the guest from the host's counter and the offset.
    fn guest_counter(host: u64, offset: u64) -> u64 {
        host.wrapping_sub(offset)
    }

    #[test]
    fn the_offset_gives_the_chosen_value_and_then_advances_with_the_host() {
        let ticks_per_hour = 3600 * 24_000_000;
        for (host, guest) in [
            (1_000_000, 10),                         // behind the host
            (1_000_000, 1_000_000 + ticks_per_hour), // ahead: the offset wraps
            (u64::MAX - 5, 3),                       // the host about to wrap
            (7, u64::MAX),                           // the guest about to wrap
            (123_456, 123_456),                      // no offset
        ] {
            let offset = counter_offset(host, guest);
            assert_eq!(guest_counter(host, offset), guest, "{host} {guest}");
            assert_eq!(
                guest_counter(host.wrapping_add(100), offset),
                guest.wrapping_add(100)
            );
        }
        assert_eq!(counter_offset(1_000_000, 1_000_000 + 10), u64::MAX - 9);
    }

    #[test]
    fn a_counter_state_survives_a_json_round_trip() {
        let state = CounterState {
            cntvct: u64::MAX - 1,
            cntfrq: 62_500_000,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, r#"{"cntvct":18446744073709551614,"cntfrq":62500000}"#);
        assert_eq!(serde_json::from_str::<CounterState>(&json).unwrap(), state);
    }
}
