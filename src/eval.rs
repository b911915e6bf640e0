//! `proco-serve eval`: accuracy and calibration of every inference rule under every prior, on a
//! labelled image folder, through the same decode -> preprocess -> ONNX Runtime -> vMF path as the
//! server.
//!
//! * Input: `<data>/<label>/*.jpg|*.jpeg|*.png` (the layout of the CIFAR-10 archive), folder names
//!   matched to the prototypes' labels.
//! * Output: one table row per rule x prior, both with the rule's fitted temperature and with T = 1
//!   ("uncalibrated"); optionally a JSON report and a reliability-diagram PNG.
//! * `--shift` subsamples the set to another class distribution, so that the `adaptive` prior (EM
//!   over the whole evaluated stream) can be compared with `uniform` and `train`.
//! * `--fit-temperatures VAL --write-prototypes OUT` refits T per rule on a validation folder and
//!   writes a prototypes file with a new content-derived `version`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use image::{Rgb, RgbImage};
use ndarray::{Array2, Array4, ArrayView2, Axis};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::ProviderChoice;
use crate::encoder::{Encoder, Threads};
use crate::manifest::ModelManifest;
use crate::preprocess::{self, DecodeLimits};
use crate::prototypes::Prototypes;
use crate::vmf::{
    self, em_label_shift, evaluate, fit_temperature, posterior, reliability_bins, Rule,
};

/// EM stopping rule for the offline adaptive prior (the notes: 1e-8 is plenty in production).
const EM_TOLERANCE: f64 = 1e-8;
const EM_MAX_ITERATIONS: usize = 10_000;
/// Reliability-diagram data of one panel: (mean confidence, accuracy, count) per bin.
type Bins = Vec<(f64, f64, usize)>;

/// Reliability diagram bins (as the ECE).
const BINS: usize = vmf::metrics::ECE_BINS;

/// Options of `proco-serve eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    /// Model directory with model.toml, the encoder and prototypes.json
    #[arg(long, default_value = "models/cifar10-lt")]
    pub model_dir: PathBuf,
    /// Labelled test folder: <DIR>/<label>/*.jpg|*.jpeg|*.png, folder names as the prototypes' labels
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Priors, comma-separated: uniform, train, adaptive (EM over the evaluated set), oracle (its true label distribution)
    #[arg(long, value_delimiter = ',', default_value = "uniform,train,adaptive")]
    pub prior: Vec<String>,
    /// Rules, comma-separated (default: linear,proco,vmf,ensemble)
    #[arg(long, value_delimiter = ',')]
    pub rule: Vec<Rule>,
    /// Label shift: subsample the set so class k keeps a share proportional to `train` (the training
    /// prior), `uniform`, or explicit weights w1,w2,...; the most constrained class is kept whole
    #[arg(long, value_name = "train|uniform|w1,w2,...")]
    pub shift: Option<String>,
    /// Smallest probability the adaptive prior gives any class (the server's adaptive_floor)
    #[arg(long, default_value_t = 1e-4)]
    pub adaptive_floor: f64,
    /// Seed of the --shift subsampling
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many images per class (before --shift), for quick runs
    #[arg(long, value_name = "N")]
    pub max_per_class: Option<usize>,
    /// Write a JSON report (every row, per-class counts, EM estimate, reliability bins) here
    #[arg(long, value_name = "OUT.json")]
    pub report: Option<PathBuf>,
    /// Write a reliability diagram here: one panel per rule (columns), T = 1 on top and the
    /// fitted T below, for the first --prior; bars = accuracy per confidence bin, red = gap to
    /// the mean confidence, black = the diagonal
    #[arg(long, value_name = "OUT.png")]
    pub reliability: Option<PathBuf>,
    /// Fit each rule's temperature on this labelled validation folder (NLL with q = its label
    /// distribution); the fitted temperatures are then used for the evaluation
    #[arg(long, value_name = "VAL_DIR")]
    pub fit_temperatures: Option<PathBuf>,
    /// With --fit-temperatures: write the prototypes with the fitted temperatures and a new version here
    #[arg(long, value_name = "OUT.json", requires = "fit_temperatures")]
    pub write_prototypes: Option<PathBuf>,
    /// Images per encoder batch
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Where the encoder runs
    #[arg(long, value_enum, default_value = "auto")]
    pub provider: ProviderChoice,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime decides)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// A prior over classes for the posterior.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PriorKind {
    Uniform,
    Train,
    Adaptive,
    Oracle,
}

