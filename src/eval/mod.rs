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
//!   writes a prototypes file with a new content-derived `version`; `--fit-conformal VAL` adds
//!   the conformal scores that prediction sets are served from.
//! * With conformal scores (fitted now or in the prototypes), the coverage and size of marginal
//!   and class-conditional sets at each `--coverage`; always, the risk-coverage of abstention.
//! * `--encoder-variant int8` runs the INT8 graph model.toml lists, with its own temperatures
//!   when model.toml gives them (as the server does); fitting prints them as the TOML table to
//!   put there.
//!
//! This file is the orchestration; [`dataset`] reads the folder and subsamples it, [`report`]
//! prints the table and builds the JSON rows, [`decisions`] grades prediction sets and
//! abstention, [`plot`] draws the reliability diagram and the risk-coverage curves.

mod args;
mod dataset;
mod decisions;
mod grade;
mod plot;
mod report;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::{Array2, Array4, Axis};
use serde_json::{json, Value};

use crate::encoder::{Encode, Encoder, Threads};
use crate::engine::PriorName;
use crate::manifest::{EncoderVariant, ModelManifest};
use crate::preprocess::{self, DecodeLimits};
use crate::prototypes::{self, EncoderShape, Prototypes};
use crate::vmf::{self, evaluate, fit_temperature, Rule};
pub use args::EvalArgs;
use args::EvalPrior;
use dataset::label_counts;
use grade::{grade, write_reliability};
use report::per_label;

/// EM stopping rule for the offline adaptive prior (the notes: 1e-8 is plenty in production).
const EM_TOLERANCE: f64 = 1e-8;
const EM_MAX_ITERATIONS: usize = 10_000;
/// Reliability-diagram data of one panel: (mean confidence, accuracy, count) per bin.
type Bins = Vec<(f64, f64, usize)>;

/// Reliability diagram bins (as the ECE).
const BINS: usize = vmf::metrics::ECE_BINS;

/// Encoder outputs of a labelled set, row i for image i.
struct Encoded {
    features: Array2<f32>,
    logits: Array2<f32>,
    labels: Vec<usize>,
    skipped: Vec<String>,
}

/// What every step of a run reads.
struct Setup {
    manifest: ModelManifest,
    protos: Prototypes,
    encoder: Encoder,
    priors: Vec<EvalPrior>,
    rules: Vec<Rule>,
}

