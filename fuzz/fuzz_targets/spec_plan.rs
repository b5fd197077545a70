#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pelagos_fuzz::spec_plan(data));
