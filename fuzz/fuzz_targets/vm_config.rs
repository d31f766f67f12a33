//! `cargo fuzz run vm_config`: see `vmm_fuzz::vm_config` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::vm_config::run(data));
