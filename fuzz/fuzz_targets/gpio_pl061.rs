//! `cargo fuzz run gpio_pl061`: see `vmm_fuzz::gpio_pl061` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm_fuzz::gpio_pl061::run(data));
