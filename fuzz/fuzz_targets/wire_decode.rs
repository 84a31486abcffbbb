//! The wire decoder on arbitrary bytes; see `fuzz_harness::decoder`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::decoder(data));
