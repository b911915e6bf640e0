//! Fuzz target: An image body: header checks, decode and preprocess (proco_serve::fuzzing::image).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proco_serve::fuzzing::image(data);
});
