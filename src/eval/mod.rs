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

mod dataset;
mod decisions;
mod plot;
mod report;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::{Array2, Array4, ArrayView2, Axis};
use serde_json::{json, Value};

use crate::encoder::{Encode, Encoder, ProviderChoice, Threads};
use crate::engine::PriorName;
use crate::manifest::{EncoderVariant, ModelManifest};
use crate::preprocess::{self, DecodeLimits};
use crate::prototypes::{self, EncoderShape, Prototypes};
use crate::vmf::{
    self, em_label_shift, evaluate, fit_temperature, posterior, reliability_bins, Rule,
};
use dataset::label_counts;
use report::{per_label, Row};

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
    /// Encoder graph: fp32 | int8 (the server's encoder_variant setting)
    #[arg(long, env = "PROCO_ENCODER_VARIANT", default_value = "fp32", value_parser = parse_variant)]
    pub encoder_variant: EncoderVariant,
    /// Use the prototypes file's temperatures even when model.toml gives the variant its own
    /// (to measure how the fp32 temperatures hold on the variant's features)
    #[arg(long)]
    pub prototypes_temperatures: bool,
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
    /// Compute split-conformal scores (1 - p_y on the balanced probabilities) of every rule on
    /// this labelled validation folder (never the test set), at the temperatures in use
    #[arg(long, value_name = "VAL_DIR")]
    pub fit_conformal: Option<PathBuf>,
    /// With --fit-temperatures or --fit-conformal: write the prototypes with what was fitted and a new version here
    #[arg(long, value_name = "OUT.json")]
    pub write_prototypes: Option<PathBuf>,
    /// Coverage levels at which prediction sets are graded
    #[arg(long, value_delimiter = ',', default_value = "0.8,0.9,0.95")]
    pub coverage: Vec<f64>,
    /// Draw the risk-coverage curves (accuracy on the answered images against the share answered) here
    #[arg(long, value_name = "OUT.png")]
    pub risk_coverage: Option<PathBuf>,
    /// Write the balanced probabilities and labels of the calibration (--fit-conformal) and test
    /// images per rule here, for an independent check of the prediction sets
    #[arg(long, value_name = "OUT.json", requires = "fit_conformal")]
    pub export_scores: Option<PathBuf>,
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

fn parse_variant(s: &str) -> Result<EncoderVariant, String> {
    s.parse()
}

/// A prior `eval` can score under: one the server has, or the evaluated set's own label
/// distribution (the best any prior could do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EvalPrior {
    Serving(PriorName),
    Oracle,
}

