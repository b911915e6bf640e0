//! End-to-end parity with the PyTorch reference: the parity-fixture JPEGs sent over HTTP to
//! the real server (real ONNX encoder, real prototypes) give the reference's top-1 and
//! posterior probabilities within 1e-4, for every rule under the uniform and training priors.
//!
//! Also checks that the same pixels in other containers (PNG, BMP, GIF, lossless WebP)
//! classify identically to the JPEG.

mod common;

use std::io::Cursor;

use common::{client, fixture, fixture_form, parity_manifest, Server};

const TOLERANCE: f64 = 1e-4;

fn as_vec(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn posteriors_match_pytorch_reference_for_every_rule_and_prior() {
    let manifest = parity_manifest();
    let images = manifest["images"].as_array().expect("images");
    assert!(!images.is_empty(), "no parity images");
    let server = Server::start(&["--max-images-per-request", "64"]);
    let client = client();
    let expected_version = manifest["prototypes_version"].as_str().unwrap();

    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for rule in ["linear", "proco", "vmf", "ensemble"] {
        for prior in ["uniform", "train"] {
            for chunk in images.chunks(64) {
                let form = fixture_form(chunk);
                let r = client
                    .post(server.url(&format!(
                        "/v1/classify?rule={rule}&prior={prior}&posterior=true&top_k=1"
                    )))
                    .multipart(form)
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().unwrap());
                let body: serde_json::Value = r.json().unwrap();
                assert_eq!(body["prototypes_version"], expected_version);
                let results = body["results"].as_array().unwrap();
                assert_eq!(results.len(), chunk.len());
                for (i, (img, got)) in chunk.iter().zip(results).enumerate() {
                    let file = img["file"].as_str().unwrap();
                    assert_eq!(got["part"], format!("img{i}"), "results are in part order");
                    assert_eq!(got["filename"], file);
                    assert_eq!(got["rule"], rule);
                    assert_eq!(got["prior"]["name"], prior);
                    let want = as_vec(&img["posteriors"][rule][prior]);
                    let have = as_vec(&got["posterior"]);
                    assert_eq!(have.len(), want.len());
                    for (k, (h, w)) in have.iter().zip(&want).enumerate() {
                        let d = (h - w).abs();
                        worst = worst.max(d);
                        assert!(
                            d <= TOLERANCE,
                            "{file} rule={rule} prior={prior} class {k}: server {h}, reference {w} (|diff| {d:e})"
                        );
                    }
                    let top1 = got["predictions"][0]["index"].as_u64().unwrap() as usize;
                    assert_eq!(
                        top1,
                        argmax(&want),
                        "{file} rule={rule} prior={prior}: top-1 differs from the reference"
                    );
                    let t = manifest["temperatures"][rule].as_f64().unwrap();
                    assert!((got["temperature"].as_f64().unwrap() - t).abs() <= 1e-12 * t.abs());
                    checked += 1;
                }
            }
        }
    }
    println!("checked {checked} posteriors; largest |difference| {worst:e}");
    assert_eq!(checked, images.len() * 8);
}

#[test]
fn other_containers_classify_like_the_jpeg() {
    let manifest = parity_manifest();
    let file = manifest["images"][0]["file"].as_str().unwrap();
    let jpeg = fixture(file);
    let server = Server::start(&[]);
    let client = client();
    let (status, from_jpeg) = common::classify(
        &client,
        &server,
        "?posterior=true",
        "image/jpeg",
        jpeg.clone(),
    );
    assert_eq!(status, 200, "{from_jpeg}");
    let want = as_vec(&from_jpeg["posterior"]);

    // Re-encode the server's decoded pixels losslessly: the encoder sees identical input.
    let rgb = proco_serve::preprocess::decode(&jpeg, &Default::default()).unwrap();
    let dynimg = image::DynamicImage::ImageRgb8(rgb.clone());
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (ct, format) in [
        ("image/png", image::ImageFormat::Png),
        ("image/bmp", image::ImageFormat::Bmp),
        ("image/webp", image::ImageFormat::WebP),
    ] {
        let mut buf = Cursor::new(Vec::new());
        dynimg.write_to(&mut buf, format).unwrap();
        cases.push((ct, buf.into_inner()));
    }
    // 16-bit RGBA PNG of the same pixels: must be converted to the same RGB8.
    let rgba16 = image::DynamicImage::ImageRgba16(image::DynamicImage::ImageRgb8(rgb).to_rgba16());
    let mut buf = Cursor::new(Vec::new());
    rgba16.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    cases.push(("image/png", buf.into_inner()));

    for (ct, bytes) in cases {
        let (status, body) = common::classify(
            &client,
            &server,
            "?posterior=true",
            "application/octet-stream",
            bytes,
        );
        assert_eq!(status, 200, "{ct}: {body}");
        let have = as_vec(&body["posterior"]);
        for (h, w) in have.iter().zip(&want) {
            assert!((h - w).abs() < 1e-6, "{ct}: {have:?} vs {want:?}");
        }
    }
}

/// The same check one layer down, independent of temperatures: decoding + preprocessing +
/// ONNX Runtime reproduce PyTorch's `feature` and `logits` for every fixture (so a
/// decoder or resize difference cannot hide behind a large temperature).
#[test]
fn encoder_outputs_match_pytorch_reference() {
    use proco_serve::encoder::{Encoder, ProviderChoice, Threads};
    use proco_serve::manifest::ModelManifest;
    use proco_serve::preprocess::{prepare, DecodeLimits};

    let manifest = parity_manifest();
    let model_dir = std::path::Path::new(common::MODEL_DIR);
    let model = ModelManifest::load(model_dir).unwrap();
    proco_serve::encoder::init_runtime().unwrap();
    let mut encoder = Encoder::load(&model, ProviderChoice::Cpu, Threads::default()).unwrap();
    let mut worst: (f64, f64) = (0.0, 0.0);
    for img in manifest["images"].as_array().unwrap() {
        let file = img["file"].as_str().unwrap();
        let chw = prepare(&fixture(file), &DecodeLimits::default(), &model).unwrap();
        let (h, w) = encoder.input_size();
        let batch = ndarray::Array4::from_shape_vec((1, 3, h, w), chw).unwrap();
        let out = encoder.run(batch.view()).unwrap();
        for (name, have, want) in [
            (
                "feature",
                out.feature.row(0).to_vec(),
                as_vec(&img["feature"]),
            ),
            ("logits", out.logits.row(0).to_vec(), as_vec(&img["logits"])),
        ] {
            assert_eq!(have.len(), want.len(), "{file} {name}");
            for (k, (h, w)) in have.iter().zip(&want).enumerate() {
                let d = (*h as f64 - w).abs();
                let tol = 1e-4 * (1.0 + w.abs());
                if name == "feature" {
                    worst.0 = worst.0.max(d);
                } else {
                    worst.1 = worst.1.max(d);
                }
                assert!(d <= tol, "{file} {name}[{k}]: onnx {h}, pytorch {w}");
            }
        }
    }
    println!(
        "largest |difference|: feature {:e}, logits {:e}",
        worst.0, worst.1
    );
}
