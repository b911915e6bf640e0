//! Replays every committed fuzz input (the seeds, the minimised corpora and every crash input
//! found, under `fuzz/`) through the same entry points the fuzz targets call
//! (`proco_serve::fuzzing`), so that CI keeps them without a fuzzer or a nightly toolchain.
//! A panic is a failure; a refusal must be an `Err`, which each entry point checks is a 4xx.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use proco_serve::fuzzing;

type Entry = fn(&[u8]) -> Result<String, String>;

/// Every file under `fuzz/{seeds,corpus,regressions}/<target>/`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        files.extend(dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

/// Runs every input of `target`; returns (accepted, refused) counts, failing on any panic.
fn replay(target: &str, entry: Entry) -> (usize, usize) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no committed inputs for {target}");
    let (mut accepted, mut refused) = (0, 0);
    let mut panics = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        match catch_unwind(AssertUnwindSafe(|| entry(&data))) {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panics.push(path.display().to_string()),
        }
    }
    assert!(panics.is_empty(), "{target}: panicked on {panics:#?}");
    (accepted, refused)
}

/// A committed seed must still be accepted: a parser that refuses everything would otherwise
/// pass the replay.
fn accepts_seed(entry: Entry, target: &str, seed: &str) {
    let path = seed_path(target, seed);
    let data = std::fs::read(&path).unwrap();
    if let Err(e) = entry(&data) {
        panic!("{}: refused: {e}", path.display());
    }
}

#[test]
fn image_inputs_replay() {
    let (accepted, refused) = replay("image", fuzzing::image);
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    for seed in [
        "00_airplane_0000.jpg",
        "exif_orientation_6.jpg",
        "rgba16_2x2.png",
    ] {
        accepts_seed(fuzzing::image, "image", seed);
    }
    accepts_seed(fuzzing::image, "image", "rgb_4x3.bmp");
    accepts_seed(fuzzing::image, "image", "transparent_1x1.gif");
}

#[test]
fn multipart_inputs_replay() {
    let (accepted, refused) = replay("multipart", fuzzing::multipart);
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    accepts_seed(fuzzing::multipart, "multipart", "two_parts");
    assert_eq!(
        fuzzing::multipart(&std::fs::read(seed_path("multipart", "two_parts")).unwrap()),
        Ok("2 images".into())
    );
}

#[test]
fn query_inputs_replay() {
    let (accepted, refused) = replay("query", fuzzing::query);
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    accepts_seed(fuzzing::query, "query", "q1");
}

#[test]
fn prototypes_inputs_replay() {
    let (accepted, refused) = replay("prototypes", fuzzing::prototypes);
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    accepts_seed(fuzzing::prototypes, "prototypes", "cifar10-lt.json");
    accepts_seed(fuzzing::prototypes, "prototypes", "v1_small.json");
}

#[test]
fn oip_request_inputs_replay() {
    let (accepted, refused) = replay("oip_request", fuzzing::oip_request);
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    for seed in ["raw_image", "binary_bytes", "json_base64", "json_pixels"] {
        accepts_seed(fuzzing::oip_request, "oip_request", seed);
    }
}

fn seed_path(target: &str, seed: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
        .join(seed)
}
