//! Feedback on served answers: every `/v1` answer gets an id and waits, in a store of fixed
//! size, for someone to say what its true label was (`POST /v1/feedback`). Each labelled answer
//! becomes an outcome in a sliding window, from which the server reports accuracy, NLL, Brier
//! score, ECE and prediction-set coverage on real traffic.
//!
//! Memory is bounded twice: at most `capacity` answers wait (the oldest is forgotten first, and
//! its id then answers 404), each keeping its probability vector as f32; and the window keeps
//! `window` compact outcomes, not vectors. Outcomes are graded when the label arrives, under the
//! probabilities the client was shown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::vmf::metrics::{argmax, bin_of};

/// Bins of the windowed ECE (as `eval`'s).
const ECE_BINS: usize = crate::vmf::metrics::ECE_BINS;

/// An answer waiting for its label.
struct Pending {
    /// The classes of the prototypes version that answered.
    labels: Arc<Vec<String>>,
    probabilities: Vec<f32>,
    /// The prediction set's class indices, when the answer had one.
    set: Option<Vec<usize>>,
    labelled: bool,
}

/// What one labelled answer contributes to the window.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Outcome {
    confidence: f64,
    correct: bool,
    /// ln p of the true label (floored so that a zero gives a large, finite NLL).
    log_p_true: f64,
    brier: f64,
    in_set: Option<bool>,
}

/// The result of one feedback post.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Accepted {
    pub id: String,
    pub label: String,
    pub correct: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_set: Option<bool>,
    /// Labelled answers now in the window.
    pub labelled: usize,
}

/// Why a feedback post was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    #[error("no answer with id {0:?} is waiting for feedback (never given, or forgotten: the server keeps the last {1})")]
    UnknownId(String, usize),
    #[error("label {label:?} is not a class of the model that answered {id:?}; its classes are: {classes}")]
    UnknownLabel {
        id: String,
        label: String,
        classes: String,
    },
    #[error("answer {0:?} already has its label")]
    AlreadyLabelled(String),
}

/// The windowed metrics; `None` while nothing was labelled (or no labelled answer had a set).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowMetrics {
    pub window: usize,
    pub labelled: usize,
    pub accuracy: Option<f64>,
    pub nll: Option<f64>,
    pub brier: Option<f64>,
    pub ece: Option<f64>,
    pub set_coverage: Option<f64>,
    /// Labelled answers that had a prediction set.
    pub set_answers: usize,
}

struct Inner {
    pending: HashMap<String, Pending>,
    /// Ids in arrival order, for forgetting the oldest.
    order: VecDeque<String>,
    outcomes: VecDeque<Outcome>,
    /// The labels of the last version seen, shared by its answers.
    labels: Option<(String, Arc<Vec<String>>)>,
}

/// The store of answers awaiting labels and the window of labelled outcomes.
pub struct FeedbackStore {
    capacity: usize,
    window: usize,
    inner: Mutex<Inner>,
}

impl FeedbackStore {
    /// `capacity` answers wait at most; `window` outcomes are graded. Zero capacity keeps none.
    pub fn new(capacity: usize, window: usize) -> Self {
        FeedbackStore {
            capacity,
            window: window.max(1),
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                order: VecDeque::new(),
                outcomes: VecDeque::new(),
                labels: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an answer of prototypes `version` (whose classes are `labels`) for feedback.
    pub fn remember(
        &self,
        id: String,
        version: &str,
        labels: &[String],
        probabilities: &[f64],
        set: Option<Vec<usize>>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        let labels = match &inner.labels {
            Some((v, l)) if v == version => l.clone(),
            _ => {
                let l = Arc::new(labels.to_vec());
                inner.labels = Some((version.to_string(), l.clone()));
                l
            }
        };
        while inner.order.len() >= self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.pending.remove(&old);
            }
        }
        inner.order.push_back(id.clone());
        inner.pending.insert(
            id,
            Pending {
                labels,
                probabilities: probabilities.iter().map(|&p| p as f32).collect(),
                set,
                labelled: false,
            },
        );
    }

    /// Grades answer `id` against its true `label` and adds it to the window.
    pub fn label(&self, id: &str, label: &str) -> Result<Accepted, FeedbackError> {
        let mut inner = self.lock();
        let pending = inner
            .pending
            .get_mut(id)
            .ok_or_else(|| FeedbackError::UnknownId(id.to_string(), self.capacity))?;
        if pending.labelled {
            return Err(FeedbackError::AlreadyLabelled(id.to_string()));
        }
        let Some(y) = pending.labels.iter().position(|l| l == label) else {
            return Err(FeedbackError::UnknownLabel {
                id: id.to_string(),
                label: label.to_string(),
                classes: pending.labels.join(", "),
            });
        };
        pending.labelled = true;
        let outcome = grade(&pending.probabilities, y, pending.set.as_deref());
        // The vector is not needed any more; the id stays to refuse a second label.
        pending.probabilities = Vec::new();
        inner.outcomes.push_back(outcome);
        while inner.outcomes.len() > self.window {
            inner.outcomes.pop_front();
        }
        Ok(Accepted {
            id: id.to_string(),
            label: label.to_string(),
            correct: outcome.correct,
            in_set: outcome.in_set,
            labelled: inner.outcomes.len(),
        })
    }

