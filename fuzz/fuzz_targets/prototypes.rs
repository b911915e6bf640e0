//! Fuzz target: A prototypes.json file: strict reader, validation, round trip (proco_serve::fuzzing::prototypes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proco_serve::fuzzing::prototypes(data);
});
