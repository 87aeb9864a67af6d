//! `cargo fuzz run http_request`: see `fulcrum_fuzz::http_request` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::http_request(data));
