//! `cargo fuzz run client_hello`: see `fulcrum_fuzz::client_hello` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_fuzz::client_hello(data));
