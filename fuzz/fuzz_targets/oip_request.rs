//! Fuzz target: An OIP v2 infer request: JSON header, binary tensors, checks (proco_serve::fuzzing::oip_request).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = proco_serve::fuzzing::oip_request(data);
});
