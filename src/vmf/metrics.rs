//! Accuracy and calibration metrics for posteriors `softmax(g / T + ln q)`.
//!
//! Conventions (those of the project's reference generator, `tools/golden_bessel.py`):
//! * prediction = argmax, ties to the lowest index; confidence = the largest probability;
//! * equal-width bins: bin 0 is [0, 1/M], bin m is (m/M, (m+1)/M]; empty bins are skipped;
//! * adaptive ECE: stable sort by confidence, M contiguous groups, the first n mod M one larger;
//! * NLL is computed from the logits (log-sum-exp), not from rounded probabilities;
//! * Brier = mean over rows of sum_k (P_ik - 1[y_i = k])^2, in [0, 2].

use ndarray::{ArrayView2, Axis};

use super::posterior::posterior;

/// Number of bins for ECE and classwise ECE.
pub const ECE_BINS: usize = 15;

/// Accuracy and calibration of one rule under one prior and temperature.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub n: usize,
    pub top1: f64,
    pub top5: f64,
    /// Top-1 accuracy over test images of classes with more than 100 training images (NaN if none).
    pub many: f64,
    /// ... with 20 to 100 training images.
    pub medium: f64,
    /// ... with fewer than 20 training images.
    pub few: f64,
    pub ece: f64,
    pub classwise_ece: f64,
    pub nll: f64,
    pub brier: f64,
}

/// Total-variation distance between two distributions: half the L1 distance, in [0, 1].
pub fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

/// Kullback-Leibler divergence KL(p || q) in nats; terms with p = 0 add nothing.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

/// The frequency group of a class with `n_y` training images: 0 many (> 100), 1 medium
/// (20 to 100), 2 few (< 20), as in the long-tailed literature.
pub fn frequency_group(n_y: f64) -> usize {
    if n_y > 100.0 {
        0
    } else if n_y >= 20.0 {
        1
    } else {
        2
    }
}

/// Evaluates `softmax(g / T + log_q)` against `labels`. `train_counts` (n_y) defines the
/// many (n_y > 100) / medium / few (n_y < 20) split.
pub fn evaluate(
    g: ArrayView2<f64>,
    temperature: f64,
    log_q: &[f64],
    labels: &[usize],
    train_counts: &[f64],
) -> Evaluation {
    assert_eq!(g.nrows(), labels.len(), "one label per row");
    assert_eq!(g.ncols(), train_counts.len(), "one count per class");
    let probs = posterior(g, temperature, log_q);
    let preds: Vec<usize> = probs
        .axis_iter(Axis(0))
        .map(|r| argmax(r.iter().copied()))
        .collect();
    let c = g.ncols();
    let k = c.min(5);
    let mut top5 = 0usize;
    let mut group = [(0usize, 0usize); 3]; // (correct, total) for many, medium, few
    for ((row, &y), &pred) in probs.axis_iter(Axis(0)).zip(labels).zip(&preds) {
        // y is in the top k iff fewer than k classes beat it (ties to the lower index, like argmax).
        let py = row[y];
        let better = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > py || (v == py && j < y))
            .count();
        top5 += usize::from(better < k);
        let gi = frequency_group(train_counts[y]);
        group[gi].0 += usize::from(pred == y);
        group[gi].1 += 1;
    }
    let n = labels.len();
    let frac = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let scaled = g.mapv(|v| v / temperature) + ndarray::ArrayView1::from(log_q);
    Evaluation {
        n,
        top1: frac(preds.iter().zip(labels).filter(|(p, y)| p == y).count(), n),
        top5: frac(top5, n),
        many: frac(group[0].0, group[0].1),
        medium: frac(group[1].0, group[1].1),
        few: frac(group[2].0, group[2].1),
        ece: ece_top_label(probs.view(), labels, ECE_BINS),
        classwise_ece: classwise_ece(probs.view(), labels, ECE_BINS),
        nll: nll_from_logits(scaled.view(), labels),
        brier: brier_score(probs.view(), labels),
    }
}

/// Index of the largest value (ties to the lowest index).
pub fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Equal-width bin of a value in [0, 1]: bin 0 is [0, 1/M], bin m is (m/M, (m+1)/M].
pub fn bin_of(v: f64, bins: usize) -> usize {
    // ceil(v M) - 1 puts v = m/M exactly in bin m-1; the edges are compared as linspace computes them.
    let mut m = ((v * bins as f64).ceil() as usize)
        .saturating_sub(1)
        .min(bins - 1);
    // Guard the rounding of v * M against the edge value m/M itself.
    while m > 0 && v <= m as f64 / bins as f64 {
        m -= 1;
    }
    while m + 1 < bins && v > (m + 1) as f64 / bins as f64 {
        m += 1;
    }
    m
}

/// sum_m |B_m|/n |mean target - mean score| over equal-width bins of `score`.
fn binned_gap(score: &[f64], target: &[f64], bins: usize) -> f64 {
    let mut acc = vec![(0.0, 0.0, 0usize); bins];
    for (&s, &t) in score.iter().zip(target) {
        let b = &mut acc[bin_of(s, bins)];
        b.0 += s;
        b.1 += t;
        b.2 += 1;
    }
    let n = score.len() as f64;
    acc.iter()
        .filter(|b| b.2 > 0)
        .map(|&(s, t, c)| c as f64 / n * (t / c as f64 - s / c as f64).abs())
        .sum()
}

