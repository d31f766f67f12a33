//! `cargo fuzz run image_header`: see `vmm_fuzz::image_header` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::image_header::run(data));
