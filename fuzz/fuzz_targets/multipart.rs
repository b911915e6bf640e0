//! Fuzz target: A /v1/classify body with its Content-Type: media kind and multipart parts (proco_serve::fuzzing::multipart).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proco_serve::fuzzing::multipart(data);
});
