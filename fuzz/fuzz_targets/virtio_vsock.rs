//! `cargo fuzz run virtio_vsock`: see `vmm_fuzz::virtio_vsock` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::virtio_vsock::run(data));
