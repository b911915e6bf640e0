//! The INT8 encoder variant (`models/cifar10-lt/encoder.int8.onnx`, `train/quantize.py`):
//!
//! 1. Its outputs stay within a documented tolerance of the fp32 encoder's on the 40 parity
//!    fixtures, both run here through the server's own decode, preprocess and ONNX Runtime code:
//!    feature cosine >= 0.98 per image, |logit difference| <= 1.0, the same linear-head top-1 on
//!    at least 39 of 40, the feature unit-norm within 1e-5 (the graph renormalises it). On the
//!    1,000 validation images `train/quantize.py` measured cosine >= 0.9846, |logit difference|
//!    <= 1.14 and 98.0% top-1 agreement (`models/cifar10-lt/logs/quantize.log`).
//! 2. The real server started with `--encoder-variant int8` names the variant (`/v1/model`,
//!    `/health/ready`, `proco_model_info`), serves model.toml's int8 temperatures, and its
//!    answers over HTTP are reproduced by `proco-serve eval --encoder-variant int8`: the same
//!    top-1 count and NLL per rule, computed from the server's posteriors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{client, fixture, fixture_files, fixture_form, parity_manifest, Server};
use proco_serve::encoder::{Encoder, ProviderChoice, Threads};
use proco_serve::manifest::{EncoderVariant, ModelManifest};
use proco_serve::preprocess::{prepare, DecodeLimits};
use proco_serve::vmf::Rule;
use serde_json::Value;

const MIN_COSINE: f32 = 0.98;
const MAX_LOGIT_DIFF: f32 = 1.0;
const MIN_TOP1_AGREEMENT: usize = 39;
const NORM_TOLERANCE: f32 = 1e-5;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs every fixture through one variant's encoder, as one batch.
fn encode(variant: EncoderVariant) -> proco_serve::encoder::EncoderOutput {
    let manifest = ModelManifest::load_variant(&repo("models/cifar10-lt"), variant).unwrap();
    let mut encoder = Encoder::load(&manifest, ProviderChoice::Cpu, Threads::default()).unwrap();
    let files = fixture_files();
    let mut pixels = Vec::new();
    for f in &files {
        pixels.extend(prepare(&fixture(f), &DecodeLimits::default(), &manifest).unwrap());
    }
    let batch = ndarray::Array4::from_shape_vec((files.len(), 3, 32, 32), pixels).unwrap();
    encoder.run(batch.view()).unwrap()
}

fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let v: Vec<f64> = v.collect();
    (0..v.len()).fold(0, |b, k| if v[k] > v[b] { k } else { b })
}

#[test]
fn int8_outputs_stay_within_the_documented_tolerance_of_fp32() {
    let fp32 = encode(EncoderVariant::Fp32);
    let int8 = encode(EncoderVariant::Int8);
    let files = fixture_files();
    assert_eq!(int8.feature.dim(), fp32.feature.dim());
    let (mut agree, mut largest_diff) = (0, 0.0f32);
    for (i, file) in files.iter().enumerate() {
        let (z0, z1) = (fp32.feature.row(i), int8.feature.row(i));
        let norm = z1.dot(&z1).sqrt();
        assert!((norm - 1.0).abs() <= NORM_TOLERANCE, "{file}: |z| = {norm}");
        let cosine = z0.dot(&z1) / (z0.dot(&z0).sqrt() * norm);
        assert!(cosine >= MIN_COSINE, "{file}: feature cosine {cosine}");
        let (f0, f1) = (fp32.logits.row(i), int8.logits.row(i));
        let diff = (&f0 - &f1).iter().fold(0.0f32, |m, d| m.max(d.abs()));
        assert!(diff <= MAX_LOGIT_DIFF, "{file}: |logit diff| {diff}");
        largest_diff = largest_diff.max(diff);
        let top = |f: ndarray::ArrayView1<f32>| argmax(f.iter().map(|&v| v as f64));
        agree += usize::from(top(f0) == top(f1));
    }
    assert!(agree >= MIN_TOP1_AGREEMENT, "top-1 agrees on {agree} of 40");
    // It is a different graph: were the int8 file the fp32 one, this test would prove nothing.
    assert!(
        largest_diff > 1e-3,
        "int8 logits equal fp32's ({largest_diff})"
    );
}

