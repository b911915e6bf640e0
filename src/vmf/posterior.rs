//! Posteriors for a target prior, and label-shift estimation of that prior.
//!
//! All rules give balanced logits g, so `P(y | x; q) = softmax_y(g_y / T + ln q_y)` for any target
//! prior q (Menon et al. 2021). The temperature tempers the evidence *before* the prior is added.
//!
//! When the deployment prior is unknown, Saerens-Latinne-Decaestecker (2002) EM estimates it from
//! unlabelled traffic. For balanced logits its E-step is just `softmax(g/T + ln q)`, so it needs only
//! `e_ik = exp(g_ik/T - max_j g_ij/T)`, computed once per row; each iteration is then multiplications.

use std::collections::VecDeque;

use ndarray::{Array2, ArrayView2, Axis};

/// Row-wise `softmax(g / T + log_q)`, largest entry subtracted first. `log_q` has length C;
/// entries of `-inf` give probability 0.
pub fn posterior(g: ArrayView2<f64>, temperature: f64, log_q: &[f64]) -> Array2<f64> {
    assert_eq!(
        g.ncols(),
        log_q.len(),
        "log_q length must equal the number of classes"
    );
    let mut out = Array2::zeros(g.raw_dim());
    for (src, mut dst) in g.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        for ((d, &v), &lq) in dst.iter_mut().zip(src.iter()).zip(log_q) {
            *d = v / temperature + lq;
        }
        softmax_in_place(
            dst.as_slice_mut()
                .expect("rows of a fresh array are contiguous"),
        );
    }
    out
}

fn softmax_in_place(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// `log_softmax` of one row of logits: `v - max - ln sum exp(v - max)`.
pub fn log_softmax_row(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    logits.iter().map(|v| v - lse).collect()
}

/// `exp(row - max(row))`: the shifted likelihoods EM reweights.
fn shifted_exp(row: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let max = row.clone().fold(f64::NEG_INFINITY, f64::max);
    row.map(|v| (v - max).exp()).collect()
}

/// EM over rows of shifted likelihoods. Stops when `max_k |q_new - q| < tolerance` (returning the
/// new q and the iteration count) or after `max_iterations`.
fn em_rows<'a, I>(
    rows: I,
    start: &[f64],
    max_iterations: usize,
    tolerance: f64,
) -> (Vec<f64>, usize)
where
    I: Iterator<Item = &'a [f64]> + Clone,
{
    let c = start.len();
    let mut q = start.to_vec();
    let mut next = vec![0.0; c];
    let mut w = vec![0.0; c];
    let n = rows.clone().count();
    if n == 0 {
        return (q, 0);
    }
    for it in 1..=max_iterations {
        next.iter_mut().for_each(|v| *v = 0.0);
        for e in rows.clone() {
            let mut z = 0.0;
            for ((wk, ek), qk) in w.iter_mut().zip(e).zip(&q) {
                *wk = ek * qk;
                z += *wk;
            }
            for (nk, wk) in next.iter_mut().zip(&w) {
                *nk += wk / z;
            }
        }
        next.iter_mut().for_each(|v| *v /= n as f64);
        let change = next
            .iter()
            .zip(&q)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        std::mem::swap(&mut q, &mut next);
        if change < tolerance {
            return (q, it);
        }
    }
    (q, max_iterations)
}

/// Saerens et al. (2002) EM estimate of the test label distribution from calibrated balanced
/// logits (rows of g/T, N x C), starting from `start` (normally the training prior).
///
/// E-step `p(k | x_i) = softmax_k(g_ik/T + ln q_k)`, M-step `q = mean_i p(. | x_i)`; the likelihood
/// never decreases. Returns `(q, iterations)`; stops when no entry of q moves by `tolerance` or more
/// (1e-10 reproduces the reference; 1e-8 is plenty in production) or after `max_iterations`.
/// q is not floored here: classes with zero start stay at zero. Floor before taking logs.
pub fn em_label_shift(
    calibrated: ArrayView2<f64>,
    start: &[f64],
    max_iterations: usize,
    tolerance: f64,
) -> (Vec<f64>, usize) {
    assert_eq!(
        calibrated.ncols(),
        start.len(),
        "start length must equal the number of classes"
    );
    let rows: Vec<Vec<f64>> = calibrated
        .axis_iter(Axis(0))
        .map(|r| shifted_exp(r.iter().copied()))
        .collect();
    em_rows(
        rows.iter().map(Vec::as_slice),
        start,
        max_iterations,
        tolerance,
    )
}

/// Settings of [`AdaptivePrior`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaptivePriorConfig {
    /// Rows kept (the most recent images); older ones are evicted.
    pub window: usize,
    /// The training prior is reported until this many rows are in the window.
    pub min_samples: usize,
    /// Every q_k is raised to at least this (then q is renormalised), so ln q stays finite and a
    /// class that vanished from recent traffic can come back.
    pub floor: f64,
    /// EM iteration bound per refresh.
    pub max_iterations: usize,
    /// EM stops when no q_k moves by this much.
    pub tolerance: f64,
    /// EM is re-run after this many new rows (EM costs window x C per iteration, so not every row).
    pub refresh_every: usize,
}

