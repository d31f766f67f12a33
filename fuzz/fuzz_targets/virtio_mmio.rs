//! `cargo fuzz run virtio_mmio`: see `vmm_fuzz::virtio_mmio` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::virtio_mmio::run(data));
