//! `cargo fuzz run proxy_protocol`: see `fulcrum_fuzz::proxy_protocol` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::proxy_protocol(data));
