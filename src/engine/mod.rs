//! Encoder outputs -> calibrated, prior-adjusted class probabilities.
//!
//! This is the thin layer between the batcher and the pure vMF math (`crate::vmf`): it
//! picks the rule and temperature per request, builds ln q for the requested prior
//! (uniform, training, adaptive or explicit weights), computes the posterior
//! softmax(g / T + ln q) and the top-k, the conformal prediction set (from the balanced
//! posterior, so that its guarantee does not depend on the prior) and abstention, and feeds the adaptive prior's EM (on its own thread,
//! [`adaptive`]). The prior names live in [`prior`].
//!
//! One batch is always scored against one prototypes snapshot, handed in by the caller.
//!
//! Temperatures come from the prototypes snapshot, unless the served encoder variant has its
//! own (model.toml's `[variants.NAME.temperatures]`, fitted on that variant's features): those
//! override the file's for every snapshot, reloads included.

pub mod adaptive;
pub mod prior;

use std::collections::HashMap;

use ndarray::{Array2, ArrayView1, Axis};
use serde::Serialize;

use crate::encoder::EncoderOutput;
use crate::prototypes::Prototypes;
use crate::vmf::{self, AdaptivePriorConfig, ModelError, Rule, SetKind};
use adaptive::AdaptiveTracker;
pub use prior::{Prior, PriorName};

/// What one request asks of the engine.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    pub rule: Rule,
    /// The rule to answer with instead when `rule` cannot answer with the prototypes the batch
    /// is scored with: set when `rule` is the server's default rather than the client's choice,
    /// so that a class learned while the request waited does not fail it.
    pub rule_fallback: Option<Rule>,
    pub prior: Prior,
    /// Already clamped to 1..=C.
    pub top_k: usize,
    /// Return the full posterior vector (the adapters show [`Scored::probabilities`]).
    pub posterior: bool,
    /// Return the rule's balanced logits g (before temperature and prior).
    pub logits: bool,
    /// Return the encoder's unit feature z.
    pub features: bool,
    /// Add a conformal prediction set at this level and of this kind.
    pub set: Option<SetRequest>,
    /// Mark the answer abstained when its top probability is below this.
    pub abstain_below: Option<f64>,
}

/// A prediction set asked for: its coverage level (in (0, 1)) and kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SetRequest {
    pub coverage: f64,
    pub kind: SetKind,
}

/// The `abstain_below` request parameter: a probability in [0, 1].
pub fn abstain_threshold(t: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "abstain_below {t} is not a probability between 0 and 1"
        ))
    }
}

/// Why a prediction set cannot be served.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SetError {
    /// A malformed or unservable level or kind (400 invalid_coverage).
    #[error("{0}")]
    Invalid(String),
    /// The prototypes carry no conformal scores for the rule (400 conformal_unavailable).
    #[error("{0}")]
    Unavailable(String),
}