    /// The metrics of the labelled answers in the window.
    pub fn metrics(&self) -> WindowMetrics {
        let inner = self.lock();
        window_metrics(inner.outcomes.iter().copied().collect(), self.window)
    }
}

/// One labelled answer's contribution.
fn grade(probabilities: &[f32], y: usize, set: Option<&[usize]>) -> Outcome {
    let p: Vec<f64> = probabilities.iter().map(|&v| f64::from(v)).collect();
    let top = argmax(p.iter().copied());
    let confidence = p[top];
    let brier = p
        .iter()
        .enumerate()
        .map(|(k, &v)| (v - f64::from(u8::from(k == y))).powi(2))
        .sum();
    Outcome {
        confidence,
        correct: top == y,
        log_p_true: p[y].max(1e-300).ln(),
        brier,
        in_set: set.map(|s| s.contains(&y)),
    }
}

fn window_metrics(outcomes: Vec<Outcome>, window: usize) -> WindowMetrics {
    let n = outcomes.len();
    let mean = |f: &dyn Fn(&Outcome) -> f64| {
        (n > 0).then(|| outcomes.iter().map(f).sum::<f64>() / n as f64)
    };
    let with_set: Vec<bool> = outcomes.iter().filter_map(|o| o.in_set).collect();
    WindowMetrics {
        window,
        labelled: n,
        accuracy: mean(&|o| f64::from(u8::from(o.correct))),
        nll: mean(&|o| -o.log_p_true),
        brier: mean(&|o| o.brier),
        ece: (n > 0).then(|| ece(&outcomes)),
        set_coverage: (!with_set.is_empty())
            .then(|| with_set.iter().filter(|&&h| h).count() as f64 / with_set.len() as f64),
        set_answers: with_set.len(),
    }
}

/// Expected calibration error over equal-width confidence bins (bin 0 is [0, 1/M], bin m is
/// (m/M, (m+1)/M], as `eval`'s).
fn ece(outcomes: &[Outcome]) -> f64 {
    let mut bins = [(0.0f64, 0.0f64, 0usize); ECE_BINS];
    for o in outcomes {
        let m = bin_of(o.confidence, ECE_BINS);
        bins[m].0 += o.confidence;
        bins[m].1 += f64::from(u8::from(o.correct));
        bins[m].2 += 1;
    }
    let n = outcomes.len() as f64;
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|&(conf, acc, _)| (acc - conf).abs() / n)
        .sum()
}

/// A new answer id: unique within this process and unlikely to repeat across restarts.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (nanos ^ (u128::from(std::process::id()) << 32)) as u32
    });
    format!("{prefix:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn labelled_answers_are_graded_once() {
        let store = FeedbackStore::new(10, 10);
        store.remember("x".into(), "v1", &labels(), &[0.8, 0.2], Some(vec![0]));
        store.remember("y".into(), "v1", &labels(), &[0.3, 0.7], None);
        let a = store.label("x", "b").unwrap();
        assert!(!a.correct);
        assert_eq!(a.in_set, Some(false));
        assert_eq!(
            store.label("x", "a"),
            Err(FeedbackError::AlreadyLabelled("x".into()))
        );
        assert!(matches!(
            store.label("y", "c"),
            Err(FeedbackError::UnknownLabel { .. })
        ));
        assert!(store.label("y", "b").unwrap().correct);
        let m = store.metrics();
        assert_eq!(m.labelled, 2);
        assert_eq!(m.accuracy, Some(0.5));
        assert_eq!(m.set_answers, 1);
        assert_eq!(m.set_coverage, Some(0.0));
        // NLL: -(ln 0.2 + ln 0.7) / 2, from f32-stored probabilities.
        let nll = -((0.2f32 as f64).ln() + (0.7f32 as f64).ln()) / 2.0;
        assert!((m.nll.unwrap() - nll).abs() < 1e-12);
        // Brier: ((0.8)^2 + (0.8)^2 + (0.3)^2 + (0.3)^2) / 2 = 0.73.
        assert!((m.brier.unwrap() - 0.73).abs() < 1e-6);
        // ECE: confidences 0.8 (wrong) and 0.7 (right) in different bins: (0.8 + 0.3) / 2.
        assert!((m.ece.unwrap() - 0.55).abs() < 1e-6);
    }

    #[test]
    fn the_oldest_answers_are_forgotten_and_the_window_slides() {
        let store = FeedbackStore::new(2, 1);
        for id in ["1", "2", "3"] {
            store.remember(id.into(), "v1", &labels(), &[0.6, 0.4], None);
        }
        assert!(matches!(
            store.label("1", "a"),
            Err(FeedbackError::UnknownId(..))
        ));
        store.label("2", "a").unwrap();
        store.label("3", "b").unwrap();
        let m = store.metrics();
        assert_eq!((m.labelled, m.accuracy), (1, Some(0.0)));
        assert_eq!(FeedbackStore::new(0, 5).metrics().accuracy, None);
    }

    #[test]
    fn ids_are_unique() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
    }
}
