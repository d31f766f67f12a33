//! `cargo fuzz run virtio_net`: see `vmm_fuzz::virtio_net` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::virtio_net::run(data));
