//! Encoder outputs -> calibrated, prior-adjusted class probabilities.
//!
//! This is the thin layer between the batcher and the pure vMF math (`crate::vmf`): it
//! picks the rule and temperature per request, builds ln q for the requested prior
//! (uniform, training, adaptive or explicit weights), computes the posterior
//! softmax(g / T + ln q) and the top-k, and feeds the adaptive prior's EM (on its own thread).
//!
//! One batch is always scored against one prototypes snapshot, handed in by the caller.

use std::sync::{mpsc, Arc, Mutex};

use ndarray::{Array2, Axis};
use serde::Serialize;

use crate::encoder::EncoderOutput;
use crate::prototypes::Prototypes;
use crate::vmf::{self, AdaptivePrior, AdaptivePriorConfig, ModelError, Rule};

/// The class prior q a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum PriorSpec {
    /// Balanced: every class equally likely.
    Uniform,
    /// The training distribution (counts / total).
    Train,
    /// The current EM estimate of the deployment distribution.
    Adaptive,
    /// Explicit weights, already checked (C positive numbers) and normalised.
    Explicit(Vec<f64>),
}

impl PriorSpec {
    pub fn name(&self) -> &'static str {
        match self {
            PriorSpec::Uniform => "uniform",
            PriorSpec::Train => "train",
            PriorSpec::Adaptive => "adaptive",
            PriorSpec::Explicit(_) => "explicit",
        }
    }

    /// Parses `uniform`, `train`, `adaptive`, or `C` comma-separated positive weights
    /// (normalised here).
    pub fn parse(s: &str, num_classes: usize) -> Result<PriorSpec, String> {
        match s {
            "uniform" => return Ok(PriorSpec::Uniform),
            "train" => return Ok(PriorSpec::Train),
            "adaptive" => return Ok(PriorSpec::Adaptive),
            _ => {}
        }
        if !s.contains(',') && s.parse::<f64>().is_err() {
            return Err(format!(
                "unknown prior {s:?}: expected uniform, train, adaptive, or {num_classes} comma-separated positive weights"
            ));
        }
        let weights: Vec<f64> = s
            .split(',')
            .map(|w| w.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("prior weights {s:?} are not all numbers"))?;
        if weights.len() != num_classes {
            return Err(format!(
                "prior has {} weights, the model has {num_classes} classes",
                weights.len()
            ));
        }
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(format!("prior weight {w} is not a finite positive number"));
        }
        // Scale by the largest first: the plain sum of weights near f64::MAX overflows.
        let largest = weights.iter().copied().fold(0.0, f64::max);
        let total: f64 = weights.iter().map(|w| w / largest).sum();
        Ok(PriorSpec::Explicit(
            weights.iter().map(|w| w / largest / total).collect(),
        ))
    }
}

/// What one request asks of the engine.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    pub rule: Rule,
    pub prior: PriorSpec,
    /// Already clamped to 1..=C.
    pub top_k: usize,
    /// Return the full posterior vector.
    pub posterior: bool,
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
    pub posterior: Option<Vec<f64>>,
    /// Index of the most probable class.
    pub top1: usize,
}

/// The adaptive prior of one prototypes version, kept by a thread of its own.
///
/// Why a thread: one EM refresh costs window x C per iteration, which at iNaturalist scale
/// (2048 x 8142) is tens of milliseconds per iteration and can run to seconds; done inline it
/// would stall the encoder's thread. Rows are handed over without waiting; if the worker is a
/// whole window behind, new rows are dropped (the estimate follows recent traffic, it is not a
/// ledger). Requests read the last published estimate, which lags by less than one chunk.
struct AdaptiveState {
    /// Prototypes version the estimate belongs to; a swap starts a fresh worker (the old one
    /// ends when its channel closes).
    version: String,
    /// Rows not yet handed over: they go in chunks, so the worker is woken once per chunk
    /// rather than once per image.
    pending: Vec<Vec<f64>>,
    chunk: usize,
    rows: mpsc::SyncSender<Vec<Vec<f64>>>,
    /// (estimate, rows in the window), as of the worker's last update.
    published: Arc<Mutex<(Vec<f64>, usize)>>,
}

impl AdaptiveState {
    fn start(version: String, config: AdaptivePriorConfig, train_prior: Vec<f64>) -> Self {
        let chunk = config.refresh_every.clamp(1, 32);
        let (rows, inbox) =
            mpsc::sync_channel::<Vec<Vec<f64>>>(config.window.div_ceil(chunk).max(1));
        let published = Arc::new(Mutex::new((train_prior.clone(), 0)));
        let out = published.clone();
        let worker = std::thread::Builder::new()
            .name("adaptive-prior".into())
            .spawn(move || {
                let mut prior = AdaptivePrior::new(config, train_prior);
                while let Ok(chunk) = inbox.recv() {
                    chunk.iter().for_each(|row| prior.observe(row));
                    while let Ok(chunk) = inbox.try_recv() {
                        chunk.iter().for_each(|row| prior.observe(row));
                    }
                    *out.lock().unwrap_or_else(|e| e.into_inner()) =
                        (prior.estimate().to_vec(), prior.samples());
                }
            });
        if let Err(e) = worker {
            tracing::error!(
                "cannot start the adaptive-prior thread ({e}): prior=adaptive stays at the training prior"
            );
        }
        AdaptiveState {
            version,
            pending: Vec::with_capacity(chunk),
            chunk,
            rows,
            published,
        }
    }