impl PriorKind {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim() {
            "uniform" => PriorKind::Uniform,
            "train" => PriorKind::Train,
            "adaptive" => PriorKind::Adaptive,
            "oracle" => PriorKind::Oracle,
            other => {
                bail!("unknown prior {other:?}; valid priors are uniform, train, adaptive, oracle")
            }
        })
    }
    fn name(self) -> &'static str {
        match self {
            PriorKind::Uniform => "uniform",
            PriorKind::Train => "train",
            PriorKind::Adaptive => "adaptive",
            PriorKind::Oracle => "oracle",
        }
    }
}

/// Encoder outputs of a labelled set, row i for image i.
struct Encoded {
    features: Array2<f32>,
    logits: Array2<f32>,
    labels: Vec<usize>,
    skipped: Vec<String>,
}

/// Runs the `eval` subcommand.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.data.is_none() && args.fit_temperatures.is_none() {
        bail!("nothing to do: give --data DIR (evaluate) and/or --fit-temperatures VAL_DIR");
    }
    if args.fit_temperatures.is_some() && args.write_prototypes.is_none() {
        eprintln!("note: --fit-temperatures without --write-prototypes: the fitted values are used for this run only");
    }
    let priors = args
        .prior
        .iter()
        .map(|s| PriorKind::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if priors.is_empty() {
        bail!("--prior is empty");
    }
    let rules: Vec<Rule> = if args.rule.is_empty() {
        Rule::ALL.to_vec()
    } else {
        args.rule.clone()
    };
    let manifest = ModelManifest::load(&args.model_dir)?;
    let protos = Prototypes::load(&manifest.prototypes_path)?;
    let classes = &protos.classes;
    let mut encoder = Encoder::load(
        &manifest,
        &args.model_dir,
        args.provider,
        Threads {
            intra: args.threads,
            inter: 0,
        },
    )?;
    if let Some(reason) = encoder.fallback_reason() {
        eprintln!("note: running on CPU: {reason}");
    }
    protos.check_fits(encoder.feature_dim(), encoder.num_classes())?;
    let mut temperatures: HashMap<Rule, f64> = Rule::ALL
        .iter()
        .map(|&r| (r, protos.temperature(r)))
        .collect();

    if let Some(val_dir) = &args.fit_temperatures {
        let items = scan(val_dir, classes.labels())?;
        let val = encode(
            &mut encoder,
            &manifest,
            &items,
            args.batch_size,
            "validation",
        )?;
        let counts = label_counts(&val.labels, classes.num_classes());
        let n = val.labels.len() as f64;
        let log_q: Vec<f64> = counts.iter().map(|&k| (k as f64 / n).ln()).collect();
        eprintln!(
            "fitting temperatures on {} validation images (q = their label distribution)",
            val.labels.len()
        );
        for rule in Rule::ALL {
            let g = classes.balanced_logits(rule, val.features.view(), Some(val.logits.view()))?;
            let t = fit_temperature(g.view(), &val.labels, &log_q);
            let before = evaluate(
                g.view(),
                temperatures[&rule],
                &log_q,
                &val.labels,
                classes.counts(),
            )
            .nll;
            let after = evaluate(g.view(), t, &log_q, &val.labels, classes.counts()).nll;
            eprintln!(
                "  {rule:<9} T {:>12.6} -> {t:>12.6}   validation NLL {before:.4} -> {after:.4}",
                temperatures[&rule]
            );
            temperatures.insert(rule, t);
        }
        if let Some(out) = &args.write_prototypes {
            let version = write_prototypes(&manifest.prototypes_path, out, &temperatures)?;
            eprintln!("wrote {} (version {version})", out.display());
        }
    }

    let Some(data) = &args.data else {
        return Ok(());
    };
    let c = classes.num_classes();
    let mut items = scan(data, classes.labels())?;
    if let Some(max) = args.max_per_class {
        items = cap_per_class(items, max, c);
    }
    let mut shift_info = Value::Null;
    if let Some(spec) = &args.shift {
        let weights = shift_weights(spec, &protos)?;
        let available = label_counts(&items.iter().map(|i| i.1).collect::<Vec<_>>(), c);
        let keep = shifted_counts(&available, &weights);
        items = subsample(items, &keep, args.seed);
        eprintln!(
            "label shift {spec:?} (seed {}): images kept per class:",
            args.seed
        );
        for (label, (k, a)) in classes.labels().iter().zip(keep.iter().zip(&available)) {
            eprintln!("  {label:<16} {k:>6} of {a}");
        }
        shift_info = json!({"spec": spec, "seed": args.seed, "weights": weights,
            "kept": per_label(classes.labels(), &keep), "available": per_label(classes.labels(), &available)});
    }
    let set = encode(&mut encoder, &manifest, &items, args.batch_size, "test")?;
    let labels = &set.labels;
    let counts = label_counts(labels, c);
    let log_train = classes.log_train_prior().to_vec();
    let oracle: Vec<f64> = counts
        .iter()
        .map(|&k| (k as f64 / labels.len() as f64).max(args.adaptive_floor))
        .collect();

    println!(
        "model {} (prototypes {}), {} images from {}, encoder on {}",
        manifest.name,
        protos.version,
        labels.len(),
        data.display(),
        encoder.provider()
    );
    println!(
        "{:<9} {:<13} {:>12} {:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6}",
        "rule",
        "calibration",
        "T",
        "prior",
        "top1",
        "top5",
        "many",
        "medium",
        "few",
        "ECE",
        "cwECE",
        "NLL",
        "Brier"
    );
    let mut rows = Vec::new();
    let mut panels: Vec<Bins> = Vec::new();
    let mut reliability = serde_json::Map::new();
    for &rule in &rules {
        let g = classes.balanced_logits(rule, set.features.view(), Some(set.logits.view()))?;
        for (calibrated, t) in [(false, 1.0), (true, temperatures[&rule])] {
            for (pi, &prior) in priors.iter().enumerate() {
                let (q, em_iterations) = match prior {
                    PriorKind::Uniform => (vec![1.0 / c as f64; c], None),
                    PriorKind::Train => (classes.train_prior(), None),
                    PriorKind::Oracle => (oracle.clone(), None),
                    PriorKind::Adaptive => {
                        let (q, it) = adaptive_prior(
                            g.view(),
                            t,
                            &classes.train_prior(),
                            args.adaptive_floor,
                        );
                        (q, Some(it))
                    }
                };
                let log_q: Vec<f64> = match prior {
                    PriorKind::Train => log_train.clone(),
                    _ => q.iter().map(|v| v.ln()).collect(),
                };
                let m = evaluate(g.view(), t, &log_q, labels, classes.counts());
                let calibration = if calibrated { "fitted" } else { "uncalibrated" };
                println!(
                    "{:<9} {:<13} {:>12} {:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6}",
                    rule.to_string(),
                    calibration,
                    format!("{t:.4}"),
                    prior.name(),
                    pct(m.top1),
                    pct(m.top5),
                    pct(m.many),
                    pct(m.medium),
                    pct(m.few),
                    fixed(m.ece, 4),
                    fixed(m.classwise_ece, 4),
                    fixed(m.nll, 4),
                    fixed(m.brier, 4)
                );
                let mut row = json!({"rule": rule, "calibrated": calibrated, "temperature": t,
                    "prior": prior.name(), "metrics": m});
                if prior != PriorKind::Uniform {
                    row["prior_vector"] = json!(q);
                }
                if let Some(it) = em_iterations {
                    row["em_iterations"] = json!(it);
                }
                rows.push(row);
                if pi == 0 {
                    let probs = posterior(g.view(), t, &log_q);
                    let bins = reliability_bins(probs.view(), labels, BINS);
                    reliability.insert(
                        format!("{rule}/{calibration}/{}", prior.name()),
                        json!(bins
                            .iter()
                            .map(|&(conf, acc, n)| json!([conf, acc, n]))
                            .collect::<Vec<_>>()),
                    );
                    panels.push(bins);
                }
            }
        }
    }
    if let Some(path) = &args.reliability {
        // Columns: rules; rows: uncalibrated, fitted (the push order above is rule-major).
        let mut grid = vec![Vec::new(); 2];
        for (i, bins) in panels.into_iter().enumerate() {
            grid[i % 2].push(bins);
        }
        draw_reliability(&grid)
            .save(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {} (columns: {}; top row T = 1, bottom row fitted T; prior {})",
            path.display(),
            rules
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            priors[0].name()
        );
    }
    if let Some(path) = &args.report {
        let report = json!({
            "model": manifest.name, "prototypes_version": protos.version, "data": data.display().to_string(),
            "provider": encoder.provider(), "images": labels.len(), "skipped": set.skipped,
            "per_class": per_label(classes.labels(), &counts), "shift": shift_info,
            "temperatures": Rule::ALL.iter().map(|r| (r.to_string(), json!(temperatures[r]))).collect::<serde_json::Map<_, _>>(),
            "temperatures_refitted": args.fit_temperatures.is_some(),
            "bins": BINS, "em": {"tolerance": EM_TOLERANCE, "max_iterations": EM_MAX_ITERATIONS, "floor": args.adaptive_floor},
            "rows": rows, "reliability": reliability,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Saerens EM over all calibrated rows g/T, from the training prior; floored and renormalised.
fn adaptive_prior(
    g: ArrayView2<f64>,
    t: f64,
    train_prior: &[f64],
    floor: f64,
) -> (Vec<f64>, usize) {
    let calibrated = g.mapv(|v| v / t);
    let (q, it) = em_label_shift(
        calibrated.view(),
        train_prior,
        EM_MAX_ITERATIONS,
        EM_TOLERANCE,
    );
    let floored: Vec<f64> = q.iter().map(|v| v.max(floor)).collect();
    let total: f64 = floored.iter().sum();
    (floored.iter().map(|v| v / total).collect(), it)
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

fn fixed(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.digits$}")
    }
}

fn per_label(labels: &[String], counts: &[usize]) -> Value {
    Value::Object(
        labels
            .iter()
            .zip(counts)
            .map(|(l, &n)| (l.clone(), json!(n)))
            .collect(),
    )
}

fn label_counts(labels: &[usize], c: usize) -> Vec<usize> {
    let mut counts = vec![0; c];
    for &y in labels {
        counts[y] += 1;
    }
    counts
}

/// `<root>/<label>/*.{jpg,jpeg,png}`, sorted; every sub-folder must name a class of the model.
fn scan(root: &Path, labels: &[String]) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot read {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut items = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(y) = labels.iter().position(|l| *l == name) else {
            bail!(
                "folder {} is not a class of the model; its classes are: {}",
                dir.display(),
                labels.join(", ")
            );
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                p.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png")
            })
            .collect();
        files.sort();
        items.extend(files.into_iter().map(|f| (f, y)));
    }
    if items.is_empty() {
        bail!(
            "no images under {} (expected <label>/*.jpg|*.jpeg|*.png)",
            root.display()
        );
    }
    Ok(items)
}

fn cap_per_class(items: Vec<(PathBuf, usize)>, max: usize, c: usize) -> Vec<(PathBuf, usize)> {
    let mut seen = vec![0; c];
    items
        .into_iter()
        .filter(|(_, y)| {
            seen[*y] += 1;
            seen[*y] <= max
        })
        .collect()
}

/// Target class distribution of `--shift`.
fn shift_weights(spec: &str, protos: &Prototypes) -> anyhow::Result<Vec<f64>> {
    let c = protos.classes.num_classes();
    let w = match spec {
        "train" => protos.classes.train_prior(),
        "uniform" => vec![1.0; c],
        list => {
            let w = list
                .split(',')
                .map(|s| s.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!(
                        "--shift {list:?}: expected train, uniform or {c} comma-separated weights"
                    )
                })?;
            if w.len() != c {
                bail!("--shift has {} weights; the model has {c} classes", w.len());
            }
            w
        }
    };
    if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || w.iter().sum::<f64>() <= 0.0 {
        bail!("--shift weights must be finite, non-negative and not all zero");
    }
    let total: f64 = w.iter().sum();
    Ok(w.iter().map(|v| v / total).collect())
}

