//! `cargo fuzz run http_request`: see `vmm_fuzz::http_request` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::http_request::run(data));
