//! The options of `proco-serve eval`.

use std::path::PathBuf;

use crate::encoder::ProviderChoice;
use crate::engine::PriorName;
use crate::manifest::EncoderVariant;
use crate::vmf::Rule;

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
pub(super) enum EvalPrior {
    Serving(PriorName),
    Oracle,
}

impl EvalPrior {
    pub(super) fn parse(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "oracle" => Ok(EvalPrior::Oracle),
            other => other.parse().map(EvalPrior::Serving).map_err(|_| {
                anyhow::anyhow!(
                    "unknown prior {other:?}; valid priors are uniform, train, adaptive, oracle"
                )
            }),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            EvalPrior::Serving(p) => p.as_str(),
            EvalPrior::Oracle => "oracle",
        }
    }
}