fn labelled_folder(root: &Path, labels: &[String]) {
    for img in parity_manifest()["images"].as_array().unwrap() {
        let label = &labels[img["label"].as_u64().unwrap() as usize];
        let file = img["file"].as_str().unwrap();
        std::fs::create_dir_all(root.join(label)).unwrap();
        std::fs::write(root.join(label).join(file), fixture(file)).unwrap();
    }
}

#[test]
fn the_int8_server_is_reproduced_by_eval() {
    let server = Server::start(&["--encoder-variant", "int8"]);
    let client = client();
    let manifest =
        ModelManifest::load_variant(&repo("models/cifar10-lt"), EncoderVariant::Int8).unwrap();
    let variant_t = manifest
        .temperatures
        .clone()
        .expect("model.toml gives the int8 variant its temperatures");

    let model: Value = client
        .get(server.url("/v1/model"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(model["encoder_variant"], "int8");
    assert_eq!(
        model["encoder_variants"],
        serde_json::json!(["fp32", "int8"])
    );
    let ready: Value = client
        .get(server.url("/health/ready"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["encoder_variant"], "int8");
    let metrics = common::metrics_text(&server);
    assert!(
        metrics.contains("proco_model_info{") && metrics.contains("variant=\"int8\""),
        "{metrics}"
    );
    let labels: Vec<String> = serde_json::from_value(model["labels"].clone()).unwrap();

    // The server's answers, one multipart request of all 40 fixtures per rule.
    let manifest_json = parity_manifest();
    let images = manifest_json["images"].as_array().unwrap();
    let mut served = Vec::new(); // (rule, correct, mean NLL)
    for rule in ["linear", "proco", "vmf", "ensemble"] {
        let t = variant_t[&rule.parse::<Rule>().unwrap()];
        assert_eq!(model["temperatures"][rule].as_f64().unwrap(), t, "{rule}");
        let form = fixture_form(images);
        let r = client
            .post(server.url(&format!(
                "/v1/classify?rule={rule}&prior=uniform&posterior=true&top_k=1"
            )))
            .multipart(form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().unwrap();
        let (mut correct, mut nll) = (0usize, 0.0);
        for (img, got) in images.iter().zip(body["results"].as_array().unwrap()) {
            assert_eq!(got["temperature"].as_f64().unwrap(), t);
            let p: Vec<f64> = got["posterior"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let y = img["label"].as_u64().unwrap() as usize;
            correct += usize::from(argmax(p.iter().copied()) == y);
            nll -= p[y].ln();
        }
        served.push((rule, correct, nll / images.len() as f64));
    }

    // eval on the same images as a labelled folder, with the same variant.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    labelled_folder(&data, &labels);
    let report_path = tmp.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_proco-serve"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "eval",
            "--provider",
            "cpu",
            "--encoder-variant",
            "int8",
            "--prior",
            "uniform",
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--report",
            report_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["encoder_variant"], "int8");
    for (rule, correct, nll) in served {
        let row = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule && r["calibrated"] == true)
            .unwrap();
        assert_eq!(
            row["temperature"].as_f64().unwrap(),
            variant_t[&rule.parse::<Rule>().unwrap()]
        );
        let m = &row["metrics"];
        assert_eq!(
            m["top1"].as_f64().unwrap(),
            correct as f64 / 40.0,
            "{rule} top-1"
        );
        let got = m["nll"].as_f64().unwrap();
        assert!(
            (got - nll).abs() <= 1e-9 * nll.max(1.0),
            "{rule}: eval NLL {got}, server {nll}"
        );
    }
}