impl SetRequest {
    /// The set the `coverage` and `set` request parameters ask for, if any: `set` alone is
    /// refused, since it names the kind of a set without its level.
    pub fn from_parameters(
        coverage: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Option<Self>, SetError> {
        match (coverage, kind) {
            (Some(level), kind) => Self::parse(level, kind).map(Some),
            (None, Some(_)) => Err(SetError::Invalid(
                "set names the kind of a prediction set; give its level too, e.g. coverage=0.9"
                    .into(),
            )),
            (None, None) => Ok(None),
        }
    }

    /// From the `coverage` and `set` request parameters (kind defaults to class-conditional,
    /// the one whose guarantee holds for every class and under label shift).
    pub fn parse(coverage: &str, kind: Option<&str>) -> Result<Self, SetError> {
        let coverage: f64 = coverage.trim().parse().map_err(|_| {
            SetError::Invalid(format!(
                "coverage {coverage:?} is not a number; give a level such as 0.9"
            ))
        })?;
        let kind = match kind {
            Some(k) => k.parse().map_err(SetError::Invalid)?,
            None => SetKind::Class,
        };
        Ok(SetRequest { coverage, kind })
    }

    /// Whether `protos` can serve this set for `rule` at the temperature the server uses for
    /// it: they have its scores, computed at that temperature, and enough of them for the level.
    pub fn check(&self, protos: &Prototypes, rule: Rule, temperature: f64) -> Result<(), SetError> {
        let scores = usable_scores(protos, rule, temperature).map_err(|why| {
            SetError::Unavailable(format!(
                "rule {rule} cannot give prediction sets with prototypes version {}: {why}; fit them with proco-serve eval --fit-conformal VAL_DIR --write-prototypes OUT",
                protos.version
            ))
        })?;
        scores
            .thresholds(self.kind, self.coverage, protos.classes.labels())
            .map(|_| ())
            .map_err(|e| SetError::Invalid(e.to_string()))
    }
}

/// The conformal scores of a rule, if they describe the probabilities served: computed at the
/// served temperature (an encoder variant with temperatures of its own, such as int8, has other
/// probabilities than the fp32 encoder the scores were fitted with).
fn usable_scores(
    protos: &Prototypes,
    rule: Rule,
    temperature: f64,
) -> Result<&vmf::ConformalScores, String> {
    let Some(scores) = protos.conformal.get(&rule) else {
        return Err(protos.conformal_stale.get(&rule).cloned().unwrap_or_else(|| {
            "the prototypes have no conformal scores for it (classes learned from examples drop them)".into()
        }));
    };
    match protos.conformal_temperature(rule) {
        Some(t) if (t - temperature).abs() <= 1e-12 * temperature => Ok(scores),
        Some(t) => Err(format!(
            "its conformal scores were computed at temperature {t}, but this server's encoder variant serves it at {temperature}"
        )),
        None => Err("the prototypes have no conformal scores for it".into()),
    }
}

/// The conformal prediction set of one image: the labels, most probable first, with their
/// probabilities under the request's prior.
#[derive(Clone, Debug, Serialize)]
pub struct PredictionSet {
    pub coverage: f64,
    pub kind: SetKind,
    pub labels: Vec<Prediction>,
}

/// One class in a top-k list.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub probability: f64,
}

/// The engine's answer for one image.
#[derive(Clone, Debug)]
pub struct Scored {
    pub rule: Rule,
    pub temperature: f64,
    pub prior_name: &'static str,
    /// The prior vector used, for adaptive and explicit priors.
    pub prior_used: Option<Vec<f64>>,
    pub top: Vec<Prediction>,
    /// The full posterior under the request's prior: shown when the request asks for it,
    /// kept for feedback always.
    pub probabilities: Vec<f64>,
    /// The conformal set, when asked for; an error when the prototypes that scored the batch
    /// cannot serve it (they changed after the request was checked).
    pub prediction_set: Option<Result<PredictionSet, String>>,
    /// Whether the top probability was below the request's threshold, when one was given.
    pub abstained: Option<bool>,
    /// The rule's balanced logits, when asked for.
    pub logits: Option<Vec<f64>>,
    /// Index of the most probable class.
    pub top1: usize,
}

/// The adaptive prior beside the training prior, and how far apart they are.
#[derive(Clone, Debug)]
pub struct PriorDrift {
    pub train: Vec<f64>,
    pub adaptive: Vec<f64>,
    /// Images the adaptive estimate is made of.
    pub samples: usize,
    pub total_variation: f64,
    /// KL(adaptive || train).
    pub kl: f64,
}

/// Scores batches and keeps the adaptive prior.
pub struct Engine {
    /// The rule whose calibrated logits feed the adaptive prior.
    adaptive_rule: Rule,
    adaptive: AdaptiveTracker,
    /// The encoder variant's own temperatures (every rule), replacing the prototypes'.
    temperatures: Option<HashMap<Rule, f64>>,
}

impl Engine {
    /// `drift_warn`: the total-variation distance between the adaptive and the training
    /// prior above which the log warns of drift.
    pub fn new(adaptive_config: AdaptivePriorConfig, adaptive_rule: Rule, drift_warn: f64) -> Self {
        Engine {
            adaptive_rule,
            adaptive: AdaptiveTracker::new(adaptive_config, drift_warn),
            temperatures: None,
        }
    }

