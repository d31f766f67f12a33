//! The MMIO bus: guest-physical ranges mapped to devices, dispatched from the vCPU exit path.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;

/// Errors from building or using an [`MmioBus`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// A device range must cover at least one byte.
    #[error("Empty MMIO range at {base:#x}")]
    ZeroLength {
        /// Start of the rejected range.
        base: u64,
    },
    /// `base + len` does not fit in the address space.
    #[error("MMIO range at {base:#x} with length {len:#x} wraps the address space")]
    Overflow {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The new range intersects one already on the bus.
    #[error("MMIO range {base:#x}+{len:#x} overlaps {existing_base:#x}+{existing_len:#x}")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Start of the range already mapped.
        existing_base: u64,
        /// Length of the range already mapped.
        existing_len: u64,
    },
    /// No single device covers the whole access.
    #[error("No device at {addr:#x} for a {size}-byte access")]
    Unmapped {
        /// Guest-physical address of the access.
        addr: u64,
        /// Access size in bytes.
        size: usize,
    },
}

/// A device the guest reaches through memory-mapped registers.
///
/// `offset` is relative to the start of the device's range. Implementations decide which
/// access sizes they honour and must never panic on guest input.
pub trait MmioDevice: Send {
    /// Fills `data` with the value read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (event loop, API).
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

#[derive(Clone)]
struct Mapping {
    len: u64,
    device: SharedMmioDevice,
}

/// Non-overlapping `[base, base + len)` ranges, each served by one device.
///
/// Built once before the vCPUs start; lookups are a `BTreeMap` range query.
#[derive(Clone, Default)]
pub struct MmioBus {
    mappings: BTreeMap<u64, Mapping>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedMmioDevice,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;
        // Only the nearest range starting at or before `last` can intersect the new one,
        // because the existing ranges do not overlap each other.
        if let Some((&existing_base, existing)) = self.mappings.range(..=last).next_back() {
            if existing_base + (existing.len - 1) >= base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    existing_base,
                    existing_len: existing.len,
                });
            }
        }
        self.mappings.insert(base, Mapping { len, device });
        Ok(())
    }

    /// Unmaps the range that starts at `base`, returning its device.
    pub fn remove(&mut self, base: u64) -> Option<SharedMmioDevice> {
        self.mappings.remove(&base).map(|mapping| mapping.device)
    }

    /// The device covering `[addr, addr + size)` and `addr`'s offset within it.
    fn find(&self, addr: u64, size: usize) -> Option<(&SharedMmioDevice, u64)> {
        let (&base, mapping) = self.mappings.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        (end <= mapping.len).then_some((&mapping.device, offset))
    }

    /// Reads `data.len()` bytes at guest-physical `addr`.
    ///
    /// Unmapped reads fill `data` with zeros, as an absent device on a real bus reads.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let Some((device, offset)) = self.find(addr, data.len()) else {
            data.fill(0);
            return Err(BusError::Unmapped {
                addr,
                size: data.len(),
            });
        };
        lock(device).read(offset, data);
        Ok(())
    }

    /// Writes `data` at guest-physical `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        let (device, offset) = self.find(addr, data.len()).ok_or(BusError::Unmapped {
            addr,
            size: data.len(),
        })?;
        lock(device).write(offset, data);
        Ok(())
    }
}

/// Locks a device, recovering from poison: a panic on another thread must not take the
/// vCPU thread down with it, and the device state is still the best we have.
fn lock(device: &SharedMmioDevice) -> std::sync::MutexGuard<'_, dyn MmioDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.mappings
                    .iter()
                    .map(|(base, mapping)| format!("{base:#x}+{:#x}", mapping.len)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access and answers reads with the offset's low byte.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn dispatches_with_offset_relative_to_base() {
        let mut bus = MmioBus::new();
        let low = probe();
        let high = probe();
        bus.insert(0x1000, 0x1000, low.clone()).unwrap();
        bus.insert(0x2000, 0x1000, high.clone()).unwrap();

        let mut data = [0xff; 4];
        bus.read(0x2010, &mut data).unwrap();
        assert_eq!(data, [0x10; 4]);

        bus.write(0x1ffc, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            low.lock().unwrap().last_write,
            Some((0xffc, vec![1, 2, 3, 4]))
        );
        assert_eq!(high.lock().unwrap().last_write, None);
    }

    #[test]
    fn rejects_empty_wrapping_and_overlapping_ranges() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x1000, probe()).unwrap();

        assert_eq!(
            bus.insert(0x5000, 0, probe()),
            Err(BusError::ZeroLength { base: 0x5000 })
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, probe()),
            Err(BusError::Overflow { .. })
        ));
        // Overlaps at the start, at the end, inside, and around the existing range.
        for (base, len) in [(0x800, 0x801), (0x1fff, 0x10), (0x1800, 0x10), (0, 0x3000)] {
            assert!(
                matches!(
                    bus.insert(base, len, probe()),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x} should overlap"
            );
        }
        // Adjacent ranges on both sides are fine, as is the very top of the address space.
        bus.insert(0x800, 0x800, probe()).unwrap();
        bus.insert(0x2000, 0x10, probe()).unwrap();
        bus.insert(u64::MAX, 1, probe()).unwrap();
    }

    #[test]
    fn unmapped_access_reads_zeros_and_reports_error() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, probe()).unwrap();

        let mut data = [0xaa; 4];
        assert_eq!(
            bus.read(0x2000, &mut data),
            Err(BusError::Unmapped {
                addr: 0x2000,
                size: 4
            })
        );
        assert_eq!(data, [0; 4]);
        assert!(bus.write(0x0fff, &[0]).is_err());
    }

    #[test]
    fn access_running_past_the_device_end_is_unmapped() {
        let mut bus = MmioBus::new();
        let dev = probe();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut data = [0xaa; 8];
        assert!(bus.read(0x10fc, &mut data).is_err());
        assert_eq!(data, [0; 8]);
        assert!(bus.write(0x10fc, &[0; 8]).is_err());
        assert_eq!(dev.lock().unwrap().last_write, None);
    }

    #[test]
    fn removed_range_is_unmapped() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, probe()).unwrap();
        assert!(bus.remove(0x1000).is_some());
        assert!(bus.write(0x1000, &[0]).is_err());
        bus.insert(0x1000, 0x100, probe()).unwrap();
    }

    #[test]
    fn poisoned_device_still_serves_accesses() {
        let mut bus = MmioBus::new();
        let dev = probe();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();

        let poisoner = dev.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            // Unwinds like a panic, without the panic message in the test output.
            std::panic::resume_unwind(Box::new("poison the device mutex"));
        })
        .join();
        assert!(dev.is_poisoned());

        bus.write(0x1004, &[7]).unwrap();
        let mut data = [0; 1];
        bus.read(0x1004, &mut data).unwrap();
        assert_eq!(data, [4]);
    }
}
