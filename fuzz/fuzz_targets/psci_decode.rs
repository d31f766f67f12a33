//! `cargo fuzz run psci_decode`: see `vmm_fuzz::psci_decode` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::psci_decode::run(data));