    /// Uses these temperatures instead of the prototypes file's (an encoder variant's own).
    pub fn with_temperatures(mut self, temperatures: Option<HashMap<Rule, f64>>) -> Self {
        self.temperatures = temperatures;
        self
    }

    /// The temperature a rule is served with: the variant's, else the prototypes'.
    pub fn temperature(&self, protos: &Prototypes, rule: Rule) -> f64 {
        match self.temperatures.as_ref().and_then(|t| t.get(&rule)) {
            Some(&t) => t,
            None => protos.temperature(rule),
        }
    }

    /// The current adaptive estimate for these prototypes (the training prior until enough
    /// images were seen) and the number of images in its window.
    /// How far the adaptive prior has moved from the training prior, now.
    pub fn prior_drift(&self, protos: &Prototypes) -> PriorDrift {
        let (adaptive, samples) = self.adaptive_estimate(protos);
        let train = protos.classes.train_prior();
        PriorDrift {
            total_variation: vmf::metrics::total_variation(&adaptive, &train),
            kl: vmf::metrics::kl_divergence(&adaptive, &train),
            train,
            adaptive,
            samples,
        }
    }

    pub fn adaptive_estimate(&self, protos: &Prototypes) -> (Vec<f64>, usize) {
        self.adaptive.estimate(protos)
    }

    /// Scores every row of `out`; `options[i]` applies to row i. Uses the adaptive prior's last
    /// published estimate, then hands this batch's rows to its worker.
    pub fn score(
        &self,
        protos: &Prototypes,
        out: &EncoderOutput,
        options: &[&RequestOptions],
    ) -> Result<Vec<Scored>, ModelError> {
        assert_eq!(
            options.len(),
            out.feature.nrows(),
            "one options entry per row"
        );
        // The linear head's columns in the prototypes' class order. The head may not know
        // every class: then the rules that read it cannot answer (the batcher has refused
        // their requests already) and the adaptive prior follows the proco rule meanwhile.
        let columns = protos.head_columns();
        let selected: Option<Array2<f32>> = match &columns {
            Some(cols) if !cols.iter().copied().eq(0..out.logits.ncols()) => {
                Some(out.logits.select(Axis(1), cols))
            }
            _ => None,
        };
        let linear = columns
            .is_some()
            .then(|| selected.as_ref().map_or(out.logits.view(), |h| h.view()));
        let adaptive_rule = if linear.is_some() || !self.adaptive_rule.needs_linear_head() {
            self.adaptive_rule
        } else {
            Rule::Proco
        };
        // Balanced logits once per distinct rule (each is one C x p product for the batch).
        let mut rules: Vec<Rule> = options.iter().map(|o| o.rule).collect();
        rules.push(adaptive_rule);
        rules.sort_by_key(|r| r.as_str());
        rules.dedup();
        let logits: Vec<(Rule, Array2<f64>)> = rules
            .into_iter()
            .map(|rule| {
                protos
                    .classes
                    .balanced_logits(rule, out.feature.view(), linear)
                    .map(|g| (rule, g))
            })
            .collect::<Result<_, _>>()?;
        let g_of = |rule: Rule| &logits.iter().find(|(r, _)| *r == rule).expect("computed").1;

        let priors = LogPriors::new(protos, self.adaptive.estimate(protos).0);
        let results = options
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let t = self.temperature(protos, o.rule);
                score_row(protos, g_of(o.rule).row(i), o, t, &priors)
            })
            .collect();

        // Feed the adaptive prior with this batch's calibrated rows of its rule.
        let t = self.temperature(protos, adaptive_rule);
        let g = g_of(adaptive_rule);
        self.adaptive.observe(
            protos,
            g.rows()
                .into_iter()
                .map(|row| row.iter().map(|v| v / t).collect()),
        );
        Ok(results)
    }
}

