//! `cargo fuzz run route_path`: see `fulcrum_fuzz::route_path` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::route_path(data));