impl Default for AdaptivePriorConfig {
    fn default() -> Self {
        Self {
            window: 2048,
            min_samples: 256,
            floor: 1e-4,
            max_iterations: 500,
            tolerance: 1e-8,
            refresh_every: 64,
        }
    }
}

/// Online estimate of the deployment label distribution: EM over a sliding window of calibrated
/// balanced-logit rows (g/T, one per image).
#[derive(Clone, Debug)]
pub struct AdaptivePrior {
    config: AdaptivePriorConfig,
    train_prior: Vec<f64>,
    /// Shifted likelihoods `exp(g/T - max)` of the window's rows, oldest first.
    rows: VecDeque<Vec<f64>>,
    /// The raw EM estimate (warm start for the next refresh).
    em_q: Vec<f64>,
    /// `em_q` floored and renormalised, or the training prior before `min_samples`.
    estimate: Vec<f64>,
    since_refresh: usize,
    refreshed_once: bool,
}

impl AdaptivePrior {
    /// `train_prior` is the EM start and the estimate until `min_samples` rows have been seen.
    pub fn new(config: AdaptivePriorConfig, train_prior: Vec<f64>) -> Self {
        Self {
            em_q: train_prior.clone(),
            estimate: train_prior.clone(),
            train_prior,
            rows: VecDeque::with_capacity(config.window.min(1 << 16)),
            config,
            since_refresh: 0,
            refreshed_once: false,
        }
    }

    /// Adds one image's calibrated row g/T (length C), evicting the oldest beyond `window`, and
    /// re-runs EM (warm-started from the previous estimate) every `refresh_every` rows once at least
    /// `min_samples` are held. Panics if the row length is not C.
    pub fn observe(&mut self, calibrated_row: &[f64]) {
        assert_eq!(
            calibrated_row.len(),
            self.train_prior.len(),
            "row length must equal the number of classes"
        );
        if self.config.window == 0 {
            return;
        }
        while self.rows.len() >= self.config.window {
            self.rows.pop_front();
        }
        self.rows
            .push_back(shifted_exp(calibrated_row.iter().copied()));
        self.since_refresh += 1;
        if self.rows.len() >= self.config.min_samples
            && (!self.refreshed_once || self.since_refresh >= self.config.refresh_every.max(1))
        {
            self.refresh();
        }
    }

    fn refresh(&mut self) {
        let (q, _) = em_rows(
            self.rows.iter().map(Vec::as_slice),
            &self.em_q,
            self.config.max_iterations,
            self.config.tolerance,
        );
        // Floor the warm start too: a class EM drove to ~0 must be able to recover.
        self.em_q = floor_and_normalise(&q, self.config.floor);
        self.estimate = self.em_q.clone();
        self.since_refresh = 0;
        self.refreshed_once = true;
    }

    /// The current estimate q (length C, sums to 1, every entry >= floor / (1 + C floor)).
    pub fn estimate(&self) -> &[f64] {
        &self.estimate
    }

    /// Rows currently in the window.
    pub fn samples(&self) -> usize {
        self.rows.len()
    }
}

fn floor_and_normalise(q: &[f64], floor: f64) -> Vec<f64> {
    let floored: Vec<f64> = q
        .iter()
        .map(|&v| if v.is_nan() { floor } else { v.max(floor) })
        .collect();
    let total: f64 = floored.iter().sum();
    floored.iter().map(|v| v / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn posterior_rows_sum_to_one_and_survive_large_logits() {
        let g = array![[1e5, 0.0, -1e5], [3.0, 3.0, 3.0]];
        let p = posterior(g.view(), 1.0, &[0.0, 0.0, 0.0]);
        assert_eq!(p[[0, 0]], 1.0);
        assert!((p[[1, 1]] - 1.0 / 3.0).abs() < 1e-15);
        let lq = [0.5f64.ln(), 0.25f64.ln(), 0.25f64.ln()];
        let p = posterior(g.view(), 2.0, &lq);
        assert!((p[[1, 0]] - 0.5).abs() < 1e-15);
        let l = log_softmax_row(&[1.0, 2.0, 3.0]);
        assert!((l.iter().map(|v| v.exp()).sum::<f64>() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn adaptive_prior_waits_for_min_samples_and_slides() {
        let cfg = AdaptivePriorConfig {
            window: 50,
            min_samples: 20,
            floor: 1e-3,
            max_iterations: 1000,
            tolerance: 1e-10,
            refresh_every: 5,
        };
        let mut ap = AdaptivePrior::new(cfg, vec![0.5, 0.5]);
        // Confident rows for class 1 only.
        for _ in 0..19 {
            ap.observe(&[-10.0, 10.0]);
        }
        assert_eq!(ap.estimate(), &[0.5, 0.5]);
        ap.observe(&[-10.0, 10.0]);
        assert!(ap.estimate()[1] > 0.99, "{:?}", ap.estimate());
        assert!(ap.estimate()[0] >= 1e-3 / (1.0 + 2e-3));
        // Traffic turns to class 0; after a full window the estimate follows.
        for _ in 0..50 {
            ap.observe(&[10.0, -10.0]);
        }
        assert_eq!(ap.samples(), 50);
        assert!(ap.estimate()[0] > 0.99, "{:?}", ap.estimate());
    }
}