fn confidence_and_correct(probs: ArrayView2<f64>, labels: &[usize]) -> (Vec<f64>, Vec<f64>) {
    probs
        .axis_iter(Axis(0))
        .zip(labels)
        .map(|(r, &y)| {
            let p = argmax(r.iter().copied());
            (r[p], f64::from(u8::from(p == y)))
        })
        .unzip()
}

/// Top-label expected calibration error with `bins` equal-width bins.
pub fn ece_top_label(probs: ArrayView2<f64>, labels: &[usize], bins: usize) -> f64 {
    let (conf, correct) = confidence_and_correct(probs, labels);
    binned_gap(&conf, &correct, bins)
}

/// Classwise ECE (Kull et al. 2019): the binned gap of each column P_.k against 1[y = k], averaged over k.
pub fn classwise_ece(probs: ArrayView2<f64>, labels: &[usize], bins: usize) -> f64 {
    let k = probs.ncols();
    (0..k)
        .map(|c| {
            let target: Vec<f64> = labels
                .iter()
                .map(|&y| f64::from(u8::from(y == c)))
                .collect();
            binned_gap(probs.column(c).to_vec().as_slice(), &target, bins)
        })
        .sum::<f64>()
        / k as f64
}

/// Adaptive (equal-mass) ECE: rows stably sorted by confidence, split into `bins` contiguous groups
/// whose sizes differ by at most one (the first n mod M groups are larger), as numpy's `array_split`.
pub fn adaptive_ece(probs: ArrayView2<f64>, labels: &[usize], bins: usize) -> f64 {
    let (conf, correct) = confidence_and_correct(probs, labels);
    let n = conf.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| conf[a].total_cmp(&conf[b]));
    let (base, extra) = (n / bins, n % bins);
    let mut start = 0;
    let mut total = 0.0;
    for m in 0..bins {
        let len = base + usize::from(m < extra);
        if len == 0 {
            continue;
        }
        let group = &order[start..start + len];
        let mc = group.iter().map(|&i| conf[i]).sum::<f64>() / len as f64;
        let ma = group.iter().map(|&i| correct[i]).sum::<f64>() / len as f64;
        total += len as f64 / n as f64 * (ma - mc).abs();
        start += len;
    }
    total
}

/// Mean negative log-likelihood `mean_i [logsumexp_k l_ik - l_{i,y_i}]` of final logits l
/// (l = g/T + ln q).
pub fn nll_from_logits(logits: ArrayView2<f64>, labels: &[usize]) -> f64 {
    let total: f64 = logits
        .axis_iter(Axis(0))
        .zip(labels)
        .map(|(r, &y)| {
            let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            max + r.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - r[y]
        })
        .sum();
    total / labels.len() as f64
}

/// Brier score `mean_i sum_k (P_ik - 1[y_i = k])^2`.
pub fn brier_score(probs: ArrayView2<f64>, labels: &[usize]) -> f64 {
    let total: f64 = probs
        .axis_iter(Axis(0))
        .zip(labels)
        .map(|(r, &y)| {
            r.iter()
                .enumerate()
                .map(|(k, &p)| (p - f64::from(u8::from(k == y))).powi(2))
                .sum::<f64>()
        })
        .sum();
    total / labels.len() as f64
}

/// Reliability diagram data for the top label: per equal-width bin, (mean confidence, accuracy,
/// count). Empty bins report (bin centre, 0, 0).
pub fn reliability_bins(
    probs: ArrayView2<f64>,
    labels: &[usize],
    bins: usize,
) -> Vec<(f64, f64, usize)> {
    let (conf, correct) = confidence_and_correct(probs, labels);
    let mut acc = vec![(0.0, 0.0, 0usize); bins];
    for (&s, &t) in conf.iter().zip(&correct) {
        let b = &mut acc[bin_of(s, bins)];
        b.0 += s;
        b.1 += t;
        b.2 += 1;
    }
    acc.iter()
        .enumerate()
        .map(|(m, &(s, t, c))| {
            if c == 0 {
                ((m as f64 + 0.5) / bins as f64, 0.0, 0)
            } else {
                (s / c as f64, t / c as f64, c)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn drift_distances() {
        let p = [0.5, 0.5];
        let q = [0.9, 0.1];
        assert!((total_variation(&p, &q) - 0.4).abs() < 1e-15);
        let kl = 0.5 * (0.5f64 / 0.9).ln() + 0.5 * (0.5f64 / 0.1).ln();
        assert!((kl_divergence(&p, &q) - kl).abs() < 1e-15);
        assert_eq!(kl_divergence(&q, &q), 0.0);
        assert_eq!(kl_divergence(&[1.0, 0.0], &[0.5, 0.5]), 2f64.ln());
    }

    use super::*;

    #[test]
    fn bin_edges_follow_the_convention() {
        assert_eq!(bin_of(0.0, 15), 0);
        assert_eq!(bin_of(1.0 / 15.0, 15), 0);
        assert_eq!(bin_of(1.0 / 15.0 + 1e-12, 15), 1);
        assert_eq!(bin_of(1.0, 15), 14);
        assert_eq!(bin_of(0.5, 2), 0);
        assert_eq!(bin_of(0.75, 2), 1);
    }
}
