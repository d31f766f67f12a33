//! `cargo fuzz run serial`: see `vmm_fuzz::serial` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::serial::run(data));