/// Images to keep per class so that the counts are proportional to `weights`: the class that is
/// most constrained (smallest available / weight; for a balanced set, the largest weight) is kept
/// whole, the others get floor(scale * weight) (at least 1 if their weight is positive).
fn shifted_counts(available: &[usize], weights: &[f64]) -> Vec<usize> {
    let scale = available
        .iter()
        .zip(weights)
        .filter(|(_, &w)| w > 0.0)
        .map(|(&a, &w)| a as f64 / w)
        .fold(f64::INFINITY, f64::min);
    available
        .iter()
        .zip(weights)
        .map(|(&a, &w)| {
            if w <= 0.0 {
                0
            } else {
                ((scale * w + 1e-9).floor() as usize)
                    .clamp(1, a.max(1))
                    .min(a)
            }
        })
        .collect()
}

/// Keeps `keep[y]` images of each class y, chosen by a seeded shuffle; the input order is kept.
fn subsample(items: Vec<(PathBuf, usize)>, keep: &[usize], seed: u64) -> Vec<(PathBuf, usize)> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut selected = vec![false; items.len()];
    for (y, &k) in keep.iter().enumerate() {
        let mut idx: Vec<usize> = (0..items.len()).filter(|&i| items[i].1 == y).collect();
        // Fisher-Yates.
        for i in (1..idx.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        for &i in idx.iter().take(k) {
            selected[i] = true;
        }
    }
    items
        .into_iter()
        .zip(selected)
        .filter(|(_, s)| *s)
        .map(|(item, _)| item)
        .collect()
}