impl EvalPrior {
    fn parse(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "oracle" => Ok(EvalPrior::Oracle),
            other => other.parse().map(EvalPrior::Serving).map_err(|_| {
                anyhow::anyhow!(
                    "unknown prior {other:?}; valid priors are uniform, train, adaptive, oracle"
                )
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            EvalPrior::Serving(p) => p.as_str(),
            EvalPrior::Oracle => "oracle",
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
    let mut setup = load(&args)?;
    // As the server: the variant's own temperatures if model.toml has them, else the file's.
    let variant_temperatures = setup
        .manifest
        .temperatures
        .clone()
        .filter(|_| !args.prototypes_temperatures);
    let temperatures_from = match &variant_temperatures {
        Some(_) => format!(
            "model.toml [variants.{}.temperatures]",
            args.encoder_variant
        ),
        None => "prototypes".to_string(),
    };
    let mut temperatures: HashMap<Rule, f64> = Rule::ALL
        .iter()
        .map(|&r| {
            let t = variant_temperatures
                .as_ref()
                .map_or_else(|| setup.protos.temperature(r), |t| t[&r]);
            (r, t)
        })
        .collect();
    if let Some(val_dir) = &args.fit_temperatures {
        fit_temperatures(&mut setup, val_dir, args.batch_size, &mut temperatures)?;
    }
    // Conformal scores: fitted now, or those the prototypes carry (only while the
    // temperatures they were computed at are still the ones used).
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
    let mut calibration = None;
    let mut section = None;
    if let Some(val_dir) = &args.fit_conformal {
        let items = dataset::scan(val_dir, setup.protos.classes.labels())?;
        let val = encode(&mut setup, &items, args.batch_size, "conformal calibration")?;
        let (fitted_section, fitted) = decisions::fit(&setup, &val, &temperatures, val_dir)?;
        conformal = fitted;
        section = Some(fitted_section);
        calibration = Some(val);
    }
    if let Some(out) = &args.write_prototypes {
        let version = prototypes::write_calibrated(
            &setup.manifest.prototypes_path,
            out,
            &temperatures,
            section,
        )?;
        eprintln!("wrote {} (version {version})", out.display());
    }
    let Some(data) = &args.data else {
        return Ok(());
    };
    let (set, shift_info) = encode_test_set(&mut setup, data, &args)?;
    let logits = rule_logits(&setup, &set, &setup.rules)?;
    let graded = grade(&setup, &set, &logits, &temperatures, args.adaptive_floor)?;
    if let Some(path) = &args.reliability {
        write_reliability(path, &setup, graded.panels)?;
    }
    let sets = if conformal.is_empty() {
        eprintln!("note: no conformal scores (run with --fit-conformal VAL_DIR): prediction sets are not graded");
        Vec::new()
    } else {
        decisions::grade_sets(
            &setup,
            &set,
            &logits,
            &temperatures,
            &conformal,
            &args.coverage,
        )?
    };
    let first_prior = setup.priors[0];
    let c = setup.protos.classes.num_classes();
    let log_q: Vec<f64> = match first_prior {
        EvalPrior::Serving(PriorName::Train) => setup.protos.classes.log_train_prior().to_vec(),
        EvalPrior::Serving(PriorName::Uniform) => vec![0.0; c],
        _ => {
            eprintln!("note: the risk-coverage table uses the uniform prior (the first --prior is not a fixed one)");
            vec![0.0; c]
        }
    };
    let prior_name = match first_prior {
        EvalPrior::Serving(PriorName::Train) => "train",
        _ => "uniform",
    };
    let risk = decisions::risk_coverage(
        &setup,
        &set,
        &logits,
        &temperatures,
        &log_q,
        prior_name,
        args.risk_coverage.as_deref(),
    )?;
    if let (Some(path), Some(val)) = (&args.export_scores, &calibration) {
        decisions::export(&setup, val, &set, &logits, &temperatures, path)?;
    }
    if let Some(path) = &args.report {
        let classes = &setup.protos.classes;
        let counts = label_counts(&set.labels, classes.num_classes());
        let report = json!({
            "model": setup.manifest.name, "prototypes_version": setup.protos.version, "data": data.display().to_string(),
            "provider": setup.encoder.provider(), "encoder_variant": args.encoder_variant,
            "temperatures_from": if args.fit_temperatures.is_some() { "refitted" } else { temperatures_from.as_str() },
            "images": set.labels.len(), "skipped": set.skipped,
            "per_class": per_label(classes.labels(), &counts), "shift": shift_info,
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
    let threads = Threads {
        intra: args.threads,
        inter: 0,
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

/// The graded set: the report's rows and reliability bins, and the diagram's panels.
struct Graded {
    rows: Vec<Value>,
    reliability: serde_json::Map<String, Value>,
    /// Rule-major: for each rule, the uncalibrated then the fitted panel (first prior).
    panels: Vec<Bins>,
}

/// Every rule, uncalibrated and fitted, under every prior: prints the table as it goes.
fn grade(
    setup: &Setup,
    set: &Encoded,
    logits: &RuleLogits,
    temperatures: &HashMap<Rule, f64>,
    adaptive_floor: f64,
) -> anyhow::Result<Graded> {
    let classes = &setup.protos.classes;
    let labels = &set.labels;
    let c = classes.num_classes();
    let counts = label_counts(labels, c);
    let oracle: Vec<f64> = counts
        .iter()
        .map(|&k| (k as f64 / labels.len() as f64).max(adaptive_floor))
        .collect();
    report::print_header();
    let mut graded = Graded {
        rows: Vec::new(),
        reliability: serde_json::Map::new(),
        panels: Vec::new(),
    };
    for &rule in &setup.rules {
        let g = &logits[&rule];
        for (calibrated, t) in [(false, 1.0), (true, temperatures[&rule])] {
            for (pi, &prior) in setup.priors.iter().enumerate() {
                let (q, em_iterations) = match prior {
                    EvalPrior::Serving(PriorName::Uniform) => (vec![1.0 / c as f64; c], None),
                    EvalPrior::Serving(PriorName::Train) => (classes.train_prior(), None),
                    EvalPrior::Oracle => (oracle.clone(), None),
                    EvalPrior::Serving(PriorName::Adaptive) => {
                        let (q, it) =
                            adaptive_prior(g.view(), t, &classes.train_prior(), adaptive_floor);
                        (q, Some(it))
                    }
                };
                let log_q: Vec<f64> = match prior {
                    EvalPrior::Serving(PriorName::Train) => classes.log_train_prior().to_vec(),
                    _ => q.iter().map(|v| v.ln()).collect(),
                };
                let row = Row {
                    rule,
                    calibrated,
                    temperature: t,
                    prior: prior.name(),
                    metrics: evaluate(g.view(), t, &log_q, labels, classes.counts()),
                    prior_vector: (prior != EvalPrior::Serving(PriorName::Uniform)).then_some(q),
                    em_iterations,
                };
                report::print_row(&row);
                graded.rows.push(row.to_json());
                if pi == 0 {
                    let probs = posterior(g.view(), t, &log_q);
                    let bins = reliability_bins(probs.view(), labels, BINS);
                    graded.reliability.insert(
                        format!("{rule}/{}/{}", row.calibration(), prior.name()),
                        json!(bins
                            .iter()
                            .map(|&(conf, acc, n)| json!([conf, acc, n]))
                            .collect::<Vec<_>>()),
                    );
                    graded.panels.push(bins);
                }
            }
        }
    }
    Ok(graded)
}

fn write_reliability(path: &Path, setup: &Setup, panels: Vec<Bins>) -> anyhow::Result<()> {
    // Columns: rules; rows: uncalibrated, fitted (the panels are rule-major).
    let mut grid = vec![Vec::new(); 2];
    for (i, bins) in panels.into_iter().enumerate() {
        grid[i % 2].push(bins);
    }
    plot::draw_reliability(&grid)
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {} (columns: {}; top row T = 1, bottom row fitted T; prior {})",
        path.display(),
        setup
            .rules
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        setup.priors[0].name()
    );
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
