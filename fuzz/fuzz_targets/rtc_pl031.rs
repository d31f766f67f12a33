//! `cargo fuzz run rtc_pl031`: see `vmm_fuzz::rtc_pl031` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::rtc_pl031::run(data));
