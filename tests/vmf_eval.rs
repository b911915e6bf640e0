//! End-to-end check of `proco-serve eval`: the parity-fixture JPEGs, laid out as a labelled folder,
//! go through the real decode -> preprocess -> ONNX Runtime -> vMF path, and the report's top-1 and
//! NLL must equal those implied by the PyTorch reference posteriors in the fixture manifest.
//! Also checks --shift bookkeeping and that --write-prototypes writes a loadable file whose
//! version is its content id.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `<tmp>/<label>/<file>` for every fixture image; returns the manifest.
fn labelled_folder(root: &Path) -> Value {
    let manifest = read_json(&repo("tests/fixtures/parity/manifest.json"));
    let protos = read_json(&repo("models/cifar10-lt/prototypes.json"));
    let labels: Vec<&str> = protos["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for img in manifest["images"].as_array().unwrap() {
        let label = labels[img["label"].as_u64().unwrap() as usize];
        let file = img["file"].as_str().unwrap();
        std::fs::create_dir_all(root.join(label)).unwrap();
        std::fs::copy(
            repo("tests/fixtures/parity").join(file),
            root.join(label).join(file),
        )
        .unwrap();
    }
    manifest
}

fn eval(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_proco-serve"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("eval")
        .args(["--provider", "cpu"])
        .args(args)
        .output()
        .expect("run proco-serve eval");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "proco-serve eval {args:?} failed:\n{stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn eval_reproduces_the_reference_accuracy_and_nll() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let manifest = labelled_folder(&data);
    let report_path = tmp.path().join("report.json");
    let png = tmp.path().join("reliability.png");
    let stdout = eval(&[
        "--data",
        data.to_str().unwrap(),
        "--prior",
        "uniform,train,adaptive",
        "--report",
        report_path.to_str().unwrap(),
        "--reliability",
        png.to_str().unwrap(),
    ]);
    let report = read_json(&report_path);
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(report["images"].as_u64().unwrap() as usize, images.len());
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        4 * 2 * 3,
        "4 rules x (T = 1, fitted T) x 3 priors"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("uncalibrated"))
            .count(),
        12,
        "{stdout}"
    );
    let img = image::open(&png).expect("a PNG");
    assert!(img.width() > 4 * 200 && img.height() > 2 * 200);

    for rule in ["linear", "proco", "vmf", "ensemble"] {
        for prior in ["uniform", "train"] {
            // The reference: PyTorch features, float64 posteriors with the fitted temperature.
            let (mut correct, mut nll) = (0usize, 0.0);
            for img in images {
                let p: Vec<f64> = img["posteriors"][rule][prior]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let y = img["label"].as_u64().unwrap() as usize;
                let pred = (0..p.len()).fold(0, |b, k| if p[k] > p[b] { k } else { b });
                correct += usize::from(pred == y);
                nll -= p[y].ln();
            }
            let n = images.len() as f64;
            let row = rows
                .iter()
                .find(|r| r["rule"] == rule && r["prior"] == prior && r["calibrated"] == true)
                .unwrap_or_else(|| panic!("no row {rule}/{prior}"));
            let m = &row["metrics"];
            assert_eq!(
                m["top1"].as_f64().unwrap(),
                correct as f64 / n,
                "{rule}/{prior} top-1"
            );
            let (got, want) = (m["nll"].as_f64().unwrap(), nll / n);
            assert!(
                (got - want).abs() <= 1e-4 * want.max(1.0),
                "{rule}/{prior} NLL {got} vs reference {want}"
            );
        }
    }
    // Adaptive rows carry the EM estimate: a distribution over the classes.
    for row in rows.iter().filter(|r| r["prior"] == "adaptive") {
        let q: Vec<f64> = row["prior_vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            (q.iter().sum::<f64>() - 1.0).abs() < 1e-9 && q.iter().all(|&v| v > 0.0),
            "{q:?}"
        );
        assert!(row["em_iterations"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn shift_and_refit_temperatures() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    labelled_folder(&data);
    let report_path = tmp.path().join("report.json");
    let protos_out = tmp.path().join("prototypes.json");
    eval(&[
        "--data",
        data.to_str().unwrap(),
        "--shift",
        "4,2,1,1,1,1,1,1,1,1",
        "--prior",
        "uniform",
        "--rule",
        "proco",
        "--fit-temperatures",
        data.to_str().unwrap(),
        "--write-prototypes",
        protos_out.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
    ]);
    let report = read_json(&report_path);
    // 4 fixture images per class: the class with weight 4 is kept whole, the others keep 1 or 2.
    let kept = &report["shift"]["kept"];
    assert_eq!(kept["airplane"], 4);
    assert_eq!(kept["automobile"], 2);
    assert_eq!(kept["truck"], 1);
    assert_eq!(report["images"], 4 + 2 + 8);
    assert_eq!(report["rows"].as_array().unwrap().len(), 2);
    // The written prototypes load, carry the fitted temperatures, and their version is the content id.
    let written = read_json(&protos_out);
    let version = written["version"].as_str().unwrap();
    assert_eq!(
        version,
        proco_serve::prototypes::prototypes_version(&written)
    );
    assert_ne!(
        version,
        read_json(&repo("models/cifar10-lt/prototypes.json"))["version"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        written["temperatures"]["proco"],
        report["temperatures"]["proco"]
    );
    proco_serve::prototypes::Prototypes::load(&protos_out).expect("a valid prototypes file");
}

#[test]
fn fit_conformal_writes_servable_scores_and_grades_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    labelled_folder(&data);
    let report_path = tmp.path().join("report.json");
    let protos_out = tmp.path().join("prototypes.json");
    let export = tmp.path().join("scores.json");
    let png = tmp.path().join("risk.png");
    // 4 fixtures per class: class-conditional levels up to 4/5 are supported, 0.9 is not.
    let out = eval(&[
        "--data",
        data.to_str().unwrap(),
        "--prior",
        "uniform",
        "--fit-conformal",
        data.to_str().unwrap(),
        "--write-prototypes",
        protos_out.to_str().unwrap(),
        "--coverage",
        "0.8,0.9",
        "--report",
        report_path.to_str().unwrap(),
        "--export-scores",
        export.to_str().unwrap(),
        "--risk-coverage",
        png.to_str().unwrap(),
    ]);
    assert!(out.contains("risk-coverage"), "{out}");
    assert!(
        out.contains("not served: coverage 0.9 needs at least 9"),
        "{out}"
    );
    let written = proco_serve::prototypes::Prototypes::load(&protos_out).unwrap();
    assert_eq!(written.conformal.len(), 4);
    for scores in written.conformal.values() {
        assert!(scores.per_class().iter().all(|s| s.len() == 4));
    }
    let report = read_json(&report_path);
    let sets = report["prediction_sets"].as_array().unwrap();
    // Per rule: class at 0.8 is served and 0.9 is not; marginal (40 pooled) serves both.
    assert_eq!(sets.len(), 4 * 3, "{sets:?}");
    for row in sets {
        let coverage = row["coverage"].as_f64().unwrap();
        // On its own calibration images a set at level l covers at least ceil((n+1) l) / n.
        if row["kind"] == "class" {
            for c in row["class_coverage"].as_object().unwrap().values() {
                assert!(c.as_f64().unwrap() >= 0.75, "{row}");
            }
        }
        assert!(coverage >= row["level"].as_f64().unwrap() - 1e-12, "{row}");
    }
    let exported = read_json(&export);
    assert_eq!(
        exported["rules"]["proco"]["calibration"]["labels"]
            .as_array()
            .unwrap()
            .len(),
        40
    );
    assert!(image::open(&png).is_ok());
}