/// Runs the `eval` subcommand.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let mut setup = load(&args)?;
    let (mut temperatures, temperatures_from) = serving_temperatures(&setup, &args);
    if let Some(val_dir) = &args.fit_temperatures {
        fit_temperatures(&mut setup, val_dir, args.batch_size, &mut temperatures)?;
    }
    let calibrated = calibrate(&mut setup, &args, &temperatures)?;
    let Some(data) = &args.data else {
        return Ok(());
    };
    let (set, shift_info) = encode_test_set(&mut setup, data, &args)?;
    let logits = rule_logits(&setup, &set, &setup.rules)?;
    let graded = grade(&setup, &set, &logits, &temperatures, args.adaptive_floor)?;
    if let Some(path) = &args.reliability {
        write_reliability(path, &setup, graded.panels)?;
    }
    let sets = if calibrated.conformal.is_empty() {
        eprintln!("note: no conformal scores (run with --fit-conformal VAL_DIR): prediction sets are not graded");
        Vec::new()
    } else {
        decisions::grade_sets(
            &setup,
            &set,
            &logits,
            &temperatures,
            &calibrated.conformal,
            &args.coverage,
        )?
    };
    let risk = risk_coverage(&setup, &set, &logits, &temperatures, &args)?;
    if let (Some(path), Some(val)) = (&args.export_scores, &calibrated.validation) {
        decisions::export(&setup, val, &set, &logits, &temperatures, path)?;
    }
    if let Some(path) = &args.report {
        let temperatures_from = match args.fit_temperatures {
            Some(_) => "refitted",
            None => temperatures_from.as_str(),
        };
        let report = json!({
            "model": setup.manifest.name, "prototypes_version": setup.protos.version, "data": data.display().to_string(),
            "provider": setup.encoder.provider(), "encoder_variant": args.encoder_variant,
            "temperatures_from": temperatures_from,
            "images": set.labels.len(), "skipped": set.skipped,
            "per_class": per_label(setup.protos.classes.labels(), &label_counts(&set.labels, setup.protos.classes.num_classes())),
            "shift": shift_info,
            "temperatures": Rule::ALL.iter().map(|r| (r.to_string(), json!(temperatures[r]))).collect::<serde_json::Map<_, _>>(),
            "temperatures_refitted": args.fit_temperatures.is_some(),
            "bins": BINS, "em": {"tolerance": EM_TOLERANCE, "max_iterations": EM_MAX_ITERATIONS, "floor": args.adaptive_floor},
            "rows": graded.rows, "reliability": graded.reliability,
            "prediction_sets": sets, "risk_coverage": risk,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Refuses combinations of options that would do nothing, or write what the server would not
/// serve.
fn check_args(args: &EvalArgs) -> anyhow::Result<()> {
    let fits = args.fit_temperatures.is_some() || args.fit_conformal.is_some();
    if args.data.is_none() && !fits {
        bail!("nothing to do: give --data DIR (evaluate) and/or --fit-temperatures / --fit-conformal VAL_DIR");
    }
    if args.write_prototypes.is_some() && !fits {
        bail!("--write-prototypes needs --fit-temperatures or --fit-conformal");
    }
    if args.write_prototypes.is_some() && args.encoder_variant != EncoderVariant::Fp32 {
        bail!("--write-prototypes writes what the fp32 encoder serves; the temperatures of --encoder-variant {} belong in model.toml (fitting prints them), and conformal scores are fitted with the fp32 encoder", args.encoder_variant);
    }
    if fits && args.write_prototypes.is_none() {
        eprintln!("note: without --write-prototypes the fitted values are used for this run only");
    }
    Ok(())
}

/// The temperature of every rule as the server would use it: the variant's own if model.toml
/// has them, else the prototypes file's; and where they came from.
fn serving_temperatures(setup: &Setup, args: &EvalArgs) -> (HashMap<Rule, f64>, String) {
    let variant_temperatures = setup
        .manifest
        .temperatures
        .clone()
        .filter(|_| !args.prototypes_temperatures);
    let from = match &variant_temperatures {
        Some(_) => format!(
            "model.toml [variants.{}.temperatures]",
            args.encoder_variant
        ),
        None => "prototypes".to_string(),
    };
    let temperatures = Rule::ALL
        .iter()
        .map(|&r| {
            let t = variant_temperatures
                .as_ref()
                .map_or_else(|| setup.protos.temperature(r), |t| t[&r]);
            (r, t)
        })
        .collect();
    (temperatures, from)
}

/// The conformal scores of the run, and the validation set they were fitted on.
struct Calibrated {
    conformal: HashMap<Rule, vmf::ConformalScores>,
    validation: Option<Encoded>,
}

/// Conformal scores: fitted now (`--fit-conformal`), or those the prototypes carry while the
/// temperatures they were computed at are still the ones used; then `--write-prototypes`.
fn calibrate(
    setup: &mut Setup,
    args: &EvalArgs,
    temperatures: &HashMap<Rule, f64>,
) -> anyhow::Result<Calibrated> {
    let mut conformal: HashMap<Rule, _> = setup
        .protos
        .conformal
        .iter()
        .filter(|(rule, _)| setup.protos.conformal_temperature(**rule) == Some(temperatures[rule]))
        .map(|(rule, scores)| (*rule, scores.clone()))
        .collect();
    if conformal.len() < setup.protos.conformal.len() && args.fit_conformal.is_none() {
        eprintln!("note: the prototypes' conformal scores were computed at other temperatures than this run's (another encoder variant, or refitted): those rules' sets are not graded");
    }
    let (mut validation, mut section) = (None, None);
    if let Some(val_dir) = &args.fit_conformal {
        let items = dataset::scan(val_dir, setup.protos.classes.labels())?;
        let val = encode(setup, &items, args.batch_size, "conformal calibration")?;
        let (fitted_section, fitted) = decisions::fit(setup, &val, temperatures, val_dir)?;
        conformal = fitted;
        section = Some(fitted_section);
        validation = Some(val);
    }
    if let Some(out) = &args.write_prototypes {
        let version = prototypes::write_calibrated(
            &setup.manifest.prototypes_path,
            out,
            temperatures,
            section,
        )?;
        eprintln!("wrote {} (version {version})", out.display());
    }
    Ok(Calibrated {
        conformal,
        validation,
    })
}

/// The risk-coverage of abstention under the first `--prior` when it is a fixed one (else
/// uniform).
fn risk_coverage(
    setup: &Setup,
    set: &Encoded,
    logits: &RuleLogits,
    temperatures: &HashMap<Rule, f64>,
    args: &EvalArgs,
) -> anyhow::Result<Value> {
    let c = setup.protos.classes.num_classes();
    let (log_q, prior_name) = match setup.priors[0] {
        EvalPrior::Serving(PriorName::Train) => {
            (setup.protos.classes.log_train_prior().to_vec(), "train")
        }
        EvalPrior::Serving(PriorName::Uniform) => (vec![0.0; c], "uniform"),
        _ => {
            eprintln!("note: the risk-coverage table uses the uniform prior (the first --prior is not a fixed one)");
            (vec![0.0; c], "uniform")
        }
    };
    decisions::risk_coverage(
        setup,
        set,
        logits,
        temperatures,
        &log_q,
        prior_name,
        args.risk_coverage.as_deref(),
    )
}

/// Reads the arguments' priors and rules, the model and its prototypes, and loads the encoder.
fn load(args: &EvalArgs) -> anyhow::Result<Setup> {
    let priors = args
        .prior
        .iter()
        .map(|s| EvalPrior::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if priors.is_empty() {
        bail!("--prior is empty");
    }
    let rules: Vec<Rule> = if args.rule.is_empty() {
        Rule::ALL.to_vec()
    } else {
        args.rule.clone()
    };
    let manifest = ModelManifest::load_variant(&args.model_dir, args.encoder_variant)?;
    let protos = Prototypes::load(&manifest.prototypes_path)?;
    // Offline, the encoder runs batch after batch: its threads may spin between them.
    let threads = Threads {
        intra: args.threads,
        inter: 0,
        spin: true,
    };
    let encoder = Encoder::load(&manifest, args.provider, threads)?;
    if let Some(reason) = encoder.fallback_reason() {
        eprintln!("note: running on CPU: {reason}");
    }
    protos.check_fits(&EncoderShape {
        model: manifest.name.clone(),
        feature_dim: encoder.feature_dim(),
        num_classes: encoder.num_classes(),
    })?;
    Ok(Setup {
        manifest,
        protos,
        encoder,
        priors,
        rules,
    })
}

/// Refits each rule's temperature on the validation folder (NLL with q = its label
/// distribution).
fn fit_temperatures(
    setup: &mut Setup,
    val_dir: &Path,
    batch_size: usize,
    temperatures: &mut HashMap<Rule, f64>,
) -> anyhow::Result<()> {
    let items = dataset::scan(val_dir, setup.protos.classes.labels())?;
    let val = encode(setup, &items, batch_size, "validation")?;
    let classes = &setup.protos.classes;
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
        let nll = |t: f64| evaluate(g.view(), t, &log_q, &val.labels, classes.counts()).nll;
        eprintln!(
            "  {rule:<9} T {:>12.6} -> {t:>12.6}   validation NLL {:.4} -> {:.4}",
            temperatures[&rule],
            nll(temperatures[&rule]),
            nll(t)
        );
        temperatures.insert(rule, t);
    }
    if setup.manifest.variant != EncoderVariant::Fp32 {
        // A variant's temperatures live in model.toml, not in the prototypes file.
        eprintln!(
            "for model.toml:\n[variants.{}]\ntemperatures = {{ {} }}",
            setup.manifest.variant,
            Rule::ALL
                .iter()
                .map(|r| format!("{r} = {}", temperatures[r]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Scans the test folder, applies `--max-per-class` and `--shift`, and encodes what is left.
fn encode_test_set(
    setup: &mut Setup,
    data: &Path,
    args: &EvalArgs,
) -> anyhow::Result<(Encoded, Value)> {
    let classes = &setup.protos.classes;
    let c = classes.num_classes();
    let mut items = dataset::scan(data, classes.labels())?;
    if let Some(max) = args.max_per_class {
        items = dataset::cap_per_class(items, max, c);
    }
    let mut shift_info = Value::Null;
    if let Some(spec) = &args.shift {
        let weights = dataset::shift_weights(spec, &setup.protos)?;
        let available = label_counts(&items.iter().map(|i| i.1).collect::<Vec<_>>(), c);
        let keep = dataset::shifted_counts(&available, &weights);
        items = dataset::subsample(items, &keep, args.seed);
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
    let set = encode(setup, &items, args.batch_size, "test")?;
    println!(
        "model {} (prototypes {}, encoder {}), {} images from {}, encoder on {}",
        setup.manifest.name,
        setup.protos.version,
        setup.manifest.variant,
        set.labels.len(),
        data.display(),
        setup.encoder.provider()
    );
    Ok((set, shift_info))
}

/// The balanced logits g of each rule on one encoded set, computed once for every report.
type RuleLogits = HashMap<Rule, Array2<f64>>;

fn rule_logits(setup: &Setup, set: &Encoded, rules: &[Rule]) -> anyhow::Result<RuleLogits> {
    let classes = &setup.protos.classes;
    rules
        .iter()
        .map(|&rule| {
            classes
                .balanced_logits(rule, set.features.view(), Some(set.logits.view()))
                .map(|g| (rule, g))
                .map_err(Into::into)
        })
        .collect()
}

/// Prepares (the server's decode + preprocess) and encodes the images in batches, printing
/// progress to stderr. Undecodable images are skipped (and listed in the report).
fn encode(
    setup: &mut Setup,
    items: &[(PathBuf, usize)],
    batch_size: usize,
    what: &str,
) -> anyhow::Result<Encoded> {
    let manifest = &setup.manifest;
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
        for (path, y) in chunk {
            let prepared = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    preprocess::prepare(&bytes, &limits, manifest).map_err(|e| e.to_string())
                });
            match prepared {
                Ok(tensor) => {
                    pixels.extend(tensor);
                    labels.push(*y);
                }
                Err(e) => {
                    eprintln!("\nskipping {}: {e}", path.display());
                    skipped.push(path.display().to_string());
                }
            }
        }
        done += chunk.len();
        let n = pixels.len() / (3 * h * w);
        if n > 0 {
            let batch =
                Array4::from_shape_vec((n, 3, h, w), pixels).expect("3*h*w values per image");
            let out = Encode::run(&mut setup.encoder, batch.view())?;
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
