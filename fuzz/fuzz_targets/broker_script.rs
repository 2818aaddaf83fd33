//! Scripts of packets, raw bytes, closes and clock steps from several
//! clients against the broker core; see `src/broker.rs` for the format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_fuzz::broker::run_script(data));
