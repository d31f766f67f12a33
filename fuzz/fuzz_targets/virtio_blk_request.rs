//! `cargo fuzz run virtio_blk_request`: see `vmm_fuzz::virtio_blk_request` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::virtio_blk_request::run(data));
