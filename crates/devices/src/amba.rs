//! What every ARM PrimeCell (AMBA) peripheral has: eight identification registers at the top
//! of its 4 KiB page, PeriphID0..3 then PCellID0..3, one byte per word. Linux's amba bus reads
//! them to pick the driver.

/// The first identification register.
pub(crate) const ID_START: u64 = 0xFE0;
/// The last identification register.
pub(crate) const ID_END: u64 = 0xFFC;

/// PCellID0..3: 0xb105f00d, the same for every PrimeCell.
const PCELL_ID: [u8; 4] = [0x0d, 0xf0, 0x05, 0xb1];

/// The identification register at `offset` (from [`ID_START`] to [`ID_END`]) of a peripheral
/// whose PeriphID0..3 are `periph_id`.
pub(crate) fn id_register(periph_id: [u8; 4], offset: u64) -> u8 {
    let index = (offset.saturating_sub(ID_START) / 4) as usize;
    periph_id
        .into_iter()
        .chain(PCELL_ID)
        .nth(index)
        .unwrap_or(0)
}