/// Decodes, preprocesses and encodes the images in batches, printing progress to stderr.
/// Undecodable images are skipped (and listed in the report).
fn encode(
    encoder: &mut Encoder,
    manifest: &ModelManifest,
    items: &[(PathBuf, usize)],
    batch_size: usize,
    what: &str,
) -> anyhow::Result<Encoded> {
    let (h, w) = (
        manifest.input.height as usize,
        manifest.input.width as usize,
    );
    let limits = DecodeLimits::default();
    let started = Instant::now();
    let (mut features, mut logits) = (Vec::new(), Vec::new());
    let (mut labels, mut skipped) = (Vec::new(), Vec::new());
    let total = items.len();
    let mut done = 0;
    for chunk in items.chunks(batch_size.max(1)) {
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * h * w);
        let mut n = 0;
        for (path, y) in chunk {
            let decoded = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| preprocess::decode(&bytes, &limits).map_err(|e| e.to_string()));
            match decoded {
                Ok(img) => {
                    pixels.extend(preprocess::to_chw(&img, manifest));
                    labels.push(*y);
                    n += 1;
                }
                Err(e) => {
                    eprintln!("\nskipping {}: {e}", path.display());
                    skipped.push(path.display().to_string());
                }
            }
        }
        done += chunk.len();
        if n > 0 {
            let batch =
                Array4::from_shape_vec((n, 3, h, w), pixels).expect("3*h*w values per image");
            let out = encoder.run(batch.view())?;
            features.push(out.feature);
            logits.push(out.logits);
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        eprint!("\r{what}: {done}/{total} images, {rate:.0} images/s   ");
        let _ = std::io::stderr().flush();
    }
    eprintln!(
        "\r{what}: {done}/{total} images in {:.1} s{:>20}",
        started.elapsed().as_secs_f64(),
        ""
    );
    if labels.is_empty() {
        bail!("no image of {what} could be decoded");
    }
    let stack = |parts: Vec<Array2<f32>>| -> Array2<f32> {
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(0), &views).expect("same widths")
    };
    Ok(Encoded {
        features: stack(features),
        logits: stack(logits),
        labels,
        skipped,
    })
}