    /// Queues one calibrated row; hands a full chunk to the worker without waiting (if the
    /// worker is a whole window behind, the chunk is dropped).
    fn observe(&mut self, row: Vec<f64>) {
        self.pending.push(row);
        if self.pending.len() >= self.chunk {
            let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk));
            let _ = self.rows.try_send(chunk);
        }
    }

    fn estimate(&self) -> (Vec<f64>, usize) {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Scores batches and keeps the adaptive prior.
pub struct Engine {
    adaptive_config: AdaptivePriorConfig,
    /// The rule whose calibrated logits feed the adaptive prior.
    adaptive_rule: Rule,
    adaptive: Mutex<Option<AdaptiveState>>,
}

impl Engine {
    pub fn new(adaptive_config: AdaptivePriorConfig, adaptive_rule: Rule) -> Self {
        Engine {
            adaptive_config,
            adaptive_rule,
            adaptive: Mutex::new(None),
        }
    }

    /// The current adaptive estimate for these prototypes (the training prior until enough
    /// images were seen) and the number of images in its window.
    pub fn adaptive_estimate(&self, protos: &Prototypes) -> (Vec<f64>, usize) {
        let mut guard = self.adaptive.lock().unwrap_or_else(|e| e.into_inner());
        self.state_for(&mut guard, protos).estimate()
    }

    fn state_for<'a>(
        &self,
        guard: &'a mut Option<AdaptiveState>,
        protos: &Prototypes,
    ) -> &'a mut AdaptiveState {
        if guard.as_ref().is_none_or(|s| s.version != protos.version) {
            *guard = Some(AdaptiveState::start(
                protos.version.clone(),
                self.adaptive_config.clone(),
                protos.classes.train_prior(),
            ));
        }
        guard.as_mut().expect("just set")
    }

    /// Scores every row of `out`; `options[i]` applies to row i. Uses the adaptive prior's last
    /// published estimate, then hands this batch's rows to its worker.
    pub fn score(
        &self,
        protos: &Prototypes,
        out: &EncoderOutput,
        options: &[&RequestOptions],
    ) -> Result<Vec<Scored>, ModelError> {
        let n = out.feature.nrows();
        assert_eq!(options.len(), n, "one options entry per row");
        let c = protos.classes.num_classes();

        // Balanced logits once per distinct rule (each is one C x p product for the batch).
        let mut logits: Vec<(Rule, Array2<f64>)> = Vec::new();
        let need = |rule: Rule, logits: &mut Vec<(Rule, Array2<f64>)>| -> Result<(), ModelError> {
            if !logits.iter().any(|(r, _)| *r == rule) {
                let g = protos.classes.balanced_logits(
                    rule,
                    out.feature.view(),
                    Some(out.logits.view()),
                )?;
                logits.push((rule, g));
            }
            Ok(())
        };
        for o in options {
            need(o.rule, &mut logits)?;
        }
        need(self.adaptive_rule, &mut logits)?;
        let g_of = |rule: Rule| &logits.iter().find(|(r, _)| *r == rule).expect("computed").1;

        let mut guard = self.adaptive.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.state_for(&mut guard, protos);
        let (adaptive_q, _) = state.estimate();

        let uniform_log = vec![0.0; c];
        let adaptive_log: Vec<f64> = adaptive_q.iter().map(|q| q.ln()).collect();
        let mut results = Vec::with_capacity(n);
        for (i, o) in options.iter().enumerate() {
            let temperature = protos.temperature(o.rule);
            let explicit_log: Vec<f64>;
            let (log_q, prior_used): (&[f64], Option<Vec<f64>>) = match &o.prior {
                PriorSpec::Uniform => (&uniform_log, None),
                PriorSpec::Train => (protos.classes.log_train_prior(), None),
                PriorSpec::Adaptive => (&adaptive_log, Some(adaptive_q.clone())),
                PriorSpec::Explicit(w) => {
                    explicit_log = w.iter().map(|q| q.ln()).collect();
                    (&explicit_log, Some(w.clone()))
                }
            };
            let g = g_of(o.rule);
            let row = g.row(i).insert_axis(Axis(0));
            let p = vmf::posterior(row, temperature, log_q);
            let probs: Vec<f64> = p.row(0).to_vec();
            let top = top_k(&probs, o.top_k, protos.classes.labels());
            results.push(Scored {
                rule: o.rule,
                temperature,
                prior_name: o.prior.name(),
                prior_used,
                top1: top[0].index,
                top,
                posterior: o.posterior.then_some(probs),
            });
        }

        // Feed the adaptive prior with this batch's calibrated rows of its rule.
        let g = g_of(self.adaptive_rule);
        let t = protos.temperature(self.adaptive_rule);
        for row in g.rows() {
            state.observe(row.iter().map(|v| v / t).collect());
        }
        Ok(results)
    }
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
    fn prior_parsing() {
        assert_eq!(PriorSpec::parse("train", 3), Ok(PriorSpec::Train));
        assert_eq!(
            PriorSpec::parse("1,1,2", 3),
            Ok(PriorSpec::Explicit(vec![0.25, 0.25, 0.5]))
        );
        assert!(PriorSpec::parse("1,2", 3).is_err());
        assert!(PriorSpec::parse("1,0,2", 3).is_err());
        assert!(PriorSpec::parse("1,x,2", 3).is_err());
        // Huge but finite weights normalise instead of overflowing to NaN.
        let PriorSpec::Explicit(q) = PriorSpec::parse("1e308,1e308,1e308", 3).unwrap() else {
            panic!("explicit")
        };
        assert!(q.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-15), "{q:?}");
        assert!(PriorSpec::parse("bogus", 3)
            .unwrap_err()
            .contains("unknown prior"));
    }

    #[test]
    fn top_k_orders_and_clamps() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let t = top_k(&[0.2, 0.5, 0.3], 10, &labels);
        assert_eq!(t.iter().map(|p| p.index).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(top_k(&[0.2, 0.5, 0.3], 1, &labels)[0].label, "b");
    }
}
