//! The assembler fed a sequence of messages chosen by the input; see `fuzz_harness::assembler`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::assembler(data));