/// Writes `source` with new temperatures and a recomputed `version`; returns the version.
fn write_prototypes(
    source: &Path,
    out: &Path,
    temperatures: &HashMap<Rule, f64>,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let mut doc: Value =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", source.display()))?;
    let obj = doc
        .as_object_mut()
        .context("prototypes.json is not a JSON object")?;
    obj.insert(
        "temperatures".into(),
        Value::Object(
            Rule::ALL
                .iter()
                .map(|r| (r.to_string(), json!(temperatures[r])))
                .collect(),
        ),
    );
    let version = prototypes_version(&doc);
    doc["version"] = json!(version);
    // Check the result is a valid prototypes file before writing it.
    let pretty = serde_json::to_string_pretty(&doc)? + "\n";
    Prototypes::from_slice(pretty.as_bytes())
        .map_err(|e| anyhow::anyhow!("refusing to write invalid prototypes: {e}"))?;
    std::fs::write(out, pretty).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(version)
}

/// The content-derived id of a prototypes document (docs/prototypes.md): the first 16 hex digits
/// of SHA-256 over the canonical JSON of the document without `version`.
///
/// "Canonical" is what the Python exporter hashes, `json.dumps(doc, sort_keys=True,
/// separators=(",", ":"))`, reproduced byte for byte (see [`canonical_json`]) so that both sides
/// derive the same id from the same content. `serde_json::to_string` would not: it writes 3e-5 where
/// Python writes 3e-05, and UTF-8 where Python writes \u escapes.
pub fn prototypes_version(doc: &Value) -> String {
    let mut body = doc.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.remove("version");
    }
    let digest = Sha256::digest(canonical_json(&body).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Python's `json.dumps(v, sort_keys=True, separators=(",", ":"))` (with `ensure_ascii`).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !(n.is_i64() || n.is_u64()) => out.push_str(&python_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_python_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_python_string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for decimal exponents -5 < e < 16,
/// otherwise `d.ddde±XX`.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", x.abs()); // shortest round-trip digits: "3.264433906608702e-5"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if (-5 < exp) && (exp < 16) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            let (int_part, frac) = if digits.len() > int_len {
                (digits[..int_len].to_string(), digits[int_len..].to_string())
            } else {
                (format!("{digits:0<int_len$}"), "0".to_string())
            };
            format!("{int_part}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

/// Reliability diagrams: `grid[row][col]` holds one panel's bins. Bars (blue) are the accuracy per
/// confidence bin, the red part the gap up or down to the bin's mean confidence, black the diagonal.
fn draw_reliability(grid: &[Vec<Bins>]) -> RgbImage {
    const SIZE: u32 = 240;
    const MARGIN: u32 = 16;
    let rows = grid.len() as u32;
    let cols = grid.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut img = RgbImage::from_pixel(
        cols * (SIZE + MARGIN) + MARGIN,
        rows * (SIZE + MARGIN) + MARGIN,
        Rgb([255, 255, 255]),
    );
    for (r, row) in grid.iter().enumerate() {
        for (c, bins) in row.iter().enumerate() {
            let x0 = MARGIN + c as u32 * (SIZE + MARGIN);
            let y0 = MARGIN + r as u32 * (SIZE + MARGIN);
            let to_y =
                |v: f64| y0 + SIZE - 1 - ((v.clamp(0.0, 1.0) * (SIZE - 1) as f64).round() as u32);
            let nb = bins.len().max(1) as u32;
            for (m, &(conf, acc, count)) in bins.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let xa = x0 + m as u32 * SIZE / nb + 1;
                let xb = x0 + (m as u32 + 1) * SIZE / nb - 1;
                for x in xa..xb {
                    for y in to_y(acc)..y0 + SIZE {
                        img.put_pixel(x, y, Rgb([70, 110, 200]));
                    }
                    let (lo, hi) = if conf > acc {
                        (to_y(conf), to_y(acc))
                    } else {
                        (to_y(acc), to_y(conf))
                    };
                    for y in lo..=hi {
                        img.put_pixel(x, y, Rgb([220, 80, 70]));
                    }
                }
            }
            for t in 0..SIZE {
                for d in 0..2 {
                    let x = (x0 + t + d).min(x0 + SIZE - 1);
                    img.put_pixel(x, y0 + SIZE - 1 - t, Rgb([0, 0, 0]));
                }
                for (x, y) in [
                    (x0 + t, y0),
                    (x0 + t, y0 + SIZE - 1),
                    (x0, y0 + t),
                    (x0 + SIZE - 1, y0 + t),
                ] {
                    img.put_pixel(x, y, Rgb([120, 120, 120]));
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_matches_python() {
        // json.dumps(doc, sort_keys=True, separators=(",", ":")) of this document, and its version,
        // computed with CPython 3.
        let doc: Value = serde_json::from_str(
            r#"{"b": [1e-05, 3.264433906608702e-05, 0.0001234, 1e+16, 1.5e+16, 123456789012345.6, 5000.0, -3e-07, 0.1, 0.0, -2.5],
                "a": {"count": 112, "neg": -7, "label": "caf\u00e9 \"q\"\n\ud83d\ude00", "t": true, "n": null}, "version": "zzz"}"#,
        )
        .unwrap();
        let mut body = doc.clone();
        body.as_object_mut().unwrap().remove("version");
        assert_eq!(
            canonical_json(&body),
            r#"{"a":{"count":112,"label":"caf\u00e9 \"q\"\n\ud83d\ude00","n":null,"neg":-7,"t":true},"b":[1e-05,3.264433906608702e-05,0.0001234,1e+16,1.5e+16,123456789012345.6,5000.0,-3e-07,0.1,0.0,-2.5]}"#
        );
        assert_eq!(prototypes_version(&doc), "2ff22396376bc9a7");
    }

    #[test]
    fn version_of_the_shipped_prototypes_is_reproduced() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/cifar10-lt/prototypes.json"
        );
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(path).expect("models/cifar10-lt/prototypes.json"),
        )
        .unwrap();
        assert_eq!(prototypes_version(&doc), doc["version"].as_str().unwrap());
    }

    #[test]
    fn shift_keeps_the_most_constrained_class_whole() {
        assert_eq!(
            shifted_counts(&[1000, 1000, 1000], &[0.5, 0.3, 0.2]),
            vec![1000, 600, 400]
        );
        assert_eq!(
            shifted_counts(&[100, 1000, 1000], &[0.5, 0.3, 0.2]),
            vec![100, 60, 40]
        );
        assert_eq!(shifted_counts(&[10, 10], &[1.0, 0.0]), vec![10, 0]);
        let items: Vec<(PathBuf, usize)> = (0..20)
            .map(|i| (PathBuf::from(format!("{i}")), i % 2))
            .collect();
        let a = subsample(items.clone(), &[3, 5], 7);
        assert_eq!(a.iter().filter(|i| i.1 == 0).count(), 3);
        assert_eq!(a.iter().filter(|i| i.1 == 1).count(), 5);
        assert_eq!(a, subsample(items, &[3, 5], 7), "deterministic for a seed");
    }
}
