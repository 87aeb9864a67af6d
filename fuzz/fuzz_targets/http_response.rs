//! `cargo fuzz run http_response`: see `fulcrum_fuzz::http_response` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::http_response(data));
