//! `cargo fuzz run config`: see `fulcrum_fuzz::config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::config(data));
