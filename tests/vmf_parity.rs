//! Parity with the training pipeline: the Rust rules and posteriors, fed PyTorch's feature and
//! logits for each fixture image, must reproduce the float64 Python values to 1e-6 absolute.
//!
//! Inputs (committed by the training pipeline): `models/cifar10-lt/prototypes.json` and
//! `tests/fixtures/parity/manifest.json`. The prototypes are parsed here with serde_json, not with
//! the server's loader, so that this test checks the math and nothing else. A missing fixture is a
//! failure, not a skip. Checks are written `!(d <= TOL)` so that a NaN fails them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod report;

use std::collections::HashMap;
use std::path::PathBuf;

use ndarray::Array2;
use proco_serve::vmf::{posterior, ClassModel, Rule};
use serde::Deserialize;

const TOL: f64 = 1e-6;

#[derive(Deserialize)]
struct ClassDoc {
    index: usize,
    label: String,
    count: f64,
    kappa: f64,
    mu: Vec<f64>,
}

#[derive(Deserialize)]
struct PrototypesDoc {
    version: String,
    feature_dim: usize,
    tau: f64,
    alpha: f64,
    labels: Vec<String>,
    temperatures: HashMap<Rule, f64>,
    classes: Vec<ClassDoc>,
}

#[derive(Deserialize)]
struct Fixture {
    file: String,
    feature: Vec<f32>,
    logits: Vec<f32>,
    balanced_logits: HashMap<Rule, Vec<f64>>,
    posteriors: HashMap<Rule, HashMap<String, Vec<f64>>>,
}

#[derive(Deserialize)]
struct Manifest {
    prototypes_version: String,
    temperatures: HashMap<Rule, f64>,
    images: Vec<Fixture>,
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &str, what: &str) -> T {
    let full = repo(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| {
        panic!(
            "{what} {} is missing ({e}). It is produced by the training pipeline's export \
             (python -m train export) and must be committed; this test does not skip.",
            full.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid: {e}", full.display()))
}

#[test]
fn rust_rules_and_posteriors_match_python_on_the_parity_fixtures() {
    let manifest: Manifest = read_json("tests/fixtures/parity/manifest.json", "The parity fixture");
    let doc: PrototypesDoc = read_json("models/cifar10-lt/prototypes.json", "The prototypes file");
    assert_eq!(
        manifest.prototypes_version, doc.version,
        "the parity fixture was generated for prototypes {} but models/cifar10-lt/prototypes.json is {}; \
         re-export both together",
        manifest.prototypes_version, doc.version
    );
    assert!(
        !manifest.images.is_empty(),
        "the parity fixture has no images"
    );
    for (i, c) in doc.classes.iter().enumerate() {
        assert_eq!(
            (c.index, &c.label),
            (i, &doc.labels[i]),
            "classes[{i}] is out of order"
        );
    }
    let model = ClassModel::new(
        doc.labels.clone(),
        doc.feature_dim,
        doc.tau,
        doc.alpha,
        doc.classes.iter().map(|c| c.mu.clone()).collect(),
        doc.classes.iter().map(|c| c.kappa).collect(),
        doc.classes.iter().map(|c| c.count).collect(),
    )
    .expect("prototypes.json describes a valid class model");
    let (c, p) = (model.num_classes(), model.dim());
    let log_uniform = vec![-(c as f64).ln(); c];
    let log_train = model.log_train_prior().to_vec();

    let mut failures = Vec::new();
    let mut checked = 0usize;
    let mut worst = 0.0f64;
    let mut compare = |what: String, got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let d = (g - w).abs();
            worst = worst.max(d);
            if !(d <= TOL) {
                failures.push(format!(
                    "{what}[{k}]: rust {g:.12e}, python {w:.12e}, |diff| {d:.2e}"
                ));
            }
        }
        checked += 1;
    };
    for img in &manifest.images {
        assert_eq!(
            (img.feature.len(), img.logits.len()),
            (p, c),
            "{}: feature/logits sizes",
            img.file
        );
        let z = Array2::from_shape_vec((1, p), img.feature.clone()).unwrap();
        let f = Array2::from_shape_vec((1, c), img.logits.clone()).unwrap();
        for rule in Rule::ALL {
            let g = model
                .balanced_logits(rule, z.view(), Some(f.view()))
                .unwrap();
            let want_g = img
                .balanced_logits
                .get(&rule)
                .unwrap_or_else(|| panic!("{}: no {rule} logits", img.file));
            compare(
                format!("{} {rule} balanced logits", img.file),
                g.row(0).as_slice().unwrap(),
                want_g,
            );
            let t = doc.temperatures[&rule];
            assert_eq!(
                t, manifest.temperatures[&rule],
                "temperature of {rule} differs between files"
            );
            let posts = &img.posteriors[&rule];
            for (prior, log_q) in [("uniform", &log_uniform), ("train", &log_train)] {
                let got = posterior(g.view(), t, log_q);
                let want = posts
                    .get(prior)
                    .unwrap_or_else(|| panic!("{}: no {rule}/{prior}", img.file));
                compare(
                    format!("{} {rule} posterior ({prior} prior, T={t})", img.file),
                    got.row(0).as_slice().unwrap(),
                    want,
                );
            }
        }
    }
    eprintln!(
        "parity: {checked} vectors over {} images, worst |diff| {worst:.2e}",
        manifest.images.len()
    );
    report::assert_none(&format!("values differing by more than {TOL}"), &failures);
}