/// ln q of the named priors for one batch, computed once.
struct LogPriors<'a> {
    uniform: Vec<f64>,
    train: &'a [f64],
    adaptive_q: Vec<f64>,
    adaptive: Vec<f64>,
}

impl<'a> LogPriors<'a> {
    fn new(protos: &'a Prototypes, adaptive_q: Vec<f64>) -> Self {
        LogPriors {
            uniform: vec![0.0; protos.classes.num_classes()],
            train: protos.classes.log_train_prior(),
            adaptive: adaptive_q.iter().map(|q| q.ln()).collect(),
            adaptive_q,
        }
    }
}

/// The posterior and top-k of one image under its request's rule, temperature and prior.
fn score_row(
    protos: &Prototypes,
    g: ArrayView1<f64>,
    o: &RequestOptions,
    temperature: f64,
    priors: &LogPriors,
) -> Scored {
    let explicit_log: Vec<f64>;
    let (log_q, prior_used): (&[f64], Option<Vec<f64>>) = match &o.prior {
        Prior::Named(PriorName::Uniform) => (&priors.uniform, None),
        Prior::Named(PriorName::Train) => (priors.train, None),
        Prior::Named(PriorName::Adaptive) => (&priors.adaptive, Some(priors.adaptive_q.clone())),
        Prior::Explicit(w) => {
            explicit_log = w.iter().map(|q| q.ln()).collect();
            (&explicit_log, Some(w.clone()))
        }
    };
    let p = vmf::posterior(g.insert_axis(Axis(0)), temperature, log_q);
    let probs: Vec<f64> = p.row(0).to_vec();
    let top = top_k(&probs, o.top_k, protos.classes.labels());
    let prediction_set = o.set.map(|request| {
        // The set is decided on the balanced posterior (what the scores were calibrated on);
        // it equals `probs` under the uniform prior.
        let balanced = match &o.prior {
            Prior::Named(PriorName::Uniform) => probs.clone(),
            _ => vmf::posterior(g.insert_axis(Axis(0)), temperature, &priors.uniform)
                .row(0)
                .to_vec(),
        };
        conformal_set(protos, o.rule, temperature, request, &balanced, &probs)
    });
    Scored {
        rule: o.rule,
        temperature,
        prior_name: o.prior.name(),
        prior_used,
        top1: top[0].index,
        abstained: o.abstain_below.map(|t| top[0].probability < t),
        top,
        probabilities: probs,
        prediction_set,
        logits: o.logits.then(|| g.to_vec()),
    }
}

/// The conformal set of one image from its balanced posterior; the labels carry the
/// probabilities the answer shows.
fn conformal_set(
    protos: &Prototypes,
    rule: Rule,
    temperature: f64,
    request: SetRequest,
    balanced: &[f64],
    shown: &[f64],
) -> Result<PredictionSet, String> {
    let labels = protos.classes.labels();
    let scores = usable_scores(protos, rule, temperature)
        .map_err(|why| format!("prototypes version {}: {why}", protos.version))?;
    let thresholds = scores
        .thresholds(request.kind, request.coverage, labels)
        .map_err(|e| e.to_string())?;
    let mut members: Vec<Prediction> = vmf::conformal::prediction_set(balanced, &thresholds)
        .into_iter()
        .map(|i| Prediction {
            label: labels[i].clone(),
            index: i,
            probability: shown[i],
        })
        .collect();
    // Listed as the answer's predictions are: most probable under the request's prior first.
    members.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.index.cmp(&b.index))
    });
    Ok(PredictionSet {
        coverage: request.coverage,
        kind: request.kind,
        labels: members,
    })
}

/// The k most probable classes, most probable first (ties: lower index first).
pub fn top_k(probs: &[f64], k: usize, labels: &[String]) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k.clamp(1, probs.len().max(1)))
        .map(|i| Prediction {
            label: labels[i].clone(),
            index: i,
            probability: probs[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_clamps() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let t = top_k(&[0.2, 0.5, 0.3], 10, &labels);
        assert_eq!(t.iter().map(|p| p.index).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(top_k(&[0.2, 0.5, 0.3], 1, &labels)[0].label, "b");
    }
}
