//! Fuzz target: A /v1/classify query string and prior values (proco_serve::fuzzing::query).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proco_serve::fuzzing::query(data);
});
